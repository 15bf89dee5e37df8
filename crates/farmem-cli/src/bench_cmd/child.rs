//! The processes `farmem bench-cmd` starts: each in its own process group (so that a time
//! limit or a server's stop reaches whatever it started), stdin from /dev/null, stdout and
//! stderr into one pipe that a thread drains, reaped with `wait4` for its rusage.
//!
//! A [`Running`] child is polled rather than waited for, so that a server and its client
//! can be watched at once.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one child did.
#[derive(Debug)]
pub(super) struct Exec {
    pub status: ExitStatus,
    pub wall: Duration,
    pub output: String,
    /// Killed by the time limit.
    pub timed_out: bool,
    pub max_rss_bytes: u64,
    pub major_faults: u64,
    pub minor_faults: u64,
    pub user_s: f64,
    pub sys_s: f64,
}

type Reaped = ((i32, libc::rusage), Instant);

/// A child started by [`Running::start`], until [`Running::finish`].
pub(super) struct Running {
    pid: libc::pid_t,
    start: Instant,
    rx: mpsc::Receiver<std::io::Result<Reaped>>,
    reaped: Option<Reaped>,
    drain: Option<JoinHandle<Vec<u8>>>,
    // Held so that its handles close only when the run is over; never waited through.
    _child: Child,
}

impl Running {
    /// Starts `cmd` through `spawn` (plainly, or into a memory cgroup) in a new process
    /// group, with the output pipe and the parent-death signal set up.
    pub fn start(
        mut cmd: Command,
        spawn: impl FnOnce(&mut Command) -> Result<Child>,
    ) -> Result<Self> {
        let (reader, writer) = std::io::pipe().context("create a pipe for the output")?;
        cmd.stdin(Stdio::null())
            .stdout(writer.try_clone().context("duplicate the output pipe")?)
            .stderr(writer)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // The child has its own process group, so a Ctrl-C at the terminal does not
                // reach it: have the kernel kill it if this process dies first.
                // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let child = spawn(&mut cmd)?;
        // The Command holds the pipe's write ends: close them, or the reader never sees EOF.
        drop(cmd);
        let pid = child.id() as libc::pid_t;
        let drain = std::thread::spawn(move || {
            let mut r = reader;
            let mut buf = Vec::new();
            // A read error only truncates the output.
            let _ = r.read_to_end(&mut buf);
            buf
        });
        let (tx, rx) = mpsc::channel();
        // The child is reaped here with wait4 (for its rusage), never through `child`.
        std::thread::spawn(move || {
            let _ = tx.send(wait4(pid).map(|w| (w, Instant::now())));
        });
        Ok(Self {
            pid,
            start,
            rx,
            reaped: None,
            drain: Some(drain),
            _child: child,
        })
    }

    /// Waits up to `d` for the child to exit; whether it has.
    pub fn wait_for(&mut self, d: Duration) -> Result<bool> {
        if self.reaped.is_some() {
            return Ok(true);
        }
        match self.rx.recv_timeout(d) {
            Ok(r) => {
                self.reaped = Some(r.with_context(|| format!("wait for process {}", self.pid))?);
                Ok(true)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost the waiter of {}", self.pid),
        }
    }

    /// Whether it has exited, without waiting.
    pub fn exited(&mut self) -> Result<bool> {
        self.wait_for(Duration::ZERO)
    }

    /// How it exited, once it has.
    pub fn status(&self) -> Option<ExitStatus> {
        self.reaped.as_ref().map(|r| ExitStatus::from_raw(r.0.0))
    }

    /// Seconds since it started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Sends `sig` to its whole process group.
    pub fn signal_group(&self, sig: libc::c_int) {
        // SAFETY: kill(2) touches no memory of ours; a negative pid names the process group
        // this child leads (started with `process_group(0)`); no-op if the group is gone.
        unsafe { libc::kill(-self.pid, sig) };
    }

    /// Waits for it to exit, killing its group after `timeout`; `tick` runs every `poll`.
    pub fn wait(
        mut self,
        timeout: Option<Duration>,
        poll: Duration,
        mut tick: impl FnMut(),
    ) -> Result<Exec> {
        let mut timed_out = false;
        while !self.wait_for(poll)? {
            tick();
            if let Some(t) = timeout
                && !timed_out
                && self.elapsed() >= t
            {
                self.signal_group(libc::SIGKILL);
                timed_out = true;
            }
        }
        self.finish(timed_out)
    }

    /// After it has exited (see [`Running::wait_for`]): kills what it left running in its
    /// group, which would hold the output pipe open, and collects its output and rusage.
    pub fn finish(mut self, timed_out: bool) -> Result<Exec> {
        let Some(((raw, ru), end)) = self.reaped else {
            bail!(
                "internal error: process {} collected before it exited",
                self.pid
            );
        };
        self.signal_group(libc::SIGKILL);
        let output = self
            .drain
            .take()
            .and_then(|d| d.join().ok())
            .unwrap_or_default();
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Ok(Exec {
            status: ExitStatus::from_raw(raw),
            wall: end - self.start,
            output: String::from_utf8_lossy(&output).into_owned(),
            timed_out,
            max_rss_bytes: (ru.ru_maxrss as u64) * 1024,
            major_faults: ru.ru_majflt as u64,
            minor_faults: ru.ru_minflt as u64,
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
        })
    }
}

impl Drop for Running {
    /// A child given up on (an error on the way) does not outlive the measurement.
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// Reaps `pid`, returning its raw wait status and resource usage.
fn wait4(pid: libc::pid_t) -> std::io::Result<(i32, libc::rusage)> {
    loop {
        let mut status = 0;
        // SAFETY: rusage is a plain C struct of integers, for which all zeros is valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to our own locals, live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
