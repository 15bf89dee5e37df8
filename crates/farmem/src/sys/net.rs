//! TCP connections for the remote far tier, shaped for the fault path.
//!
//! Connecting goes through the standard library (rare, and never the common path). Moving
//! bytes does not: `sendmsg` and `recv` are made with the `syscall` instruction
//! ([`super::raw`]), so that under `farmem run` they skip the preload's socket wrappers,
//! allocate nothing and are safe in a signal handler. Every send and receive has a
//! deadline: the socket carries short kernel timeouts (`SO_RCVTIMEO`, `SO_SNDTIMEO`) and
//! the loops here give up once the caller's deadline has passed.
//!
//! A receive can busy-poll first: `recv(MSG_DONTWAIT)` in a loop until a given instant,
//! then a blocking `recv`. Which is better on the fault path is measured (DESIGN.md, "Far
//! tiers").

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

/// How long one blocking system call may sleep before the loops look at their deadline.
const WAKE: Duration = Duration::from_millis(100);

/// A connected TCP socket. Dropping it closes the descriptor and sends nothing else (a
/// forked child drops the parent's connections this way: the parent's copy stays open).
#[derive(Debug)]
pub struct Sock {
    fd: i32,
}

impl Sock {
    /// Connects to `addr` within `timeout`, with `TCP_NODELAY` on and close-on-exec.
    pub fn connect(addr: &SocketAddr, timeout: Duration) -> io::Result<Sock> {
        let s = TcpStream::connect_timeout(addr, timeout.max(Duration::from_millis(1)))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(WAKE))?;
        s.set_write_timeout(Some(WAKE))?;
        Ok(Sock {
            fd: s.into_raw_fd(),
        })
    }

    /// Sends `parts` back to back, in as many calls as the kernel needs, by `deadline`.
    pub fn send_all(&self, parts: &[&[u8]], deadline: Instant) -> io::Result<()> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 4];
        assert!(parts.len() <= iov.len(), "at most 4 parts");
        let (mut first, mut skip) = (0usize, 0usize);
        loop {
            while first < parts.len() && skip >= parts[first].len() {
                skip -= parts[first].len();
                first += 1;
            }
            if first == parts.len() {
                return Ok(());
            }
            let mut n = 0;
            for (i, p) in parts[first..].iter().enumerate() {
                let p = if i == 0 { &p[skip..] } else { p };
                iov[n] = libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                };
                n += 1;
            }
            // SAFETY: an all-zero msghdr is valid; the fields set below point at `iov`.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = n as _;
            // SAFETY: `msg` names `n` iovecs over the caller's live slices.
            let r = unsafe { super::raw::sendmsg(self.fd, &msg, libc::MSG_NOSIGNAL) };
            if r >= 0 {
                skip += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the node stopped taking data",
                        ));
                    }
                }
                _ => return Err(e),
            }
        }
    }

    /// Fills `buf` from the socket by `deadline`, spinning with non-blocking calls until
    /// `spin_until` before it sleeps. A connection that ends early is `UnexpectedEof`
    /// naming how much arrived; the deadline passing is `TimedOut`.
    pub fn recv_exact(
        &self,
        buf: &mut [u8],
        spin_until: Option<Instant>,
        deadline: Instant,
    ) -> io::Result<()> {
        let mut got = 0;
        let mut spin = spin_until;
        while got < buf.len() {
            let flags = if spin.is_some() {
                libc::MSG_DONTWAIT
            } else {
                libc::MSG_WAITALL
            };
            // SAFETY: the rest of `buf` is writable.
            let r = unsafe {
                super::raw::recv(self.fd, buf[got..].as_mut_ptr(), buf.len() - got, flags)
            };
            if r > 0 {
                got += r as usize;
                continue;
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the connection ended after {got} of {} bytes", buf.len()),
                ));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => {
                    if let Some(until) = spin {
                        if Instant::now() >= until {
                            spin = None;
                        } else {
                            std::hint::spin_loop();
                        }
                    } else if Instant::now() >= deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
                    }
                }
                _ => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once. Nothing is sent on it first: in a
        // forked child the parent still uses the connection.
        unsafe { super::raw::close(self.fd) };
    }
}
