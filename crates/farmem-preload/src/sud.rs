//! The syscall guard: system calls the program makes outside the wrapped C library entry
//! points (the `syscall` instruction itself, and the C library's internal calls) reach
//! far buffers safely (see `farmem::sys::sud` for the mechanism).
//!
//! Each trapped call is described by the memory it hands the kernel: buffers with their
//! lengths, fixed-size structures, NUL-terminated paths, iovec arrays and message headers.
//! The far ones are pinned and touched, the call is made, and EFAULT is retried after
//! touching again. A call this table does not know gets the page under every argument
//! that points into the far heap, and on EFAULT a widening range from each such pointer
//! (up to 1 MiB) before the error is given back.
//!
//! On by default in the in-thread (sigbus) fault mode where the kernel has syscall user
//! dispatch; `FARMEM_SYSCALL_GUARD=0` (`farmem run --no-syscall-guard`) turns it off.

use farmem::pin::{Pin, touch};
use farmem::sys::raw::syscall_raw;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::heap::owns;
use crate::rt;

/// System calls the guard made for the program, and how many of them named far memory.
pub(crate) static DISPATCHED: AtomicU64 = AtomicU64::new(0);
pub(crate) static DISPATCHED_FAR: AtomicU64 = AtomicU64::new(0);

/// Buffers one call names, at most (more are touched but not pinned).
const MAX: usize = 24;
/// Pinned at once, at most.
const MAX_PINS: usize = 8;
const EFAULT: i64 = -(libc::EFAULT as i64);
/// Retries of a call that still got EFAULT with its buffers touched.
const RETRIES: usize = 64;

/// The memory one call hands the kernel. A fixed array, not the `Vec` that io.rs's
/// `iov_bufs` and `msg_bufs` fill: this runs in a SIGSYS handler that may have interrupted
/// the C library's allocator, so it must not allocate.
struct Bufs {
    list: [(usize, usize); MAX],
    n: usize,
    /// Some argument pointed into the far heap with no known length.
    guessed: bool,
}

impl Bufs {
    fn new() -> Bufs {
        Bufs {
            list: [(0, 0); MAX],
            n: 0,
            guessed: false,
        }
    }

    fn add(&mut self, p: u64, len: u64) {
        let (p, len) = (p as usize, len as usize);
        if p == 0 || len == 0 || self.n == MAX {
            return;
        }
        if owns(p) || owns(p.saturating_add(len - 1)) {
            self.list[self.n] = (p, len);
            self.n += 1;
        }
    }

    /// A NUL-terminated string (a path).
    fn cstr(&mut self, p: u64) {
        if p != 0 && owns(p as usize) {
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

    fn iov(&mut self, iov: u64, cnt: u64) {
        let cnt = cnt.min(1024);
        self.add(iov, cnt * 16);
        if iov == 0 {
            return;
        }
        for i in 0..cnt {
            // SAFETY: the program's iovec array of `cnt` entries.
            let v = unsafe { ((iov + i * 16) as *const libc::iovec).read_unaligned() };
            self.add(v.iov_base as u64, v.iov_len as u64);
        }
    }

    fn msghdr(&mut self, m: u64) {
        if m == 0 {
            return;
        }
        self.add(m, std::mem::size_of::<libc::msghdr>() as u64);
        // SAFETY: the program's msghdr.
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
            if owns(at as usize) {
                touch(at as usize, 8);
            }
            // SAFETY: the program's NULL-terminated pointer array.
            let s = unsafe { (at as *const u64).read_unaligned() };
            if s == 0 {
                break;
            }
            if owns(s as usize) {
                // SAFETY: as in `cstr`.
                let n = unsafe { libc::strlen(s as *const libc::c_char) };
                touch(s as usize, n + 1);
            }
        }
    }

    /// Unknown length: the rest of the page under `p` and the next one.
    fn guess(&mut self, p: u64) {
        if p != 0 && owns(p as usize) {
            self.guessed = true;
            self.add(p, 8192 - (p & 4095));
        }
    }
}

/// What the kernel reads or writes for system call `nr` with arguments `a`.
#[allow(non_upper_case_globals)]
fn describe(nr: i64, a: &[u64; 6], b: &mut Bufs) {
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
            b.add(a[1], a[2].min(1 << 20) * 12);
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

/// Makes one trapped system call (the dispatcher `farmem::sys::sud` calls).
pub(crate) fn dispatch(nr: i64, a: &[u64; 6]) -> i64 {
    DISPATCHED.fetch_add(1, Relaxed);
    let mut b = Bufs::new();
    describe(nr, a, &mut b);
    if b.n == 0 {
        // SAFETY: the program's own system call, as it made it.
        return unsafe { syscall_raw(nr, *a) };
    }
    DISPATCHED_FAR.fetch_add(1, Relaxed);
    let limit = rt::rt().map_or(0, |r| r.pin_limit);
    let mut pins: [Option<Pin>; MAX_PINS] = Default::default();
    for (slot, &(p, l)) in pins.iter_mut().zip(&b.list[..b.n]) {
        *slot = Pin::new(p, l, limit);
    }
    let mut widen = 1usize;
    let mut tries = 0;
    loop {
        for &(p, l) in &b.list[..b.n] {
            touch(p, l);
        }
        // SAFETY: as above.
        let r = unsafe { syscall_raw(nr, *a) };
        if r != EFAULT || tries >= RETRIES {
            drop(pins);
            return r;
        }
        tries += 1;
        if b.guessed && widen < 256 {
            // Unknown structure sizes: reach further from every far pointer argument.
            widen *= 4;
            for &p in a {
                if p != 0 && owns(p as usize) {
                    let (base, len) = rt::heap_range();
                    let end = (base + len).min(p as usize + widen * 4096);
                    touch(p as usize, end - p as usize);
                }
            }
        }
    }
}

/// Installs the guard and turns it on for this (the main) thread.
pub(crate) fn start() -> Result<(), String> {
    farmem::sys::sud::install(dispatch).map_err(|e| {
        format!("cannot start the syscall guard (syscall user dispatch, Linux 5.11+): {e}; run with --no-syscall-guard or --fault-mode thread")
    })?;
    farmem::sys::sud::arm_this_thread()
        .map_err(|e| format!("cannot turn on the syscall guard: {e}"))
}
