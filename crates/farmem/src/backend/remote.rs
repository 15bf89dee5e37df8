//! The remote far tier: pages on a memory node (`farmem serve`) over TCP, `tcp://HOST:PORT`.
//!
//! ```text
//!  fault paths ──── fetch ────────▶ fetch connections (4) ───────┐
//!  (prefetches ride in the same batch)                           ├─▶ one session
//!  reclaimer, direct reclaim ── store, discard ──▶ write-back (2) ┘   on the node
//! ```
//!
//! The tier opens one session on the node (`Hello New`) and joins it with several
//! connections (`Hello Join`): a pool for fetches and a separate pool for write-back, so
//! a fault's fetch never waits behind a 256-page store on the same TCP stream. A caller
//! takes a free connection of its pool (try-lock each; when all are busy it spins, then
//! yields, then naps, never blocking on one lock, so a signal handler cannot wait on a
//! connection its own thread holds), sends one request and waits for its reply: the
//! request buffer is preallocated per connection and the reply's pages are read straight
//! into the caller's buffer, then checked against the frame's CRC-32C. No allocation on a
//! fetch that succeeds.
//!
//! # Failures
//! Every request has a deadline ([`RemoteConfig::timeout`], 10 s by default) and every
//! attempt a shorter one (a quarter of it, at most 1 s). A send or receive error, an
//! attempt that times out, a bad CRC, a truncated or malformed reply: the connection is
//! dropped, a new one joins the session (with backoff) and the request is sent again
//! (every request is idempotent). A reply is never used before its CRC is checked. When
//! the deadline passes, or the node no longer knows the session (it restarted), the call
//! fails with [`TierError::Unavailable`] saying which node and what to do, and every later
//! call fails at once: the engine stops the program (`fatal::die_tier`). A node that is
//! full fails the store with [`TierError::NodeFull`]; a missing page is
//! [`TierError::Missing`]. Nothing here ever returns zeros or old data for a page.
//!
//! # fork
//! A forked child must not talk on its parent's connections, nor share the parent's
//! pages (the parent goes on overwriting them). [`Backend::after_fork_child`] closes the
//! inherited descriptors without sending anything, asks the node for a copy of the
//! parent's session (`Hello Clone`) and joins the copy with new connections.
//!
//! # The end
//! Dropping the tier says `Bye { free: true }` on every connection: the node frees the
//! session. A process that exits without dropping it (`farmem run`'s programs) calls
//! [`Backend::before_exit`] from its exit hook: one connection says `Bye { free: true }`
//! and closes, the others serve on, and the node frees the session when the exit closes
//! them. A process that leaves without exit hooks (`_exit`, a crash) leaves its session
//! to the node's grace period.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use farmem_wire::{self as wire, Attach, Code, HEADER_LEN, Header, Kind, MAX_BATCH, Message};

use super::{Backend, PAGE_SIZE, PageKey, TierError, TierStats};
use crate::sys::net::Sock;

/// Fetch connections by default.
pub const DEFAULT_FETCH_CONNS: usize = 4;
/// Write-back connections (stores and discards).
pub const WRITE_CONNS: usize = 2;
/// How long a request may take, retries included, before the node is given up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch busy-polls for its reply before it sleeps (see DESIGN.md, "Far tiers").
pub const DEFAULT_POLL: Duration = Duration::from_micros(50);
/// The longest single attempt.
const MAX_ATTEMPT: Duration = Duration::from_secs(1);
/// How long the first connection may take: a node that is not there should be a quick,
/// clear error when the program starts.
const FIRST_CONNECT: Duration = Duration::from_secs(3);
/// The least time a forked child gives the node to copy its parent's session.
const CLONE_TIMEOUT: Duration = Duration::from_secs(60);
/// Error replies and greetings are small; a larger one is malformed.
const SMALL: usize = 2 + 4 + wire::MAX_TEXT;
/// A request's keys part: header, count, keys.
const REQ: usize = HEADER_LEN + 4 + MAX_BATCH * 8;

/// How to reach a memory node.
#[derive(Clone)]
pub struct RemoteConfig {
    /// `HOST:PORT`.
    pub addr: String,
    /// The node's token (empty for a node started with `--insecure`).
    pub token: Vec<u8>,
    /// Connections for fetches.
    pub fetch_conns: usize,
    /// How long one request may take, reconnects and retries included.
    pub timeout: Duration,
    /// How long a fetch busy-polls for its reply before it sleeps in `recv` (0: never).
    pub poll: Duration,
    /// Who is asking, for the node's status (program name and pid).
    pub client_name: String,
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("addr", &self.addr)
            .field("token", &format_args!("({} bytes)", self.token.len()))
            .field("fetch_conns", &self.fetch_conns)
            .field("timeout", &self.timeout)
            .field("poll", &self.poll)
            .field("client_name", &self.client_name)
            .finish()
    }
}

impl RemoteConfig {
    /// The defaults for the node at `addr` (`HOST:PORT`), with no token.
    pub fn new(addr: impl Into<String>) -> RemoteConfig {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let comm = comm.trim();
        RemoteConfig {
            addr: addr.into(),
            token: Vec::new(),
            fetch_conns: DEFAULT_FETCH_CONNS,
            timeout: DEFAULT_TIMEOUT,
            poll: DEFAULT_POLL,
            client_name: format!(
                "{}[{}]",
                if comm.is_empty() { "farmem" } else { comm },
                std::process::id()
            ),
        }
    }

    /// The defaults, changed by the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | FARMEM_TOKEN_FILE | a file holding the node's token (trailing whitespace ignored) |
    /// | FARMEM_TOKEN | the token itself (when there is no token file) |
    /// | FARMEM_REMOTE_TIMEOUT | seconds a request may take before the node is given up (10) |
    /// | FARMEM_REMOTE_POLL_US | microseconds a fetch busy-polls before it sleeps (0: never) |
    /// | FARMEM_REMOTE_CONNS | fetch connections (4) |
    pub fn from_env(addr: impl Into<String>) -> Result<RemoteConfig, crate::Error> {
        let mut c = RemoteConfig::new(addr);
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(path) = std::env::var_os("FARMEM_TOKEN_FILE").filter(|v| !v.is_empty()) {
            c.token = read_token_file(std::path::Path::new(&path))?;
        } else if let Some(t) = var("FARMEM_TOKEN") {
            c.token = t.into_bytes();
        }
        if let Some(v) = var("FARMEM_REMOTE_TIMEOUT") {
            let s: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && s.is_finite())
                .ok_or_else(|| {
                    crate::Error::InvalidArgument(format!(
                        "FARMEM_REMOTE_TIMEOUT={v} is not a positive number of seconds"
                    ))
                })?;
            c.timeout = Duration::from_secs_f64(s.min(86_400.0));
        }
        if let Some(v) = var("FARMEM_REMOTE_POLL_US") {
            let us: u64 = v.parse().map_err(|_| {
                crate::Error::InvalidArgument(format!(
                    "FARMEM_REMOTE_POLL_US={v} is not a number of microseconds (0 turns polling off)"
                ))
            })?;
            c.poll = Duration::from_micros(us.min(1_000_000));
        }
        if let Some(v) = var("FARMEM_REMOTE_CONNS") {
            c.fetch_conns = v
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| {
                    crate::Error::InvalidArgument(format!(
                        "FARMEM_REMOTE_CONNS={v} is not a number of connections from 1 to 64"
                    ))
                })?;
        }
        Ok(c)
    }

    fn attempt(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), MAX_ATTEMPT)
    }
}

/// Reads a token file: its content without trailing whitespace.
pub fn read_token_file(path: &std::path::Path) -> Result<Vec<u8>, crate::Error> {
    let mut t = std::fs::read(path).map_err(|e| {
        crate::Error::InvalidArgument(format!(
            "cannot read the memory node's token from {}: {e}",
            path.display()
        ))
    })?;
    while t.last().is_some_and(|b| b.is_ascii_whitespace()) {
        t.pop();
    }
    Ok(t)
}

/// One connection and its buffers, owned by whoever holds its slot.
struct Conn {
    sock: Option<Sock>,
    next_id: u64,
    /// The request's header, count and keys (the pages of a store are sent from the
    /// caller's buffer).
    req: Box<[u8]>,
    /// Small replies (errors).
    small: Box<[u8]>,
}

impl Conn {
    fn new(sock: Option<Sock>) -> Conn {
        Conn {
            sock,
            next_id: 1,
            req: vec![0u8; REQ].into_boxed_slice(),
            small: vec![0u8; SMALL].into_boxed_slice(),
        }
    }
}

/// A connection behind a try-lock.
struct Slot {
    busy: AtomicBool,
    conn: UnsafeCell<Conn>,
}

// SAFETY: `conn` is reached only through a `Taken`, which exists only for the thread that
// won `busy` (Acquire) until it clears it (Release): one thread at a time.
unsafe impl Sync for Slot {}

impl Slot {
    fn new(sock: Option<Sock>) -> Slot {
        Slot {
            busy: AtomicBool::new(false),
            conn: UnsafeCell::new(Conn::new(sock)),
        }
    }

    fn try_take(&self) -> Option<Taken<'_>> {
        if !self.busy.load(Relaxed)
            && self
                .busy
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        {
            Some(Taken(self))
        } else {
            None
        }
    }
}

/// A slot held by this thread.
struct Taken<'a>(&'a Slot);

impl Taken<'_> {
    fn conn(&mut self) -> &mut Conn {
        // SAFETY: this thread holds the slot (see `Slot`'s Sync), and `&mut self` keeps the
        // reference unique within the thread.
        unsafe { &mut *self.0.conn.get() }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Release);
    }
}

/// Which pages the node holds for this session, as far as this process knows (for
/// [`TierStats`]): a bitmap per region.
#[derive(Default)]
struct KeySet {
    regions: HashMap<u32, Vec<u64>>,
    count: u64,
}

impl KeySet {
    fn insert(&mut self, k: PageKey) {
        let words = self.regions.entry(k.region()).or_default();
        let (w, bit) = ((k.page() / 64) as usize, 1u64 << (k.page() % 64));
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        if words[w] & bit == 0 {
            words[w] |= bit;
            self.count += 1;
        }
    }

    fn remove(&mut self, k: PageKey) {
        if let Some(words) = self.regions.get_mut(&k.region()) {
            let (w, bit) = ((k.page() / 64) as usize, 1u64 << (k.page() % 64));
            if let Some(word) = words.get_mut(w)
                && *word & bit != 0
            {
                *word &= !bit;
                self.count -= 1;
            }
        }
    }
}

/// A request.
#[derive(Clone, Copy)]
enum Req<'a> {
    Fetch(&'a [PageKey]),
    Store(&'a [PageKey], &'a [u8]),
    Discard(&'a [PageKey]),
}

impl<'a> Req<'a> {
    fn keys(&self) -> &'a [PageKey] {
        match *self {
            Req::Fetch(k) | Req::Store(k, _) | Req::Discard(k) => k,
        }
    }
    fn kind(&self) -> Kind {
        match self {
            Req::Fetch(_) => Kind::Fetch,
            Req::Store(..) => Kind::Store,
            Req::Discard(_) => Kind::Discard,
        }
    }
    fn data(&self) -> &'a [u8] {
        match *self {
            Req::Store(_, d) => d,
            _ => &[],
        }
    }
    fn what(&self) -> &'static str {
        match self {
            Req::Fetch(_) => "fetch",
            Req::Store(..) => "store",
            Req::Discard(_) => "discard",
        }
    }
}

/// Why one attempt failed.
enum Fail {
    /// Drop the connection and try again on a new one.
    Retry(String),
    /// The node answered, and the answer is final.
    Final(TierError),
}

/// Why a connection could not be set up.
enum ConnectErr {
    /// Worth another try (no route yet, timeout, damaged reply, node shutting down).
    Transient(String),
    /// The node said no (token, version, no such session, full).
    Final(String),
}

/// The remote far tier. See the module docs.
pub struct Remote {
    uri: String,
    cfg: RemoteConfig,
    addrs: Vec<SocketAddr>,
    session: AtomicU64,
    secret: AtomicU64,
    capacity: AtomicU64,
    /// The process whose connections these are.
    pid: AtomicU32,
    fetch: Box<[Slot]>,
    write: Box<[Slot]>,
    reconnects: AtomicU64,
    /// Set once the node is given up: every later call fails with this.
    lost: OnceLock<String>,
    keys: Mutex<KeySet>,
    /// `keys`' count, read by `stats` without the lock (a stats thread must never hold a
    /// lock a forked child would inherit held).
    pages: AtomicU64,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("uri", &self.uri)
            .field("session", &self.session.load(Relaxed))
            .field("fetch_conns", &self.fetch.len())
            .field("write_conns", &self.write.len())
            .field("reconnects", &self.reconnects.load(Relaxed))
            .field("lost", &self.lost.get())
            .finish_non_exhaustive()
    }
}

fn getpid() -> u32 {
    std::process::id()
}

impl Remote {
    /// Connects to the node: opens a session and joins it with every connection. A node
    /// that cannot be reached, refuses the token, speaks another protocol version or is
    /// full is a clear error here, before any page is stored.
    pub fn connect(cfg: RemoteConfig) -> Result<Remote, crate::Error> {
        let addr = cfg.addr.clone();
        let bad = |why: String| crate::Error::Tier(why);
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| {
                bad(format!(
                    "cannot resolve the memory node address `{addr}` ({e}): use tcp://HOST:PORT"
                ))
            })?
            .collect();
        if addrs.is_empty() {
            return Err(bad(format!(
                "the memory node address `{addr}` resolves to nothing"
            )));
        }
        let fetch_conns = cfg.fetch_conns.clamp(1, 64);
        let r = Remote {
            uri: format!("tcp://{addr}"),
            addrs,
            session: AtomicU64::new(0),
            secret: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            pid: AtomicU32::new(getpid()),
            fetch: (0..fetch_conns).map(|_| Slot::new(None)).collect(),
            write: (0..WRITE_CONNS).map(|_| Slot::new(None)).collect(),
            reconnects: AtomicU64::new(0),
            lost: OnceLock::new(),
            keys: Mutex::new(KeySet::default()),
            pages: AtomicU64::new(0),
            cfg,
        };
        // From here on, an error drops `r`, which frees the session (`Bye`).
        let first = Instant::now() + FIRST_CONNECT.min(r.cfg.timeout);
        let mut attach = Attach::New;
        let mut deadline = first;
        for s in r.fetch.iter().chain(r.write.iter()) {
            let sock = r.open(attach.clone(), deadline).map_err(|e| match (e, &attach) {
                (ConnectErr::Transient(why), Attach::New) => bad(format!(
                    "cannot reach the memory node at {addr}: {why}. Is `farmem serve` running there, and can this machine reach that port?"
                )),
                (ConnectErr::Transient(why), _) => bad(format!(
                    "the memory node at {addr} took the first connection but not the next: {why}"
                )),
                (ConnectErr::Final(why), _) => bad(why),
            })?;
            if let Some(mut t) = s.try_take() {
                t.conn().sock = Some(sock);
            }
            if matches!(attach, Attach::New) {
                attach = r.join_attach();
                deadline = Instant::now() + r.cfg.timeout;
            }
        }
        Ok(r)
    }

    /// The node's address, `HOST:PORT`.
    pub fn addr(&self) -> &str {
        &self.cfg.addr
    }

    /// This process's session on the node.
    pub fn session(&self) -> u64 {
        self.session.load(Relaxed)
    }

    /// The node's capacity in bytes, as it said when this process connected.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Relaxed)
    }

    /// Connections replaced after a failure, since the start.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Relaxed)
    }

    fn join_attach(&self) -> Attach {
        Attach::Join {
            session: self.session.load(Acquire),
            secret: self.secret.load(Acquire),
        }
    }

    /// Opens one connection and says Hello (`New` and `Clone` set the session).
    fn open(&self, attach: Attach, deadline: Instant) -> Result<Sock, ConnectErr> {
        let attempt = (Instant::now() + self.cfg.attempt()).min(deadline);
        let mut why = String::new();
        for a in &self.addrs {
            let left = attempt.saturating_duration_since(Instant::now());
            match Sock::connect(a, left) {
                Ok(sock) => {
                    // The node copies every page of the session before it answers a
                    // Clone: give it the whole deadline (another attempt would start
                    // another copy).
                    let answer_by = match attach {
                        Attach::Clone { .. } => deadline,
                        _ => attempt,
                    };
                    let (session, secret, capacity) = self.hello(&sock, &attach, answer_by)?;
                    if !matches!(attach, Attach::Join { .. }) {
                        self.session.store(session, Release);
                        self.secret.store(secret, Release);
                    }
                    self.capacity.store(capacity, Relaxed);
                    return Ok(sock);
                }
                Err(e) => why = e.to_string(),
            }
        }
        Err(ConnectErr::Transient(why))
    }

    /// The greeting on a new connection: session, secret and capacity.
    fn hello(
        &self,
        sock: &Sock,
        attach: &Attach,
        deadline: Instant,
    ) -> Result<(u64, u64, u64), ConnectErr> {
        let addr = &self.cfg.addr;
        let frame = Message::Hello {
            token: self.cfg.token.clone(),
            name: self.cfg.client_name.clone(),
            attach: attach.clone(),
        }
        .encode(0);
        let transient = |e: std::io::Error| ConnectErr::Transient(e.to_string());
        sock.send_all(&[&frame], deadline).map_err(transient)?;
        let mut hb = [0u8; HEADER_LEN];
        sock.recv_exact(&mut hb, None, deadline)
            .map_err(transient)?;
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(wire::WireError::Version { theirs, ours }) => {
                return Err(ConnectErr::Final(format!(
                    "the memory node at {addr} speaks protocol version {theirs}, this farmem speaks version {ours}: run the same farmem release on both machines"
                )));
            }
            Err(wire::WireError::Magic(m)) => {
                let said = if m.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                    format!("`{}...`", String::from_utf8_lossy(&m))
                } else {
                    format!("{m:02x?}")
                };
                return Err(ConnectErr::Final(format!(
                    "{addr} is not a farmem memory node (it answered {said}): check the address and port"
                )));
            }
            Err(e) => return Err(ConnectErr::Transient(e.to_string())),
        };
        if h.len as usize > SMALL {
            return Err(ConnectErr::Transient(format!(
                "a {}-byte greeting (at most {SMALL})",
                h.len
            )));
        }
        let mut p = vec![0u8; h.len as usize];
        sock.recv_exact(&mut p, None, deadline).map_err(transient)?;
        h.check(&[&p])
            .map_err(|e| ConnectErr::Transient(e.to_string()))?;
        match Message::decode(&h, &p).map_err(|e| ConnectErr::Transient(e.to_string()))? {
            Message::Welcome {
                session,
                secret,
                capacity,
                ..
            } => Ok((session, secret, capacity)),
            Message::Error { code, message } => Err(match code {
                Code::BadToken => ConnectErr::Final(format!(
                    "the memory node at {addr} refused this program's token ({message}): give the node's token in FARMEM_TOKEN_FILE (`farmem run --token-file PATH`) or FARMEM_TOKEN"
                )),
                Code::Version => ConnectErr::Final(format!(
                    "the memory node at {addr} speaks another protocol version ({message}); this farmem speaks version {}: run the same farmem release on both machines",
                    wire::VERSION
                )),
                Code::NoSession => ConnectErr::Final(match attach {
                    Attach::Clone { .. } => format!(
                        "memory node {addr} could not copy this program's pages for a forked child ({message}); the child cannot see its far memory"
                    ),
                    _ => self.gone_text(&message),
                }),
                Code::Full => ConnectErr::Final(format!(
                    "the memory node at {addr} is full ({message}): give `farmem serve` more capacity or the program more local memory"
                )),
                Code::ShuttingDown => {
                    ConnectErr::Transient(format!("the node is shutting down ({message})"))
                }
                _ => ConnectErr::Final(format!(
                    "the memory node at {addr} refused the connection: {message}"
                )),
            }),
            m => Err(ConnectErr::Transient(format!(
                "a {:?} reply to Hello",
                m.kind()
            ))),
        }
    }

    fn gone_text(&self, message: &str) -> String {
        format!(
            "memory node {} no longer has this program's pages (it restarted? it says: {message}); this program's far pages on it are lost",
            self.cfg.addr
        )
    }

    /// Gives the node up: this and every later call fail with `why`.
    fn lose(&self, why: String) -> TierError {
        let _ = self.lost.set(why);
        TierError::Unavailable(self.lost.get().cloned().unwrap_or_default())
    }

    /// Takes a free connection of `pool`: try each, then spin, yield and nap.
    fn take<'a>(&self, pool: &'a [Slot], deadline: Instant) -> Result<Taken<'a>, TierError> {
        let mut round = 0u32;
        loop {
            for s in pool {
                if let Some(t) = s.try_take() {
                    return Ok(t);
                }
            }
            round += 1;
            if round < 64 {
                std::hint::spin_loop();
            } else if round < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
                if Instant::now() >= deadline {
                    return Err(self.lose(format!(
                        "memory node {}: all {} connections stayed busy for {:.0?}; this program's far pages on it are lost. Check that `farmem serve` is running there",
                        self.cfg.addr,
                        pool.len(),
                        self.cfg.timeout
                    )));
                }
            }
        }
    }

    /// One request, retried on new connections until it is answered or the deadline
    /// passes. `out` receives a fetch's pages.
    fn call(&self, pool: &[Slot], req: Req<'_>, out: &mut [u8]) -> Result<(), TierError> {
        if let Some(why) = self.lost.get() {
            return Err(TierError::Unavailable(why.clone()));
        }
        if getpid() != self.pid.load(Relaxed) {
            return Err(TierError::Unavailable(
                "the remote far tier was used in a forked child without farmem's fork handlers (farmem::fork::install_handlers): a child cannot share its parent's connections".into(),
            ));
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let mut held = self.take(pool, deadline)?;
        let conn = held.conn();
        let spin = if matches!(req, Req::Fetch(_)) {
            self.cfg.poll
        } else {
            Duration::ZERO
        };
        let (mut tries, mut reconnects) = (0u32, 0u32);
        let mut last: Option<String> = None;
        // What the node itself said last (it is shutting down, say): worth more than the
        // refused connections that follow.
        let mut said: Option<String> = None;
        loop {
            if conn.sock.is_none() {
                reconnects += 1;
                self.reconnects.fetch_add(1, Relaxed);
                match self.open(self.join_attach(), deadline) {
                    Ok(s) => conn.sock = Some(s),
                    Err(ConnectErr::Final(why)) => return Err(self.lose(why)),
                    Err(ConnectErr::Transient(why)) => last = Some(why),
                }
            }
            if let Some(sock) = conn.sock.take() {
                let now = Instant::now();
                let attempt = (now + self.cfg.attempt()).min(deadline);
                let spin_until = (!spin.is_zero()).then(|| now + spin);
                match self.exchange(&sock, conn, req, out, spin_until, attempt) {
                    Ok(()) => {
                        conn.sock = Some(sock);
                        return Ok(());
                    }
                    Err(Fail::Final(TierError::Unavailable(why))) => return Err(self.lose(why)),
                    Err(Fail::Final(e)) => {
                        conn.sock = Some(sock);
                        return Err(e);
                    }
                    Err(Fail::Retry(why)) => {
                        if why.starts_with("the node said") {
                            said = Some(why.clone());
                        }
                        last = Some(why);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.lose(format!(
                    "memory node {} did not answer a {} for {:.0?} ({reconnects} reconnects; last: {}{}); this program's far pages on it are lost. Check that `farmem serve` is running there and reachable",
                    self.cfg.addr,
                    req.what(),
                    self.cfg.timeout,
                    last.as_deref().unwrap_or("no reply"),
                    match &said {
                        Some(s) if Some(s) != last.as_ref() => format!("; before that, {s}"),
                        _ => String::new(),
                    },
                )));
            }
            // The first retry is at once (a damaged frame needs no pause), then 10 ms,
            // doubling up to half a second.
            let pause = match tries {
                0 => Duration::ZERO,
                n => Duration::from_millis(10 << (n - 1).min(6)).min(Duration::from_millis(500)),
            };
            tries += 1;
            std::thread::sleep(pause.min(deadline - now));
        }
    }

    /// One attempt of `req` on `sock`.
    fn exchange(
        &self,
        sock: &Sock,
        conn: &mut Conn,
        req: Req<'_>,
        out: &mut [u8],
        spin_until: Option<Instant>,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let io = |e: std::io::Error| Fail::Retry(e.to_string());
        let id = conn.next_id;
        conn.next_id += 1;
        let keys = req.keys();
        let data = req.data();
        let head = HEADER_LEN + 4 + keys.len() * 8;
        conn.req[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(keys.len() as u32).to_le_bytes());
        for (k, b) in keys
            .iter()
            .zip(conn.req[HEADER_LEN + 4..head].chunks_exact_mut(8))
        {
            b.copy_from_slice(&k.0.to_le_bytes());
        }
        let mut h = Header {
            kind: req.kind(),
            id,
            len: (head - HEADER_LEN + data.len()) as u32,
            crc: 0,
        };
        h.crc = h.compute_crc(&[&conn.req[HEADER_LEN..head], data]);
        conn.req[..HEADER_LEN].copy_from_slice(&h.encode());
        sock.send_all(&[&conn.req[..head], data], deadline)
            .map_err(io)?;

        let mut hb = [0u8; HEADER_LEN];
        sock.recv_exact(&mut hb, spin_until, deadline).map_err(io)?;
        let h = Header::decode(&hb).map_err(|e| Fail::Retry(e.to_string()))?;
        let len = h.len as usize;
        if h.id != id {
            // A node that stops says so with request id 0 (`ShuttingDown`): keep its words
            // for the message if the node never comes back.
            if h.kind == Kind::Error && len <= conn.small.len() {
                let p = &mut conn.small[..len];
                if sock.recv_exact(p, None, deadline).is_ok()
                    && h.check(&[p]).is_ok()
                    && let Ok(Message::Error { code, message }) = Message::decode(&h, p)
                {
                    return Err(Fail::Retry(format!("the node said {code:?}: {message}")));
                }
            }
            return Err(Fail::Retry(format!(
                "the reply names request {}, not {id}",
                h.id
            )));
        }
        match (h.kind, req) {
            (Kind::Pages, Req::Fetch(_)) => {
                if len != out.len() {
                    return Err(Fail::Retry(format!(
                        "{len} bytes of pages for {} pages",
                        keys.len()
                    )));
                }
                sock.recv_exact(out, spin_until, deadline).map_err(io)?;
                // Checked before anyone sees the pages; on a mismatch they are fetched again.
                h.check(&[out]).map_err(|e| Fail::Retry(e.to_string()))
            }
            (Kind::Done, Req::Store(..) | Req::Discard(_)) if len == 0 => {
                h.check(&[]).map_err(|e| Fail::Retry(e.to_string()))
            }
            (Kind::Error, _) if len <= conn.small.len() => {
                let p = &mut conn.small[..len];
                sock.recv_exact(p, None, deadline).map_err(io)?;
                h.check(&[p]).map_err(|e| Fail::Retry(e.to_string()))?;
                match Message::decode(&h, p).map_err(|e| Fail::Retry(e.to_string()))? {
                    Message::Error { code, message } => Err(self.node_error(req, code, message)),
                    m => Err(Fail::Retry(format!(
                        "{:?} decoded as {:?}",
                        h.kind,
                        m.kind()
                    ))),
                }
            }
            (kind, _) => Err(Fail::Retry(format!(
                "a {kind:?} reply of {len} bytes to a {}",
                req.what()
            ))),
        }
    }

    fn node_error(&self, req: Req<'_>, code: Code, message: String) -> Fail {
        let addr = &self.cfg.addr;
        match code {
            Code::Missing => Fail::Final(TierError::Missing { key: req.keys()[0] }),
            Code::Full => Fail::Final(TierError::NodeFull {
                node: addr.clone(),
                message,
            }),
            Code::NoSession => Fail::Final(TierError::Unavailable(self.gone_text(&message))),
            Code::ShuttingDown | Code::Protocol => {
                Fail::Retry(format!("the node said {code:?}: {message}"))
            }
            Code::BadToken | Code::Version | Code::Other => {
                Fail::Final(TierError::Unavailable(format!(
                    "memory node {addr} refused a {} ({code:?}: {message}); this program's far pages on it may be lost",
                    req.what()
                )))
            }
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeySet> {
        // Updated only after the node answered; a panic cannot leave it half done that
        // matters (the counts are for statistics).
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for Remote {
    fn name(&self) -> &str {
        &self.uri
    }

    fn store(&self, keys: &[PageKey], data: &[u8]) -> Result<(), TierError> {
        debug_assert_eq!(data.len(), keys.len() * PAGE_SIZE);
        for (k, d) in keys
            .chunks(MAX_BATCH)
            .zip(data.chunks(MAX_BATCH * PAGE_SIZE))
        {
            self.call(&self.write, Req::Store(k, d), &mut [])?;
        }
        let mut set = self.keys();
        for &k in keys {
            set.insert(k);
        }
        self.pages.store(set.count, Relaxed);
        Ok(())
    }

    fn fetch(&self, keys: &[PageKey], out: &mut [u8]) -> Result<(), TierError> {
        debug_assert_eq!(out.len(), keys.len() * PAGE_SIZE);
        for (k, o) in keys
            .chunks(MAX_BATCH)
            .zip(out.chunks_mut(MAX_BATCH * PAGE_SIZE))
        {
            self.call(&self.fetch, Req::Fetch(k), o)?;
        }
        Ok(())
    }

    fn discard(&self, keys: &[PageKey]) {
        for k in keys.chunks(MAX_BATCH) {
            // A failure here is remembered (`lost`): the next fetch or store reports it.
            if self.call(&self.write, Req::Discard(k), &mut []).is_err() {
                return;
            }
        }
        let mut set = self.keys();
        for &k in keys {
            set.remove(k);
        }
        self.pages.store(set.count, Relaxed);
    }

    fn stats(&self) -> TierStats {
        let pages = self.pages.load(Relaxed);
        TierStats {
            pages,
            zero_pages: 0,
            logical_bytes: pages * PAGE_SIZE as u64,
            stored_bytes: pages * PAGE_SIZE as u64,
        }
    }

    fn before_exit(&self) {
        self.farewell();
    }

    fn after_fork_child(&self) -> Result<(), TierError> {
        let me = getpid();
        if self.pid.load(Relaxed) == me {
            return Ok(()); // already done (two engines sharing this tier)
        }
        // The parent's connections: close our copies, send nothing. Only this thread
        // exists in the child, and fork happened with no request in flight (the gate).
        for s in self.fetch.iter().chain(self.write.iter()) {
            s.busy.store(false, Release);
            if let Some(mut t) = s.try_take() {
                t.conn().sock = None;
            }
        }
        self.pid.store(me, Relaxed);
        // Copying a large session takes the node a while (GB/s): at least a minute.
        let wait = self.cfg.timeout.max(CLONE_TIMEOUT);
        let deadline = Instant::now() + wait;
        let parent = Attach::Clone {
            session: self.session.load(Acquire),
            secret: self.secret.load(Acquire),
        };
        let mut tries = 0u32;
        let mut attach = parent;
        for s in self.fetch.iter().chain(self.write.iter()) {
            // The first connection asks for the copy; the others join it.
            let sock = loop {
                match self.open(attach.clone(), deadline) {
                    Ok(sock) => break sock,
                    Err(ConnectErr::Final(why)) => return Err(self.lose(why)),
                    Err(ConnectErr::Transient(why)) => {
                        if Instant::now() >= deadline {
                            return Err(self.lose(format!(
                                "memory node {} did not answer a forked child's request for its own copy of the pages for {wait:.0?} ({why})",
                                self.cfg.addr
                            )));
                        }
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10 << tries.min(5)));
                    }
                }
            };
            attach = self.join_attach();
            if let Some(mut t) = s.try_take() {
                t.conn().sock = Some(sock);
            }
        }
        Ok(())
    }
}

impl Remote {
    /// `Bye { free: true }` on one idle connection, which is then closed: the node frees
    /// the session when its last connection closes, which the process's exit does. The
    /// other connections go on serving until then (the one closed here is replaced if a
    /// request needs it).
    fn farewell(&self) {
        if getpid() != self.pid.load(Relaxed) {
            return;
        }
        let bye = Message::Bye { free: true }.encode(0);
        for s in self.write.iter().rev().chain(self.fetch.iter().rev()) {
            if let Some(mut t) = s.try_take()
                && let Some(sock) = t.conn().sock.take()
            {
                let _ = sock.send_all(&[&bye], Instant::now() + Duration::from_millis(200));
                return;
            }
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if getpid() != self.pid.load(Relaxed) {
            return; // a child without fork handlers: the connections are the parent's
        }
        let bye = Message::Bye { free: true }.encode(0);
        let deadline = Instant::now() + Duration::from_millis(200);
        for s in self.fetch.iter().chain(self.write.iter()) {
            if let Some(mut t) = s.try_take()
                && let Some(sock) = t.conn().sock.take()
            {
                let _ = sock.send_all(&[&bye], deadline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_set_counts_distinct_pages() {
        let mut s = KeySet::default();
        for k in [
            PageKey::new(0, 5),
            PageKey::new(0, 5),
            PageKey::new(3, 1 << 20),
        ] {
            s.insert(k);
        }
        assert_eq!(s.count, 2);
        s.remove(PageKey::new(0, 5));
        s.remove(PageKey::new(0, 6));
        s.remove(PageKey::new(9, 0));
        assert_eq!(s.count, 1);
    }

    #[test]
    fn config_hides_the_token() {
        let mut c = RemoteConfig::new("h:1");
        c.token = b"sekrit".to_vec();
        let d = format!("{c:?}");
        assert!(!d.contains("sekrit") && d.contains("6 bytes"), "{d}");
        assert!(c.client_name.contains(&std::process::id().to_string()));
    }

    #[test]
    fn attempts_are_shorter_than_the_deadline() {
        let mut c = RemoteConfig::new("h:1");
        assert_eq!(c.attempt(), MAX_ATTEMPT);
        c.timeout = Duration::from_secs(2);
        assert_eq!(c.attempt(), Duration::from_millis(500));
    }
}
