//! `farmem bench-remote`: the remote tier beside the network's own floor, in one run.
//!
//! Starts a memory node (`farmem serve`) as a child process on loopback and measures:
//! the round trip of a 4 KiB reply over a plain loopback TCP connection (the floor: what
//! any remote fetch must pay), farmem's major faults on the remote tier one page at a
//! time, and how many pages per second one client pulls with readahead and batching,
//! with the node's CPU time per page.

use anyhow::{Context, Result, ensure};
use clap::Args;
use farmem::probe::Floor;
use farmem::{Engine, FaultMode, PrefetchKind};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use crate::node_child::NodeChild;

#[derive(Args, Debug)]
pub struct BenchRemoteArgs {
    /// Faults (and round trips) measured per repetition.
    #[arg(long, default_value_t = 20000)]
    pub pages: usize,
    /// Pages in the region the pull test reads sequentially.
    #[arg(long, default_value_t = 65536)]
    pub pull_pages: usize,
    /// Repetitions; figures are medians of the per-repetition figures.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// One JSON object per line per figure.
    #[arg(long)]
    pub json: bool,
}

/// The floor: a client sends a 24-byte request and reads a 4 KiB + 24-byte reply over a
/// loopback TCP connection to a thread that answers at once, `n` times. With `poll`, the
/// client spins on non-blocking reads (as the remote tier does for its first 50 us)
/// instead of sleeping in `recv`.
fn tcp_round_trip(n: usize, poll: bool) -> Result<Floor> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut req = [0u8; 24];
        let reply = vec![0x5au8; 4096 + 24];
        loop {
            if s.read_exact(&mut req).is_err() {
                return Ok(());
            }
            s.write_all(&reply)?;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_nonblocking(poll)?;
    let mut reply = vec![0u8; 4096 + 24];
    let mut ns = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        c.write_all(&[1u8; 24])?;
        let mut got = 0;
        while got < reply.len() {
            match c.read(&mut reply[got..]) {
                Ok(0) => anyhow::bail!("the echo thread closed the connection"),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e.into()),
            }
        }
        if i >= 100 {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    drop(c);
    let _ = server.join();
    Ok(Floor::of(ns))
}

fn engine_on(node: &NodeChild, budget_pages: usize, prefetch: PrefetchKind) -> Result<Engine> {
    let backend = farmem::backend::from_uri(&node.uri())
        .with_context(|| format!("cannot use the memory node at {}", node.addr()))?;
    Ok(Engine::builder()
        .local_budget(budget_pages * 4096)
        .fault_mode(FaultMode::Sigbus)
        .prefetch(prefetch)
        .backend(backend)
        .build()?)
}

/// farmem's major faults on the remote tier: random reads of a region four times its
/// budget, each read timed, keeping those that took a major fault.
fn remote_faults(node: &NodeChild, pages: usize) -> Result<Floor> {
    let engine = engine_on(node, (pages / 4).max(64), PrefetchKind::None)?;
    crate::floor::timed_major_faults(&engine, pages)
}

/// Pages per second one client pulls reading a region sequentially with readahead (its
/// budget an eighth of it), and the node's CPU microseconds per page pulled.
fn pull(node: &NodeChild, pages: usize) -> Result<(f64, f64)> {
    let engine = engine_on(node, (pages / 8).max(256), PrefetchKind::Readahead)?;
    let region = engine.map(pages * 4096)?;
    let base = region.as_ptr();
    for p in 0..pages {
        // SAFETY: inside the region.
        unsafe { base.add(p * 4096).cast::<u64>().write_volatile(!(p as u64)) };
    }
    // The writes pushed all but the budget's worth out to the node: read it back from cold.
    let fetched0 = engine.stats().fetched_pages;
    let cpu0 = node.cpu_seconds()?;
    let t = Instant::now();
    for p in 0..pages {
        // SAFETY: inside the region.
        let v = unsafe { base.add(p * 4096).cast::<u64>().read_volatile() };
        ensure!(v == !(p as u64), "page {p} came back wrong");
    }
    let secs = t.elapsed().as_secs_f64();
    let fetched = (engine.stats().fetched_pages - fetched0) as f64;
    let cpu = node.cpu_seconds()? - cpu0;
    Ok((fetched / secs, cpu * 1e6 / fetched.max(1.0)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: BenchRemoteArgs) -> Result<()> {
    let n = a.pages.max(1000);
    let runs = a.runs.max(1);
    let capacity = ((n.max(a.pull_pages) * 4096 * 3) as u64).max(256 << 20);
    let node = NodeChild::start(capacity)?;
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe { std::env::set_var("FARMEM_TOKEN_FILE", node.token_file()) };
    eprintln!(
        "bench-remote: memory node at {} (pid {}), {} run(s) of {n} faults, pull over {} pages",
        node.addr(),
        node.pid(),
        runs,
        a.pull_pages
    );
    let (mut rtt, mut rttp, mut fault, mut rate, mut cpu) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        rtt.push(tcp_round_trip(n, false)?);
        rttp.push(tcp_round_trip(n, true)?);
        fault.push(remote_faults(&node, n)?);
        let (r, c) = pull(&node, a.pull_pages)?;
        rate.push(r);
        cpu.push(c);
    }
    let m = |v: &[Floor], f: fn(&Floor) -> f64| median(v.iter().map(f).collect());
    let (rtt50, rtt99) = (m(&rtt, |f| f.p50_us), m(&rtt, |f| f.p99_us));
    let (rttp50, rttp99) = (m(&rttp, |f| f.p50_us), m(&rttp, |f| f.p99_us));
    let (f50, f99) = (m(&fault, |f| f.p50_us), m(&fault, |f| f.p99_us));
    let (rate, cpu) = (median(rate), median(cpu));
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tcp_4k_round_trip_p50_us": rtt50, "tcp_4k_round_trip_p99_us": rtt99,
                "tcp_4k_round_trip_polling_p50_us": rttp50,
                "tcp_4k_round_trip_polling_p99_us": rttp99,
                "fault_p50_over_polling_round_trip_p50": f50 / rttp50,
                "remote_fault_p50_us": f50, "remote_fault_p99_us": f99,
                "fault_p50_over_round_trip_p50": f50 / rtt50,
                "pull_pages_per_s": rate, "node_cpu_us_per_page": cpu, "runs": runs,
            })
        );
    } else {
        println!("medians of {runs} run(s):");
        println!(
            "  loopback TCP round trip, 4 KiB reply   p50 {rtt50:>8.2} us  p99 {rtt99:>8.2} us"
        );
        println!(
            "  same, client busy-polling              p50 {rttp50:>8.2} us  p99 {rttp99:>8.2} us"
        );
        println!("  farmem major fault, remote tier        p50 {f50:>8.2} us  p99 {f99:>8.2} us");
        println!(
            "  remote fault p50 / round trip p50      {:.2}x (client polling: {:.2}x)",
            f50 / rtt50,
            f50 / rttp50
        );
        println!(
            "  one client's sequential pull           {rate:>10.0} pages/s ({:.0} MiB/s)",
            rate * 4096.0 / (1 << 20) as f64
        );
        if cpu > 0.0 {
            println!("  node CPU per page pulled               {cpu:>8.2} us");
        } else {
            // /proc counts CPU time in clock ticks (10 ms): a short pull may show none.
            println!(
                "  node CPU per page pulled               n/a (pull too short to measure; raise --pull-pages)"
            );
        }
    }
    Ok(())
}
