//! The phases of a Redis measurement: load a dataset, run timed reads from several
//! clients, read every key back, and save with `BGSAVE` and reload the dump elsewhere.
//! Every value that comes back is checked byte for byte ([`Dataset`]).

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::Client;
use super::dataset::{Dataset, LRANGE_COUNT, WorkloadKind};
use super::resp::ValueRef;
use super::server::{RedisServer, ServerConfig};
use super::{RDB_FILE, RedisError};
use crate::pattern::{SplitMix64, mix64};

/// A load batch is flushed once it holds this many bytes...
const LOAD_BATCH_BYTES: usize = 4 << 20;
/// ...or this many requests.
const LOAD_BATCH_REQUESTS: usize = 256;
/// Requests in flight while reading every key back.
const VERIFY_PIPELINE: usize = 16;
/// Problems quoted in a result (the counts include all of them).
const KEEP_PROBLEMS: usize = 5;

/// What loading took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Keys written.
    pub keys: u64,
    /// Value bytes written.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Writes every key of `dataset` (pipelined `SET`s, or one `RPUSH` of the whole list per
/// key), checking every reply.
pub fn load(client: &mut Client, dataset: &Dataset) -> Result<LoadResult, RedisError> {
    let t0 = Instant::now();
    let mut value = Vec::new();
    let mut elements: Vec<Vec<u8>> = Vec::new();
    let mut batch_first = 0u64;
    for i in 0..dataset.keys() {
        let key = dataset.key(i);
        match dataset.kind() {
            WorkloadKind::GetMix => {
                dataset.fill_value(i, &mut value);
                client.queue(&[b"SET", key.as_bytes(), &value]);
            }
            WorkloadKind::Lrange => {
                let n = dataset.list_len(i);
                elements.resize_with(n, Vec::new);
                for (j, e) in elements.iter_mut().enumerate() {
                    dataset.fill_element(i, j, e);
                }
                let mut args: Vec<&[u8]> = Vec::with_capacity(n + 2);
                args.push(b"RPUSH");
                args.push(key.as_bytes());
                args.extend(elements.iter().map(Vec::as_slice));
                client.queue(&args);
            }
        }
        let last = i + 1 == dataset.keys();
        if last
            || client.queued() >= LOAD_BATCH_REQUESTS
            || client.queued_bytes() >= LOAD_BATCH_BYTES
        {
            finish_load_batch(client, dataset, batch_first..i + 1)?;
            batch_first = i + 1;
        }
    }
    Ok(LoadResult {
        keys: dataset.keys(),
        bytes: dataset.bytes(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn finish_load_batch(
    client: &mut Client,
    dataset: &Dataset,
    keys: std::ops::Range<u64>,
) -> Result<(), RedisError> {
    let cmd = match dataset.kind() {
        WorkloadKind::GetMix => "SET",
        WorkloadKind::Lrange => "RPUSH",
    };
    let what = format!(
        "loading: pipeline of {} {cmd}s from {}",
        keys.end - keys.start,
        dataset.key(keys.start)
    );
    client.flush(&what)?;
    for i in keys {
        let want = dataset.list_len(i) as i64;
        let ok = client.read_with(&what, |v| match (dataset.kind(), &v) {
            (WorkloadKind::GetMix, ValueRef::Simple(b"OK")) => None,
            (WorkloadKind::Lrange, ValueRef::Integer(n)) if *n == want => None,
            _ => Some(v.describe()),
        })?;
        if let Some(got) = ok {
            return Err(RedisError::Unexpected {
                what: format!("{cmd} {}", dataset.key(i)),
                got,
                expected: match dataset.kind() {
                    WorkloadKind::GetMix => "+OK",
                    WorkloadKind::Lrange => "the new list length (the key existed before?)",
                },
            });
        }
    }
    Ok(())
}

/// How to run the timed phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Client connections, one thread each.
    pub clients: usize,
    /// Requests each client sends before reading their replies.
    pub pipeline: usize,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time run but not measured, first.
    pub warmup: Duration,
    /// Seed of the key choices (each client draws its own stream from it).
    pub seed: u64,
    /// Read/write timeout of every request.
    pub timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            clients: 4,
            pipeline: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            seed: 0x5EED,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What the timed phase measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Requests completed in the measured window.
    pub ops: u64,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// Value bytes received and checked per second in the window.
    pub bytes_per_sec: f64,
    /// Median request latency (queue to reply), microseconds.
    pub p50_us: f64,
    /// 99th-percentile request latency, microseconds.
    pub p99_us: f64,
    /// 99.9th-percentile request latency, microseconds.
    pub p999_us: f64,
    /// Mean request latency, microseconds.
    pub mean_us: f64,
    /// Replies (in or out of the window) whose contents differ from what was stored.
    pub wrong: u64,
    /// Error replies and failed connections.
    pub errors: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
    /// Set if a client lost its connection (the server died or stopped answering): the
    /// first such failure.
    pub aborted: Option<String>,
}

/// What one reply turned out to be.
enum Outcome {
    Ok(u64),
    Wrong(String),
    Error(String),
}

/// Checks one GET or LRANGE reply for key `i`.
fn check_reply(dataset: &Dataset, i: u64, v: ValueRef<'_>, full_list: bool) -> Outcome {
    match (dataset.kind(), v) {
        (_, ValueRef::Error(e)) => Outcome::Error(format!(
            "{}: error reply -{}",
            dataset.key(i),
            String::from_utf8_lossy(e)
        )),
        (WorkloadKind::GetMix, ValueRef::Bulk(b)) => match dataset.check_value(i, b) {
            Ok(()) => Outcome::Ok(b.len() as u64),
            Err(m) => Outcome::Wrong(format!("GET {}: {m}", dataset.key(i))),
        },
        (WorkloadKind::Lrange, ValueRef::Array(items)) => {
            let len = dataset.list_len(i);
            let want = if full_list {
                len
            } else {
                LRANGE_COUNT.min(len)
            };
            if items.len() != want {
                return Outcome::Wrong(format!(
                    "LRANGE {}: {} elements returned, {want} expected",
                    dataset.key(i),
                    items.len()
                ));
            }
            let mut bytes = 0;
            for (j, item) in items.iter().enumerate() {
                let ValueRef::Bulk(b) = item else {
                    return Outcome::Wrong(format!(
                        "LRANGE {}: element {j} is {}, not a bulk string",
                        dataset.key(i),
                        item.describe()
                    ));
                };
                if let Err(m) = dataset.check_element(i, j, b) {
                    return Outcome::Wrong(format!("LRANGE {}: {m}", dataset.key(i)));
                }
                bytes += b.len() as u64;
            }
            Outcome::Ok(bytes)
        }
        (_, ValueRef::Nil) => Outcome::Wrong(format!("{}: missing (nil reply)", dataset.key(i))),
        (_, other) => Outcome::Wrong(format!(
            "{}: unexpected reply {}",
            dataset.key(i),
            other.describe()
        )),
    }
}

/// Queues the read of key `i`: `GET key`, or `LRANGE key 0 99` (`0 -1` for `full_list`).
fn queue_read(client: &mut Client, dataset: &Dataset, i: u64, full_list: bool) {
    let key = dataset.key(i);
    match dataset.kind() {
        WorkloadKind::GetMix => client.queue(&[b"GET", key.as_bytes()]),
        WorkloadKind::Lrange => {
            let stop: &[u8] = if full_list { b"-1" } else { b"99" };
            client.queue(&[b"LRANGE", key.as_bytes(), b"0", stop]);
        }
    }
}

/// Per-thread tallies of the timed phase.
#[derive(Default)]
struct Tally {
    ops: u64,
    bytes: u64,
    latencies_ns: Vec<u64>,
    wrong: u64,
    errors: u64,
    problems: Vec<String>,
    aborted: Option<String>,
}

impl Tally {
    fn problem(&mut self, p: String) {
        if self.problems.len() < KEEP_PROBLEMS {
            self.problems.push(p);
        }
    }
}

/// The timed phase: `clients` threads, each on its own connection, read uniformly random
/// keys (`GET`, or `LRANGE key 0 99`) `pipeline` at a time for the warm-up and then the
/// measured duration, checking every reply. Latency is from sending a batch to each
/// reply's arrival (before its check). A lost connection stops that client and is reported
/// in [`RunResult::aborted`], not as an error of this function.
pub fn run(addr: SocketAddr, dataset: &Dataset, cfg: &RunConfig) -> Result<RunResult, RedisError> {
    if cfg.clients == 0 || cfg.pipeline == 0 || cfg.duration.is_zero() {
        return Err(RedisError::Usage(
            "clients, pipeline depth and duration must be positive".into(),
        ));
    }
    let mut clients = (0..cfg.clients)
        .map(|_| Client::connect(addr, cfg.timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let tallies: Vec<Tally> = thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(t, client)| {
                let seed = mix64(cfg.seed ^ mix64(t as u64 + 1));
                s.spawn(move || client_loop(client, dataset, cfg, seed, measure_from, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Tally {
                    aborted: Some("a client thread panicked".into()),
                    errors: 1,
                    ..Tally::default()
                })
            })
            .collect()
    });
    let seconds = cfg.duration.as_secs_f64();
    let mut r = RunResult {
        seconds,
        ..RunResult::default()
    };
    let mut lat: Vec<u64> = Vec::new();
    let mut bytes = 0;
    for t in tallies {
        r.ops += t.ops;
        bytes += t.bytes;
        r.wrong += t.wrong;
        r.errors += t.errors;
        for p in t.problems {
            if r.problems.len() < KEEP_PROBLEMS {
                r.problems.push(p);
            }
        }
        if r.aborted.is_none() {
            r.aborted = t.aborted;
        }
        lat.extend(t.latencies_ns);
    }
    r.ops_per_sec = r.ops as f64 / seconds;
    r.bytes_per_sec = bytes as f64 / seconds;
    lat.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    r.p50_us = us(percentile(&lat, 0.50));
    r.p99_us = us(percentile(&lat, 0.99));
    r.p999_us = us(percentile(&lat, 0.999));
    if !lat.is_empty() {
        r.mean_us = us(lat.iter().sum::<u64>() / lat.len() as u64);
    }
    Ok(r)
}

fn client_loop(
    client: &mut Client,
    dataset: &Dataset,
    cfg: &RunConfig,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut rng = SplitMix64::new(seed);
    let mut t = Tally::default();
    let mut batch = vec![0u64; cfg.pipeline];
    let what = match dataset.kind() {
        WorkloadKind::GetMix => "GET",
        WorkloadKind::Lrange => "LRANGE",
    };
    while Instant::now() < end {
        for k in batch.iter_mut() {
            *k = rng.below(dataset.keys());
            queue_read(client, dataset, *k, false);
        }
        let sent = Instant::now();
        if let Err(e) = client.flush(what) {
            t.errors += 1;
            t.aborted = Some(e.to_string());
            return t;
        }
        for &i in &batch {
            let got = client.read_with(what, |v| {
                let arrived = Instant::now();
                (arrived, check_reply(dataset, i, v, false))
            });
            let (arrived, outcome) = match got {
                Ok(x) => x,
                Err(e) => {
                    t.errors += 1;
                    t.aborted = Some(format!("{what} {}: {e}", dataset.key(i)));
                    return t;
                }
            };
            let measured = arrived >= measure_from && arrived <= end;
            match outcome {
                Outcome::Ok(n) if measured => {
                    t.ops += 1;
                    t.bytes += n;
                    t.latencies_ns
                        .push(arrived.duration_since(sent).as_nanos() as u64);
                }
                Outcome::Ok(_) => {}
                Outcome::Wrong(p) => {
                    t.wrong += 1;
                    t.problem(p);
                }
                Outcome::Error(p) => {
                    t.errors += 1;
                    t.problem(p);
                }
            }
        }
    }
    t
}

/// The `q`-quantile (nearest rank) of sorted values; 0 for none.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What reading every key back found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Keys read.
    pub keys: u64,
    /// Keys whose value (any element of the whole list) differs or is missing, plus one if
    /// `DBSIZE` differs from the dataset's key count.
    pub wrong: u64,
    /// Error replies.
    pub errors: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl VerifyReport {
    /// `Ok` if nothing was wrong; otherwise an error quoting the first problems.
    pub fn into_result(self) -> Result<Self, RedisError> {
        if self.wrong == 0 && self.errors == 0 {
            Ok(self)
        } else {
            Err(RedisError::Wrong {
                wrong: self.wrong,
                errors: self.errors,
                keys: self.keys,
                first: self.problems.join("; "),
            })
        }
    }
}

/// Reads every key once (`GET`, or the whole list with `LRANGE key 0 -1`) and checks it,
/// and checks that `DBSIZE` is the dataset's key count.
pub fn verify_all(client: &mut Client, dataset: &Dataset) -> Result<VerifyReport, RedisError> {
    let t0 = Instant::now();
    let mut r = VerifyReport::default();
    let note = |r: &mut VerifyReport, p: String| {
        if r.problems.len() < KEEP_PROBLEMS {
            r.problems.push(p);
        }
    };
    let dbsize = client.dbsize()?;
    if dbsize != dataset.keys() {
        r.wrong += 1;
        note(
            &mut r,
            format!("DBSIZE is {dbsize}, {} keys were loaded", dataset.keys()),
        );
    }
    let what = match dataset.kind() {
        WorkloadKind::GetMix => "verify: GET",
        WorkloadKind::Lrange => "verify: LRANGE 0 -1",
    };
    let mut first = 0;
    while first < dataset.keys() {
        let last = (first + VERIFY_PIPELINE as u64).min(dataset.keys());
        for i in first..last {
            queue_read(client, dataset, i, true);
        }
        client.flush(what)?;
        for i in first..last {
            match client.read_with(what, |v| check_reply(dataset, i, v, true))? {
                Outcome::Ok(_) => {}
                Outcome::Wrong(p) => {
                    r.wrong += 1;
                    note(&mut r, p);
                }
                Outcome::Error(p) => {
                    r.errors += 1;
                    note(&mut r, p);
                }
            }
            r.keys += 1;
        }
        first = last;
    }
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// What a `BGSAVE` took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgsaveResult {
    /// From `BGSAVE` to the save being reported done, seconds.
    pub seconds: f64,
    /// Size of the dump written, bytes.
    pub rdb_bytes: u64,
}

/// `BGSAVE`, then waits (polling `INFO persistence`) until the save this started has
/// finished, and checks it succeeded. `dir` is the server's `--dir`, where the dump is.
pub fn bgsave(
    client: &mut Client,
    dir: &Path,
    deadline: Duration,
) -> Result<BgsaveResult, RedisError> {
    let t0 = Instant::now();
    let fail = |detail: String| RedisError::Bgsave { detail };
    let field =
        |m: &std::collections::BTreeMap<String, String>, k: &str| -> Result<u64, RedisError> {
            m.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| fail(format!("INFO persistence has no numeric {k}")))
        };
    // A save already running (none should be) would make BGSAVE fail; wait it out.
    let mut info = client.info_map("persistence")?;
    while field(&info, "rdb_bgsave_in_progress")? != 0 {
        if t0.elapsed() > deadline {
            return Err(fail(format!(
                "a save already in progress did not finish within {deadline:?}"
            )));
        }
        thread::sleep(Duration::from_millis(20));
        info = client.info_map("persistence")?;
    }
    let saves_before = field(&info, "rdb_saves")?;
    let status = client.bgsave()?;
    if !status.starts_with("Background saving started") {
        return Err(fail(format!("BGSAVE answered {status:?}")));
    }
    loop {
        thread::sleep(Duration::from_millis(20));
        let info = client.info_map("persistence")?;
        let done = field(&info, "rdb_bgsave_in_progress")? == 0
            && field(&info, "rdb_saves")? > saves_before;
        if done {
            let status = info
                .get("rdb_last_bgsave_status")
                .map(String::as_str)
                .unwrap_or("missing");
            if status != "ok" {
                return Err(fail(format!(
                    "rdb_last_bgsave_status:{status} (the server's log says why)"
                )));
            }
            break;
        }
        if t0.elapsed() > deadline {
            return Err(fail(format!(
                "still saving after {deadline:?} (rdb_bgsave_in_progress:1)"
            )));
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let rdb = dir.join(RDB_FILE);
    let rdb_bytes = std::fs::metadata(&rdb)
        .map_err(|e| {
            fail(format!(
                "the save reported ok but {} is unreadable: {e}",
                rdb.display()
            ))
        })?
        .len();
    Ok(BgsaveResult { seconds, rdb_bytes })
}

/// Starts a fresh, plain `redis-server` (no wrapper, no cgroup) on the dump in `dir`,
/// reads every key back and checks it ([`verify_all`]), and stops it. `base` gives the
/// program and timeouts; its wrapper and directory are ignored.
pub fn reload_and_verify(
    base: &ServerConfig,
    dir: &Path,
    dataset: &Dataset,
) -> Result<VerifyReport, RedisError> {
    let cfg = ServerConfig {
        wrapper: Vec::new(),
        dir: Some(dir.to_owned()),
        ..base.clone()
    };
    let server = RedisServer::start(&cfg)?;
    let report = verify_all(&mut server.client()?, dataset);
    let stopped = server.stop();
    let report = report?;
    let stopped = stopped?;
    if !stopped.status.success() {
        return Err(RedisError::Unexpected {
            what: "SHUTDOWN NOSAVE of the reloaded server".into(),
            got: format!("exit {}; log:\n{}", stopped.status, stopped.log),
            expected: "a clean exit",
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.5), 0);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 0.999), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn replies_are_checked() {
        let d = Dataset::new(WorkloadKind::GetMix, 1 << 20, 3).unwrap();
        let mut v = Vec::new();
        d.fill_value(2, &mut v);
        assert!(
            matches!(check_reply(&d, 2, ValueRef::Bulk(&v), false), Outcome::Ok(n) if n == v.len() as u64)
        );
        assert!(
            matches!(check_reply(&d, 3, ValueRef::Bulk(&v), false), Outcome::Wrong(p) if p.starts_with("GET gm:3"))
        );
        assert!(
            matches!(check_reply(&d, 2, ValueRef::Nil, false), Outcome::Wrong(p) if p.contains("missing"))
        );
        assert!(
            matches!(check_reply(&d, 2, ValueRef::Error(b"OOM"), false), Outcome::Error(p) if p.contains("-OOM"))
        );
        assert!(matches!(
            check_reply(&d, 2, ValueRef::Integer(1), false),
            Outcome::Wrong(_)
        ));

        let d = Dataset::new(WorkloadKind::Lrange, 1 << 20, 3).unwrap();
        let elems: Vec<Vec<u8>> = (0..d.list_len(1))
            .map(|j| {
                let mut e = Vec::new();
                d.fill_element(1, j, &mut e);
                e
            })
            .collect();
        let arr =
            |n: usize| ValueRef::Array(elems[..n].iter().map(|e| ValueRef::Bulk(e)).collect());
        assert!(matches!(
            check_reply(&d, 1, arr(100), false),
            Outcome::Ok(_)
        ));
        assert!(matches!(check_reply(&d, 1, arr(200), true), Outcome::Ok(_)));
        assert!(
            matches!(check_reply(&d, 1, arr(99), false), Outcome::Wrong(p) if p.contains("99 elements"))
        );
        assert!(matches!(
            check_reply(&d, 1, arr(100), true),
            Outcome::Wrong(_)
        ));
        let mut swapped: Vec<ValueRef<'_>> =
            elems[..100].iter().map(|e| ValueRef::Bulk(e)).collect();
        swapped.swap(3, 4);
        assert!(
            matches!(check_reply(&d, 1, ValueRef::Array(swapped), false), Outcome::Wrong(p) if p.contains("element 3"))
        );
    }
}
