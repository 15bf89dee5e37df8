//! farmem's memory node: lends this machine's memory to farmem processes on others
//! (their `tcp://HOST:PORT` far tier), over the protocol of [`farmem_wire`].
//!
//! ```text
//!             accept thread ---- one thread per connection (blocking I/O) ----+
//!                  |                  Hello -> a session (new, joined, cloned)  |
//!   SIGTERM -> ShutdownHandle         Store / Fetch / Discard on its own pages  |
//!                                     replies in order, on the same connection  |
//!             reaper thread: frees sessions whose grace period ran out          |
//!                                                                               v
//!             Store: sessions (registry) -> 64 page shards each; capacity counter
//! ```
//!
//! [`Server::bind`] checks the configuration and listens; [`Server::run`] serves until
//! [`ShutdownHandle::shutdown`] (the `farmem serve` command calls it on SIGTERM and
//! SIGINT) and returns a [`Summary`]. [`query_status`] is the client side of
//! `farmem node-status`.
//!
//! What the node promises:
//! - a frame it cannot accept (bad CRC, truncated, malformed, unknown kind, another
//!   protocol version) is never applied: it answers with an error if it can and drops
//!   that connection, and goes on serving the others;
//! - a store that does not fit in the capacity is refused whole;
//! - a session's pages are reachable only through that session (its id and secret), so
//!   no client reads another's pages;
//! - a session whose connections all dropped without `Bye` is kept for the grace period,
//!   so a client that reconnects (`Join`) after a network blip finds its pages.

#![warn(missing_docs)]

mod conn;
mod stats;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use farmem_wire::{Code, Message, PAGE};

use stats::Counters;
use store::{Store, lock};

/// How a node serves.
#[derive(Clone)]
pub struct Config {
    /// Bytes of pages the node holds at most.
    pub capacity: u64,
    /// What clients must present in their Hello (and `farmem node-status` in its
    /// Status). `None` accepts anyone, and is refused on a non-loopback address.
    pub token: Option<Vec<u8>>,
    /// How long a session whose connections all dropped without `Bye` is kept.
    pub grace: Duration,
    /// Most connections open at once; more are refused.
    pub max_clients: usize,
    /// Print notable events (sessions made and freed, refused clients, bad frames) to
    /// stderr, at most a few lines a second.
    pub log: bool,
}

impl Config {
    /// A configuration with `capacity` bytes, no token, 30 s of grace, at most 1024
    /// clients and logging on.
    pub fn new(capacity: u64) -> Config {
        Config {
            capacity,
            token: None,
            grace: Duration::from_secs(30),
            max_clients: 1024,
            log: true,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("capacity", &self.capacity)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("grace", &self.grace)
            .field("max_clients", &self.max_clients)
            .field("log", &self.log)
            .finish()
    }
}

/// What can go wrong starting a node or asking one for its status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listen address does not resolve.
    #[error("cannot resolve the listen address {addr}: {error}")]
    Resolve {
        /// As given.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// As given.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// No token, on an address that others can reach.
    #[error(
        "refusing to serve without a token on {addr}, which is not a loopback address: anyone who can reach it could read and overwrite the pages; give a token (--token-file PATH or FARMEM_TOKEN), or listen on 127.0.0.1"
    )]
    NoToken {
        /// As given.
        addr: String,
    },
    /// A capacity under one page.
    #[error("the capacity must be at least one page (4 KiB), not {0} bytes")]
    Capacity(u64),
    /// The node cannot be reached.
    #[error("cannot reach the memory node at {addr}: {error}")]
    Connect {
        /// As given.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// The conversation with the node failed.
    #[error("memory node {addr}: {error}")]
    Wire {
        /// As given.
        addr: String,
        /// Why.
        error: farmem_wire::WireError,
    },
    /// The node said no.
    #[error("{message}")]
    Refused {
        /// As given.
        addr: String,
        /// Its error code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The node answered something else.
    #[error("memory node {addr} answered {what} to a status request")]
    Unexpected {
        /// As given.
        addr: String,
        /// The message kind.
        what: String,
    },
}

/// State shared by the accept thread, the connections and the reaper.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    /// Where the node listens (for messages).
    pub addr: SocketAddr,
    pub store: Store,
    pub counters: Counters,
    stopping: AtomicBool,
    /// Open connections, to shut them down on stop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    /// (second, lines printed in it) for [`Shared::log`].
    log_budget: Mutex<(u64, u32)>,
}

/// Lines of log a second, at most.
const LOG_PER_SEC: u32 = 10;

impl Shared {
    /// Prints `msg` to stderr, unless logging is off or this second's lines are used up.
    pub fn log(&self, msg: fmt::Arguments<'_>) {
        if !self.config.log {
            return;
        }
        let sec = self.counters.started.elapsed().as_secs();
        let mut b = lock(&self.log_budget);
        if b.0 != sec {
            if b.1 > LOG_PER_SEC {
                eprintln!(
                    "farmem serve: ({} more lines in second {} not shown)",
                    b.1 - LOG_PER_SEC,
                    b.0
                );
            }
            *b = (sec, 0);
        }
        b.1 += 1;
        if b.1 <= LOG_PER_SEC {
            eprintln!("farmem serve: {msg}");
        }
    }

    /// Wakes the reaper to see `stopping`. The registry lock is taken first: the reaper
    /// holds it from its check of `stopping` until it waits, so the wake-up cannot fall
    /// between the two and be lost.
    fn wake_reaper(&self) {
        drop(lock(&self.store.registry));
        self.store.reaper.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// The message of an `Error { Full }`.
    pub fn full_message(&self, f: store::Full) -> String {
        format!(
            "memory node {} is full: {} of {} bytes used ({} of {}), and {} more were asked for; start the node with a larger --capacity, or run fewer or smaller clients on it (`farmem node-status` shows who holds what)",
            self.addr,
            f.used,
            f.total,
            human(f.used),
            human(f.total),
            f.wanted
        )
    }

    /// The node's state, as the JSON of a `StatusReply`.
    pub fn status_json(&self) -> String {
        let c = &self.counters;
        let uptime = c.started.elapsed().as_secs_f64();
        let (rate, window) = c.rate.per_sec(uptime);
        let now = Instant::now();
        let mut sessions: Vec<serde_json::Value> = {
            let reg = lock(&self.store.registry);
            reg.map
                .values()
                .map(|s| {
                    let l = lock(&s.life);
                    let grace_left = l.orphaned_at.map(|t| {
                        self.config
                            .grace
                            .saturating_sub(now.duration_since(t))
                            .as_secs_f64()
                    });
                    serde_json::json!({
                        "id": s.id,
                        "name": s.name,
                        "connections": l.conns,
                        "pages": s.pages(),
                        "bytes": s.pages() * PAGE as u64,
                        "grace_left_secs": grace_left,
                    })
                })
                .collect()
        };
        sessions.sort_by_key(|s| s["id"].as_u64());
        let pages: u64 = sessions.iter().filter_map(|s| s["pages"].as_u64()).sum();
        serde_json::json!({
            "node": self.addr.to_string(),
            "protocol_version": farmem_wire::VERSION,
            "uptime_secs": uptime,
            "clients": c.clients.load(Relaxed),
            "clients_served": c.served.load(Relaxed),
            "sessions": sessions.len(),
            "pages": pages,
            "used_bytes": self.store.cap.used(),
            "capacity_bytes": self.store.cap.total,
            "requests_total": c.requests.load(Relaxed),
            "requests_per_sec": rate,
            "rate_window_secs": window,
            "stores": c.stores.load(Relaxed),
            "fetches": c.fetches.load(Relaxed),
            "discards": c.discards.load(Relaxed),
            "pages_stored": c.pages_in.load(Relaxed),
            "pages_fetched": c.pages_out.load(Relaxed),
            "refused": c.refused.load(Relaxed),
            "dropped_connections": c.dropped.load(Relaxed),
            "grace_secs": self.config.grace.as_secs_f64(),
            "token_required": self.config.token.is_some(),
            "session_list": sessions,
        })
        .to_string()
    }

    /// Whether `given` is the node's token (always, with no token); in constant time.
    pub fn token_ok(&self, given: &[u8]) -> bool {
        match &self.config.token {
            None => true,
            Some(t) => ct_eq(given, t),
        }
    }
}

/// Compares `given` with `expected` in time that depends only on their lengths.
fn ct_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// Sizes for people: 1.5 GiB, 12 MiB, 4 KiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A node listening, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
}

/// Stops a running node from any thread (a signal handler thread, a test).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Stops accepting connections and makes [`Server::run`] close the open ones and
    /// return. Idempotent.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Relaxed) {
            return;
        }
        // Shutting a listening socket down wakes the thread blocked in accept(2) with
        // EINVAL (Linux); no self-connection or polling needed.
        let _ = socket2::SockRef::from(&*self.listener).shutdown(Shutdown::Both);
        self.shared.wake_reaper();
    }
}

/// What a node did, for the line `farmem serve` prints when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Connections accepted.
    pub clients: u64,
    /// Sessions made.
    pub sessions: u64,
    /// Requests answered.
    pub requests: u64,
    /// Pages stored.
    pub pages_stored: u64,
    /// Pages fetched.
    pub pages_fetched: u64,
    /// Sessions still held when it stopped.
    pub sessions_left: u64,
    /// Bytes still held when it stopped.
    pub bytes_left: u64,
    /// Seconds it ran.
    pub uptime_secs: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {} clients in {} sessions, {} requests ({} pages stored, {} fetched) in {:.1} s",
            self.clients,
            self.sessions,
            self.requests,
            self.pages_stored,
            self.pages_fetched,
            self.uptime_secs,
        )?;
        if self.sessions_left > 0 {
            write!(
                f,
                "; dropped the {} that {} sessions still held",
                human(self.bytes_left),
                self.sessions_left
            )?;
        }
        Ok(())
    }
}

fn is_loopback(a: &SocketAddr) -> bool {
    match a {
        SocketAddr::V4(v) => v.ip().is_loopback(),
        SocketAddr::V6(v) => {
            v.ip().is_loopback() || v.ip().to_ipv4_mapped().is_some_and(|i| i.is_loopback())
        }
    }
}

/// Whether every address `addr` resolves to is a loopback one.
pub fn is_loopback_addr(addr: &str) -> Result<bool, NodeError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|error| NodeError::Resolve {
            addr: addr.to_string(),
            error,
        })?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(is_loopback))
}

impl Server {
    /// Checks `config` and listens on `addr` (HOST:PORT; port 0 picks a free one).
    /// Without a token, only a loopback address is accepted.
    pub fn bind(addr: &str, config: Config) -> Result<Server, NodeError> {
        if config.capacity < PAGE as u64 {
            return Err(NodeError::Capacity(config.capacity));
        }
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|error| NodeError::Resolve {
                addr: addr.to_string(),
                error,
            })?
            .collect();
        let loopback = !addrs.is_empty() && addrs.iter().all(is_loopback);
        if config.token.is_none() && !loopback {
            return Err(NodeError::NoToken {
                addr: addr.to_string(),
            });
        }
        let listener = TcpListener::bind(&addrs[..]).map_err(|error| NodeError::Bind {
            addr: addr.to_string(),
            error,
        })?;
        let local = listener.local_addr().map_err(|error| NodeError::Bind {
            addr: addr.to_string(),
            error,
        })?;
        Ok(Server {
            listener: Arc::new(listener),
            shared: Arc::new(Shared {
                store: Store::new(config.capacity),
                config,
                addr: local,
                counters: Counters::new(),
                stopping: AtomicBool::new(false),
                conns: Mutex::new(HashMap::new()),
                log_budget: Mutex::new((0, 0)),
            }),
        })
    }

    /// The address it listens on (with the port picked, if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A handle that stops [`Server::run`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            listener: self.listener.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Serves until [`ShutdownHandle::shutdown`]; then closes every connection, waits
    /// for their threads, and returns what it did.
    pub fn run(self) -> Summary {
        let shared = self.shared;
        let reaper = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("farmem-reaper".into())
                .spawn(move || reap(&shared))
        };
        let reaper = match reaper {
            Ok(h) => Some(h),
            Err(e) => {
                shared.log(format_args!(
                    "cannot start the session reaper ({e}): orphaned sessions are kept until their client rejoins or the node stops"
                ));
                None
            }
        };
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let next_conn = AtomicU64::new(0);
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(_) if shared.stopping() => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: wait a little instead of spinning.
                    shared.log(format_args!("accept failed: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if shared.stopping() {
                break;
            }
            threads.retain(|t| !t.is_finished());
            let id = next_conn.fetch_add(1, Relaxed);
            if let Some(t) = accept_one(&shared, stream, peer, id) {
                threads.push(t);
            }
        }
        // Stop: no new connections. Shutting the open ones down for reading makes each
        // thread see the end of the stream once it has answered what it already read:
        // it tells its client that the node is shutting down and leaves. A thread stuck
        // writing to a client that does not read is cut off after a second.
        let conns: Vec<TcpStream> = lock(&shared.conns).drain().map(|(_, s)| s).collect();
        for s in &conns {
            let _ = s.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for s in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
        shared.wake_reaper();
        if let Some(r) = reaper {
            let _ = r.join();
        }
        let c = &shared.counters;
        let reg = lock(&shared.store.registry);
        Summary {
            clients: c.served.load(Relaxed),
            sessions: reg.created,
            requests: c.requests.load(Relaxed),
            pages_stored: c.pages_in.load(Relaxed),
            pages_fetched: c.pages_out.load(Relaxed),
            sessions_left: reg.map.len() as u64,
            bytes_left: shared.store.cap.used(),
            uptime_secs: c.started.elapsed().as_secs_f64(),
        }
    }

    /// Runs the node on a thread of its own (for tests and embedding).
    pub fn spawn(self) -> io::Result<Running> {
        let handle = self.shutdown_handle();
        let addr = self.local_addr();
        let thread = std::thread::Builder::new()
            .name("farmem-node".into())
            .spawn(move || self.run())?;
        Ok(Running {
            addr,
            handle,
            thread: Some(thread),
        })
    }
}

/// Sets a new connection up and starts its thread.
fn accept_one(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
) -> Option<JoinHandle<()>> {
    if shared.counters.clients.load(Relaxed) >= shared.config.max_clients as u64 {
        shared.log(format_args!(
            "refused {peer}: {} clients already (--max-clients)",
            shared.config.max_clients
        ));
        let msg = Message::Error {
            code: Code::Other,
            message: format!(
                "memory node {} already serves {} clients, its most (--max-clients)",
                shared.addr, shared.config.max_clients
            ),
        };
        let _ = farmem_wire::write_message(&mut &stream, 0, &msg);
        return None;
    }
    let _ = stream.set_nodelay(true);
    // A client whose machine vanished is noticed in about a minute, so its session goes
    // into its grace period instead of being held for ever.
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
    let clone = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            shared.log(format_args!("refused {peer}: {e}"));
            return None;
        }
    };
    lock(&shared.conns).insert(id, clone);
    shared.counters.clients.fetch_add(1, Relaxed);
    shared.counters.served.fetch_add(1, Relaxed);
    let sh = shared.clone();
    let t = std::thread::Builder::new()
        .name(format!("farmem-conn-{id}"))
        .spawn(move || {
            conn::serve(&sh, stream, peer);
            lock(&sh.conns).remove(&id);
            sh.counters.clients.fetch_sub(1, Relaxed);
        });
    match t {
        Ok(t) => Some(t),
        Err(e) => {
            shared.log(format_args!("refused {peer}: cannot start a thread: {e}"));
            lock(&shared.conns).remove(&id);
            shared.counters.clients.fetch_sub(1, Relaxed);
            None
        }
    }
}

/// The reaper: frees orphaned sessions whose grace ran out; sleeps until the next
/// deadline or until a session is orphaned.
fn reap(shared: &Shared) {
    let st = &shared.store;
    let mut reg = lock(&st.registry);
    loop {
        if shared.stopping() {
            return;
        }
        let (dead, next) = Store::expire(&mut reg, shared.config.grace, Instant::now());
        if !dead.is_empty() {
            drop(reg);
            for s in dead {
                let bytes = s.pages() * PAGE as u64;
                st.clear(&s);
                shared.log(format_args!(
                    "session {} ({}) freed: no connection for {:.0} s ({})",
                    s.id,
                    s.name,
                    shared.config.grace.as_secs_f64(),
                    human(bytes)
                ));
            }
            reg = lock(&st.registry);
            continue;
        }
        reg = match next {
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                st.reaper
                    .wait_timeout(reg, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => st.reaper.wait(reg).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// A node serving on its own thread; stopped when dropped.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<Summary>>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Stops it and returns its summary.
    pub fn stop(mut self) -> Summary {
        self.handle.shutdown();
        let t = self.thread.take().expect("taken only here and in drop");
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown();
            let _ = t.join();
        }
    }
}

/// Asks the node at `addr` for its state (the JSON of its `StatusReply`).
pub fn query_status(addr: &str, token: &[u8], timeout: Duration) -> Result<String, NodeError> {
    let connect_err = |error| NodeError::Connect {
        addr: addr.to_string(),
        error,
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_err)?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| connect_err(last))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(connect_err)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(connect_err)?;
    let wire = |error| NodeError::Wire {
        addr: addr.to_string(),
        error,
    };
    let ask = Message::Status {
        token: token.to_vec(),
    };
    farmem_wire::write_message(&mut &stream, 1, &ask).map_err(wire)?;
    let reply = farmem_wire::read_message(&mut &stream).map_err(wire)?;
    let _ = farmem_wire::write_message(&mut &stream, 2, &Message::Bye { free: false });
    match reply {
        Some((_, Message::StatusReply { json })) => Ok(json),
        Some((_, Message::Error { code, message })) => Err(NodeError::Refused {
            addr: addr.to_string(),
            code,
            message,
        }),
        Some((_, m)) => Err(NodeError::Unexpected {
            addr: addr.to_string(),
            what: format!("{:?}", m.kind()),
        }),
        None => Err(wire(farmem_wire::WireError::Truncated { got: 0, want: 24 })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abd", b"abc"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"abc\0", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(200 << 20), "200 MiB");
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback_addr("127.0.0.1:0").unwrap());
        assert!(is_loopback_addr("[::1]:0").unwrap());
        assert!(!is_loopback_addr("0.0.0.0:0").unwrap());
        assert!(!is_loopback_addr("[::]:0").unwrap());
    }

    #[test]
    fn no_token_only_on_loopback() {
        let e = Server::bind("0.0.0.0:0", Config::new(1 << 20)).unwrap_err();
        assert!(matches!(e, NodeError::NoToken { .. }), "{e}");
        assert!(Server::bind("127.0.0.1:0", Config::new(1 << 20)).is_ok());
        let mut c = Config::new(1 << 20);
        c.token = Some(b"t".to_vec());
        assert!(Server::bind("0.0.0.0:0", c).is_ok());
        assert!(matches!(
            Server::bind("127.0.0.1:0", Config::new(100)),
            Err(NodeError::Capacity(100))
        ));
    }
}
