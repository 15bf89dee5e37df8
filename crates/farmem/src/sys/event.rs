//! Descriptors that carry events between threads and processes: the eventfd that stops
//! handler threads, polling, the pipe a forked child answers its parent on, and the
//! fork handlers' registration.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An owned non-blocking eventfd.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd, counter 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd with plain flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd {
            // SAFETY: a descriptor the kernel just gave us, owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes it readable for everyone who polls it.
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our own eventfd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, for [`wait_readable`].
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Blocks until at least one of `fds` is readable (or has an error or hang-up) and sets
/// `ready[i]` for each that is. An interrupted wait returns `Interrupted`.
pub fn wait_readable(fds: &[RawFd], ready: &mut [bool]) -> io::Result<()> {
    const MAX: usize = 4;
    assert!(fds.len() <= MAX && ready.len() >= fds.len());
    let mut p = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX];
    for (slot, &fd) in p.iter_mut().zip(fds) {
        slot.fd = fd;
        slot.events = libc::POLLIN;
    }
    // SAFETY: `p` holds `fds.len()` valid pollfd entries.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    for (r, slot) in ready.iter_mut().zip(&p[..fds.len()]) {
        *r = slot.revents != 0;
    }
    Ok(())
}

/// Waits up to `timeout_ms` for `fd` to become readable; returns whether it did.
pub fn wait_readable_for(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

/// A close-on-exec pipe as raw descriptors (read end, write end), for a handshake that
/// spans the three fork handlers (which share nothing but statics).
pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [-1; 2];
    // SAFETY: a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Blocks until one byte arrives on `fd` or its writers are gone (EINTR retried).
pub fn wait_byte(fd: RawFd) {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
}

/// Writes one byte to `fd` (best effort: the reader also wakes when the pipe closes).
pub fn send_byte(fd: RawFd) {
    // SAFETY: one byte from a constant.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

/// Closes a raw descriptor this process owns and no one else will use.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and drops every other use of the number.
    unsafe { libc::close(fd) };
}

/// Registers fork handlers (pthread_atfork).
pub fn at_fork(
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) -> io::Result<()> {
    // SAFETY: three extern "C" functions with no arguments, as pthread_atfork expects.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
