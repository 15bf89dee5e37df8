//! System calls on buffers: the C library's entry points that hand the kernel memory
//! (read and write, their positional, vectored and socket variants, epoll, poll, the
//! sockopts, getrandom, the path calls and stat).
//!
//! Each wrapper stands for one system call: it passes that call's number and argument
//! registers to `guarded`, which finds the buffers in the one description
//! (`io::describe`) that the syscall guard reads too. Large reads and writes go in pieces
//! (`chunk`), so that each piece can be pinned within the budget.

use libc::{
    SYS_accept, SYS_accept4, SYS_access, SYS_bind, SYS_connect, SYS_epoll_ctl, SYS_epoll_pwait,
    SYS_epoll_wait, SYS_fstat, SYS_getpeername, SYS_getrandom, SYS_getsockname, SYS_getsockopt,
    SYS_lstat, SYS_mkdir, SYS_open, SYS_openat, SYS_poll, SYS_pread64, SYS_preadv, SYS_pwrite64,
    SYS_pwritev, SYS_read, SYS_readv, SYS_recvfrom, SYS_recvmsg, SYS_rename, SYS_sendmsg,
    SYS_sendto, SYS_setsockopt, SYS_stat, SYS_unlink, SYS_write, SYS_writev,
};
use libc::{c_char, c_int, c_long, c_uint, c_void, iovec, msghdr, size_t, sockaddr, socklen_t};
use libc::{off_t, ssize_t};

use super::{chunk, guarded, in_heap};

fn is_regular(fd: c_int) -> bool {
    // SAFETY: fstat into a local.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0
            && matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK)
    }
}

/// Makes read, write, pread64 or pwrite64 (`nr`; arguments fd, buffer, count and, for the
/// positional two, offset) with `call`, a far buffer larger than `chunk()` in pieces: each
/// piece is the same call on a part of the buffer (at the matching offset), guarded on
/// its own. Stops at the first short piece, and after one piece of a read from something
/// that is not a regular file or block device (a pipe or socket may have no more yet).
fn in_pieces(nr: c_long, a: [u64; 6], mut call: impl FnMut(&[u64; 6]) -> ssize_t) -> ssize_t {
    let (b, n) = (a[1] as usize, a[2] as usize);
    if !in_heap(b, n) {
        return call(&a);
    }
    let c = chunk();
    if n <= c {
        return guarded(nr, a, || call(&a));
    }
    let positional = nr == SYS_pread64 || nr == SYS_pwrite64;
    let regular = nr != SYS_read || is_regular(a[0] as c_int);
    let mut done = 0usize;
    while done < n {
        let len = c.min(n - done);
        let mut piece = a;
        piece[1] = (b + done) as u64;
        piece[2] = len as u64;
        if positional {
            piece[3] = (a[3] as off_t + done as off_t) as u64;
        }
        let r = guarded(nr, piece, || call(&piece));
        if r < 0 {
            return if done > 0 { done as ssize_t } else { r };
        }
        done += r as usize;
        if (r as usize) < len || !regular {
            break;
        }
    }
    done as ssize_t
}

type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t) -> ssize_t;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;

/// read(2).
///
/// # Safety
/// read's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(REAL, c"read", ReadFn);
    // SAFETY: forwarded, or a piece of it: part of the caller's buffer.
    in_pieces(SYS_read, args!(fd, buf, n), |a| unsafe {
        f(fd, a[1] as *mut c_void, a[2] as size_t)
    })
}

/// write(2).
///
/// # Safety
/// write's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(REAL, c"write", WriteFn);
    // SAFETY: forwarded, or a piece of it: part of the caller's buffer.
    in_pieces(SYS_write, args!(fd, buf, n), |a| unsafe {
        f(fd, a[1] as *const c_void, a[2] as size_t)
    })
}

macro_rules! positional {
    ($name:ident, $lit:literal, $nr:ident, $fty:ty, $bty:ty) => {
        /// The positional read or write of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, buf: $bty, n: size_t, off: off_t) -> ssize_t {
            let _sud = farmem::sys::sud::allow();
            let f = real!(REAL, $lit, $fty);
            // SAFETY: forwarded, or a piece of it: part of the caller's buffer, at the
            // matching offset.
            in_pieces($nr, args!(fd, buf, n, off), |a| unsafe {
                f(fd, a[1] as $bty, a[2] as size_t, a[3] as off_t)
            })
        }
    };
}
positional!(pread, c"pread", SYS_pread64, PreadFn, *mut c_void);
positional!(pread64, c"pread64", SYS_pread64, PreadFn, *mut c_void);
positional!(pwrite, c"pwrite", SYS_pwrite64, PwriteFn, *const c_void);
positional!(pwrite64, c"pwrite64", SYS_pwrite64, PwriteFn, *const c_void);

macro_rules! vectored {
    ($name:ident, $lit:literal, $nr:ident) => {
        /// The vectored call of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
            let _sud = farmem::sys::sud::allow();
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t
            );
            // SAFETY: forwarded.
            guarded($nr, args!(fd, iov, n), || unsafe { f(fd, iov, n) })
        }
    };
}
vectored!(readv, c"readv", SYS_readv);
vectored!(writev, c"writev", SYS_writev);

macro_rules! vectored_at {
    ($name:ident, $lit:literal, $nr:ident) => {
        /// The positional vectored call of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const iovec,
            n: c_int,
            off: off_t,
        ) -> ssize_t {
            let _sud = farmem::sys::sud::allow();
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t
            );
            // SAFETY: forwarded.
            guarded($nr, args!(fd, iov, n, off), || unsafe {
                f(fd, iov, n, off)
            })
        }
    };
}
vectored_at!(preadv, c"preadv", SYS_preadv);
vectored_at!(pwritev, c"pwritev", SYS_pwritev);
vectored_at!(preadv64, c"preadv64", SYS_preadv);
vectored_at!(pwritev64, c"pwritev64", SYS_pwritev);

/// recv(2), which is recvfrom(2) without an address.
///
/// # Safety
/// recv's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"recv",
        unsafe extern "C" fn(c_int, *mut c_void, size_t, c_int) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(SYS_recvfrom, args!(fd, buf, n, flags), || unsafe {
        f(fd, buf, n, flags)
    })
}

/// send(2), which is sendto(2) without an address.
///
/// # Safety
/// send's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"send",
        unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(SYS_sendto, args!(fd, buf, n, flags), || unsafe {
        f(fd, buf, n, flags)
    })
}

/// recvfrom(2).
///
/// # Safety
/// recvfrom's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"recvfrom",
        unsafe extern "C" fn(
            c_int,
            *mut c_void,
            size_t,
            c_int,
            *mut sockaddr,
            *mut socklen_t,
        ) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(
        SYS_recvfrom,
        args!(fd, buf, n, flags, addr, alen),
        || unsafe { f(fd, buf, n, flags, addr, alen) },
    )
}

/// sendto(2).
///
/// # Safety
/// sendto's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sendto",
        unsafe extern "C" fn(
            c_int,
            *const c_void,
            size_t,
            c_int,
            *const sockaddr,
            socklen_t,
        ) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(
        SYS_sendto,
        args!(fd, buf, n, flags, addr, alen),
        || unsafe { f(fd, buf, n, flags, addr, alen) },
    )
}

/// recvmsg(2).
///
/// # Safety
/// recvmsg's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, m: *mut msghdr, flags: c_int) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"recvmsg",
        unsafe extern "C" fn(c_int, *mut msghdr, c_int) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(SYS_recvmsg, args!(fd, m, flags), || unsafe {
        f(fd, m, flags)
    })
}

/// sendmsg(2).
///
/// # Safety
/// sendmsg's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, m: *const msghdr, flags: c_int) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sendmsg",
        unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(SYS_sendmsg, args!(fd, m, flags), || unsafe {
        f(fd, m, flags)
    })
}

/// epoll_wait(2).
///
/// # Safety
/// epoll_wait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"epoll_wait",
        unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_epoll_wait, args!(ep, ev, max, timeout), || unsafe {
        f(ep, ev, max, timeout)
    })
}

/// epoll_pwait(2).
///
/// # Safety
/// epoll_pwait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"epoll_pwait",
        unsafe extern "C" fn(
            c_int,
            *mut libc::epoll_event,
            c_int,
            c_int,
            *const libc::sigset_t,
        ) -> c_int
    );
    // The kernel's sigset is 8 bytes, the size the C library passes.
    let a = args!(ep, ev, max, timeout, mask, 8);
    // SAFETY: forwarded.
    guarded(SYS_epoll_pwait, a, || unsafe {
        f(ep, ev, max, timeout, mask)
    })
}

/// epoll_ctl(2).
///
/// # Safety
/// epoll_ctl's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(
    ep: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"epoll_ctl",
        unsafe extern "C" fn(c_int, c_int, c_int, *mut libc::epoll_event) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_epoll_ctl, args!(ep, op, fd, ev), || unsafe {
        f(ep, op, fd, ev)
    })
}

/// poll(2).
///
/// # Safety
/// poll's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"poll",
        unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_poll, args!(fds, n, timeout), || unsafe {
        f(fds, n, timeout)
    })
}

macro_rules! sockaddr_in {
    ($name:ident, $lit:literal, $nr:ident) => {
        /// The call of the same name (a socket address the kernel reads).
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
            let _sud = farmem::sys::sud::allow();
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int
            );
            // SAFETY: forwarded.
            guarded($nr, args!(fd, addr, len), || unsafe { f(fd, addr, len) })
        }
    };
}
sockaddr_in!(connect, c"connect", SYS_connect);
sockaddr_in!(bind, c"bind", SYS_bind);

macro_rules! sockaddr_out {
    ($name:ident, $lit:literal, $nr:ident) => {
        /// The call of the same name (a socket address the kernel writes).
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            addr: *mut sockaddr,
            len: *mut socklen_t,
        ) -> c_int {
            let _sud = farmem::sys::sud::allow();
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int
            );
            // SAFETY: forwarded.
            guarded($nr, args!(fd, addr, len), || unsafe { f(fd, addr, len) })
        }
    };
}
sockaddr_out!(accept, c"accept", SYS_accept);
sockaddr_out!(getsockname, c"getsockname", SYS_getsockname);
sockaddr_out!(getpeername, c"getpeername", SYS_getpeername);

/// accept4(2).
///
/// # Safety
/// accept4's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"accept4",
        unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_accept4, args!(fd, addr, len, flags), || unsafe {
        f(fd, addr, len, flags)
    })
}

/// getsockopt(2).
///
/// # Safety
/// getsockopt's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"getsockopt",
        unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int
    );
    // SAFETY: forwarded.
    guarded(
        SYS_getsockopt,
        args!(fd, level, name, val, len),
        || unsafe { f(fd, level, name, val, len) },
    )
}

/// setsockopt(2).
///
/// # Safety
/// setsockopt's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"setsockopt",
        unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int
    );
    // SAFETY: forwarded.
    guarded(
        SYS_setsockopt,
        args!(fd, level, name, val, len),
        || unsafe { f(fd, level, name, val, len) },
    )
}

/// getrandom(2).
///
/// # Safety
/// getrandom's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut c_void, n: size_t, flags: c_uint) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"getrandom",
        unsafe extern "C" fn(*mut c_void, size_t, c_uint) -> ssize_t
    );
    // SAFETY: forwarded.
    guarded(SYS_getrandom, args!(buf, n, flags), || unsafe {
        f(buf, n, flags)
    })
}

macro_rules! path_call {
    ($name:ident, $lit:literal, $nr:ident, ($($a:ident: $t:ty),*)) => {
        /// The call of the same name (a path the kernel reads).
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char $(, $a: $t)*) -> c_int {
            let _sud = farmem::sys::sud::allow();
            let f = real!(REAL, $lit, unsafe extern "C" fn(*const c_char $(, $t)*) -> c_int);
            // SAFETY: forwarded.
            guarded($nr, args!(path $(, $a)*), || unsafe { f(path $(, $a)*) })
        }
    };
}
// open(2) is variadic; the mode is passed in the third argument register either way.
path_call!(open, c"open", SYS_open, (flags: c_int, mode: c_uint));
path_call!(open64, c"open64", SYS_open, (flags: c_int, mode: c_uint));
path_call!(unlink, c"unlink", SYS_unlink, ());
path_call!(access, c"access", SYS_access, (mode: c_int));
path_call!(mkdir, c"mkdir", SYS_mkdir, (mode: libc::mode_t));

/// openat(2) (variadic: the mode is in the fourth argument register either way).
///
/// # Safety
/// openat's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dir: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"openat",
        unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_openat, args!(dir, path, flags, mode), || unsafe {
        f(dir, path, flags, mode)
    })
}

/// rename(2).
///
/// # Safety
/// rename's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(a: *const c_char, b: *const c_char) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"rename",
        unsafe extern "C" fn(*const c_char, *const c_char) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_rename, args!(a, b), || unsafe { f(a, b) })
}

macro_rules! stat_call {
    ($name:ident, $lit:literal, $nr:ident) => {
        /// The stat call of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, st: *mut libc::stat) -> c_int {
            let _sud = farmem::sys::sud::allow();
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int
            );
            // SAFETY: forwarded.
            guarded($nr, args!(path, st), || unsafe { f(path, st) })
        }
    };
}
stat_call!(stat, c"stat", SYS_stat);
stat_call!(lstat, c"lstat", SYS_lstat);

/// fstat(2).
///
/// # Safety
/// fstat's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, st: *mut libc::stat) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"fstat",
        unsafe extern "C" fn(c_int, *mut libc::stat) -> c_int
    );
    // SAFETY: forwarded.
    guarded(SYS_fstat, args!(fd, st), || unsafe { f(fd, st) })
}
