//! Live control of a running engine over a Unix socket: `farmem vm --control PATH` and
//! `farmem run --control PATH` serve one, `farmem ctl PATH ...` talks to it.
//!
//! The protocol is one request line per connection and one answer:
//!
//! ```text
//! budget                 -> ok\n<bytes>\n
//! budget <bytes>         -> ok\n<old bytes> <new bytes>\n   (shrinking evicts first)
//! stats                  -> ok\n<the --stats summary>
//! stats json             -> ok\n<one JSON object>\n
//! stats prometheus       -> ok\n<Prometheus text format>
//! prefetch               -> ok\n<name>\n
//! prefetch <name>        -> ok\n<old> <new>\n
//! anything wrong         -> error: <one line>\n
//! ```
//!
//! Sizes on the wire are plain byte counts; `farmem ctl` reads K/M/G suffixes. The socket
//! is made readable and writable by its owner only: whoever can connect can change the
//! budget and read the statistics.

use crate::{Engine, Error, PrefetchKind};
use std::io::{BufRead, BufReader, Write};
use std::ops::Deref;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

/// How long a client may take to send its line, or to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line.
const MAX_LINE: u64 = 256;

/// A control socket being served by a thread of its own, until dropped (which stops the
/// thread and removes the socket).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Binds a socket at `path` and serves `engine` on it. An existing socket that
    /// nobody serves any more is replaced; a live one, or a file that is not a socket,
    /// is an error.
    pub fn start<E>(path: &Path, engine: E) -> Result<ControlServer, Error>
    where
        E: Deref<Target = Engine> + Send + 'static,
    {
        check_free(path)?;
        let bad = |what: String| {
            Error::InvalidArgument(format!("control socket {}: {what}", path.display()))
        };
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path)
                .map_err(|e| bad(format!("cannot remove the stale socket: {e}")))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| bad(format!("cannot listen: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| bad(format!("cannot make it private: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("farmem-control".into())
                .spawn(move || serve(listener, &engine, &stop))
                .map_err(|e| Error::os("spawn the control thread", e))?
        };
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the server running for the rest of the process's life (its socket is
    /// removed by [`remove_socket`] at exit, or by the next server at the same path).
    pub fn detach(mut self) {
        self.thread.take();
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.store(true, SeqCst);
        // Wakes the accept; the thread sees `stop` and returns.
        let _ = UnixStream::connect(&self.path);
        let _ = t.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks that a server could start at `path`: nothing there, or a stale socket that
/// nobody serves (which `ControlServer::start` replaces), in a directory that exists.
pub fn check_free(path: &Path) -> Result<(), Error> {
    let bad =
        |what: &str| Error::InvalidArgument(format!("control socket {}: {what}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            Err(bad("exists and is not a socket; choose another path"))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => Err(bad("another program is serving it")),
        Ok(_) => Ok(()),
        Err(_) => match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) if !d.is_dir() => Err(bad("its directory does not exist")),
            _ => Ok(()),
        },
    }
}

/// Removes a detached server's socket (at the process's exit).
pub fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn serve(listener: UnixListener, engine: &Engine, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut line = String::new();
        let answer = match BufReader::new(std::io::Read::take(&conn, MAX_LINE)).read_line(&mut line)
        {
            Ok(_) => match answer(engine, line.trim()) {
                Ok(body) => format!("ok\n{body}"),
                Err(e) => format!("error: {e}\n"),
            },
            Err(e) => format!("error: could not read the request: {e}\n"),
        };
        let _ = conn.write_all(answer.as_bytes());
    }
}

const REQUESTS: &str = "budget [BYTES], stats [json|prometheus], prefetch [NAME]";

/// Carries out one request.
fn answer(engine: &Engine, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["budget"] => Ok(format!("{}\n", engine.budget())),
        ["budget", bytes] => {
            let new: usize = bytes
                .parse()
                .map_err(|_| format!("budget {bytes:?} is not a number of bytes"))?;
            let old = engine.budget();
            engine.set_budget(new).map_err(|e| e.to_string())?;
            Ok(format!("{old} {}\n", engine.budget()))
        }
        ["stats"] => Ok(engine.stats().to_string()),
        ["stats", "json"] => Ok(format!("{}\n", engine.stats().to_json())),
        ["stats", "prometheus"] => Ok(engine.stats().to_prometheus()),
        ["prefetch"] => Ok(format!("{}\n", engine.prefetch())),
        ["prefetch", name] => {
            let kind: PrefetchKind = name.parse()?;
            let old = engine.prefetch();
            engine.set_prefetch(kind);
            Ok(format!("{old} {}\n", kind.name()))
        }
        _ => Err(format!(
            "unknown request {line:?}; the requests are: {REQUESTS}"
        )),
    }
}

/// Sends one request to the control socket at `path` and returns the answer's body, or
/// the server's error line as `Err`.
pub fn request(path: &Path, line: &str) -> Result<String, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "nothing serves {}: start the program with --control {} (farmem vm or farmem run)",
            path.display(),
            path.display()
        ),
        _ => format!("cannot connect to {}: {e}", path.display()),
    })?;
    let io = |e: std::io::Error| format!("control socket {}: {e}", path.display());
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    conn.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).map_err(io)?;
    if let Some(body) = answer.strip_prefix("ok\n") {
        Ok(body.to_string())
    } else {
        Err(answer
            .strip_prefix("error: ")
            .unwrap_or(&answer)
            .trim_end()
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_engine_is_controlled_through_its_socket() {
        let engine = Arc::new(
            Engine::builder()
                .local_budget(1 << 20)
                .fault_mode(crate::FaultMode::Thread)
                .build()
                .unwrap(),
        );
        let region = engine.map(4 << 20).unwrap();
        for p in 0..1024 {
            region.write(p * 4096, &[1]).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("farmem-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl");
        let server = ControlServer::start(&path, engine.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second server on a live socket is refused.
        let err = ControlServer::start(&path, engine.clone()).unwrap_err();
        assert!(
            err.to_string().contains("another program is serving it"),
            "{err}"
        );

        assert_eq!(request(&path, "budget").unwrap(), format!("{}\n", 1 << 20));
        assert_eq!(
            request(&path, "budget 4194304").unwrap(),
            format!("{} {}\n", 1 << 20, 4 << 20)
        );
        assert_eq!(engine.budget(), 4 << 20);
        // Shrinking evicts before answering.
        request(&path, "budget 262144").unwrap();
        assert!(engine.stats().resident_pages <= 64);
        assert_eq!(
            request(&path, "prefetch majority").unwrap(),
            "readahead majority\n"
        );
        assert_eq!(engine.prefetch(), "majority");
        let json = request(&path, "stats json").unwrap();
        assert!(json.contains("\"budget_pages\":64"), "{json}");
        let prom = request(&path, "stats prometheus").unwrap();
        assert!(prom.contains("farmem_budget_pages 64\n"), "{prom}");
        assert!(request(&path, "stats").unwrap().contains("faults:"));
        for (bad, says) in [
            ("budget lots", "not a number of bytes"),
            ("budget 4096", "budget"),
            ("prefetch psychic", "unknown prefetcher"),
            ("reboot", "the requests are"),
        ] {
            let err = request(&path, bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        // The data survived it all.
        for p in 0..1024 {
            let mut b = [0u8];
            region.read(p * 4096, &mut b).unwrap();
            assert_eq!(b[0], 1);
        }
        drop(server);
        assert!(
            !path.exists(),
            "the socket is removed when the server stops"
        );
        let err = request(&path, "stats").unwrap_err();
        assert!(err.contains("nothing serves"), "{err}");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = ControlServer::start(&path, engine.clone()).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
