//! The remote far tier (`tcp://HOST:PORT`) against a fake memory node on loopback: real
//! round trips from an engine under a tiny budget, clear errors at connect time, damaged
//! replies that are fetched again, a node that dies, stalls, fills up or restarts (the
//! program must stop loudly, in time), and fork (the child gets a copy of the session).

mod fake_node;

use fake_node::FakeNode;
use farmem::backend::{Backend, PAGE_SIZE, PageKey, Remote, RemoteConfig, TierError};
use farmem::{Engine, FaultMode, PrefetchKind};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

const TOKEN: &[u8] = b"test-token";

fn config(node: &FakeNode, timeout: Duration) -> RemoteConfig {
    let mut c = RemoteConfig::new(node.addr.to_string());
    c.token = TOKEN.to_vec();
    c.timeout = timeout;
    c
}

fn remote(node: &FakeNode, timeout: Duration) -> Arc<Remote> {
    Arc::new(Remote::connect(config(node, timeout)).unwrap())
}

/// A page whose every byte depends on (page, round).
fn pattern(page: usize, round: u64, out: &mut [u8]) {
    let mut x = (page as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round;
    for chunk in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

#[test]
fn an_engine_keeps_every_byte_on_a_node() {
    round_trips(FaultMode::Auto);
}

#[test]
fn an_engine_in_thread_mode_keeps_every_byte_on_a_node() {
    round_trips(FaultMode::Thread);
}

fn round_trips(mode: FaultMode) {
    let node = FakeNode::start(TOKEN);
    let tier = remote(&node, Duration::from_secs(10));
    let engine = Engine::builder()
        .local_budget(24 * PAGE_SIZE)
        .backend(tier.clone())
        .prefetch(PrefetchKind::Readahead)
        .fault_mode(mode)
        .build()
        .unwrap();
    let (threads, per_thread, rounds) = (4usize, 64usize, 3u64);
    let region = engine.map(threads * per_thread * PAGE_SIZE).unwrap();
    std::thread::scope(|s| {
        for t in 0..threads {
            let region = &region;
            s.spawn(move || {
                let mut page = vec![0u8; PAGE_SIZE];
                let mut back = vec![0u8; PAGE_SIZE];
                for round in 1..=rounds {
                    for i in 0..per_thread {
                        let p = t * per_thread + i;
                        pattern(p, round, &mut page);
                        region.write(p * PAGE_SIZE, &page).unwrap();
                    }
                    for i in 0..per_thread {
                        let p = t * per_thread + i;
                        pattern(p, round, &mut page);
                        region.read(p * PAGE_SIZE, &mut back).unwrap();
                        assert!(page == back, "thread {t}: page {p} round {round} differs");
                    }
                }
            });
        }
    });
    let st = engine.stats();
    eprintln!("{st}");
    assert!(st.peak_resident_pages <= 24);
    assert!(st.major_faults > 0 && st.written_back_pages > 0);
    assert!(node.state.fetches.load(SeqCst) > 0 && node.state.stores.load(SeqCst) > 0);
    // 4 fetch + 2 write-back connections, one session; nothing had to be replaced.
    assert_eq!(node.state.accepted.load(SeqCst), 6);
    assert_eq!(node.state.news.load(SeqCst), 1);
    assert_eq!(tier.reconnects(), 0);
    assert!(st.far_pages > 0 && st.far_pages as usize <= node.pages());
    assert_eq!(engine.backend_name(), node.uri());
    drop(region);
    drop(engine);
    drop(tier);
    // Dropping the tier says Bye and frees the session.
    let t0 = Instant::now();
    while node.sessions() > 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(node.sessions(), 0, "the session was not freed");
}

#[test]
fn batches_larger_than_the_wire_allows_are_split() {
    let node = FakeNode::start(TOKEN);
    let tier = remote(&node, Duration::from_secs(10));
    let n = farmem_wire::MAX_BATCH + 17;
    let keys: Vec<PageKey> = (0..n as u64).map(|p| PageKey::new(2, p * 3)).collect();
    let mut data = vec![0u8; n * PAGE_SIZE];
    for (i, p) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
        pattern(i, 7, p);
    }
    tier.store(&keys, &data).unwrap();
    assert_eq!(tier.stats().pages, n as u64);
    let mut out = vec![0u8; n * PAGE_SIZE];
    tier.fetch(&keys, &mut out).unwrap();
    assert!(out == data);
    tier.discard(&keys[..10]);
    assert_eq!(tier.stats().pages, n as u64 - 10);
    assert_eq!(node.pages(), n - 10);
    match tier.fetch(&keys[..1], &mut out[..PAGE_SIZE]) {
        Err(TierError::Missing { key }) => assert_eq!(key, keys[0]),
        other => panic!("{other:?}"),
    }
}

// ---- Errors at connect time: one clear line before the program runs.

fn connect_error(c: RemoteConfig) -> String {
    match Remote::connect(c) {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_wrong_token_is_refused_clearly() {
    let node = FakeNode::start(TOKEN);
    let mut c = config(&node, Duration::from_secs(10));
    c.token = b"guess".to_vec();
    let e = connect_error(c);
    assert!(e.contains("refused this program's token"), "{e}");
    assert!(
        e.contains("--token-file") && e.contains(&node.addr.to_string()),
        "{e}"
    );
    // from_uri reads the token from the environment; the tests set none.
    if std::env::var_os("FARMEM_TOKEN").is_none() && std::env::var_os("FARMEM_TOKEN_FILE").is_none()
    {
        let e = farmem::backend::from_uri(&node.uri())
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused this program's token"), "{e}");
    }
}

#[test]
fn an_unreachable_node_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = farmem::backend::from_uri(&format!("tcp://127.0.0.1:{port}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("cannot reach the memory node at 127.0.0.1:{port}")),
        "{e}"
    );
    assert!(e.contains("farmem serve"), "{e}");
    for bad in ["tcp://", "tcp://no-port", "tcp://[::1"] {
        let e = farmem::backend::from_uri(bad).unwrap_err().to_string();
        assert!(e.contains("HOST:PORT"), "{bad}: {e}");
    }
}

#[test]
fn another_protocol_version_is_named() {
    let node = FakeNode::start(TOKEN);
    node.state.version.store(9, SeqCst);
    let e = connect_error(config(&node, Duration::from_secs(10)));
    assert!(
        e.contains("protocol version 9") && e.contains("same farmem release"),
        "{e}"
    );
}

#[test]
fn something_else_on_the_port_is_named() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            use std::io::Write;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut c = RemoteConfig::new(addr.to_string());
    c.timeout = Duration::from_secs(5);
    let e = connect_error(c);
    assert!(e.contains("is not a farmem memory node"), "{e}");
}

// ---- Damaged replies: never applied; the connection is replaced and the fetch retried.

fn stored_pages(tier: &Remote, n: usize) -> (Vec<PageKey>, Vec<u8>) {
    let keys: Vec<PageKey> = (0..n as u64).map(|p| PageKey::new(1, p)).collect();
    let mut data = vec![0u8; n * PAGE_SIZE];
    for (i, p) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
        pattern(i, 1, p);
    }
    tier.store(&keys, &data).unwrap();
    (keys, data)
}

fn survives(damage: impl Fn(&FakeNode), timeout: Duration) {
    let node = FakeNode::start(TOKEN);
    let tier = remote(&node, timeout);
    let (keys, data) = stored_pages(&tier, 8);
    let accepted = node.state.accepted.load(SeqCst);
    damage(&node);
    let mut out = vec![0u8; data.len()];
    tier.fetch(&keys, &mut out).unwrap();
    assert!(out == data, "the retried fetch returned other bytes");
    assert_eq!(tier.reconnects(), 1);
    assert_eq!(node.state.accepted.load(SeqCst), accepted + 1);
    assert_eq!(
        node.state.joins.load(SeqCst),
        6,
        "5 joins at start, 1 after"
    );
    // The replacement connection works on.
    let mut again = vec![0u8; data.len()];
    tier.fetch(&keys, &mut again).unwrap();
    assert!(again == data);
}

#[test]
fn a_corrupt_reply_is_fetched_again_on_a_new_connection() {
    survives(
        |n| n.state.corrupt.store(1, SeqCst),
        Duration::from_secs(10),
    );
}

#[test]
fn a_truncated_reply_is_fetched_again_on_a_new_connection() {
    survives(
        |n| n.state.truncate.store(1, SeqCst),
        Duration::from_secs(10),
    );
}

#[test]
fn an_unanswered_request_is_sent_again_after_the_attempt_timeout() {
    // A 2 s deadline gives half-second attempts.
    survives(|n| n.state.swallow.store(1, SeqCst), Duration::from_secs(2));
}

#[test]
fn dropped_connections_are_replaced() {
    let node = FakeNode::start(TOKEN);
    let tier = remote(&node, Duration::from_secs(10));
    let (keys, data) = stored_pages(&tier, 4);
    node.drop_connections();
    let mut out = vec![0u8; data.len()];
    tier.fetch(&keys, &mut out).unwrap();
    assert!(out == data);
    tier.store(&keys, &data).unwrap();
    assert_eq!(
        tier.reconnects(),
        2,
        "one fetch and one write-back connection"
    );
}

#[test]
fn a_restarted_node_fails_at_once_and_for_good() {
    let node = FakeNode::start(TOKEN);
    let tier = remote(&node, Duration::from_secs(10));
    let (keys, _) = stored_pages(&tier, 2);
    node.restart();
    let t0 = Instant::now();
    let mut out = vec![0u8; 2 * PAGE_SIZE];
    let e = tier.fetch(&keys, &mut out).unwrap_err().to_string();
    assert!(e.contains("no longer has this program's pages"), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "it waited for the deadline"
    );
    let e2 = tier.fetch(&keys, &mut out).unwrap_err().to_string();
    assert_eq!(e, e2);
}

// ---- The program stops loudly, in time. Each scenario runs in a child process.

const CHILD_ENV: &str = "FARMEM_TEST_REMOTE_CHILD";
const PAGES: usize = 256;

fn child_engine(node: &FakeNode) -> (Engine, farmem::Region) {
    let tier = remote(node, Duration::from_secs(2));
    let e = Engine::builder()
        .local_budget(32 * PAGE_SIZE)
        .backend(tier)
        .prefetch(PrefetchKind::None)
        .build()
        .unwrap();
    let r = e.map(PAGES * PAGE_SIZE).unwrap();
    (e, r)
}

fn write_all(r: &farmem::Region, round: u64) {
    let mut page = vec![0u8; PAGE_SIZE];
    for p in 0..PAGES {
        pattern(p, round, &mut page);
        r.write(p * PAGE_SIZE, &page).unwrap();
    }
}

fn check_all(r: &farmem::Region, round: u64) -> Result<(), usize> {
    let (mut want, mut got) = (vec![0u8; PAGE_SIZE], vec![0u8; PAGE_SIZE]);
    for p in 0..PAGES {
        pattern(p, round, &mut want);
        r.read(p * PAGE_SIZE, &mut got).unwrap();
        if want != got {
            return Err(p);
        }
    }
    Ok(())
}

fn failing_scenario(which: &str) {
    let node = FakeNode::start(TOKEN);
    let (_e, r) = child_engine(&node);
    if which == "full" {
        node.state.full.store(true, SeqCst);
    }
    write_all(&r, 1);
    match which {
        "dead" => node.die(),
        "shut down" => node.shut_down(),
        "stalled" => node.state.stall.store(true, SeqCst),
        "restarted" => node.restart(),
        _ => {}
    }
    if let Err(p) = check_all(&r, 1) {
        println!("WRONG DATA at page {p}");
        std::process::exit(3);
    }
    println!("COMPLETED");
}

fn fork_scenario() {
    farmem::fork::install_handlers().unwrap();
    let node = FakeNode::start(TOKEN);
    let (_e, r) = child_engine(&node);
    write_all(&r, 1);
    // SAFETY: the child reads the region (through the engine, which the fork handlers
    // made its own) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match check_all(&r, 1) {
            Ok(()) => 0,
            Err(p) => {
                eprintln!("child: page {p} is not the snapshot");
                3
            }
        };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // The parent overwrites everything while the child reads its snapshot.
    for round in 2..=4 {
        write_all(&r, round);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    check_all(&r, 4).expect("the parent's own pages");
    assert_eq!(node.state.clones.load(SeqCst), 1);
    assert!(node.sessions() >= 1);
    println!("FORK OK");
}

/// A process that leaves with `_exit` (no destructors), with or without the exit hook's
/// farewell first; the node is the parent's.
fn exit_scenario(farewell: bool) {
    use std::io::Write;
    let mut c = RemoteConfig::new(std::env::var("FARMEM_TEST_NODE").unwrap());
    c.token = TOKEN.to_vec();
    let tier = Remote::connect(c).unwrap();
    let (keys, data) = stored_pages(&tier, 4);
    if farewell {
        tier.before_exit();
    }
    // Everything still works until the process is gone.
    let mut out = vec![0u8; data.len()];
    tier.fetch(&keys, &mut out).unwrap();
    assert!(out == data);
    for _ in 0..4 {
        tier.store(&keys, &data).unwrap();
    }
    println!("EXIT OK");
    std::io::stdout().flush().unwrap();
    // SAFETY: leaving without destructors, as a process that exits does after its hooks.
    unsafe { libc::_exit(0) };
}

#[test]
fn child_scenario() {
    // Runs only as the child of the tests below.
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("fork") => fork_scenario(),
        Ok("exit") => exit_scenario(true),
        Ok("exit without farewell") => exit_scenario(false),
        Ok(which) => failing_scenario(which),
        Err(_) => {}
    }
}

/// Runs a scenario in a child process; returns its status, stdout and stderr. A child
/// that has not finished in a minute is killed and the test fails.
fn run_child(which: &str) -> (std::process::ExitStatus, String, String, Duration) {
    run_child_env(which, &[])
}

fn run_child_env(
    which: &str,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String, Duration) {
    let exe = std::env::current_exe().unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_scenario",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, which)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipes.0.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipes.1.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{which}: the program hung (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    (status, out.join().unwrap(), err.join().unwrap(), took)
}

fn assert_loud_stop(which: &str, expect: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let (status, stdout, stderr, took) = run_child(which);
    assert!(
        !stdout.contains("WRONG DATA"),
        "{which}: the program saw wrong data:\n{stdout}"
    );
    assert!(
        !stdout.contains("COMPLETED"),
        "{which}: the failure went unnoticed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{which}: expected an abort; stderr:\n{stderr}"
    );
    for e in ["farmem: fatal:", "the far tier `tcp://127.0.0.1:"]
        .iter()
        .chain(expect)
    {
        assert!(stderr.contains(e), "{which}: stderr lacks `{e}`:\n{stderr}");
    }
    eprintln!("{which}: stopped after {took:?}: {}", stderr.trim());
}

#[test]
fn a_dead_node_stops_the_program() {
    assert_loud_stop(
        "dead",
        &["did not answer", "far pages on it are lost", "farmem serve"],
    );
}

#[test]
fn a_node_that_shuts_down_stops_the_program_saying_so() {
    assert_loud_stop(
        "shut down",
        &[
            "did not answer",
            "ShuttingDown: the node is stopping",
            "far pages on it are lost",
        ],
    );
}

#[test]
fn a_stalled_node_stops_the_program() {
    assert_loud_stop("stalled", &["did not answer", "far pages on it are lost"]);
}

#[test]
fn a_restarted_node_stops_the_program() {
    assert_loud_stop("restarted", &["no longer has this program's pages"]);
}

#[test]
fn a_full_node_stops_the_program() {
    assert_loud_stop("full", &["is full", "node full: 1024 of 1024 MiB in use"]);
}

/// `before_exit` (the preload's exit hook) lets the node free the session once the
/// process is gone; without it, the session waits for the node's grace period.
#[test]
fn an_exiting_process_leaves_no_session_behind() {
    for (which, left) in [("exit", 0), ("exit without farewell", 1)] {
        let node = FakeNode::start(TOKEN);
        let addr = node.addr.to_string();
        let (status, stdout, stderr, _) = run_child_env(which, &[("FARMEM_TEST_NODE", &addr)]);
        assert!(
            status.success() && stdout.contains("EXIT OK"),
            "{which}: {status:?}\n{stdout}\n{stderr}"
        );
        let t0 = Instant::now();
        while node.sessions() != left && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let every connection's end reach the node before looking again.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(node.sessions(), left, "{which}");
        assert_eq!(node.state.byes.load(SeqCst), 1 - left, "{which}");
    }
}

#[test]
fn a_forked_child_reads_its_snapshot_from_a_cloned_session() {
    let (status, stdout, stderr, _) = run_child("fork");
    assert!(
        status.success() && stdout.contains("FORK OK"),
        "status {status:?}\n{stdout}\n{stderr}"
    );
}

// ---- Measurement (not run by default): how a fetch should wait for its reply.

/// One setting of the measurement: p50 and p99 (us) of a one-page fetch through the tier
/// and of a major fault through the engine (random reads, no prefetch, budget 1/64).
fn thread_cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

fn measure_once(node: &FakeNode, poll_us: u64) -> [f64; 5] {
    let mut c = config(node, Duration::from_secs(10));
    c.poll = Duration::from_micros(poll_us);
    c.fetch_conns = 1;
    let tier = Arc::new(Remote::connect(c).unwrap());
    let (keys, _) = stored_pages(&tier, 64);
    let mut out = vec![0u8; PAGE_SIZE];
    let mut lat = Vec::with_capacity(1000);
    let cpu0 = thread_cpu_us();
    for i in 0..1000 {
        let t = Instant::now();
        tier.fetch(&keys[i % 64..i % 64 + 1], &mut out).unwrap();
        lat.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    let cpu = (thread_cpu_us() - cpu0) / 1000.0;
    lat.sort_by(f64::total_cmp);
    let e = Engine::builder()
        .local_budget(64 * PAGE_SIZE)
        .backend(tier.clone())
        .prefetch(PrefetchKind::None)
        .build()
        .unwrap();
    let pages = 4096;
    let r = e.map(pages * PAGE_SIZE).unwrap();
    for p in 0..pages {
        r.write(p * PAGE_SIZE, &(p as u64).to_ne_bytes()).unwrap();
    }
    e.reset_stats();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let base = r.as_ptr() as usize;
    for _ in 0..1500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x as usize) % pages;
        // SAFETY: inside the region.
        let v = unsafe { ((base + p * PAGE_SIZE) as *const u64).read_volatile() };
        assert_eq!(v, p as u64);
    }
    let st = e.stats();
    [
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        st.major_latency.p50_us,
        st.major_latency.p99_us,
        cpu,
    ]
}

/// Busy-polling against blocking `recv` on loopback, in the fault path, with the node's
/// thread on the program's CPU, on the other CPU, and where the scheduler puts it. The
/// settings alternate so that a noisy neighbour hurts them alike; the table holds
/// medians of the repetitions. Run it with
/// `cargo test --release -p farmem --test remote measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_busy_poll_against_blocking() {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let polls: Vec<u64> = std::env::var("POLLS")
        .ok()
        .map(|v| v.split(',').map(|p| p.parse().unwrap()).collect())
        .unwrap_or(vec![0, 20, 50, 200]);
    println!(
        "placement | poll_us | fetch p50 | fetch p99 | fetch CPU | major fault p50 | major fault p99 (us, medians of {reps})"
    );
    let placements = std::env::var("PLACEMENTS").unwrap_or("same CPU,other CPU,unpinned".into());
    for placement in placements.split(',') {
        let node = FakeNode::start(TOKEN);
        let mut rows: Vec<Vec<[f64; 5]>> = vec![vec![]; polls.len()];
        std::thread::scope(|s| {
            s.spawn(|| {
                match placement {
                    "same CPU" => {
                        fake_node::pin_to(0);
                        node.state.cpu.store(0, SeqCst);
                    }
                    "other CPU" => {
                        fake_node::pin_to(0);
                        node.state.cpu.store(1, SeqCst);
                    }
                    _ => {}
                }
                for _ in 0..reps {
                    for (i, &poll) in polls.iter().enumerate() {
                        rows[i].push(measure_once(&node, poll));
                    }
                }
            });
        });
        for (i, &poll) in polls.iter().enumerate() {
            let med = |k: usize| {
                let mut x: Vec<f64> = rows[i].iter().map(|r| r[k]).collect();
                x.sort_by(f64::total_cmp);
                x[x.len() / 2]
            };
            println!(
                "{placement:>9} | {poll:>7} | {:>9.1} | {:>9.1} | {:>9.1} | {:>15.1} | {:>15.1}",
                med(0),
                med(1),
                med(4),
                med(2),
                med(3)
            );
        }
    }
}
