//! System calls on far memory, and the anonymous-mmap family.
//!
//! In the in-thread fault mode the kernel cannot fault a far page in: a system call that
//! reads or writes a far buffer would fail with EFAULT. The C library's entry points that
//! pass buffers to the kernel are wrapped here: a buffer in the far heap is pinned (the
//! reclaimer leaves it mapped) and touched (faulted in) before the real call, and EFAULT
//! is retried after touching again. See DESIGN.md for what this covers and what it
//! cannot (system calls made directly, not through these entry points).
//!
//! Buffers outside the far heap cost one range check.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use libc::{c_char, c_int, c_uint, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::heap::owns;
use crate::rt;
use farmem::pin::{Pin, touch};

/// Most buffers one call guards (more are touched only).
const MAX_BUFS: usize = 8;
/// Retries of a call that still got EFAULT (a page evicted between touch and call).
const EFAULT_RETRIES: usize = 1000;

fn errno() -> c_int {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn in_heap(p: usize, len: usize) -> bool {
    len > 0 && (owns(p) || owns(p.saturating_add(len - 1)))
}

/// Pins and touches the far ones among `bufs`, then runs `call`, retrying on EFAULT.
#[inline]
fn guarded<R: Copy + PartialEq + From<i8>>(
    bufs: &[(usize, usize)],
    mut call: impl FnMut() -> R,
) -> R {
    if !bufs.iter().any(|&(p, l)| in_heap(p, l)) {
        return call();
    }
    guarded_slow(bufs, &mut call)
}

#[cold]
fn guarded_slow<R: Copy + PartialEq + From<i8>>(
    bufs: &[(usize, usize)],
    call: &mut dyn FnMut() -> R,
) -> R {
    let limit = rt::rt().map_or(0, |r| r.pin_limit);
    let mut pins: [Option<Pin>; MAX_BUFS] = Default::default();
    for (i, &(p, l)) in bufs.iter().enumerate() {
        if in_heap(p, l) && i < MAX_BUFS {
            pins[i] = Pin::new(p, l, limit);
        }
    }
    let mut tries = 0;
    loop {
        for &(p, l) in bufs {
            if in_heap(p, l) {
                touch(p, l);
            }
        }
        let r = call();
        if r == R::from(-1) && errno() == libc::EFAULT && tries < EFAULT_RETRIES {
            tries += 1;
            continue;
        }
        drop(pins);
        return r;
    }
}

/// The largest piece of a big read or write done at once (pinned within the budget).
fn chunk() -> usize {
    rt::rt().map_or(1 << 20, |r| (r.pin_limit / 4).clamp(16 << 10, 1 << 20))
}

fn is_regular(fd: c_int) -> bool {
    // SAFETY: fstat into a local.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0
            && matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK)
    }
}

macro_rules! real {
    ($slot:ident, $name:literal, $ty:ty) => {{
        static $slot: AtomicUsize = AtomicUsize::new(0);
        let mut f = $slot.load(Relaxed);
        if f == 0 {
            f = resolve($name);
            $slot.store(f, Relaxed);
        }
        // SAFETY: the next definition of this libc function, which has this type.
        unsafe { std::mem::transmute::<usize, $ty>(f) }
    }};
}

fn resolve(name: &std::ffi::CStr) -> usize {
    // SAFETY: dlsym with a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if f == 0 {
        rt::die(&format!(
            "cannot find the C library's {}",
            name.to_string_lossy()
        ));
    }
    f
}

/// Resolves the wrapped functions at start-up, so that no later call has to.
pub(crate) fn resolve_all() {
    // A sample that exercises the lazy path once; the rest resolve on first use.
    let _ = real!(
        R0,
        c"read",
        unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t
    );
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

/// fread(3): for large reads the C library reads straight into the caller's buffer.
///
/// # Safety
/// fread's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fread(
    buf: *mut c_void,
    size: size_t,
    n: size_t,
    fp: *mut libc::FILE,
) -> size_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"fread",
        unsafe extern "C" fn(*mut c_void, size_t, size_t, *mut libc::FILE) -> size_t
    );
    let total = size.saturating_mul(n);
    let b = buf as usize;
    if !in_heap(b, total) || total <= chunk() || size == 0 {
        let limit = rt::rt().map_or(0, |r| r.pin_limit);
        let _pin = in_heap(b, total).then(|| Pin::new(b, total, limit));
        if in_heap(b, total) {
            touch(b, total);
        }
        // SAFETY: forwarded.
        return unsafe { f(buf, size, n, fp) };
    }
    // SAFETY: pieces of the caller's buffer.
    by_items(b, size, n, |p, k| unsafe {
        f(p as *mut c_void, size, k, fp)
    })
}

/// Runs a stdio call in pieces of whole items (of `size` bytes, `n` in all, from `b`),
/// each piece pinned and touched; stops at the first short piece. Returns the items done.
fn by_items(b: usize, size: usize, n: usize, mut call: impl FnMut(usize, usize) -> usize) -> usize {
    let per = (chunk() / size).max(1);
    let limit = rt::rt().map_or(0, |r| r.pin_limit);
    let mut done = 0;
    while done < n {
        let k = per.min(n - done);
        let p = b + done * size;
        let _pin = Pin::new(p, k * size, limit);
        touch(p, k * size);
        let r = call(p, k);
        done += r;
        if r < k {
            break;
        }
    }
    done
}

/// fwrite(3): for large writes the C library writes straight from the caller's buffer.
///
/// # Safety
/// fwrite's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fwrite(
    buf: *const c_void,
    size: size_t,
    n: size_t,
    fp: *mut libc::FILE,
) -> size_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"fwrite",
        unsafe extern "C" fn(*const c_void, size_t, size_t, *mut libc::FILE) -> size_t
    );
    let total = size.saturating_mul(n);
    let b = buf as usize;
    if !in_heap(b, total) || size == 0 {
        // SAFETY: forwarded.
        return unsafe { f(buf, size, n, fp) };
    }
    // SAFETY: pieces of the caller's buffer.
    by_items(b, size, n, |p, k| unsafe {
        f(p as *const c_void, size, k, fp)
    })
}

// ---- futexes: pthread objects in far memory -------------------------------------------

fn pin_obj(p: usize, len: usize) -> Option<Pin> {
    if !in_heap(p, len) {
        return None;
    }
    let pin = Pin::new(p, len, rt::rt().map_or(0, |r| r.pin_limit));
    touch(p, len);
    pin
}

/// pthread_mutex_lock(3): the futex wait is the kernel's touch of the mutex word.
///
/// # Safety
/// pthread_mutex_lock's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_mutex_lock(m: *mut libc::pthread_mutex_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_mutex_lock",
        unsafe extern "C" fn(*mut libc::pthread_mutex_t) -> c_int
    );
    if !in_heap(m as usize, 1) {
        // SAFETY: forwarded.
        return unsafe { f(m) };
    }
    let t = real!(
        TRY,
        c"pthread_mutex_trylock",
        unsafe extern "C" fn(*mut libc::pthread_mutex_t) -> c_int
    );
    // SAFETY: forwarded.
    let r = unsafe { t(m) };
    if r != libc::EBUSY {
        return r;
    }
    let _pin = pin_obj(m as usize, std::mem::size_of::<libc::pthread_mutex_t>());
    // SAFETY: forwarded.
    unsafe { f(m) }
}

/// pthread_cond_wait(3).
///
/// # Safety
/// pthread_cond_wait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_cond_wait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_cond_wait",
        unsafe extern "C" fn(*mut libc::pthread_cond_t, *mut libc::pthread_mutex_t) -> c_int
    );
    let _a = pin_obj(c as usize, std::mem::size_of::<libc::pthread_cond_t>());
    let _b = pin_obj(m as usize, std::mem::size_of::<libc::pthread_mutex_t>());
    // SAFETY: forwarded.
    unsafe { f(c, m) }
}

/// pthread_cond_timedwait(3).
///
/// # Safety
/// pthread_cond_timedwait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_cond_timedwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    t: *const libc::timespec,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_cond_timedwait",
        unsafe extern "C" fn(
            *mut libc::pthread_cond_t,
            *mut libc::pthread_mutex_t,
            *const libc::timespec,
        ) -> c_int
    );
    let _a = pin_obj(c as usize, std::mem::size_of::<libc::pthread_cond_t>());
    let _b = pin_obj(m as usize, std::mem::size_of::<libc::pthread_mutex_t>());
    let _c = pin_obj(t as usize, std::mem::size_of::<libc::timespec>());
    // SAFETY: forwarded.
    unsafe { f(c, m, t) }
}

/// sem_wait(3).
///
/// # Safety
/// sem_wait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sem_wait(s: *mut libc::sem_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sem_wait",
        unsafe extern "C" fn(*mut libc::sem_t) -> c_int
    );
    let _a = pin_obj(s as usize, std::mem::size_of::<libc::sem_t>());
    // SAFETY: forwarded.
    unsafe { f(s) }
}

/// syscall(2), for futexes in far memory (C++ atomics' wait, hand-made locks).
///
/// # Safety
/// syscall's contract. Declared with six arguments after the number: the C function is
/// variadic, and on x86-64 the extra arguments sit where these are read from.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    n: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
    e: libc::c_long,
    g: libc::c_long,
) -> libc::c_long {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"syscall",
        unsafe extern "C" fn(
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
        ) -> libc::c_long
    );
    if n == libc::SYS_futex {
        let op = (b as c_int) & 0x7f;
        let mut bufs = vec![(a as usize, 4)];
        if matches!(
            op,
            libc::FUTEX_REQUEUE
                | libc::FUTEX_CMP_REQUEUE
                | libc::FUTEX_WAKE_OP
                | libc::FUTEX_CMP_REQUEUE_PI
        ) {
            bufs.push((e as usize, 4));
        }
        // SAFETY: forwarded.
        return guarded(&bufs, || unsafe { f(n, a, b, c, d, e, g) });
    }
    // SAFETY: forwarded.
    unsafe { f(n, a, b, c, d, e, g) }
}

// ---- anonymous memory ------------------------------------------------------------------

/// mmap(2): large anonymous private read-write mappings come from the far heap.
///
/// # Safety
/// mmap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"mmap",
        unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, libc::off_t) -> *mut c_void
    );
    if far_candidate(addr, len, prot, flags)
        && let Some(p) = crate::heap::mmap_alloc(len)
    {
        return p as *mut c_void;
    }
    // SAFETY: forwarded.
    unsafe { f(addr, len, prot, flags, fd, off) }
}

/// mmap64, the same as mmap on 64-bit systems.
///
/// # Safety
/// mmap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    // SAFETY: forwarded.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

fn far_candidate(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int) -> bool {
    let want = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let refuse = libc::MAP_SHARED
        | libc::MAP_FIXED
        | libc::MAP_FIXED_NOREPLACE
        | libc::MAP_GROWSDOWN
        | libc::MAP_HUGETLB
        | libc::MAP_STACK;
    rt::ready()
        && addr.is_null()
        && flags & want == want
        && flags & refuse == 0
        && prot == libc::PROT_READ | libc::PROT_WRITE
        && len >= rt::MMAP_THRESHOLD.load(Relaxed)
}

/// munmap(2).
///
/// # Safety
/// munmap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"munmap",
        unsafe extern "C" fn(*mut c_void, size_t) -> c_int
    );
    if owns(addr as usize) {
        if (addr as usize).is_multiple_of(4096) && crate::heap::mmap_free(addr as usize, len) {
            return 0;
        }
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    }
    // SAFETY: forwarded.
    unsafe { f(addr, len) }
}

/// mremap(2) (variadic; the new address is in the fifth argument register either way).
///
/// # Safety
/// mremap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"mremap",
        unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void
    );
    let a = old as usize;
    if !owns(a) {
        // SAFETY: forwarded.
        return unsafe { f(old, old_len, new_len, flags, new_addr) };
    }
    let fail = |e| {
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = e };
        libc::MAP_FAILED
    };
    let Some((start, blen)) = crate::heap::mmap_block(a) else {
        return fail(libc::EFAULT);
    };
    if flags & libc::MREMAP_FIXED != 0 || start != a {
        return fail(libc::EINVAL);
    }
    let new_len = new_len.next_multiple_of(4096);
    if new_len <= blen {
        if new_len < blen {
            crate::heap::mmap_free(a + new_len, blen - new_len);
        }
        return old;
    }
    if flags & libc::MREMAP_MAYMOVE == 0 {
        return fail(libc::ENOMEM);
    }
    let Some(q) = crate::heap::mmap_alloc(new_len) else {
        return fail(libc::ENOMEM);
    };
    // SAFETY: two distinct live blocks of the heap; copy the old contents.
    unsafe { std::ptr::copy_nonoverlapping(a as *const u8, q as *mut u8, old_len.min(blen)) };
    crate::heap::mmap_free(a, blen);
    q as *mut c_void
}

/// madvise(2): in the far heap, DONTNEED and FREE discard (the pages read as zeros, as
/// for anonymous memory) and WILLNEED prefetches; other advice is accepted and ignored.
///
/// # Safety
/// madvise's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"madvise",
        unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int
    );
    let a = addr as usize;
    if !owns(a) {
        // SAFETY: forwarded.
        return unsafe { f(addr, len, advice) };
    }
    let Some(rt) = rt::rt() else { return 0 };
    let base = rt.region.as_ptr() as usize;
    let len = len.next_multiple_of(4096).min(base + rt.region.len() - a);
    match advice {
        libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE => rt::discard(a, len),
        libc::MADV_WILLNEED => {
            let _ = rt.region.prefetch(a - base, len);
        }
        _ => {}
    }
    0
}

// ---- signals: farmem's SIGBUS handler stays, and SIGBUS is never blocked ----------------

static SIG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// sigaction(2): a program's SIGBUS handler becomes the one farmem falls back to for
/// addresses that are not far memory; SIGBUS is taken out of every handler's mask (a
/// handler that touched far memory with SIGBUS blocked would kill the process).
///
/// # Safety
/// sigaction's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sigaction",
        unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int
    );
    let ours = rt::ready() && farmem::sys::signal::installed();
    let guard = rt::GUARD_ON.load(Relaxed);
    if sig == libc::SIGSYS && guard {
        // The syscall guard's handler stays; the program's gets the SIGSYS it does not
        // raise (seccomp's).
        let _g = SIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let (h, fl) = if act.is_null() {
            let cur = farmem::sys::sud::replace_program_sigsys(0, 0);
            farmem::sys::sud::replace_program_sigsys(cur.0, cur.1);
            cur
        } else {
            // SAFETY: the caller's valid sigaction.
            let a = unsafe { &*act };
            farmem::sys::sud::replace_program_sigsys(a.sa_sigaction, a.sa_flags as usize)
        };
        if !old.is_null() {
            // SAFETY: the caller's result slot; a zeroed sigaction is valid.
            unsafe {
                *old = std::mem::zeroed();
                (*old).sa_sigaction = h;
                (*old).sa_flags = fl as c_int;
            }
        }
        return 0;
    }
    if sig == libc::SIGBUS && ours {
        let _g = SIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if act.is_null() {
            // SAFETY: read the fallback without changing it (write it back unchanged).
            unsafe {
                let mut cur: libc::sigaction = std::mem::zeroed();
                cur.sa_sigaction = libc::SIG_DFL;
                let prev = farmem::sys::signal::replace_previous(&cur);
                farmem::sys::signal::replace_previous(&prev);
                if !old.is_null() {
                    *old = prev;
                }
            }
            return 0;
        }
        // SAFETY: the caller's valid sigaction.
        let prev = unsafe { farmem::sys::signal::replace_previous(&*act) };
        if !old.is_null() {
            // SAFETY: the caller's result slot.
            unsafe { *old = prev };
        }
        return 0;
    }
    if guard && sig != libc::SIGBUS {
        // SAFETY: the caller's valid structures, forwarded through our trampoline.
        return unsafe { sigaction_guarded(f, sig, act, old) };
    }
    if act.is_null() || !ours {
        // SAFETY: forwarded.
        return unsafe { f(sig, act, old) };
    }
    // SAFETY: the caller's valid sigaction, copied.
    let mut a = unsafe { *act };
    // SAFETY: a valid sigset inside our copy.
    unsafe { libc::sigdelset(&mut a.sa_mask, libc::SIGBUS) };
    // SAFETY: forwarded with our copy.
    unsafe { f(sig, &a, old) }
}

/// The program's handlers, per signal, that run behind `guarded_handler`: (handler, flags).
static PROGRAM_HANDLERS: [(AtomicUsize, AtomicUsize); 65] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 65];

/// Every handler the program installs while the syscall guard is on runs behind this one,
/// which guards the thread for the handler's duration: a signal can arrive while the
/// thread is inside farmem (the selector open), for instance right after a `kill` farmem
/// made for it, and the handler's own system calls must still be guarded.
extern "C" fn guarded_handler(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let Some(slot) = PROGRAM_HANDLERS.get(sig as usize) else {
        return;
    };
    let (h, fl) = (slot.0.load(Relaxed), slot.1.load(Relaxed));
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        return;
    }
    let _program = farmem::sys::sud::program_context();
    if fl & libc::SA_SIGINFO as usize != 0 {
        // SAFETY: the program installed it with SA_SIGINFO, so it has this type.
        let g: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(h) };
        g(sig, info, ctx);
    } else {
        // SAFETY: a plain handler.
        let g: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        g(sig);
    }
}

/// sigaction with the syscall guard on: handlers go behind `guarded_handler`, SIGBUS and
/// SIGSYS are never in their masks, and what is reported back is the program's own.
///
/// # Safety
/// sigaction's contract; `f` is the C library's sigaction.
unsafe fn sigaction_guarded(
    f: unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int,
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let Some(slot) = PROGRAM_HANDLERS.get(sig as usize) else {
        // SAFETY: forwarded (the C library refuses the bad signal number).
        return unsafe { f(sig, act, old) };
    };
    let _g = SIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = (slot.0.load(Relaxed), slot.1.load(Relaxed));
    let rc = if act.is_null() {
        // SAFETY: forwarded.
        unsafe { f(sig, act, old) }
    } else {
        // SAFETY: the caller's valid sigaction, copied.
        let mut a = unsafe { *act };
        // SAFETY: valid sigsets inside our copy.
        unsafe {
            libc::sigdelset(&mut a.sa_mask, libc::SIGBUS);
            libc::sigdelset(&mut a.sa_mask, libc::SIGSYS);
        }
        let h = a.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            slot.0.store(h, Relaxed);
            slot.1.store(a.sa_flags as usize, Relaxed);
            a.sa_sigaction = guarded_handler as *const () as usize;
            a.sa_flags |= libc::SA_SIGINFO;
        }
        // SAFETY: forwarded with our copy.
        let rc = unsafe { f(sig, &a, old) };
        if rc == 0 {
            // The handler returns through farmem's restorer: no trap on its way out.
            farmem::sys::sud::adopt_restorer(sig);
        } else {
            slot.0.store(before.0, Relaxed);
            slot.1.store(before.1, Relaxed);
        }
        rc
    };
    if rc == 0 && !old.is_null() {
        // SAFETY: the caller's result slot, filled in by the C library.
        let o = unsafe { &mut *old };
        if o.sa_sigaction == guarded_handler as *const () as usize {
            o.sa_sigaction = before.0;
            o.sa_flags = before.1 as c_int;
        }
    }
    rc
}

/// signal(2), for SIGBUS (other signals pass through).
///
/// # Safety
/// signal's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"signal",
        unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t
    );
    let route = if rt::GUARD_ON.load(Relaxed) {
        true
    } else {
        sig == libc::SIGBUS && rt::ready() && farmem::sys::signal::installed()
    };
    if !route || h == libc::SIG_ERR {
        // SAFETY: forwarded.
        return unsafe { f(sig, h) };
    }
    // SAFETY: a zeroed sigaction is valid; filled in as signal(2) would.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    a.sa_sigaction = h;
    a.sa_flags = libc::SA_RESTART;
    // SAFETY: a zeroed sigaction for the result.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: our own valid structures.
    unsafe { sigaction(sig, &a, &mut old) };
    old.sa_sigaction
}

fn unblock_bus(
    how: c_int,
    set: *const libc::sigset_t,
    copy: &mut libc::sigset_t,
) -> *const libc::sigset_t {
    if set.is_null() || how == libc::SIG_UNBLOCK || !rt::ready() {
        return set;
    }
    // SAFETY: the caller's valid sigset, copied.
    *copy = unsafe { *set };
    // SAFETY: a valid sigset.
    unsafe { libc::sigdelset(copy, libc::SIGBUS) };
    if rt::GUARD_ON.load(Relaxed) {
        // SAFETY: a valid sigset.
        unsafe { libc::sigdelset(copy, libc::SIGSYS) };
    }
    copy
}

/// sigprocmask(2): SIGBUS is never blocked (far-memory faults arrive as SIGBUS).
///
/// # Safety
/// sigprocmask's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sigprocmask",
        unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int
    );
    // SAFETY: a zeroed sigset is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    let set = unblock_bus(how, set, &mut copy);
    // SAFETY: forwarded.
    unsafe { f(how, set, old) }
}

/// pthread_sigmask(3): as sigprocmask.
///
/// # Safety
/// pthread_sigmask's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_sigmask",
        unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int
    );
    // SAFETY: a zeroed sigset is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    let set = unblock_bus(how, set, &mut copy);
    // SAFETY: forwarded.
    unsafe { f(how, set, old) }
}

// ---- threads: a thread the guarded program starts is guarded too -------------------

struct Start {
    f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
}

extern "C" fn guarded_start(p: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `p` is the Box that `pthread_create` leaked for this thread.
    let s = unsafe { Box::from_raw(p.cast::<Start>()) };
    // The kernel does not hand syscall user dispatch on to a new thread.
    let _ = farmem::sys::sud::arm_this_thread();
    (s.f)(s.arg)
}

/// pthread_create(3): a thread the guarded program starts is guarded too (farmem's own
/// threads, started from inside farmem, are not).
///
/// # Safety
/// pthread_create's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_create(
    t: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    let program = farmem::sys::sud::blocking();
    let _sud = farmem::sys::sud::allow();
    let real = real!(
        REAL,
        c"pthread_create",
        unsafe extern "C" fn(
            *mut libc::pthread_t,
            *const libc::pthread_attr_t,
            extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
            *mut libc::c_void,
        ) -> libc::c_int
    );
    if !program {
        // SAFETY: forwarded.
        return unsafe { real(t, attr, f, arg) };
    }
    let s = Box::into_raw(Box::new(Start { f, arg }));
    // SAFETY: forwarded, with our start routine and its leaked Box.
    let rc = unsafe { real(t, attr, guarded_start, s.cast()) };
    if rc != 0 {
        // SAFETY: the thread was not created; the Box is still ours.
        drop(unsafe { Box::from_raw(s) });
    }
    rc
}
