//! `farmem serve` and `farmem node-status` as a user runs them: token rules, the start
//! and stop lines, signals, the status display.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farmem_wire::{Attach, Message, PAGE};

fn farmem() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
    c.env_remove("FARMEM_TOKEN").env_remove("FARMEM_TOKEN_FILE");
    c
}

fn output(args: &[&str]) -> Output {
    farmem().args(args).output().unwrap()
}

fn token_file(name: &str, content: &str, mode: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("farmem-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A `farmem serve` child, with its stderr collected.
struct Node {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    /// Starts `farmem serve ARGS` and waits for its start line.
    fn start(args: &[&str]) -> Node {
        let mut child = farmem()
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let line = line.unwrap();
                {
                    let mut s = collected.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
                if let Some(rest) = line.strip_prefix("farmem serve: listening on ") {
                    let _ = tx.send(rest.split(',').next().unwrap().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("no start line: {}", stderr.lock().unwrap());
            }
        };
        Node {
            child,
            addr,
            stderr,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits (at most 10 s) for the node to exit; its status and stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader thread sees the end of stderr right after the exit.
                std::thread::sleep(Duration::from_millis(50));
                return (st, self.stderr.lock().unwrap().clone());
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("farmem serve did not stop: {}", self.stderr.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_refuses_to_start_without_a_token() {
    let out = output(&["serve", "--listen", "127.0.0.1:0", "--capacity", "1M"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token: give --token-file PATH"), "{err}");

    let out = output(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--capacity",
        "1M",
        "--insecure",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--insecure serves without a token, so only on a loopback address"),
        "{err}"
    );

    let empty = token_file("empty", " \n", 0o600);
    let out = output(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--capacity",
        "1M",
        "--token-file",
        empty.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is empty"), "{err}");
}

#[test]
fn serve_runs_shows_its_state_and_stops_on_sigterm() {
    let tok = token_file("token", "correct-horse-battery\n", 0o600);
    let tok = tok.to_str().unwrap();
    let node = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--capacity",
        "64M",
        "--token-file",
        tok,
    ]);
    {
        let start = node.stderr.lock().unwrap().clone();
        assert!(
            start.contains(&format!(
                "listening on {}, capacity 64.0 MiB, token from {tok}",
                node.addr
            )),
            "{start}"
        );
        assert!(!start.contains("correct-horse"), "the token is never shown");
        assert!(
            !start.contains("warning"),
            "a mode-600 file draws no warning"
        );
    }

    // A client stores three pages.
    let mut s = std::net::TcpStream::connect(&node.addr).unwrap();
    let hello = Message::Hello {
        token: b"correct-horse-battery".to_vec(),
        name: "serve-test".into(),
        attach: Attach::New,
    };
    farmem_wire::write_message(&mut s, 1, &hello).unwrap();
    let (_, m) = farmem_wire::read_message(&mut s).unwrap().unwrap();
    assert!(matches!(m, Message::Welcome { .. }), "{m:?}");
    let store = Message::Store {
        keys: vec![1, 2, 3],
        data: vec![5; 3 * PAGE],
    };
    farmem_wire::write_message(&mut s, 2, &store).unwrap();
    assert_eq!(
        farmem_wire::read_message(&mut s).unwrap(),
        Some((2, Message::Done))
    );

    let out = output(&["node-status", &node.addr, "--token-file", tok]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        format!("memory node {}", node.addr),
        "clients    2 connected".into(),
        "sessions   1".into(),
        "pages      3 (".into(),
        "of 64.0 MiB used".into(),
        "session 1: serve-test, 3 pages".into(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    let out = farmem()
        .args(["node-status", &node.addr, "--json"])
        .env("FARMEM_TOKEN_FILE", tok)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pages"], 3);
    assert_eq!(v["used_bytes"], 3 * PAGE as u64);
    assert_eq!(v["sessions"], 1);

    let out = output(&["node-status", &node.addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong token"), "{err}");
    let out = farmem()
        .args(["node-status", &node.addr])
        .env("FARMEM_TOKEN", "correct-horse-battery")
        .output()
        .unwrap();
    assert!(out.status.success());

    let t = Instant::now();
    node.signal("-TERM");
    let (status, err) = node.wait();
    assert!(t.elapsed() < Duration::from_secs(5), "stopped promptly");
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}\n{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("farmem serve: stopped; served 5 clients in 1 sessions"),
        "{err}"
    );
    assert!(last.contains("3 pages stored"), "{last}");
    // The client was told, and its connection closed.
    match farmem_wire::read_message(&mut s).unwrap() {
        Some((0, Message::Error { code, message })) => {
            assert_eq!(code, farmem_wire::Code::ShuttingDown, "{message}");
            assert!(message.contains("is shutting down"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        farmem_wire::read_message(&mut s),
        Ok(None) | Err(_)
    ));
}

#[test]
fn serve_insecure_on_loopback_warns_of_open_token_files_and_stops_on_sigint() {
    let node = Node::start(&["--listen", "127.0.0.1:0", "--capacity", "1M", "--insecure"]);
    assert!(node.stderr.lock().unwrap().contains("no token (--insecure"));
    let out = output(&["node-status", &node.addr]);
    assert!(out.status.success());
    node.signal("-INT");
    let (status, err) = node.wait();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("farmem serve: stopped; served 1 clients"),
        "{err}"
    );

    let open = token_file("open", "tok", 0o644);
    let node = Node::start(&[
        "--listen",
        "127.0.0.1:0",
        "--capacity",
        "1M",
        "--token-file",
        open.to_str().unwrap(),
    ]);
    let err = node.stderr.lock().unwrap().clone();
    assert!(
        err.contains("can be read by other users (mode 644)"),
        "{err}"
    );
}
