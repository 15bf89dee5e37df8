//! A small memory node for the remote tier's tests: speaks farmem-wire over a real
//! loopback TCP listener, keeps pages in a HashMap, and misbehaves on command (stalls,
//! dies, restarts, corrupts or truncates a reply, fills up, speaks another version).

#![allow(dead_code)] // each test binary uses a different part

use farmem_wire::{Attach, Code, Message, read_message};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Session {
    secret: u64,
    pages: HashMap<u64, Vec<u8>>,
    /// Connections attached, and whether one said `Bye { free: true }`: like
    /// `farmem serve`, the session is freed when its last connection goes after that
    /// (and kept for ever otherwise: this node's grace never ends).
    conns: usize,
    free_on_last: bool,
}

/// Counters and switches, shared with the node's threads.
#[derive(Default)]
pub struct State {
    token: Vec<u8>,
    sessions: Mutex<HashMap<u64, Session>>,
    next_session: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
    dead: AtomicBool,
    /// Stop answering anything (connections stay open).
    pub stall: AtomicBool,
    /// The next N requests get no reply (their connection stays open).
    pub swallow: AtomicUsize,
    /// The next N Pages replies have a byte flipped after the CRC was computed.
    pub corrupt: AtomicUsize,
    /// The next N Pages replies are cut in the middle, then the connection is closed.
    pub truncate: AtomicUsize,
    /// Stores are refused with Full.
    pub full: AtomicBool,
    /// When not 0: the version written in every frame's header.
    pub version: AtomicU16,
    pub accepted: AtomicUsize,
    pub news: AtomicUsize,
    pub joins: AtomicUsize,
    pub clones: AtomicUsize,
    pub byes: AtomicUsize,
    pub fetches: AtomicUsize,
    pub stores: AtomicUsize,
    pub discards: AtomicUsize,
    /// When not usize::MAX: the CPU every connection's thread runs on.
    pub cpu: AtomicUsize,
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; the set outlives the
    // call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The node; it dies when dropped.
pub struct FakeNode {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl FakeNode {
    /// A node on a free loopback port that wants `token`.
    pub fn start(token: &[u8]) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            token: token.to_vec(),
            next_session: AtomicU64::new(1),
            cpu: AtomicUsize::new(usize::MAX),
            ..State::default()
        });
        let st = state.clone();
        std::thread::Builder::new()
            .name("fake-node-accept".into())
            .spawn(move || {
                while !st.dead.load(SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            s.set_nodelay(true).unwrap();
                            st.accepted.fetch_add(1, SeqCst);
                            st.conns.lock().unwrap().push(s.try_clone().unwrap());
                            let st = st.clone();
                            std::thread::spawn(move || serve(&st, s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                // The listener closes here: new connections are refused.
            })
            .unwrap();
        FakeNode { addr, state }
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Closes the listener and every connection.
    pub fn die(&self) {
        self.state.dead.store(true, SeqCst);
        self.drop_connections();
        std::thread::sleep(Duration::from_millis(20)); // the accept loop notices
    }

    /// Stops like `farmem serve` does: tells every connection `ShuttingDown` (request id
    /// 0), then dies.
    pub fn shut_down(&self) {
        let bye = error(Code::ShuttingDown, "the node is stopping (SIGTERM)").encode(0);
        for c in self.state.conns.lock().unwrap().iter() {
            let _ = (&*c).write_all(&bye);
        }
        self.die();
    }

    /// Forgets every session and drops every connection, like a node that restarted.
    pub fn restart(&self) {
        self.state.sessions.lock().unwrap().clear();
        self.drop_connections();
    }

    /// Drops every connection (the sessions stay).
    pub fn drop_connections(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Pages held, over every session.
    pub fn pages(&self) -> usize {
        let s = self.state.sessions.lock().unwrap();
        s.values().map(|s| s.pages.len()).sum()
    }

    /// Sessions alive.
    pub fn sessions(&self) -> usize {
        self.state.sessions.lock().unwrap().len()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.die();
    }
}

fn frame(st: &State, id: u64, m: &Message) -> Vec<u8> {
    let mut f = m.encode(id);
    let v = st.version.load(SeqCst);
    if v != 0 {
        f[4..6].copy_from_slice(&v.to_le_bytes());
    }
    f
}

fn error(code: Code, message: &str) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

fn serve(st: &State, s: TcpStream) {
    let cpu = st.cpu.load(SeqCst);
    if cpu != usize::MAX {
        pin_to(cpu);
    }
    let mut session = None;
    serve_until_closed(st, s, &mut session);
    // The connection leaves its session.
    if let Some(id) = session {
        let mut sessions = st.sessions.lock().unwrap();
        if let Some(s) = sessions.get_mut(&id) {
            s.conns -= 1;
            if s.conns == 0 && s.free_on_last {
                sessions.remove(&id);
            }
        }
    }
}

fn serve_until_closed(st: &State, mut s: TcpStream, session: &mut Option<u64>) {
    loop {
        let Ok(Some((id, m))) = read_message(&mut s) else {
            return;
        };
        if st.dead.load(SeqCst) {
            return;
        }
        while st.stall.load(SeqCst) && !st.dead.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if st.dead.load(SeqCst) {
            return;
        }
        if st
            .swallow
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            continue;
        }
        let reply = match (m, *session) {
            (
                Message::Hello {
                    token,
                    attach,
                    name: _,
                },
                None,
            ) => {
                if token != st.token {
                    error(Code::BadToken, "wrong token")
                } else {
                    let mut sessions = st.sessions.lock().unwrap();
                    let fresh = |sessions: &mut HashMap<u64, Session>, pages| {
                        let id = st.next_session.fetch_add(1, SeqCst);
                        let secret = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                        sessions.insert(
                            id,
                            Session {
                                secret,
                                pages,
                                ..Session::default()
                            },
                        );
                        (id, secret)
                    };
                    let got = match attach {
                        Attach::New => {
                            st.news.fetch_add(1, SeqCst);
                            Some(fresh(&mut sessions, HashMap::new()))
                        }
                        Attach::Join { session, secret } => {
                            st.joins.fetch_add(1, SeqCst);
                            sessions
                                .get(&session)
                                .filter(|s| s.secret == secret)
                                .map(|_| (session, secret))
                        }
                        Attach::Clone { session, secret } => {
                            st.clones.fetch_add(1, SeqCst);
                            match sessions.get(&session).filter(|s| s.secret == secret) {
                                Some(s) => {
                                    let pages = s.pages.clone();
                                    Some(fresh(&mut sessions, pages))
                                }
                                None => None,
                            }
                        }
                    };
                    match got {
                        Some((id, secret)) => {
                            *session = Some(id);
                            if let Some(s) = sessions.get_mut(&id) {
                                s.conns += 1;
                            }
                            Message::Welcome {
                                session: id,
                                secret,
                                capacity: 1 << 30,
                                used: 0,
                            }
                        }
                        None => error(Code::NoSession, "no such session"),
                    }
                }
            }
            (_, None) => error(Code::Protocol, "Hello first"),
            (Message::Store { keys, data }, Some(id)) => {
                st.stores.fetch_add(1, SeqCst);
                if st.full.load(SeqCst) {
                    error(Code::Full, "node full: 1024 of 1024 MiB in use")
                } else {
                    let mut sessions = st.sessions.lock().unwrap();
                    match sessions.get_mut(&id) {
                        Some(s) => {
                            for (k, p) in keys.iter().zip(data.chunks_exact(4096)) {
                                s.pages.insert(*k, p.to_vec());
                            }
                            Message::Done
                        }
                        None => error(Code::NoSession, "session gone"),
                    }
                }
            }
            (Message::Fetch { keys }, Some(id)) => {
                st.fetches.fetch_add(1, SeqCst);
                let sessions = st.sessions.lock().unwrap();
                match sessions.get(&id) {
                    Some(s) => {
                        let mut data = Vec::with_capacity(keys.len() * 4096);
                        let mut missing = None;
                        for k in &keys {
                            match s.pages.get(k) {
                                Some(p) => data.extend_from_slice(p),
                                None => {
                                    missing = Some(*k);
                                    break;
                                }
                            }
                        }
                        match missing {
                            Some(k) => error(Code::Missing, &format!("no page {k:#x}")),
                            None => Message::Pages { data },
                        }
                    }
                    None => error(Code::NoSession, "session gone"),
                }
            }
            (Message::Discard { keys }, Some(id)) => {
                st.discards.fetch_add(1, SeqCst);
                if let Some(s) = st.sessions.lock().unwrap().get_mut(&id) {
                    for k in keys {
                        s.pages.remove(&k);
                    }
                }
                Message::Done
            }
            (Message::Bye { free }, Some(id)) => {
                st.byes.fetch_add(1, SeqCst);
                if free && let Some(s) = st.sessions.lock().unwrap().get_mut(&id) {
                    s.free_on_last = true;
                }
                let _ = s.write_all(&frame(st, id, &Message::Done));
                return;
            }
            (_, Some(_)) => error(Code::Protocol, "unexpected message"),
        };
        let mut f = frame(st, id, &reply);
        if matches!(reply, Message::Pages { .. }) {
            if st
                .corrupt
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let at = f.len() - 100;
                f[at] ^= 0x40;
            } else if st
                .truncate
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let _ = s.write_all(&f[..f.len() / 2]);
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
        }
        if s.write_all(&f).is_err() {
            return;
        }
    }
}
