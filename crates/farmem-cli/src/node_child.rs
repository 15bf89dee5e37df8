//! A memory node (`farmem serve`) started as a child process on loopback, for the
//! benchmarks that measure the remote tier: the node runs in its own process, as it
//! would on another machine, so its CPU time can be read from /proc.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `farmem serve` child.
#[derive(Debug)]
pub struct NodeChild {
    child: Child,
    addr: String,
    token_file: PathBuf,
    dir: PathBuf,
}

impl NodeChild {
    /// Starts `farmem serve` (this binary) on 127.0.0.1 with a fresh token and `capacity`
    /// bytes, and waits until it listens.
    pub fn start(capacity: u64) -> Result<NodeChild> {
        let dir = std::env::temp_dir().join(format!("farmem-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let token_file = dir.join("token");
        let mut token = [0u8; 16];
        getrandom_fill(&mut token)?;
        let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&token_file, &hex)?;
        let exe = std::env::current_exe().context("cannot find this program's own path")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--capacity"])
            .arg(capacity.to_string())
            .arg("--token-file")
            .arg(&token_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start `farmem serve`")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split([',', ' ']).next().unwrap_or("").to_string();
                    let _ = tx.send(Ok(addr));
                    sent = true;
                } else if !sent {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(addr)) if !addr.is_empty() => break addr,
                Ok(Ok(_)) => bail!("`farmem serve` printed a listening line without an address"),
                Ok(Err(line)) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "`farmem serve` did not start listening within 10 s; it said:\n{}",
                        said.join("\n")
                    );
                }
            }
        };
        Ok(NodeChild {
            child,
            addr,
            token_file,
            dir,
        })
    }

    /// `HOST:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The backend URI for it.
    pub fn uri(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The token file clients must present.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The node's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the node has used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .context("cannot read the node's /proc stat")?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 / hz)
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
