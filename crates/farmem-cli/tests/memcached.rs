//! Debian's memcached under `farmem run` with every allocator and a 2 MiB budget: 16 MiB
//! of values stored and read back right (most of them far by then), then the stock
//! protocol conformance tests (`memccapable`, libmemcached-tools) all pass.
//!
//! Needs memcached and libmemcached-tools (scripts/test.sh installs them); without them
//! the tests say so and pass.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tool(name: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(memcached: &str, allocator: &str, port: u16) -> (Server, TcpStream) {
    let child = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args(["run", "--local-mem", "2M", "--allocator", allocator, "--"])
        .args([
            memcached,
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-t",
            "4",
        ])
        .args(["-m", "256", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("start farmem run memcached");
    let server = Server(child);
    let t0 = Instant::now();
    loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.set_nodelay(true).unwrap();
            return (server, c);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "memcached did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(i: usize) -> Vec<u8> {
    let len = 100 + (i * 7919) % 8000;
    (0..len).map(|j| b'a' + ((i * 31 + j) % 26) as u8).collect()
}

fn conformance(allocator: &str) {
    let (Some(memcached), Some(capable)) = (tool("memcached"), tool("memccapable")) else {
        eprintln!("memcached or memccapable (libmemcached-tools) is not installed: skipped");
        return;
    };
    let port = free_port();
    let (_server, conn) = start(&memcached, allocator, port);
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let n = 4000;
    let mut line = String::new();
    for i in 0..n {
        let v = value(i);
        let mut req = format!("set key:{i} 0 0 {}\r\n", v.len()).into_bytes();
        req.extend_from_slice(&v);
        req.extend_from_slice(b"\r\n");
        w.write_all(&req).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "STORED\r\n", "set key:{i}");
    }
    for i in (0..n).step_by(7) {
        write!(w, "get key:{i}\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let v = value(i);
        assert_eq!(
            line,
            format!("VALUE key:{i} 0 {}\r\n", v.len()),
            "get key:{i}"
        );
        let mut got = vec![0; v.len() + 2];
        std::io::Read::read_exact(&mut r, &mut got).unwrap();
        assert!(
            got[..v.len()] == v[..],
            "{allocator}: key:{i} came back wrong"
        );
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "END\r\n");
    }
    let out = Command::new(capable)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("All tests passed"),
        "memccapable against memcached under farmem run --allocator {allocator}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn memcached_conformance_with_farslab() {
    conformance("farslab");
}

#[test]
fn memcached_conformance_with_mimalloc() {
    conformance("mimalloc");
}

#[test]
fn memcached_conformance_with_tlsf() {
    conformance("tlsf");
}
