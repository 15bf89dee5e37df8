//! System calls on buffers: the C library's entry points that hand the kernel memory
//! (read and write, their positional, vectored and socket variants, epoll, poll, the
//! sockopts, getrandom, the path calls and stat). Large reads and writes go in pieces
//! (`chunk`), so that each piece can be pinned within the budget.

use libc::{c_char, c_int, c_uint, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use super::{chunk, guarded, in_heap};
use farmem::pin::touch;

fn is_regular(fd: c_int) -> bool {
    // SAFETY: fstat into a local.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0
            && matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK)
    }
}

type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, libc::off_t) -> ssize_t;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, libc::off_t) -> ssize_t;

/// read(2).
///
/// # Safety
/// read's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(REAL, c"read", ReadFn);
    let b = buf as usize;
    if !in_heap(b, n) {
        // SAFETY: forwarded.
        return unsafe { f(fd, buf, n) };
    }
    let c = chunk();
    if n <= c {
        // SAFETY: forwarded.
        return guarded(&[(b, n)], || unsafe { f(fd, buf, n) });
    }
    let mut done = 0usize;
    let regular = is_regular(fd);
    while done < n {
        let len = c.min(n - done);
        let p = b + done;
        // SAFETY: a piece of the caller's buffer.
        let r = guarded(&[(p, len)], || unsafe { f(fd, p as *mut c_void, len) });
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

/// write(2).
///
/// # Safety
/// write's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(REAL, c"write", WriteFn);
    let b = buf as usize;
    if !in_heap(b, n) {
        // SAFETY: forwarded.
        return unsafe { f(fd, buf, n) };
    }
    let c = chunk();
    if n <= c {
        // SAFETY: forwarded.
        return guarded(&[(b, n)], || unsafe { f(fd, buf, n) });
    }
    let mut done = 0usize;
    while done < n {
        let len = c.min(n - done);
        let p = b + done;
        // SAFETY: a piece of the caller's buffer.
        let r = guarded(&[(p, len)], || unsafe { f(fd, p as *const c_void, len) });
        if r < 0 {
            return if done > 0 { done as ssize_t } else { r };
        }
        done += r as usize;
        if (r as usize) < len {
            break;
        }
    }
    done as ssize_t
}

macro_rules! positional {
    ($name:ident, $lit:literal, $fty:ty, $bty:ty) => {
        /// The positional read or write of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: $bty,
            n: size_t,
            off: libc::off_t,
        ) -> ssize_t {
            let f = real!(REAL, $lit, $fty);
            let b = buf as usize;
            let c = chunk();
            if !in_heap(b, n) || n <= c {
                // SAFETY: forwarded.
                return guarded(&[(b, n)], || unsafe { f(fd, buf, n, off) });
            }
            let mut done = 0usize;
            while done < n {
                let len = c.min(n - done);
                let p = b + done;
                // SAFETY: a piece of the caller's buffer.
                let r = guarded(&[(p, len)], || unsafe {
                    f(fd, p as $bty, len, off + done as libc::off_t)
                });
                if r < 0 {
                    return if done > 0 { done as ssize_t } else { r };
                }
                done += r as usize;
                if (r as usize) < len {
                    break;
                }
            }
            done as ssize_t
        }
    };
}
positional!(pread, c"pread", PreadFn, *mut c_void);
positional!(pread64, c"pread64", PreadFn, *mut c_void);
positional!(pwrite, c"pwrite", PwriteFn, *const c_void);
positional!(pwrite64, c"pwrite64", PwriteFn, *const c_void);

/// Collects the buffers of an iovec array (and the array itself).
fn iov_bufs(iov: *const iovec, n: c_int, out: &mut Vec<(usize, usize)>) {
    if iov.is_null() || n <= 0 {
        return;
    }
    out.push((iov as usize, n as usize * std::mem::size_of::<iovec>()));
    if in_heap(iov as usize, n as usize * std::mem::size_of::<iovec>()) {
        touch(iov as usize, n as usize * std::mem::size_of::<iovec>());
    }
    for i in 0..n as usize {
        // SAFETY: the caller's iovec array of `n` entries.
        let v = unsafe { &*iov.add(i) };
        out.push((v.iov_base as usize, v.iov_len));
    }
}

macro_rules! vectored {
    ($name:ident, $lit:literal) => {
        /// The vectored call of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t
            );
            let mut bufs = Vec::new();
            iov_bufs(iov, n, &mut bufs);
            // SAFETY: forwarded.
            guarded(&bufs, || unsafe { f(fd, iov, n) })
        }
    };
}
vectored!(readv, c"readv");
vectored!(writev, c"writev");

macro_rules! vectored_at {
    ($name:ident, $lit:literal) => {
        /// The positional vectored call of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            iov: *const iovec,
            n: c_int,
            off: libc::off_t,
        ) -> ssize_t {
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *const iovec, c_int, libc::off_t) -> ssize_t
            );
            let mut bufs = Vec::new();
            iov_bufs(iov, n, &mut bufs);
            // SAFETY: forwarded.
            guarded(&bufs, || unsafe { f(fd, iov, n, off) })
        }
    };
}
vectored_at!(preadv, c"preadv");
vectored_at!(pwritev, c"pwritev");
vectored_at!(preadv64, c"preadv64");
vectored_at!(pwritev64, c"pwritev64");

/// recv(2).
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
    guarded(&[(buf as usize, n)], || unsafe { f(fd, buf, n, flags) })
}

/// send(2).
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
    guarded(&[(buf as usize, n)], || unsafe { f(fd, buf, n, flags) })
}

fn addr_len(len: *const socklen_t) -> usize {
    if len.is_null() {
        0
    } else {
        // SAFETY: the caller's length slot.
        unsafe { *len as usize }
    }
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
    let bufs = [
        (buf as usize, n),
        (addr as usize, addr_len(alen)),
        (alen as usize, 4),
    ];
    // SAFETY: forwarded.
    guarded(&bufs, || unsafe { f(fd, buf, n, flags, addr, alen) })
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
    let bufs = [(buf as usize, n), (addr as usize, alen as usize)];
    // SAFETY: forwarded.
    guarded(&bufs, || unsafe { f(fd, buf, n, flags, addr, alen) })
}

fn msg_bufs(m: *const msghdr, out: &mut Vec<(usize, usize)>) {
    if m.is_null() {
        return;
    }
    out.push((m as usize, std::mem::size_of::<msghdr>()));
    if in_heap(m as usize, std::mem::size_of::<msghdr>()) {
        touch(m as usize, std::mem::size_of::<msghdr>());
    }
    // SAFETY: the caller's msghdr.
    let m = unsafe { &*m };
    out.push((m.msg_name as usize, m.msg_namelen as usize));
    out.push((m.msg_control as usize, m.msg_controllen));
    iov_bufs(m.msg_iov, m.msg_iovlen as c_int, out);
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
    let mut bufs = Vec::new();
    msg_bufs(m, &mut bufs);
    // SAFETY: forwarded.
    guarded(&bufs, || unsafe { f(fd, m, flags) })
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
    let mut bufs = Vec::new();
    msg_bufs(m, &mut bufs);
    // SAFETY: forwarded.
    guarded(&bufs, || unsafe { f(fd, m, flags) })
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
    let len = max.max(0) as usize * std::mem::size_of::<libc::epoll_event>();
    // SAFETY: forwarded.
    guarded(&[(ev as usize, len)], || unsafe { f(ep, ev, max, timeout) })
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
    let len = max.max(0) as usize * std::mem::size_of::<libc::epoll_event>();
    // SAFETY: forwarded.
    guarded(&[(ev as usize, len)], || unsafe {
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
    guarded(
        &[(ev as usize, std::mem::size_of::<libc::epoll_event>())],
        || unsafe { f(ep, op, fd, ev) },
    )
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
    let len = n as usize * std::mem::size_of::<libc::pollfd>();
    // SAFETY: forwarded.
    guarded(&[(fds as usize, len)], || unsafe { f(fds, n, timeout) })
}

macro_rules! sockaddr_in {
    ($name:ident, $lit:literal) => {
        /// The call of the same name (a socket address the kernel reads).
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int
            );
            // SAFETY: forwarded.
            guarded(&[(addr as usize, len as usize)], || unsafe {
                f(fd, addr, len)
            })
        }
    };
}
sockaddr_in!(connect, c"connect");
sockaddr_in!(bind, c"bind");

macro_rules! sockaddr_out {
    ($name:ident, $lit:literal) => {
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
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int
            );
            let bufs = [(addr as usize, addr_len(len)), (len as usize, 4)];
            // SAFETY: forwarded.
            guarded(&bufs, || unsafe { f(fd, addr, len) })
        }
    };
}
sockaddr_out!(accept, c"accept");
sockaddr_out!(getsockname, c"getsockname");
sockaddr_out!(getpeername, c"getpeername");

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
    let bufs = [(addr as usize, addr_len(len)), (len as usize, 4)];
    // SAFETY: forwarded.
    guarded(&bufs, || unsafe { f(fd, addr, len, flags) })
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
    let bufs = [(val as usize, addr_len(len)), (len as usize, 4)];
    // SAFETY: forwarded.
    guarded(&bufs, || unsafe { f(fd, level, name, val, len) })
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
    guarded(&[(val as usize, len as usize)], || unsafe {
        f(fd, level, name, val, len)
    })
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
    guarded(&[(buf as usize, n)], || unsafe { f(buf, n, flags) })
}

fn cstr_len(p: *const c_char) -> usize {
    if p.is_null() || !in_heap(p as usize, 1) {
        return 0;
    }
    // SAFETY: a NUL-terminated string the caller passes to the kernel.
    unsafe { libc::strlen(p) + 1 }
}

macro_rules! path_call {
    ($name:ident, $lit:literal, ($($a:ident: $t:ty),*)) => {
        /// The call of the same name (a path the kernel reads).
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char $(, $a: $t)*) -> c_int {
            let f = real!(REAL, $lit, unsafe extern "C" fn(*const c_char $(, $t)*) -> c_int);
            // SAFETY: forwarded.
            guarded(&[(path as usize, cstr_len(path))], || unsafe { f(path $(, $a)*) })
        }
    };
}
// open(2) is variadic; the mode is passed in the third argument register either way.
path_call!(open, c"open", (flags: c_int, mode: c_uint));
path_call!(open64, c"open64", (flags: c_int, mode: c_uint));
path_call!(unlink, c"unlink", ());
path_call!(access, c"access", (mode: c_int));
path_call!(mkdir, c"mkdir", (mode: libc::mode_t));

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
    guarded(&[(path as usize, cstr_len(path))], || unsafe {
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
    guarded(
        &[(a as usize, cstr_len(a)), (b as usize, cstr_len(b))],
        || unsafe { f(a, b) },
    )
}

macro_rules! stat_call {
    ($name:ident, $lit:literal) => {
        /// The stat call of the same name.
        ///
        /// # Safety
        /// The function's own contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, st: *mut libc::stat) -> c_int {
            let f = real!(
                REAL,
                $lit,
                unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int
            );
            let bufs = [
                (path as usize, cstr_len(path)),
                (st as usize, std::mem::size_of::<libc::stat>()),
            ];
            // SAFETY: forwarded.
            guarded(&bufs, || unsafe { f(path, st) })
        }
    };
}
stat_call!(stat, c"stat");
stat_call!(lstat, c"lstat");

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
    guarded(
        &[(st as usize, std::mem::size_of::<libc::stat>())],
        || unsafe { f(fd, st) },
    )
}
