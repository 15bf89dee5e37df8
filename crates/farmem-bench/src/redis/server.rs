//! Starting and stopping `redis-server`: on a free loopback port, in a directory of its
//! own, optionally behind a wrapper command (`farmem run --local-mem B --backend URI --`)
//! and optionally inside the Linux-swap baseline's memory cgroup.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::client::Client;
use super::{RDB_FILE, RedisError};
use crate::linux_swap::SwapBaseline;

/// How much of the server's output is kept for error messages, bytes.
const LOG_KEEP: usize = 32 << 10;
/// Lines of the server's output quoted in an error.
const LOG_LINES: usize = 25;
/// Attempts at a free port before giving up (another process may take the one chosen).
const PORT_ATTEMPTS: usize = 5;
/// What a server that lost its port says (Redis's own words), retried on another port.
const PORT_TAKEN: &str = "Address already in use";

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `redis-server` executable (looked up in `PATH` if it has no slash).
    pub program: PathBuf,
    /// A command to put in front of it, e.g. `["farmem", "run", "--local-mem", "268435456",
    /// "--backend", "compressed", "--"]`; empty for none.
    pub wrapper: Vec<String>,
    /// The working directory for the dump (`--dir`); `None` for a fresh temporary
    /// directory that the server owns (see [`Stopped::dir`]).
    pub dir: Option<PathBuf>,
    /// More `redis-server` arguments, after the standard ones.
    pub extra_args: Vec<String>,
    /// How long to wait for the first `PONG` (loading a dump counts).
    pub start_timeout: Duration,
    /// How long `SHUTDOWN NOSAVE` may take before the server is killed.
    pub stop_timeout: Duration,
    /// The read/write timeout of clients made by [`RedisServer::client`].
    pub client_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            program: "redis-server".into(),
            wrapper: Vec::new(),
            dir: None,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            client_timeout: Duration::from_secs(60),
        }
    }
}

impl ServerConfig {
    /// The arguments the server gets for `port` and `dir`: loopback only, no persistence
    /// unless asked (`--save ""`, no AOF), the dump at `dir/dump.rdb`, one I/O thread,
    /// in the foreground.
    pub fn server_args(&self, port: u16, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(dir.as_os_str().to_owned());
        for a in [
            "--dbfilename",
            RDB_FILE,
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--io-threads",
            "1",
        ] {
            args.push(a.into());
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }

    /// The command line for `port` and `dir`, wrapper first.
    pub fn command(&self, port: u16, dir: &Path) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(self.server_args(port, dir));
        cmd
    }
}

/// A directory under the system's temporary directory, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last [`LOG_KEEP`] bytes of a process's stdout and stderr, interleaved as they came.
#[derive(Debug, Default)]
struct LogTail {
    buf: Mutex<VecDeque<u8>>,
}

impl LogTail {
    fn push(&self, bytes: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        b.extend(bytes);
        let excess = b.len().saturating_sub(LOG_KEEP);
        b.drain(..excess);
    }

    fn text(&self) -> String {
        let b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let (x, y) = b.as_slices();
        let mut v = x.to_vec();
        v.extend_from_slice(y);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// The last `n` lines.
    fn tail(&self, n: usize) -> String {
        let t = self.text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn drain(mut r: impl Read + Send + 'static, log: Arc<LogTail>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => log.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
}

/// A running `redis-server`, killed (and its temporary directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    owned_dir: Option<TempDir>,
    log: Arc<LogTail>,
    command: String,
    pid: u32,
    stop_timeout: Duration,
    client_timeout: Duration,
}

/// What a stopped server left.
#[derive(Debug)]
pub struct Stopped {
    /// How the process exited.
    pub status: ExitStatus,
    /// Whether it had to be killed (it did not exit after `SHUTDOWN NOSAVE` in time).
    pub killed: bool,
    /// The end of its output.
    pub log: String,
    /// Its temporary directory, if it owned one: the dump is there until this drops.
    pub dir: Option<TempDir>,
}

impl RedisServer {
    /// Starts a server as `config` says and waits until it answers `PING`.
    ///
    /// The server gets `SIGKILL` if the thread that started it exits first
    /// (`PR_SET_PDEATHSIG`), so an interrupted benchmark leaves no server behind.
    pub fn start(config: &ServerConfig) -> Result<Self, RedisError> {
        Self::start_with(config, &mut |cmd| cmd.spawn().map_err(|e| e.to_string()))
    }

    /// As [`RedisServer::start`], inside the baseline's memory cgroup (the process joins it
    /// before exec, so every page it touches is charged there).
    pub fn start_in(config: &ServerConfig, baseline: &SwapBaseline) -> Result<Self, RedisError> {
        Self::start_with(config, &mut |cmd| {
            baseline.spawn(cmd).map_err(|e| e.to_string())
        })
    }

    fn start_with(
        config: &ServerConfig,
        spawn: &mut dyn FnMut(&mut Command) -> Result<Child, String>,
    ) -> Result<Self, RedisError> {
        let (dir, owned_dir) = match &config.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = TempDir::new("farmem-redis").map_err(|e| RedisError::Start {
                    command: config.program.display().to_string(),
                    detail: format!(
                        "could not create a temporary directory in {}: {e}",
                        std::env::temp_dir().display()
                    ),
                    log: String::new(),
                })?;
                (t.path().to_owned(), Some(t))
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port().map_err(|e| RedisError::Start {
                command: config.program.display().to_string(),
                detail: format!("could not find a free loopback port: {e}"),
                log: String::new(),
            })?;
            match Self::try_start(config, spawn, port, &dir) {
                Ok((child, log, command, pid)) => {
                    return Ok(Self {
                        child: Some(child),
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        dir,
                        owned_dir,
                        log,
                        command,
                        pid,
                        stop_timeout: config.stop_timeout,
                        client_timeout: config.client_timeout,
                    });
                }
                Err(e @ RedisError::Start { .. })
                    if attempt < PORT_ATTEMPTS && e.to_string().contains(PORT_TAKEN) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(
        config: &ServerConfig,
        spawn: &mut dyn FnMut(&mut Command) -> Result<Child, String>,
        port: u16,
        dir: &Path,
    ) -> Result<(Child, Arc<LogTail>, String, u32), RedisError> {
        let mut cmd = config.command(port, dir);
        let command = command_line(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start_error = |detail: String, log: &LogTail| RedisError::Start {
            command: command.clone(),
            detail,
            log: log.tail(LOG_LINES),
        };
        let log = Arc::new(LogTail::default());
        let mut child = spawn(&mut cmd).map_err(|e| {
            start_error(
                format!(
                    "could not spawn it: {e} (is redis-server installed? `apt-get install -y redis-server`)"
                ),
                &log,
            )
        })?;
        if let Some(o) = child.stdout.take() {
            drain(o, log.clone());
        }
        if let Some(e) = child.stderr.take() {
            drain(e, log.clone());
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + config.start_timeout;
        let mut last;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    // Let the readers catch the last words.
                    thread::sleep(Duration::from_millis(50));
                    return Err(start_error(
                        format!("it exited ({status}) before answering PING"),
                        &log,
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(start_error(format!("could not wait for it: {e}"), &log));
                }
            }
            let wait = Duration::from_secs(2).min(config.client_timeout);
            match Client::connect(addr, wait).and_then(|mut c| {
                c.ping()?;
                server_pid(&mut c)
            }) {
                // Another server may hold the port (ours then fails to bind): only a
                // server that is our child, or its descendant under a wrapper, counts.
                Ok(pid) if is_descendant(pid, child.id()) => {
                    return Ok((child, log, command, pid));
                }
                Ok(pid) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(start_error(
                        format!(
                            "{PORT_TAKEN}: port {port} is served by another process, pid {pid}"
                        ),
                        &log,
                    ));
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(start_error(
                    format!(
                        "it did not answer PING within {:?} (last attempt: {last})",
                        config.start_timeout
                    ),
                    &log,
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its `--dir`, where `BGSAVE` writes [`RDB_FILE`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The server's own pid (from `INFO server`: with a wrapper that execs, the same as the
    /// child's; with one that forks, the real server's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A new connection with the configured timeout.
    pub fn client(&self) -> Result<Client, RedisError> {
        Client::connect(self.addr, self.client_timeout)
    }

    /// Whether the process is still running; `Some(status)` once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of its output (Redis logs to stdout; a wrapper may use stderr).
    pub fn log_tail(&self) -> String {
        self.log.tail(LOG_LINES)
    }

    /// Its peak resident set (`VmHWM`), if the process can be read.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmHWM").map(|k| k * 1024)
    }

    /// Its current resident set (`VmRSS`), if the process can be read.
    pub fn rss_bytes(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS").map(|k| k * 1024)
    }

    /// `SHUTDOWN NOSAVE`, then `SIGKILL` if it has not exited within the stop timeout.
    pub fn stop(mut self) -> Result<Stopped, RedisError> {
        let Some(mut child) = self.child.take() else {
            return Err(RedisError::Usage("the server was already stopped".into()));
        };
        let mut killed = false;
        let running = matches!(child.try_wait(), Ok(None));
        if running {
            // A server that cannot be reached or refuses is killed below.
            let _ = Client::connect(self.addr, Duration::from_secs(2))
                .and_then(|mut c| c.shutdown_nosave());
        }
        let deadline = Instant::now() + self.stop_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    killed = true;
                    let _ = child.kill();
                    break wait(&mut child, &self.command)?;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RedisError::Process {
                        what: format!("wait for {}", self.command),
                        source: e,
                    });
                }
            }
        };
        thread::sleep(Duration::from_millis(20));
        Ok(Stopped {
            status,
            killed,
            log: self.log.tail(LOG_LINES),
            dir: self.owned_dir.take(),
        })
    }
}

/// `INFO server`'s `process_id`.
fn server_pid(c: &mut Client) -> Result<u32, RedisError> {
    let info = c.info_map("server")?;
    info.get("process_id")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| RedisError::Unexpected {
            what: "INFO server".into(),
            got: format!("no process_id among {} fields", info.len()),
            expected: "a process_id field",
        })
}

/// Whether `pid` is `ancestor` or a process below it (following `PPid` a few levels).
fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    for _ in 0..8 {
        if p == ancestor {
            return true;
        }
        match proc_status_number(p, "PPid") {
            Some(pp) if pp > 1 => p = pp as u32,
            _ => return false,
        }
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait(child: &mut Child, command: &str) -> Result<ExitStatus, RedisError> {
    child.wait().map_err(|source| RedisError::Process {
        what: format!("wait for {command}"),
        source,
    })
}

/// A loopback port nobody listens on right now.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        parts.push(if a.is_empty() || a.contains(' ') {
            format!("{a:?}")
        } else {
            a.into_owned()
        });
    }
    parts.join(" ")
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// A numeric field of `/proc/<pid>/status` without a unit (`PPid`).
fn proc_status_number(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let mut c = ServerConfig::default();
        let cmd = c.command(6400, Path::new("/tmp/x"));
        let line = command_line(&cmd);
        assert_eq!(
            line,
            "redis-server --port 6400 --bind 127.0.0.1 --save \"\" --appendonly no --dir /tmp/x --dbfilename dump.rdb --protected-mode no --daemonize no --io-threads 1"
        );
        c.wrapper = [
            "farmem",
            "run",
            "--local-mem",
            "4096",
            "--backend",
            "mem",
            "--",
        ]
        .map(String::from)
        .to_vec();
        c.extra_args = vec!["--maxclients".into(), "64".into()];
        let line = command_line(&c.command(1, Path::new("/d")));
        assert!(
            line.starts_with("farmem run --local-mem 4096 --backend mem -- redis-server --port 1 "),
            "{line}"
        );
        assert!(line.ends_with("--io-threads 1 --maxclients 64"), "{line}");
    }

    #[test]
    fn temp_dirs_are_removed() {
        let t = TempDir::new("farmem-redis-test").unwrap();
        let p = t.path().to_owned();
        std::fs::write(p.join("f"), b"x").unwrap();
        drop(t);
        assert!(!p.exists());
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let l = LogTail::default();
        for i in 0..10_000 {
            l.push(format!("line {i}\n").as_bytes());
        }
        assert!(l.text().len() <= LOG_KEEP);
        assert_eq!(l.tail(2), "line 9998\nline 9999");
    }

    #[test]
    fn proc_status_of_self() {
        let rss = proc_status_kib(std::process::id(), "VmHWM").unwrap();
        assert!(rss > 0);
        assert_eq!(proc_status_kib(std::process::id(), "NoSuchField"), None);
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let c = ServerConfig {
            program: "/nonexistent/redis-server".into(),
            ..ServerConfig::default()
        };
        let e = RedisServer::start(&c).unwrap_err().to_string();
        assert!(
            e.contains("could not spawn") && e.contains("/nonexistent/redis-server"),
            "{e}"
        );
    }
}
