//! What each system call hands the kernel: the one description of system-call buffers.
//!
//! [`describe`] reads a system call's number and six argument registers and lists the
//! far memory the kernel will read or write: buffers with their lengths, fixed-size
//! structures, NUL-terminated paths, iovec arrays, message headers, execve's argv. Both
//! sides that bring far buffers in before a system call read it:
//!
//! - the C library wrappers (`io::syscalls`, `io::futex`): each builds the argument
//!   array of the system call it stands for and describes it with that number;
//! - the syscall guard (`crate::sud`): the registers of a trapped call.
//!
//! A call the table does not know gets the page under every argument that points into
//! the far heap (`Bufs::guessed`; the guard then widens on EFAULT). C library functions
//! that are not one system call (fread, pthread_mutex_lock...) fill a [`Bufs`] of their
//! own.
//!
//! [`Bufs`] is a fixed array that never allocates: the guard describes calls in a SIGSYS
//! handler, which may have interrupted the C library's allocator.

use std::mem::MaybeUninit;

use libc::c_long;

use super::in_heap;
use farmem::pin::touch;

/// Far buffers one call names, at most: more are touched when described (and described
/// again to be touched again), not kept.
const MAX: usize = 24;

/// The far memory one call hands the kernel: (address, length) ranges, each with some
/// byte in the far heap. Ranges outside the heap are never kept.
pub(crate) struct Bufs {
    /// The first `n` are written.
    list: MaybeUninit<[(usize, usize); MAX]>,
    n: usize,
    /// More far buffers than `list` holds were named; they were touched only.
    overflow: bool,
    /// Some argument pointed into the far heap with no known length.
    guessed: bool,
}

impl Bufs {
    /// No buffers. Cheap: the array is not initialised (the fast path of every wrapper
    /// builds one).
    #[inline]
    pub(crate) fn new() -> Bufs {
        // Field by field: as one constant, the compiler zero-fills the array too.
        let mut b = MaybeUninit::<Bufs>::uninit();
        let p = b.as_mut_ptr();
        // SAFETY: every field but `list` is written; `list` is allowed to stay
        // uninitialised (a MaybeUninit), and only entries `add` wrote are read.
        unsafe {
            (&raw mut (*p).n).write(0);
            (&raw mut (*p).overflow).write(false);
            (&raw mut (*p).guessed).write(false);
            b.assume_init()
        }
    }

    /// Whether no far buffer was named: the call can be made as it is.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The far buffers kept (the first `MAX`).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let list = self.list.as_ptr().cast::<(usize, usize)>();
        // SAFETY: `add` wrote the first `n` entries, `n <= MAX`.
        (0..self.n).map(move |i| unsafe { list.add(i).read() })
    }

    /// Touches (faults in) the far buffers kept.
    pub(crate) fn touch(&self) {
        for (p, l) in self.iter() {
            touch(p, l);
        }
    }

    /// Whether more far buffers were named than are kept: describe the call again to
    /// touch them again.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Whether some far pointer argument had no known length (the guard widens on
    /// EFAULT).
    pub(crate) fn guessed(&self) -> bool {
        self.guessed
    }

    /// `len` bytes at `p`, kept if they reach into the far heap.
    #[inline]
    pub(crate) fn add(&mut self, p: u64, len: u64) {
        let (p, len) = (p as usize, len as usize);
        if p == 0 || !in_heap(p, len) {
            return;
        }
        if self.n == MAX {
            self.overflow = true;
            touch(p, len);
            return;
        }
        // SAFETY: `n < MAX`, inside the array.
        unsafe {
            self.list
                .as_mut_ptr()
                .cast::<(usize, usize)>()
                .add(self.n)
                .write((p, len))
        };
        self.n += 1;
    }

    /// A NUL-terminated string (a path).
    fn cstr(&mut self, p: u64) {
        if p != 0 && in_heap(p as usize, 1) {
            // SAFETY: the program hands the kernel this string, so it is readable; a far
            // page faults in here.
            let n = unsafe { libc::strlen(p as *const libc::c_char) };
            self.add(p, n as u64 + 1);
        }
    }

    /// The length stored at `p` (a socklen_t), bounded.
    fn len_at(p: u64) -> u64 {
        if p == 0 {
            return 0;
        }
        // SAFETY: the program's socklen_t, which the kernel reads too.
        u64::from(unsafe { (p as *const u32).read_unaligned() }).min(1 << 16)
    }

    /// An iovec array of `cnt` entries and the buffers it names.
    fn iov(&mut self, iov: u64, cnt: u64) {
        // The kernel refuses more than UIO_MAXIOV (a negative C int is a huge count).
        if iov == 0 || cnt > 1024 {
            return;
        }
        self.add(iov, cnt * 16);
        for i in 0..cnt {
            // SAFETY: the program's iovec array of `cnt` entries, which the kernel reads.
            let v = unsafe { ((iov + i * 16) as *const libc::iovec).read_unaligned() };
            self.add(v.iov_base as u64, v.iov_len as u64);
        }
    }

    /// A message header and what it names.
    fn msghdr(&mut self, m: u64) {
        if m == 0 {
            return;
        }
        self.add(m, std::mem::size_of::<libc::msghdr>() as u64);
        // SAFETY: the program's msghdr, which the kernel reads.
        let h = unsafe { (m as *const libc::msghdr).read_unaligned() };
        self.add(h.msg_name as u64, u64::from(h.msg_namelen));
        self.add(h.msg_control as u64, h.msg_controllen as u64);
        self.iov(h.msg_iov as u64, h.msg_iovlen as u64);
    }

    /// A NULL-terminated array of strings (execve's argv and envp): touched only.
    fn strv(&mut self, v: u64) {
        if v == 0 {
            return;
        }
        for i in 0..(1u64 << 20) {
            let at = v + i * 8;
            if in_heap(at as usize, 8) {
                touch(at as usize, 8);
            }
            // SAFETY: the program's NULL-terminated pointer array.
            let s = unsafe { (at as *const u64).read_unaligned() };
            if s == 0 {
                break;
            }
            if in_heap(s as usize, 1) {
                // SAFETY: as in `cstr`.
                let n = unsafe { libc::strlen(s as *const libc::c_char) };
                touch(s as usize, n + 1);
            }
        }
    }

    /// Unknown length: the rest of the page under `p` and the next one.
    fn guess(&mut self, p: u64) {
        if p != 0 && in_heap(p as usize, 1) {
            self.guessed = true;
            self.add(p, 8192 - (p & 4095));
        }
    }
}

/// What the kernel reads or writes for system call `nr` with arguments `a` (the six
/// argument registers; of an argument that is a C `int`, only the low 32 bits count, as
/// in the kernel): the far buffers, added to `b`.
///
/// A wrapper passes a constant `nr`, so the optimiser keeps only that call's arm there:
/// a call on buffers outside the heap costs their range checks.
#[allow(non_upper_case_globals)]
#[inline]
pub(crate) fn describe(nr: c_long, a: &[u64; 6], b: &mut Bufs) {
    use libc::*;
    const STAT: u64 = std::mem::size_of::<libc::stat>() as u64;
    const TS: u64 = 16;
    match nr {
        SYS_read | SYS_write | SYS_pread64 | SYS_pwrite64 | SYS_getdents64 | SYS_getdents => {
            b.add(a[1], a[2])
        }
        SYS_getrandom | SYS_getcwd => b.add(a[0], a[1]),
        SYS_readv | SYS_writev | SYS_preadv | SYS_pwritev | SYS_preadv2 | SYS_pwritev2
        | SYS_vmsplice => b.iov(a[1], a[2]),
        SYS_recvfrom | SYS_sendto => {
            b.add(a[1], a[2]);
            if nr == SYS_recvfrom {
                b.add(a[5], 4);
                b.add(a[4], Bufs::len_at(a[5]));
            } else {
                b.add(a[4], a[5]);
            }
        }
        SYS_recvmsg | SYS_sendmsg => b.msghdr(a[1]),
        SYS_recvmmsg | SYS_sendmmsg => {
            let n = a[2].min(64);
            b.add(a[1], n * 64);
            for i in 0..n {
                b.msghdr(a[1] + i * 64);
                b.add(a[1] + i * 64 + 56, 4);
            }
            if nr == SYS_recvmmsg {
                b.add(a[4], TS);
            }
        }
        SYS_accept | SYS_accept4 | SYS_getsockname | SYS_getpeername => {
            b.add(a[2], 4);
            b.add(a[1], Bufs::len_at(a[2]));
        }
        SYS_bind | SYS_connect => b.add(a[1], a[2]),
        SYS_getsockopt => {
            b.add(a[4], 4);
            b.add(a[3], Bufs::len_at(a[4]));
        }
        SYS_setsockopt => b.add(a[3], a[4]),
        SYS_socketpair => b.add(a[3], 8),
        SYS_pipe | SYS_pipe2 => b.add(a[0], 8),
        SYS_fstat => b.add(a[1], STAT),
        SYS_stat | SYS_lstat => {
            b.cstr(a[0]);
            b.add(a[1], STAT)
        }
        SYS_newfstatat => {
            b.cstr(a[1]);
            b.add(a[2], STAT)
        }
        SYS_statx => {
            b.cstr(a[1]);
            b.add(a[4], 256)
        }
        SYS_statfs => {
            b.cstr(a[0]);
            b.add(a[1], 120)
        }
        SYS_fstatfs => b.add(a[1], 120),
        SYS_clock_gettime | SYS_clock_getres => b.add(a[1], TS),
        SYS_clock_nanosleep => {
            b.add(a[2], TS);
            b.add(a[3], TS)
        }
        SYS_nanosleep => {
            b.add(a[0], TS);
            b.add(a[1], TS)
        }
        SYS_gettimeofday => {
            b.add(a[0], 16);
            b.add(a[1], 8)
        }
        SYS_time => b.add(a[0], 8),
        SYS_uname => b.add(a[0], std::mem::size_of::<libc::utsname>() as u64),
        SYS_sysinfo => b.add(a[0], std::mem::size_of::<libc::sysinfo>() as u64),
        SYS_times => b.add(a[0], 32),
        SYS_getrusage => b.add(a[1], std::mem::size_of::<libc::rusage>() as u64),
        SYS_getrlimit | SYS_setrlimit => b.add(a[1], 16),
        SYS_prlimit64 => {
            b.add(a[2], 16);
            b.add(a[3], 16)
        }
        SYS_wait4 => {
            b.add(a[1], 4);
            b.add(a[3], std::mem::size_of::<libc::rusage>() as u64)
        }
        SYS_waitid => {
            b.add(a[2], 128);
            b.add(a[4], std::mem::size_of::<libc::rusage>() as u64)
        }
        SYS_epoll_wait | SYS_epoll_pwait | SYS_epoll_pwait2 => {
            let max = (a[2] as i32).max(0) as u64;
            b.add(a[1], max.min(1 << 20) * 12);
            if nr == SYS_epoll_pwait2 {
                b.add(a[3], TS)
            }
            if nr != SYS_epoll_wait {
                b.add(a[4], 8)
            }
        }
        SYS_epoll_ctl => b.add(a[3], 12),
        SYS_poll | SYS_ppoll => {
            b.add(a[0], a[1].min(1 << 20) * 8);
            if nr == SYS_ppoll {
                b.add(a[2], TS);
                b.add(a[3], 8)
            }
        }
        SYS_select | SYS_pselect6 => {
            let sets = a[0].div_ceil(64).min(16) * 8;
            b.add(a[1], sets);
            b.add(a[2], sets);
            b.add(a[3], sets);
            b.add(a[4], TS);
            if nr == SYS_pselect6 {
                b.add(a[5], 16)
            }
        }
        SYS_sched_getaffinity | SYS_sched_setaffinity => b.add(a[2], a[1].min(1 << 16)),
        SYS_rt_sigaction => {
            b.add(a[1], 32);
            b.add(a[2], 32)
        }
        SYS_rt_sigpending | SYS_rt_sigsuspend => b.add(a[0], 8),
        SYS_rt_sigtimedwait => {
            b.add(a[0], 8);
            b.add(a[1], 128);
            b.add(a[2], TS)
        }
        SYS_sigaltstack => {
            b.add(a[0], 24);
            b.add(a[1], 24)
        }
        SYS_futex => {
            b.add(a[0], 4);
            let op = (a[1] as i32) & 0x7f;
            if matches!(
                op,
                FUTEX_REQUEUE | FUTEX_CMP_REQUEUE | FUTEX_WAKE_OP | FUTEX_CMP_REQUEUE_PI
            ) {
                b.add(a[4], 4);
            } else {
                b.add(a[3], TS);
            }
        }
        SYS_sendfile => b.add(a[2], 8),
        SYS_splice | SYS_copy_file_range => {
            b.add(a[1], 8);
            b.add(a[3], 8)
        }
        SYS_mincore => b.add(a[2], a[1].div_ceil(4096)),
        SYS_ioctl => {
            // _IOC_SIZE when the request encodes it, else a guess.
            let size = (a[1] >> 16) & 0x3fff;
            if (a[1] >> 30) != 0 && size > 0 {
                b.add(a[2], size)
            } else {
                b.guess(a[2])
            }
        }
        SYS_fcntl => match a[1] as i32 {
            F_GETLK | F_SETLK | F_SETLKW | F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW => {
                b.add(a[2], std::mem::size_of::<libc::flock>() as u64)
            }
            _ => {}
        },
        // Paths.
        SYS_open | SYS_creat | SYS_access | SYS_mkdir | SYS_rmdir | SYS_unlink | SYS_chdir
        | SYS_chmod | SYS_chown | SYS_lchown | SYS_truncate | SYS_chroot | SYS_mknod
        | SYS_memfd_create | SYS_acct | SYS_swapon | SYS_swapoff => b.cstr(a[0]),
        SYS_openat
        | SYS_faccessat
        | SYS_faccessat2
        | SYS_mkdirat
        | SYS_unlinkat
        | SYS_fchmodat
        | SYS_fchownat
        | SYS_mknodat
        | SYS_inotify_add_watch => b.cstr(a[1]),
        SYS_openat2 => {
            b.cstr(a[1]);
            b.add(a[2], a[3].min(4096))
        }
        SYS_utimensat => {
            b.cstr(a[1]);
            b.add(a[2], 2 * TS)
        }
        SYS_rename | SYS_link | SYS_symlink => {
            b.cstr(a[0]);
            b.cstr(a[1])
        }
        SYS_renameat | SYS_renameat2 | SYS_linkat => {
            b.cstr(a[1]);
            b.cstr(a[3])
        }
        SYS_symlinkat => {
            b.cstr(a[0]);
            b.cstr(a[2])
        }
        SYS_readlink => {
            b.cstr(a[0]);
            b.add(a[1], a[2])
        }
        SYS_readlinkat => {
            b.cstr(a[1]);
            b.add(a[2], a[3])
        }
        SYS_execve => {
            b.cstr(a[0]);
            b.strv(a[1]);
            b.strv(a[2])
        }
        SYS_execveat => {
            b.cstr(a[1]);
            b.strv(a[2]);
            b.strv(a[3])
        }
        // No memory, or memory farmem does not reach through (mappings are the
        // preload's own business).
        SYS_mmap | SYS_munmap | SYS_mremap | SYS_mprotect | SYS_madvise | SYS_brk | SYS_close
        | SYS_dup | SYS_dup2 | SYS_dup3 | SYS_getpid | SYS_gettid | SYS_exit | SYS_exit_group
        | SYS_kill | SYS_tgkill | SYS_sched_yield | SYS_lseek => {}
        _ => {
            for &p in a {
                b.guess(p);
            }
        }
    }
}
