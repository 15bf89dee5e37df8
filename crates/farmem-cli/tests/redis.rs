//! Real Redis through the harness in `farmem_bench::redis`: all-local, BGSAVE and reload,
//! and under `farmem run`; and `farmem bench-redis` end to end.
//!
//! Needs `redis-server` (Debian: `apt-get install -y redis-server`; `scripts/test.sh`
//! installs it). If it is missing, the tests try to install it (as root, with apt-get); only
//! if that fails too do they print why and pass, except under CI (`CI=true`), where Redis is
//! required.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use farmem_bench::redis::{
    self, Dataset, RedisServer, RunConfig, ServerConfig, WorkloadKind, bgsave, load,
    reload_and_verify, verify_all,
};

const MIB: u64 = 1 << 20;
/// The get-mix dataset of these tests: about 590 values of 4-128 KiB.
const DATASET: u64 = 24 * MIB;

fn redis_server_works() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why Redis cannot be used here, after trying to install it; `None` if it can.
fn missing_redis() -> Option<&'static str> {
    static STATE: OnceLock<Option<String>> = OnceLock::new();
    let reason = STATE.get_or_init(|| {
        if redis_server_works() {
            return None;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("redis-server is not installed and, not being root, the test cannot install it (apt-get install -y redis-server)".into());
        }
        eprintln!("redis-server is missing: trying `apt-get install -y redis-server`");
        let installed = Command::new("apt-get")
            .args(["install", "-y", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if installed && redis_server_works() {
            None
        } else {
            Some("redis-server is not installed and `apt-get install -y redis-server` did not install it".into())
        }
    });
    let reason = reason.as_deref()?;
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must be able to run Redis: {reason}");
    }
    eprintln!("skipping: {reason}");
    Some(reason)
}

fn quick_run() -> RunConfig {
    RunConfig {
        clients: 2,
        pipeline: 2,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(200),
        seed: 42,
        timeout: Duration::from_secs(30),
    }
}

/// Loads the dataset, checks every key, runs the timed reads and checks that no reply was
/// wrong.
fn load_verify_and_read(server: &RedisServer, d: &Dataset) {
    let mut c = server.client().unwrap();
    let l = load(&mut c, d).unwrap();
    assert_eq!(l.keys, d.keys());
    let v = verify_all(&mut c, d).unwrap();
    assert_eq!(v.keys, d.keys());
    v.into_result().unwrap();
    let r = redis::run(server.addr(), d, &quick_run()).unwrap();
    assert_eq!(r.aborted, None);
    assert_eq!(r.wrong, 0, "wrong replies: {:?}", r.problems);
    assert_eq!(r.errors, 0, "errors: {:?}", r.problems);
    assert!(r.ops > 0 && r.ops_per_sec > 0.0, "{r:?}");
    assert!(r.p50_us > 0.0 && r.p99_us >= r.p50_us, "{r:?}");
}

/// Saves with BGSAVE, stops the server, and checks every key in a fresh plain server
/// started on the dump.
fn bgsave_stop_and_reload(server: RedisServer, d: &Dataset) {
    let mut c = server.client().unwrap();
    let b = bgsave(&mut c, server.dir(), Duration::from_secs(30)).unwrap();
    assert!(b.rdb_bytes > d.bytes() / 4, "dump of {} bytes", b.rdb_bytes);
    drop(c);
    let stopped = server.stop().unwrap();
    assert!(
        stopped.status.success() && !stopped.killed,
        "{}: {}",
        stopped.status,
        stopped.log
    );
    let dir = stopped.dir.expect("the server owned its directory");
    let v = reload_and_verify(&ServerConfig::default(), dir.path(), d).unwrap();
    assert_eq!(v.keys, d.keys());
    v.into_result().unwrap();
    // The check is real: the same dump read as another seed's dataset is all wrong.
    let other = Dataset::new(d.kind(), d.bytes(), d.seed() + 1).unwrap();
    let v = reload_and_verify(&ServerConfig::default(), dir.path(), &other).unwrap();
    assert_eq!(v.wrong, d.keys());
    assert!(
        v.into_result()
            .unwrap_err()
            .to_string()
            .contains("came back wrong")
    );
}

#[test]
fn all_local_get_mix_is_verified() {
    if missing_redis().is_some() {
        return;
    }
    let d = Dataset::new(WorkloadKind::GetMix, DATASET, 1).unwrap();
    let server = RedisServer::start(&ServerConfig::default()).unwrap();
    load_verify_and_read(&server, &d);
    assert!(server.peak_rss_bytes().unwrap() > d.bytes());
    let stopped = server.stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.log);
}

#[test]
fn all_local_lrange_is_verified() {
    if missing_redis().is_some() {
        return;
    }
    let d = Dataset::new(WorkloadKind::Lrange, 8 * MIB, 2).unwrap();
    let server = RedisServer::start(&ServerConfig::default()).unwrap();
    load_verify_and_read(&server, &d);
    // A wrong list is caught: append one element to a list and read everything back.
    let mut c = server.client().unwrap();
    assert_eq!(c.rpush(d.key(3).as_bytes(), &[b"extra"]).unwrap(), 201);
    let v = verify_all(&mut c, &d).unwrap();
    assert_eq!(v.wrong, 1, "{:?}", v.problems);
    assert!(v.problems[0].contains("201 elements"), "{:?}", v.problems);
}

#[test]
fn bgsave_and_reload_all_local() {
    if missing_redis().is_some() {
        return;
    }
    let d = Dataset::new(WorkloadKind::GetMix, DATASET, 3).unwrap();
    let server = RedisServer::start(&ServerConfig::default()).unwrap();
    let mut c = server.client().unwrap();
    load(&mut c, &d).unwrap();
    bgsave_stop_and_reload(server, &d);
}

/// Redis under `farmem run` with a quarter of the dataset local: every value must come
/// back right, through the timed reads, BGSAVE's forked child, and a reload elsewhere.
fn redis_get_mix_bgsave_and_reload(allocator: &str) {
    if missing_redis().is_some() {
        return;
    }
    let d = Dataset::new(WorkloadKind::GetMix, DATASET, 4).unwrap();
    let local = DATASET / 4;
    let config = ServerConfig {
        wrapper: [
            env!("CARGO_BIN_EXE_farmem"),
            "run",
            "--local-mem",
            &local.to_string(),
            "--backend",
            "compressed:",
            "--allocator",
            allocator,
            "--",
        ]
        .map(String::from)
        .to_vec(),
        ..ServerConfig::default()
    };
    let server = RedisServer::start(&config).unwrap_or_else(|e| panic!("{e}"));
    load_verify_and_read(&server, &d);
    eprintln!(
        "redis under farmem run --allocator {allocator}: peak RSS {:?} bytes, {} bytes of values, {local} local",
        server.peak_rss_bytes(),
        d.bytes()
    );
    bgsave_stop_and_reload(server, &d);
}

/// The Redis guide plug-in (plugins/redis_guide.c) under LRANGE at a quarter of the
/// dataset local: every reply checked, every key read back, and the guide did find the
/// lists (it asked for ranges on most faults).
#[test]
fn the_redis_guide_plugin_under_lrange_changes_no_reply() {
    if missing_redis().is_some() {
        return;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipping: gcc is not available");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let so = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("redis_guide-{}.so", std::process::id()));
    let out = Command::new("gcc")
        .args([
            "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I",
        ])
        .arg(root.join("include"))
        .arg(root.join("plugins/redis_guide.c"))
        .arg("-o")
        .arg(&so)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Dataset::new(WorkloadKind::Lrange, 16 * MIB, 5).unwrap();
    let local = (16 * MIB / 4).to_string();
    let config = ServerConfig {
        wrapper: vec![
            env!("CARGO_BIN_EXE_farmem").into(),
            "run".into(),
            "--local-mem".into(),
            local,
            "--plugin".into(),
            so.display().to_string(),
            "--stats".into(),
            "--".into(),
        ],
        ..ServerConfig::default()
    };
    let server = RedisServer::start(&config).unwrap_or_else(|e| panic!("{e}"));
    load_verify_and_read(&server, &d);
    let mut c = server.client().unwrap();
    verify_all(&mut c, &d).unwrap().into_result().unwrap();
    drop(c);
    let stopped = server.stop().unwrap();
    let _ = std::fs::remove_file(&so);
    let line = stopped
        .log
        .lines()
        .find(|l| l.contains("plug-in redis-guide:"))
        .unwrap_or_else(|| panic!("no plug-in line in the stats\n{}", stopped.log));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // calls, taken, ignored
    assert_eq!(nums.len(), 3, "{line}");
    assert!(nums[0] > 100, "few faults reached the guide: {line}");
    assert!(nums[1] > nums[0] / 2, "the guide found few lists: {line}");
    assert_eq!(
        nums[2], 0,
        "the guide asked for ranges outside the heap: {line}"
    );
}

#[test]
fn farmem_run_redis_get_mix_bgsave_and_reload() {
    redis_get_mix_bgsave_and_reload("farslab");
}

#[test]
fn farmem_run_redis_with_mimalloc_bgsave_and_reload() {
    redis_get_mix_bgsave_and_reload("mimalloc");
}

#[test]
fn farmem_run_redis_with_tlsf_bgsave_and_reload() {
    redis_get_mix_bgsave_and_reload("tlsf");
}

fn farmem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bench_redis_all_local_json() {
    if missing_redis().is_some() {
        return;
    }
    let out = farmem(&[
        "bench-redis",
        "--workload",
        "lrange",
        "--dataset",
        "8M",
        "--local",
        "0.5,1",
        "--systems",
        "all-local",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--runs",
        "1",
        "--clients",
        "2",
        "--bgsave",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per fraction: {stdout}");
    for (l, fraction) in lines.iter().zip([0.5, 1.0]) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["system"], "all-local");
        assert_eq!(v["workload"], "lrange");
        assert_eq!(v["dataset_bytes"], 8 << 20);
        assert_eq!(v["local_fraction"], fraction);
        assert_eq!(v["clients"], 2);
        assert_eq!(v["pipeline"], 1);
        assert_eq!(v["wrong"], 0);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["oom_killed"], false);
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{l}");
        assert!(v["p99_us"].as_f64().unwrap() >= v["p50_us"].as_f64().unwrap());
        assert_eq!(v["extra"]["verified"], true);
        assert!(v["extra"]["bgsave_s"].as_f64().is_some(), "{l}");
    }
    // farmem summarize reads them back.
    let mut child = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .arg("summarize")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdout.as_bytes())
        .unwrap();
    let sum = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&sum.stdout);
    assert!(
        sum.status.success() && s.contains("medians") && s.contains("all-local"),
        "{s}"
    );
}

/// --local-of footprint: all-local first in each run (once), its first run's peak RSS is
/// the footprint, farmem runs at each fraction of it, and farmem's summary at exit (the
/// server stops through SHUTDOWN) gives the fault counts; `summarize --table` reads them.
#[test]
fn bench_redis_budgets_from_the_footprint() {
    if missing_redis().is_some() {
        return;
    }
    let out = farmem(&[
        "bench-redis",
        "--workload",
        "lrange",
        "--dataset",
        "8M",
        "--local",
        "0.5,2",
        "--local-of",
        "footprint",
        "--systems",
        "farmem,all-local",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--runs",
        "1",
        "--clients",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let recs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let order: Vec<(&str, Option<f64>)> = recs
        .iter()
        .map(|v| (v["system"].as_str().unwrap(), v["footprint_frac"].as_f64()))
        .collect();
    assert_eq!(
        order,
        [
            ("all-local", None),
            ("farmem", Some(0.5)),
            ("farmem", Some(2.0))
        ]
    );
    let fp = recs[0]["extra"]["peak_rss_bytes"].as_u64().unwrap();
    assert!(
        fp > 8 * MIB,
        "Redis holds more than its 8 MiB of values: {fp}"
    );
    for v in &recs {
        assert_eq!(v["footprint_bytes"], fp, "{v}");
        assert_eq!(v["wrong"], 0, "{v}");
        assert!(v["extra"]["fault_seconds"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["extra"]["linux_minor_faults"].as_u64().is_some(), "{v}");
    }
    assert_eq!(recs[0]["local_bytes"], fp);
    for v in &recs[1..] {
        let want =
            (v["footprint_frac"].as_f64().unwrap() * fp as f64 / 4096.0).ceil() as u64 * 4096;
        assert_eq!(v["local_bytes"], want, "{v}");
        assert!(
            v["extra"]["farmem_zero_faults"].as_u64().unwrap() > 0,
            "{v}"
        );
        assert!(v["extra"]["farmem_minor_faults"].as_u64().is_some(), "{v}");
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("redis-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lrange.jsonl");
    std::fs::write(&file, &stdout).unwrap();
    let tab = farmem(&["summarize", "--table", file.to_str().unwrap()]);
    let t = String::from_utf8_lossy(&tab.stdout);
    assert!(tab.status.success(), "{t}");
    let rows: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("| redis lrange"))
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert!(
        rows[0].contains("| 50% (") && rows[1].contains("| 200% ("),
        "{t}"
    );
    // all-local's figure stands in both rows.
    let cell = |r: &str, i: usize| r.split('|').map(str::trim).nth(i).unwrap().to_owned();
    assert_eq!(cell(rows[0], 5), cell(rows[1], 5), "{t}");
    assert_ne!(cell(rows[0], 5), "-", "{t}");
}

/// Linux swap for real, when the machine allows it (root, cgroup v1, zram): the run either
/// measures or is reported as OOM-killed, never an error.
#[test]
fn bench_redis_linux_swap() {
    if missing_redis().is_some() {
        return;
    }
    let cfg = farmem_bench::linux_swap::SwapConfig::new(16 * MIB, 256 * MIB);
    if let Err(e) = farmem_bench::linux_swap::check(&cfg) {
        eprintln!("skipping: the Linux-swap baseline is not possible here: {e}");
        return;
    }
    let out = farmem(&[
        "bench-redis",
        "--dataset",
        "32M",
        "--local",
        "0.75",
        "--systems",
        "linux-swap",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["system"], "linux-swap");
    assert_eq!(v["local_bytes"], 24 << 20);
    assert_eq!(v["wrong"], 0);
    if v["oom_killed"] == true {
        assert!(v["extra"]["killed_in"].is_string(), "{stdout}");
    } else {
        assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{stdout}");
        let peak = v["extra"]["cgroup_max_usage_bytes"].as_u64().unwrap();
        assert!(peak <= 24 << 20, "{stdout}");
    }
}

#[test]
fn bench_redis_bad_input_gets_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["bench-redis", "--local", "0"],
            "--local fractions must be above 0",
        ),
        (&["bench-redis", "--local", "x"], "invalid value 'x'"),
        (&["bench-redis", "--systems", "zswap"], "unknown system"),
        (&["bench-redis", "--workload", "scan"], "get-mix or lrange"),
        (&["bench-redis", "--dataset", "1.5G"], "fractions like 1.5G"),
        (&["bench-redis", "--clients", "0"], "must be positive"),
        (
            &[
                "bench-redis",
                "--local-of",
                "footprint",
                "--systems",
                "farmem",
            ],
            "keep all-local in --systems",
        ),
        (
            &["bench-redis", "--local-of", "rss"],
            "possible values: dataset, footprint",
        ),
        (
            &[
                "bench-redis",
                "--redis-server",
                "/nonexistent/redis",
                "--systems",
                "all-local",
            ],
            "cannot run /nonexistent/redis",
        ),
    ];
    for (args, want) in cases {
        let out = farmem(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "{args:?}: stderr lacks `{want}`:\n{err}"
        );
    }
}
