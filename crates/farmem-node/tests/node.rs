//! The memory node over real TCP on 127.0.0.1: sessions, isolation, capacity, bad frames,
//! grace periods, status.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use farmem_node::{Config, Running, Server};
use farmem_wire::{Attach, Code, HEADER_LEN, Message, PAGE, VERSION};

const TOKEN: &[u8] = b"test-token-0123456789";

fn node(capacity: u64, grace: Duration) -> Running {
    let mut c = Config::new(capacity);
    c.token = Some(TOKEN.to_vec());
    c.grace = grace;
    c.log = false;
    Server::bind("127.0.0.1:0", c).unwrap().spawn().unwrap()
}

/// A test client: one connection, requests answered in order.
struct Client {
    s: TcpStream,
    next: u64,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s, next: 1 }
    }

    /// Sends `m`, returns the reply (checking that it answers this request).
    fn call(&mut self, m: &Message) -> Message {
        let id = self.next;
        self.next += 1;
        farmem_wire::write_message(&mut self.s, id, m).unwrap();
        self.reply(id)
    }

    fn reply(&mut self, id: u64) -> Message {
        let (got, m) = farmem_wire::read_message(&mut self.s)
            .unwrap()
            .expect("a reply, not the end of the connection");
        assert_eq!(got, id, "the reply carries its request's id");
        m
    }

    /// Writes raw bytes and reads the reply to request `id`.
    fn raw(&mut self, bytes: &[u8], id: u64) -> Message {
        self.s.write_all(bytes).unwrap();
        self.reply(id)
    }

    /// The node closed the connection (after its last reply).
    fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the connection should be closed: {other:?}"),
        }
    }

    fn hello(addr: SocketAddr, attach: Attach) -> (Client, u64, u64) {
        let mut c = Client::connect(addr);
        match c.call(&hello(TOKEN, attach)) {
            Message::Welcome {
                session, secret, ..
            } => (c, session, secret),
            m => panic!("{m:?}"),
        }
    }

    fn store(&mut self, keys: &[u64], fill: impl Fn(u64) -> u8) -> Message {
        let data = keys.iter().flat_map(|&k| page(k, fill(k))).collect();
        self.call(&Message::Store {
            keys: keys.to_vec(),
            data,
        })
    }

    fn fetch(&mut self, keys: &[u64]) -> Message {
        self.call(&Message::Fetch {
            keys: keys.to_vec(),
        })
    }
}

fn hello(token: &[u8], attach: Attach) -> Message {
    Message::Hello {
        token: token.to_vec(),
        name: format!("test[{}]", std::process::id()),
        attach,
    }
}

/// A page whose every 8 bytes name its key and a version: a page given back under the
/// wrong key or from the wrong session cannot pass for the right one.
fn page(key: u64, version: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(PAGE);
    for i in 0..(PAGE / 8) as u64 {
        let w = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 8) ^ version as u64;
        p.extend_from_slice(&w.to_le_bytes());
    }
    p
}

fn assert_pages(m: Message, keys: &[u64], version: impl Fn(u64) -> u8) {
    let Message::Pages { data } = m else {
        panic!("expected pages, got {m:?}")
    };
    assert_eq!(data.len(), keys.len() * PAGE);
    for (i, &k) in keys.iter().enumerate() {
        assert!(
            data[i * PAGE..(i + 1) * PAGE] == page(k, version(k))[..],
            "page {k} has the wrong bytes"
        );
    }
}

fn assert_error(m: Message, want: Code, contains: &str) -> String {
    match m {
        Message::Error { code, message } => {
            assert_eq!(code, want, "{message}");
            assert!(
                message.contains(contains),
                "{message:?} should say {contains:?}"
            );
            message
        }
        m => panic!("expected Error {want:?}, got {m:?}"),
    }
}

fn status(addr: SocketAddr) -> serde_json::Value {
    let json =
        farmem_node::query_status(&addr.to_string(), TOKEN, Duration::from_secs(10)).unwrap();
    serde_json::from_str(&json).unwrap()
}

/// Polls the node's status until `f` holds (at most 10 s).
fn wait_status(addr: SocketAddr, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        let s = status(addr);
        if f(&s) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: {s}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pages_round_trip_over_several_connections_of_one_session() {
    let n = node(64 << 20, Duration::from_secs(30));
    let addr = n.addr();
    let (mut first, session, secret) = Client::hello(addr, Attach::New);
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            sc.spawn(move || {
                let (mut c, s, _) = Client::hello(addr, Attach::Join { session, secret });
                assert_eq!(s, session);
                // 1024 pages per thread in batches of 256; overwritten once.
                let base = t * 10_000;
                for round in 0..2u8 {
                    for b in 0..4 {
                        let keys: Vec<u64> = (0..256).map(|i| base + b * 256 + i).collect();
                        assert_eq!(c.store(&keys, |k| (k as u8) ^ round), Message::Done);
                    }
                }
                for b in 0..4 {
                    let keys: Vec<u64> = (0..256).rev().map(|i| base + b * 256 + i).collect();
                    assert_pages(c.fetch(&keys), &keys, |k| (k as u8) ^ 1);
                }
                let gone: Vec<u64> = (0..16).map(|i| base + i).collect();
                assert_eq!(c.call(&Message::Discard { keys: gone }), Message::Done);
                assert_error(c.fetch(&[base + 3]), Code::Missing, "page");
                assert_pages(c.fetch(&[base + 16]), &[base + 16], |k| (k as u8) ^ 1);
            });
        }
    });
    // Every connection's pages are the session's.
    assert_pages(first.fetch(&[30_100]), &[30_100], |k| (k as u8) ^ 1);
    let s = status(addr);
    assert_eq!(s["pages"], 4 * (1024 - 16));
    assert_eq!(s["used_bytes"], 4 * (1024 - 16) * PAGE as u64);
    assert_eq!(s["sessions"], 1);
    assert_eq!(
        s["requests_total"],
        4 * 15 + 2,
        "every store, fetch and discard, the last fetch and this status"
    );
    let summary = n.stop();
    assert_eq!(summary.pages_stored, 4 * 2 * 1024);
    assert_eq!(
        summary.clients,
        5 + 1,
        "five sessions' connections and one status"
    );
}

#[test]
fn sessions_are_isolated() {
    let n = node(16 << 20, Duration::from_secs(30));
    let (mut a, sa, secret_a) = Client::hello(n.addr(), Attach::New);
    assert_eq!(a.store(&[1, 2, 3], |_| 0xa), Message::Done);
    let (mut b, sb, secret_b) = Client::hello(n.addr(), Attach::New);
    assert_ne!(sa, sb);
    assert_ne!(secret_a, secret_b);
    // B names A's keys: its own, empty namespace.
    assert_error(b.fetch(&[1]), Code::Missing, "page 1");
    assert_eq!(b.store(&[1], |_| 0xb), Message::Done);
    assert_pages(b.fetch(&[1]), &[1], |_| 0xb);
    assert_pages(a.fetch(&[1, 2, 3]), &[1, 2, 3], |_| 0xa);
    assert_eq!(a.call(&Message::Discard { keys: vec![1] }), Message::Done);
    assert_pages(b.fetch(&[1]), &[1], |_| 0xb);
    // Joining A needs A's secret.
    let mut c = Client::connect(n.addr());
    let m = c.call(&hello(
        TOKEN,
        Attach::Join {
            session: sa,
            secret: secret_b,
        },
    ));
    assert_error(m, Code::NoSession, &format!("no session {sa}"));
    c.assert_closed();
    let mut d = Client::connect(n.addr());
    let m = d.call(&hello(
        TOKEN,
        Attach::Clone {
            session: sa,
            secret: secret_a ^ 1,
        },
    ));
    assert_error(m, Code::NoSession, "secret");
}

#[test]
fn a_wrong_token_is_refused() {
    let n = node(1 << 20, Duration::from_secs(30));
    let mut c = Client::connect(n.addr());
    let m = c.call(&hello(b"guess", Attach::New));
    let msg = assert_error(m, Code::BadToken, "wrong token");
    assert!(!msg.contains("test-token"), "the token is never shown");
    c.assert_closed();
    let mut c = Client::connect(n.addr());
    let m = c.call(&Message::Status {
        token: b"".to_vec(),
    });
    assert_error(m, Code::BadToken, "wrong token");
    let e =
        farmem_node::query_status(&n.addr().to_string(), b"x", Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("wrong token"), "{e}");
    assert_eq!(status(n.addr())["sessions"], 0);
}

#[test]
fn an_insecure_node_takes_any_token() {
    let mut cfg = Config::new(1 << 20);
    cfg.log = false;
    let n = Server::bind("127.0.0.1:0", cfg).unwrap().spawn().unwrap();
    let mut c = Client::connect(n.addr());
    assert!(matches!(
        c.call(&hello(b"", Attach::New)),
        Message::Welcome { .. }
    ));
    let s = farmem_node::query_status(&n.addr().to_string(), b"", Duration::from_secs(5));
    assert!(s.unwrap().contains("\"token_required\":false"));
}

#[test]
fn a_full_node_refuses_the_whole_batch() {
    let n = node(8 * PAGE as u64, Duration::from_secs(30));
    let (mut a, _, _) = Client::hello(n.addr(), Attach::New);
    let old: Vec<u64> = (0..6).collect();
    assert_eq!(a.store(&old, |_| 1), Message::Done);
    // Keys 4 and 5 would be overwritten, 6..10 are new: 4 pages more than the 2 left.
    let batch: Vec<u64> = (4..10).collect();
    let msg = assert_error(a.store(&batch, |_| 2), Code::Full, "is full");
    assert!(
        msg.contains(&format!("memory node {} is full", n.addr())),
        "{msg}"
    );
    assert!(msg.contains(&format!("{} of {} bytes used", 6 * PAGE, 8 * PAGE)));
    assert_pages(a.fetch(&old), &old, |_| 1);
    assert_error(a.fetch(&[6]), Code::Missing, "page 6");
    let s = status(n.addr());
    assert_eq!(s["used_bytes"], 6 * PAGE as u64);
    assert_eq!(s["refused"], 2);
    // Overwrites fit in a full node; so do new pages up to the capacity.
    assert_eq!(a.store(&[0, 1, 6, 7], |_| 3), Message::Done);
    assert_pages(
        a.fetch(&[0, 7, 5]),
        &[0, 7, 5],
        |k| if k == 5 { 1 } else { 3 },
    );
    let full = format!("{} of {} bytes used", 8 * PAGE, 8 * PAGE);
    assert_error(a.store(&[8], |_| 3), Code::Full, &full);
    // The connection goes on after a refusal.
    assert_eq!(a.call(&Message::Discard { keys: vec![0] }), Message::Done);
    assert_eq!(a.store(&[8], |_| 3), Message::Done);
}

#[test]
fn bad_frames_are_never_applied_and_the_node_serves_on() {
    let n = node(16 << 20, Duration::from_secs(30));
    let (mut bystander, session, secret) = Client::hello(n.addr(), Attach::New);
    assert_eq!(bystander.store(&[1], |_| 1), Message::Done);
    let store = |id| {
        Message::Store {
            keys: vec![1, 2],
            data: [page(1, 9), page(2, 9)].concat(),
        }
        .encode(id)
    };

    // A byte flipped in the payload, in the header's length, in its flags.
    for at in [HEADER_LEN + 20, HEADER_LEN + PAGE, 7] {
        let (mut c, _, _) = Client::hello(n.addr(), Attach::Join { session, secret });
        let mut f = store(5);
        f[at] ^= 0x40;
        assert_error(c.raw(&f, 5), Code::Protocol, "not applied");
        c.assert_closed();
    }
    // Cut off in the middle: the node sees the end of the stream before the frame's end.
    let (mut c, _, _) = Client::hello(n.addr(), Attach::Join { session, secret });
    let f = store(6);
    c.s.write_all(&f[..f.len() / 2]).unwrap();
    c.s.shutdown(Shutdown::Write).unwrap();
    assert_error(c.reply(6), Code::Protocol, "truncated");
    c.assert_closed();
    // An unknown kind (with a correct CRC), and garbage that is no frame at all.
    let (mut c, _, _) = Client::hello(n.addr(), Attach::Join { session, secret });
    let mut f = Message::Done.encode(7);
    f[6] = 99;
    assert_error(c.raw(&f, 7), Code::Protocol, "unknown kind");
    c.assert_closed();
    let mut c = Client::connect(n.addr());
    c.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_error(
        c.reply(u64::from_le_bytes(*b"TP/1.1\r\n")),
        Code::Protocol,
        "not a farmem frame",
    );
    // Requests before Hello.
    let mut c = Client::connect(n.addr());
    assert_error(c.fetch(&[1]), Code::Protocol, "before Hello");
    c.assert_closed();

    // Nothing of those stores landed; the first client never noticed.
    assert_pages(bystander.fetch(&[1]), &[1], |_| 1);
    assert_error(bystander.fetch(&[2]), Code::Missing, "page 2");
    assert_eq!(bystander.store(&[3], |_| 3), Message::Done);
    let s = status(n.addr());
    assert_eq!(s["dropped_connections"], 7);
    assert_eq!(s["pages"], 2);
}

#[test]
fn another_protocol_version_is_named() {
    let n = node(1 << 20, Duration::from_secs(30));
    let mut c = Client::connect(n.addr());
    let mut f = hello(TOKEN, Attach::New).encode(42);
    f[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let m = c.raw(&f, 42);
    assert_error(
        m,
        Code::Version,
        &format!(
            "this node speaks protocol version {VERSION}, the client {}",
            VERSION + 1
        ),
    );
    c.assert_closed();
}

#[test]
fn clone_copies_pages_then_the_two_diverge() {
    let n = node(64 * PAGE as u64, Duration::from_secs(30));
    let (mut parent, session, secret) = Client::hello(n.addr(), Attach::New);
    let keys: Vec<u64> = (100..120).collect();
    assert_eq!(parent.store(&keys, |_| 1), Message::Done);
    let (mut child, cs, csecret) = Client::hello(n.addr(), Attach::Clone { session, secret });
    assert_ne!(cs, session);
    assert_ne!(csecret, secret);
    assert_pages(child.fetch(&keys), &keys, |_| 1);
    assert_eq!(status(n.addr())["used_bytes"], 40 * PAGE as u64);
    assert_eq!(child.store(&[100, 500], |_| 2), Message::Done);
    assert_eq!(parent.store(&[101, 600], |_| 3), Message::Done);
    assert_pages(parent.fetch(&[100, 101, 600]), &[100, 101, 600], |k| {
        if k == 100 { 1 } else { 3 }
    });
    assert_pages(child.fetch(&[100, 101, 500]), &[100, 101, 500], |k| {
        if k == 101 { 1 } else { 2 }
    });
    assert_error(parent.fetch(&[500]), Code::Missing, "page 500");
    assert_error(child.fetch(&[600]), Code::Missing, "page 600");
    // 42 pages held, 22 free: a third copy of 21 fits, a fourth does not.
    let (_c2, _, _) = Client::hello(n.addr(), Attach::Clone { session, secret });
    let mut c3 = Client::connect(n.addr());
    let m = c3.call(&hello(TOKEN, Attach::Clone { session, secret }));
    assert_error(m, Code::Full, "is full");
    assert_eq!(status(n.addr())["used_bytes"], 63 * PAGE as u64);
}

#[test]
fn a_dropped_session_waits_out_its_grace_and_bye_frees_it() {
    let n = node(16 << 20, Duration::from_secs(60));
    let (mut a, session, secret) = Client::hello(n.addr(), Attach::New);
    assert_eq!(a.store(&[7, 8], |_| 7), Message::Done);
    drop(a); // no Bye: a network blip
    wait_status(n.addr(), "the connection's end is seen", |s| {
        s["session_list"][0]["connections"] == 0
    });
    let s = status(n.addr());
    assert_eq!(s["sessions"], 1);
    assert!(s["session_list"][0]["grace_left_secs"].as_f64().unwrap() > 1.0);
    let (mut b, again, _) = Client::hello(n.addr(), Attach::Join { session, secret });
    assert_eq!(again, session);
    assert_pages(b.fetch(&[7, 8]), &[7, 8], |_| 7);
    assert!(status(n.addr())["session_list"][0]["grace_left_secs"].is_null());
    assert_eq!(b.call(&Message::Bye { free: true }), Message::Done);
    b.assert_closed();
    let s = status(n.addr());
    assert_eq!(
        (s["sessions"].as_u64(), s["used_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    let mut c = Client::connect(n.addr());
    let m = c.call(&hello(TOKEN, Attach::Join { session, secret }));
    assert_error(m, Code::NoSession, "freed");
}

#[test]
fn bye_free_waits_for_the_sessions_other_connections() {
    let n = node(16 << 20, Duration::from_secs(60));
    let (mut a, session, secret) = Client::hello(n.addr(), Attach::New);
    let (mut b, _, _) = Client::hello(n.addr(), Attach::Join { session, secret });
    assert_eq!(a.store(&[1], |_| 1), Message::Done);
    assert_eq!(a.call(&Message::Bye { free: true }), Message::Done);
    assert_pages(b.fetch(&[1]), &[1], |_| 1);
    drop(b); // the last connection, gone without a Bye: freed, no grace
    wait_status(n.addr(), "freed with its last connection", |s| {
        s["sessions"] == 0 && s["used_bytes"] == 0
    });
}

#[test]
fn an_orphaned_session_is_freed_when_its_grace_runs_out() {
    let n = node(16 << 20, Duration::from_millis(300));
    let (mut a, session, secret) = Client::hello(n.addr(), Attach::New);
    assert_eq!(a.store(&[1, 2, 3], |_| 1), Message::Done);
    drop(a);
    wait_status(n.addr(), "freed after the grace", |s| {
        s["sessions"] == 0 && s["used_bytes"] == 0
    });
    let mut c = Client::connect(n.addr());
    let m = c.call(&hello(TOKEN, Attach::Join { session, secret }));
    assert_error(m, Code::NoSession, "grace period");
}

#[test]
fn status_counts_clients_and_requests() {
    let n = node(16 << 20, Duration::from_secs(30));
    let (mut a, _, _) = Client::hello(n.addr(), Attach::New);
    for i in 0..10 {
        assert_eq!(a.store(&[i], |_| 1), Message::Done);
    }
    let s = status(n.addr());
    assert_eq!(s["clients"], 2, "a and the status connection: {s}");
    assert_eq!(s["pages"], 10);
    assert_eq!(s["capacity_bytes"], 16 << 20);
    assert_eq!(s["requests_total"], 11, "10 stores and this status");
    assert!(s["requests_per_sec"].as_f64().unwrap() > 0.0);
    assert!(s["uptime_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(
        s["session_list"][0]["name"],
        format!("test[{}]", std::process::id())
    );
}

#[test]
fn stopping_closes_connections_and_sums_up() {
    let n = node(16 << 20, Duration::from_secs(30));
    let (mut a, _, _) = Client::hello(n.addr(), Attach::New);
    assert_eq!(a.store(&[1, 2], |_| 1), Message::Done);
    let t = Instant::now();
    let summary = n.stop();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_error(a.reply(0), Code::ShuttingDown, "is shutting down");
    a.assert_closed();
    assert_eq!(summary.clients, 1);
    assert_eq!(summary.sessions, 1);
    assert_eq!(summary.pages_stored, 2);
    assert_eq!(summary.bytes_left, 2 * PAGE as u64);
    assert!(
        summary
            .to_string()
            .starts_with("served 1 clients in 1 sessions")
    );
}

#[test]
fn parallel_sessions_with_the_same_keys_never_see_each_others_pages() {
    let n = node(64 << 20, Duration::from_secs(30));
    let addr = n.addr();
    std::thread::scope(|sc| {
        for t in 0..4u8 {
            sc.spawn(move || {
                let (mut c, session, secret) = Client::hello(addr, Attach::New);
                let keys: Vec<u64> = (0..256).collect();
                for round in 0..3u8 {
                    let v = t * 16 + round;
                    assert_eq!(c.store(&keys, |_| v), Message::Done);
                    assert_pages(c.fetch(&keys), &keys, |_| v);
                }
                // A forked child of each, while the others store.
                let (mut child, _, _) = Client::hello(addr, Attach::Clone { session, secret });
                assert_pages(child.fetch(&keys), &keys, |_| t * 16 + 2);
                assert_eq!(child.call(&Message::Bye { free: true }), Message::Done);
                assert_eq!(c.call(&Message::Bye { free: true }), Message::Done);
            });
        }
    });
    let s = status(addr);
    assert_eq!(
        (s["sessions"].as_u64(), s["used_bytes"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let n = node(16 << 20, Duration::from_secs(30));
    let (mut c, _, _) = Client::hello(n.addr(), Attach::New);
    let mut burst = Vec::new();
    for k in 0..20u64 {
        let m = Message::Store {
            keys: vec![k],
            data: page(k, 4),
        };
        burst.extend(m.encode(100 + 2 * k));
        burst.extend(Message::Fetch { keys: vec![k] }.encode(101 + 2 * k));
    }
    c.s.write_all(&burst).unwrap();
    for k in 0..20u64 {
        assert_eq!(c.reply(100 + 2 * k), Message::Done);
        assert_pages(c.reply(101 + 2 * k), &[k], |_| 4);
    }
}

#[test]
fn a_client_that_does_not_read_does_not_hold_up_the_stop() {
    let n = node(16 << 20, Duration::from_secs(30));
    let (mut c, _, _) = Client::hello(n.addr(), Attach::New);
    let keys: Vec<u64> = (0..256).collect();
    assert_eq!(c.store(&keys, |_| 1), Message::Done);
    // 32 MiB of replies that are never read: the node's writer blocks.
    let fetch = Message::Fetch { keys }.encode(9);
    let burst: Vec<u8> = (0..32).flat_map(|_| fetch.iter().copied()).collect();
    c.s.write_all(&burst).unwrap();
    wait_status(n.addr(), "the fetches are being answered", |s| {
        s["fetches"].as_u64() > Some(0)
    });
    let t = Instant::now();
    let summary = n.stop();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        summary.requests < 1 + 32 + 1,
        "not every fetch was answered"
    );
}
