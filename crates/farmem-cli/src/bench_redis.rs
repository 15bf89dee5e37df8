//! `farmem bench-redis`: real Redis, loaded with a checkable dataset and read by several
//! clients, under farmem (`farmem run`), under Linux swap (a memory cgroup swapping to
//! zram) and all-local, at several local-memory fractions.

use crate::{farmem_stats, opts};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use farmem_bench::System;
use farmem_bench::linux_swap::{self, SwapBaseline, SwapConfig};
use farmem_bench::median;
use farmem_bench::redis::{
    self, Dataset, RedisRecord, RedisServer, RunConfig, ServerConfig, WorkloadKind,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the --local fractions are fractions of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LocalOf {
    /// The dataset's value bytes (--dataset).
    Dataset,
    /// Redis's footprint: all-local's peak RSS in the first run. Each run then starts
    /// with all-local (once, not once per fraction), and farmem and linux-swap follow at
    /// every fraction.
    Footprint,
}

#[derive(Args, Debug, Clone)]
pub struct BenchRedisArgs {
    /// get-mix: GET of strings of 4, 8, 16, 32, 64 and 128 KiB in equal shares. lrange:
    /// LRANGE key 0 99 over lists of 200 elements of 64 to 1024 bytes. Every reply is
    /// checked byte for byte against what was stored.
    #[arg(long, default_value = "get-mix")]
    pub workload: WorkloadKind,
    /// Value bytes to load (K/M/G suffixes). Redis's own heap is larger: its allocator
    /// rounds each value up to a size class and every key has overhead.
    #[arg(long, default_value = "1G", value_parser = opts::size)]
    pub dataset: u64,
    /// Local memory as fractions of --dataset, comma-separated. The budget B = fraction x
    /// dataset is both farmem's `--local-mem` and the Linux-swap memory cgroup's limit.
    /// At 1 the Linux-swap run still runs in the cgroup, limited to the dataset size; as
    /// Redis's heap is larger than the dataset, it may still swap there (so may farmem).
    #[arg(long, value_delimiter = ',', default_value = "0.125,0.25,0.5,1")]
    pub local: Vec<f64>,
    /// What --local's fractions are of: the dataset, or the footprint (all-local's peak
    /// RSS in the first run; all-local must be among --systems).
    #[arg(long = "local-of", value_enum, default_value = "dataset")]
    pub local_of: LocalOf,
    /// Systems to run, comma-separated: farmem (Redis under `farmem run`), linux-swap
    /// (Redis in a memory cgroup capped at the budget, swapping to zram; root needed),
    /// all-local (plain Redis, no limit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "farmem,linux-swap,all-local"
    )]
    pub systems: Vec<System>,
    /// farmem's far tier, passed to `farmem run --backend`.
    #[arg(long, default_value = "compressed")]
    pub backend: String,
    /// More options for `farmem run`, one per use (e.g. --run-arg=--fault-mode=thread).
    #[arg(long = "run-arg", allow_hyphen_values = true)]
    pub run_args: Vec<String>,
    /// Measured seconds of the timed phase per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of requests before the measured ones.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Runs per fraction and system; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Client connections, one thread each. With 4, requests are always queued at Redis's
    /// single thread, so a stall on a far page delays the other clients too, as it does in
    /// production, and p50/p99 include that queueing. All-local on the 2-CPU test machine,
    /// 1, 2 and 4 clients gave the same throughput (Redis and the clients share the CPUs);
    /// more clients only lost throughput to scheduling.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Requests each client sends before reading their replies. 1 (no pipelining): each
    /// latency is that of one request, not of a batch.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// One JSON object per line per measurement on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Seed of the dataset's contents and of the key choices.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Skip reading every key back after the timed phase.
    #[arg(long = "no-verify")]
    pub no_verify: bool,
    /// After the timed phase, BGSAVE, and reload the dump in a fresh plain redis-server
    /// and check every key there (the save's fork runs under the system measured).
    #[arg(long)]
    pub bgsave: bool,
    /// The redis-server to run.
    #[arg(long = "redis-server", default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// The farmem executable whose `run` command wraps Redis (default: this one).
    #[arg(long = "farmem")]
    pub farmem: Option<PathBuf>,
}

/// Seconds a request or load batch may take before the run is declared stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Seconds the server may take to start (under a wrapper) or to load a dump.
const START_TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(a: BenchRedisArgs) -> Result<()> {
    validate(&a)?;
    let dataset = Dataset::new(a.workload, a.dataset, a.seed)?;
    check_redis_server(&a)?;
    let mut systems: Vec<System> = Vec::new();
    for s in &a.systems {
        if !systems.contains(s) {
            systems.push(*s);
        }
    }
    let budgets: Vec<(f64, u64)> = a.local.iter().map(|&f| (f, budget(f, a.dataset))).collect();
    if systems.contains(&System::Farmem) {
        let smallest = budgets.iter().map(|b| b.1).min().unwrap_or(a.dataset);
        preflight_farmem(&a, smallest)?;
    }
    if systems.contains(&System::LinuxSwap) {
        let smallest = budgets.iter().map(|b| b.1).min().unwrap_or(a.dataset);
        if let Err(e) = linux_swap::check(&swap_config(&a, smallest)) {
            eprintln!(
                "farmem: the Linux-swap baseline is not possible here, running without it: {e}"
            );
            systems.retain(|s| *s != System::LinuxSwap);
        }
    }
    if systems.is_empty() {
        bail!("no system left to run");
    }
    let header = format!(
        "bench-redis: {} over {} of values ({} keys), local {} of the {}, {} client(s) x pipeline {}, {}s (+{}s warm-up) x {} run(s); systems {}; farmem backend {}",
        a.workload,
        opts::human(dataset.bytes()),
        dataset.keys(),
        a.local
            .iter()
            .map(|f| crate::bench_cmd::pct(*f))
            .collect::<Vec<_>>()
            .join(", "),
        match a.local_of {
            LocalOf::Dataset => "dataset",
            LocalOf::Footprint => "footprint (all-local's peak RSS)",
        },
        a.clients,
        a.pipeline,
        a.duration,
        a.warmup,
        a.runs,
        systems
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        a.backend
    );
    if a.json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    let mut all: Vec<RedisRecord> = Vec::new();
    let one = |sys: System, fraction: f64, bytes: u64, fp: Option<u64>, run: usize| {
        measure(&a, &dataset, sys, fraction, bytes, fp, run).with_context(|| {
            format!(
                "{sys} run {run} at local fraction {fraction} ({})",
                opts::human(bytes)
            )
        })
    };
    match a.local_of {
        LocalOf::Dataset => {
            for &(fraction, bytes) in &budgets {
                for run in 1..=a.runs {
                    for &sys in &systems {
                        let rec = one(sys, fraction, bytes, None, run)?;
                        emit(&a, &rec);
                        all.push(rec);
                    }
                }
            }
        }
        LocalOf::Footprint => {
            let mut footprint: Option<u64> = None;
            for run in 1..=a.runs {
                // all-local first: its first run's peak RSS is the footprint.
                let mut rec = one(
                    System::AllLocal,
                    1.0,
                    footprint.unwrap_or(a.dataset),
                    footprint,
                    run,
                )?;
                let fp = match footprint {
                    Some(fp) => fp,
                    None => {
                        let Some(fp) = rec.extra.get("peak_rss_bytes").and_then(|v| v.as_u64())
                        else {
                            bail!(
                                "all-local run 1 left no peak RSS (/proc/PID/status VmHWM), so there is no footprint to take --local fractions of; use --local-of dataset"
                            );
                        };
                        footprint = Some(fp);
                        fp
                    }
                };
                rec.footprint_bytes = Some(fp);
                rec.local_bytes = fp;
                rec.local_fraction = fp as f64 / a.dataset as f64;
                emit(&a, &rec);
                all.push(rec);
                for &f in &a.local {
                    let bytes = budget(f, fp);
                    for &sys in systems.iter().filter(|s| **s != System::AllLocal) {
                        let mut rec =
                            one(sys, bytes as f64 / a.dataset as f64, bytes, Some(fp), run)?;
                        rec.footprint_frac = Some(f);
                        emit(&a, &rec);
                        all.push(rec);
                    }
                }
            }
        }
    }
    if !a.json {
        summary(&all);
    }
    let bad: Vec<&RedisRecord> = all.iter().filter(|r| r.wrong > 0).collect();
    if let Some(first) = bad.first() {
        bail!(
            "{} measurement(s) returned wrong data (first: {} run {} at fraction {}: {} wrong replies; {})",
            bad.len(),
            first.system,
            first.run,
            first.local_fraction,
            first.wrong,
            first
                .extra
                .get("problems")
                .map(|p| p.to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn validate(a: &BenchRedisArgs) -> Result<()> {
    if a.runs == 0 || a.clients == 0 || a.pipeline == 0 {
        bail!("--runs, --clients and --pipeline must be positive");
    }
    if !(a.duration.is_finite() && a.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(a.warmup.is_finite() && a.warmup >= 0.0) {
        bail!("--warmup must be zero or a positive number of seconds");
    }
    if a.local.is_empty() {
        bail!("--local needs at least one fraction, e.g. 0.25");
    }
    for &f in &a.local {
        if !(f.is_finite() && f > 0.0 && f <= 16.0) {
            bail!(
                "--local fractions must be above 0 and at most 16 (1 = the dataset's size), got {f}"
            );
        }
    }
    if a.dataset < 4096 {
        bail!("--dataset must be at least 4 KiB");
    }
    if a.local_of == LocalOf::Footprint && !a.systems.contains(&System::AllLocal) {
        bail!(
            "--local-of footprint takes fractions of all-local's peak RSS: keep all-local in --systems"
        );
    }
    Ok(())
}

/// fraction x dataset, rounded up to whole pages, at least 1 MiB.
fn budget(fraction: f64, dataset: u64) -> u64 {
    let b = (fraction * dataset as f64).ceil() as u64;
    b.div_ceil(4096).max(256) * 4096
}

fn check_redis_server(a: &BenchRedisArgs) -> Result<()> {
    let out = Command::new(&a.redis_server)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "`{} --version` failed ({}): {}",
            a.redis_server.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!(
            "cannot run {}: {e}; install Redis (`apt-get install -y redis-server`) or pass --redis-server PATH",
            a.redis_server.display()
        ),
    }
}

/// The farmem system needs `farmem run`: try it once on a trivial program, so that a
/// missing command or a bad --backend is one clear error before any long run.
fn preflight_farmem(a: &BenchRedisArgs, local: u64) -> Result<()> {
    let wrapper = farmem_wrapper(a, local)?;
    let mut cmd = Command::new(&wrapper[0]);
    cmd.args(&wrapper[1..]).arg("true").stdin(Stdio::null());
    let shown = wrapper.join(" ") + " true";
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{shown}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        bail!(
            "the farmem system runs Redis under `farmem run`, and `{shown}` failed ({}): {first}. \
             Use a farmem with the run command, or leave farmem out: --systems linux-swap,all-local",
            out.status
        );
    }
    Ok(())
}

/// `<this farmem> run --local-mem B --backend URI --stats [--run-arg...] --`
/// `--stats`: the server prints farmem's summary at exit, whose fault counts go in the
/// record.
fn farmem_wrapper(a: &BenchRedisArgs, local: u64) -> Result<Vec<String>> {
    let exe = match &a.farmem {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("find the farmem executable")?,
    };
    let mut w = vec![
        exe.to_string_lossy().into_owned(),
        "run".into(),
        "--local-mem".into(),
        local.to_string(),
        "--backend".into(),
        a.backend.clone(),
        "--stats".into(),
    ];
    w.extend(a.run_args.iter().cloned());
    w.push("--".into());
    Ok(w)
}

fn swap_config(a: &BenchRedisArgs, local: u64) -> SwapConfig {
    // zram holds what does not fit (uncompressed size): Redis's heap is about 1.25x the
    // values (allocator size classes); leave room for that and for the load's buffers.
    SwapConfig::new(local, 2 * a.dataset + (256 << 20))
}

fn server_config(a: &BenchRedisArgs, wrapper: Vec<String>) -> ServerConfig {
    ServerConfig {
        program: a.redis_server.clone(),
        wrapper,
        start_timeout: START_TIMEOUT,
        client_timeout: REQUEST_TIMEOUT,
        ..ServerConfig::default()
    }
}

/// One system at one budget, one run.
fn measure(
    a: &BenchRedisArgs,
    dataset: &Dataset,
    sys: System,
    fraction: f64,
    local: u64,
    footprint: Option<u64>,
    run: usize,
) -> Result<RedisRecord> {
    let mut rec = RedisRecord::new(
        sys, a.workload, a.dataset, local, a.clients, a.pipeline, run,
    );
    rec.local_fraction = fraction;
    rec.footprint_bytes = footprint;
    let t0 = Instant::now();
    rec.set_extra("value_bytes", dataset.bytes());
    rec.set_extra("keys", dataset.keys());
    match sys {
        System::AllLocal => {
            let cfg = server_config(a, Vec::new());
            let server = RedisServer::start(&cfg)?;
            let mut phase = "start";
            phases(a, dataset, server, &mut rec, &mut phase, None, t0)?;
        }
        System::Farmem => {
            rec.set_extra("backend", &a.backend);
            let cfg = server_config(a, farmem_wrapper(a, local)?);
            let server = RedisServer::start(&cfg)?;
            let mut phase = "start";
            phases(a, dataset, server, &mut rec, &mut phase, None, t0)?;
        }
        System::LinuxSwap => {
            let baseline = SwapBaseline::setup(swap_config(a, local))?;
            let vm0 = vmstat();
            let stat0 = baseline.memory_stat()?;
            let cfg = server_config(a, Vec::new());
            let mut phase = "start";
            let res = RedisServer::start_in(&cfg, &baseline)
                .map_err(anyhow::Error::from)
                .and_then(|server| {
                    phases(
                        a,
                        dataset,
                        server,
                        &mut rec,
                        &mut phase,
                        Some(&baseline),
                        t0,
                    )
                });
            let oom = opts::oom_kills(baseline.cgroup_path());
            let vm1 = vmstat();
            let stat1 = baseline.memory_stat()?;
            let d = |k: &str| delta(&stat0, &stat1, k);
            rec.set_extra("linux_major_faults", d("pgmajfault"));
            rec.set_extra(
                "linux_minor_faults",
                d("pgfault").saturating_sub(d("pgmajfault")),
            );
            if !rec.extra.contains_key("fault_seconds") {
                rec.set_extra("fault_seconds", t0.elapsed().as_secs_f64());
            }
            rec.set_extra("pswpin", delta(&vm0, &vm1, "pswpin"));
            rec.set_extra("pswpout", delta(&vm0, &vm1, "pswpout"));
            rec.set_extra("cgroup_max_usage_bytes", baseline.max_usage_bytes()?);
            if oom > 0 {
                rec.set_extra("oom_kills", oom);
            }
            match res {
                Ok(()) => {}
                // Linux could not run Redis in this budget: a result, not an error.
                Err(e) if oom > 0 => {
                    rec.oom_killed = true;
                    rec.ops_per_sec = 0.0;
                    rec.p50_us = None;
                    rec.p99_us = None;
                    rec.set_extra("killed_in", phase);
                    let msg = format!("{e:#}");
                    rec.set_extra("error", msg.lines().next().unwrap_or_default());
                }
                Err(e) => {
                    baseline.teardown()?;
                    return Err(e);
                }
            }
            baseline.teardown()?;
        }
    }
    Ok(rec)
}

/// Load, timed run, verify (and BGSAVE + reload), then stop. `phase` names the phase
/// reached, for a run that gets killed. With the Linux-swap `baseline`, zram's contents are
/// sampled before the server stops (afterwards zram is nearly empty).
fn phases(
    a: &BenchRedisArgs,
    dataset: &Dataset,
    mut server: RedisServer,
    rec: &mut RedisRecord,
    phase: &mut &'static str,
    baseline: Option<&SwapBaseline>,
    started: Instant,
) -> Result<()> {
    let res = phases_inner(a, dataset, &server, rec, phase);
    if let Err(e) = res {
        // A server that died says more than the client's lost connection.
        std::thread::sleep(Duration::from_millis(100));
        return Err(match server.try_wait() {
            Some(status) => anyhow!(
                "{e:#}; redis-server exited ({status}); its output ends with:\n{}",
                server.log_tail()
            ),
            None => e,
        });
    }
    if let Some(rss) = server.peak_rss_bytes() {
        rec.set_extra("peak_rss_bytes", rss);
    }
    if baseline.is_none()
        && let Some((minor, major)) = proc_faults(server.pid())
    {
        // The kernel's view of the server itself (the memory cgroup's, under Linux swap).
        rec.set_extra("linux_minor_faults", minor);
        rec.set_extra("linux_major_faults", major);
    }
    if let Some((orig, compr)) = baseline.and_then(|b| b.zram_usage())
        && compr > 0
    {
        rec.set_extra("zram_bytes", orig);
        rec.set_extra("zram_ratio", orig as f64 / compr as f64);
    }
    *phase = "stop";
    let stopped = server.stop()?;
    if !stopped.status.success() {
        bail!(
            "redis-server did not exit cleanly after SHUTDOWN NOSAVE ({}{}); its output ends with:\n{}",
            stopped.status,
            if stopped.killed {
                ", killed after the timeout"
            } else {
                ""
            },
            stopped.log
        );
    }
    rec.set_extra("fault_seconds", started.elapsed().as_secs_f64());
    // Under farmem (`run --stats`) the server printed farmem's summary at exit.
    let stats = farmem_stats::parse(&stopped.log);
    for (key, field) in [
        ("farmem_minor_faults", "minor_faults"),
        ("farmem_major_faults", "major_faults"),
        ("farmem_zero_faults", "zero_faults"),
    ] {
        if let Some(v) = stats.get(field) {
            rec.set_extra(key, v);
        }
    }
    for line in stopped.log.lines().filter(|l| l.starts_with("farmem")) {
        eprintln!("    {line}");
    }
    Ok(())
}

/// A process's (minor, major) faults so far, from /proc/PID/stat.
fn proc_faults(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state ppid pgrp session
    // tty_nr tpgid flags minflt cminflt majflt ...
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(7)?.parse().ok()?, f.get(9)?.parse().ok()?))
}

fn delta(m0: &BTreeMap<String, u64>, m1: &BTreeMap<String, u64>, k: &str) -> u64 {
    m1.get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(m0.get(k).copied().unwrap_or(0))
}

fn phases_inner(
    a: &BenchRedisArgs,
    dataset: &Dataset,
    server: &RedisServer,
    rec: &mut RedisRecord,
    phase: &mut &'static str,
) -> Result<()> {
    *phase = "load";
    let mut c = server.client()?;
    let l = redis::load(&mut c, dataset)?;
    rec.set_extra("load_s", l.seconds);
    let mem = c.info_map("memory")?;
    for (field, key) in [
        ("used_memory", "used_memory_bytes"),
        ("used_memory_rss", "used_memory_rss_bytes"),
    ] {
        if let Some(v) = mem.get(field).and_then(|v| v.parse::<u64>().ok()) {
            rec.set_extra(key, v);
        }
    }
    *phase = "run";
    let cfg = RunConfig {
        clients: a.clients,
        pipeline: a.pipeline,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        seed: a.seed ^ rec.run as u64,
        timeout: REQUEST_TIMEOUT,
    };
    let r = redis::run(server.addr(), dataset, &cfg)?;
    if let Some(abort) = &r.aborted {
        bail!("a client lost its connection in the timed run: {abort}");
    }
    rec.ops_per_sec = r.ops_per_sec;
    rec.p50_us = Some(r.p50_us);
    rec.p99_us = Some(r.p99_us);
    rec.wrong = r.wrong;
    rec.errors = r.errors;
    rec.set_extra("ops", r.ops);
    rec.set_extra("mb_per_sec", r.bytes_per_sec / 1e6);
    rec.set_extra("p999_us", r.p999_us);
    rec.set_extra("mean_us", r.mean_us);
    let mut problems = r.problems.clone();
    if !a.no_verify {
        *phase = "verify";
        let v = redis::verify_all(&mut c, dataset)?;
        rec.wrong += v.wrong;
        rec.errors += v.errors;
        rec.set_extra("verify_s", v.seconds);
        problems.extend(v.problems);
    }
    rec.set_extra("verified", !a.no_verify);
    if a.bgsave {
        *phase = "bgsave";
        let b = redis::bgsave(&mut c, server.dir(), REQUEST_TIMEOUT)?;
        rec.set_extra("bgsave_s", b.seconds);
        rec.set_extra("rdb_bytes", b.rdb_bytes);
        *phase = "reload";
        let base = server_config(a, Vec::new());
        let v = redis::reload_and_verify(&base, server.dir(), dataset)?;
        rec.wrong += v.wrong;
        rec.errors += v.errors;
        rec.set_extra("reload_verify_s", v.seconds);
        problems.extend(v.problems);
    }
    if !problems.is_empty() {
        rec.set_extra("problems", problems);
    }
    Ok(())
}

fn vmstat() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn emit(a: &BenchRedisArgs, r: &RedisRecord) {
    let line = run_line(r);
    if a.json {
        println!("{}", r.to_json_line());
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn run_line(r: &RedisRecord) -> String {
    // With --local-of footprint, the fraction of the footprint (none for all-local).
    let local = match (r.footprint_frac, r.footprint_bytes) {
        (Some(f), _) => crate::bench_cmd::pct(f),
        (None, Some(_)) => "-".into(),
        (None, None) => r.local_fraction.to_string(),
    };
    let head = format!(
        "  local {:<6} ({:>9})  run {:>2}  {:<10}",
        local,
        opts::human(r.local_bytes),
        r.run,
        r.system.as_str()
    );
    if r.oom_killed {
        return format!(
            "{head}  OOM-killed by the kernel during {}",
            r.extra
                .get("killed_in")
                .and_then(|v| v.as_str())
                .unwrap_or("the run")
        );
    }
    let f = |k: &str| r.extra.get(k).and_then(|v| v.as_f64());
    let mut s = format!(
        "{head} {:>9.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us  wrong {}  errors {}",
        r.ops_per_sec,
        r.p50_us.unwrap_or(0.0),
        r.p99_us.unwrap_or(0.0),
        r.wrong,
        r.errors
    );
    if let Some(l) = f("load_s") {
        s += &format!("  load {l:.1}s");
    }
    if let Some(m) = f("used_memory_bytes") {
        s += &format!("  heap {}", opts::human(m as u64));
    }
    if let Some(m) = f("peak_rss_bytes") {
        s += &format!("  peak RSS {}", opts::human(m as u64));
    }
    if let Some(b) = f("bgsave_s") {
        s += &format!("  bgsave {b:.1}s");
    }
    s
}

/// Medians per fraction and system, and the ratios every figure is reported as.
pub fn summary(all: &[RedisRecord]) {
    // With --local-of footprint the rows are fractions of the footprint, and all-local
    // (which ran once per run, with no budget) belongs to each of them.
    let key = |r: &RedisRecord| r.footprint_frac.unwrap_or(r.local_fraction);
    let everywhere = |r: &RedisRecord| r.footprint_bytes.is_some() && r.footprint_frac.is_none();
    let mut fractions: Vec<f64> = Vec::new();
    for r in all.iter().filter(|r| !everywhere(r)) {
        if !fractions.contains(&key(r)) {
            fractions.push(key(r));
        }
    }
    if fractions.is_empty()
        && let Some(r) = all.first()
    {
        fractions.push(key(r));
    }
    let Some(first) = all.first() else {
        return;
    };
    println!(
        "medians ({} over {} of values, {} client(s) x pipeline {}; local: fraction of {}):",
        first.workload,
        opts::human(first.dataset_bytes),
        first.clients,
        first.pipeline,
        match first.footprint_bytes {
            Some(fp) => format!("the footprint, {}", opts::human(fp)),
            None => "the dataset".into(),
        }
    );
    println!(
        "  {:<7} {:>9}  {:<10} {:>10} {:>9} {:>9} {:>6} {:>7}  {:>13} {:>12}",
        "local",
        "budget",
        "system",
        "ops/s",
        "p50 us",
        "p99 us",
        "wrong",
        "errors",
        "vs linux-swap",
        "vs all-local"
    );
    for f in fractions {
        let at: Vec<&RedisRecord> = all
            .iter()
            .filter(|r| key(r) == f || everywhere(r))
            .collect();
        let ops = |sys: System| {
            let v: Vec<f64> = at
                .iter()
                .filter(|r| r.system == sys && !r.oom_killed)
                .map(|r| r.ops_per_sec)
                .collect();
            median(&v)
        };
        let (farmem, swap, local) = (
            ops(System::Farmem),
            ops(System::LinuxSwap),
            ops(System::AllLocal),
        );
        let mut first_row = true;
        for sys in [System::Farmem, System::LinuxSwap, System::AllLocal] {
            let runs: Vec<&&RedisRecord> = at.iter().filter(|r| r.system == sys).collect();
            if runs.is_empty() {
                continue;
            }
            let budget = runs[0].local_bytes;
            let lead = if first_row {
                format!("  {:<7} {:>9}", f, opts::human(budget))
            } else {
                format!("  {:<7} {:>9}", "", "")
            };
            first_row = false;
            let ok: Vec<&&&RedisRecord> = runs.iter().filter(|r| !r.oom_killed).collect();
            let killed = runs.len() - ok.len();
            if ok.is_empty() {
                println!(
                    "{lead}  {:<10} OOM-killed by the kernel in all {} run(s)",
                    sys.as_str(),
                    runs.len()
                );
                continue;
            }
            let med = |g: &dyn Fn(&RedisRecord) -> Option<f64>| {
                let v: Vec<f64> = ok.iter().filter_map(|r| g(r)).collect();
                median(&v).unwrap_or(0.0)
            };
            let wrong: u64 = runs.iter().map(|r| r.wrong).sum();
            let errors: u64 = runs.iter().map(|r| r.errors).sum();
            let mut line = format!(
                "{lead}  {:<10} {:>10.0} {:>9.1} {:>9.1} {:>6} {:>7}",
                sys.as_str(),
                med(&|r| Some(r.ops_per_sec)),
                med(&|r| r.p50_us),
                med(&|r| r.p99_us),
                wrong,
                errors
            );
            if sys == System::Farmem {
                let ratio = |o: Option<f64>| match (farmem, o) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
                    _ => "-".into(),
                };
                line += &format!("  {:>13} {:>12}", ratio(swap), ratio(local));
            }
            if killed > 0 {
                line += &format!("  ({killed} of {} run(s) OOM-killed)", runs.len());
            }
            println!("{line}");
        }
        if farmem.is_some() && swap.is_none() && at.iter().any(|r| r.system == System::LinuxSwap) {
            println!(
                "  {:<17}  (Linux swap did not survive a run here: farmem finished, Linux did not)",
                ""
            );
        }
    }
}

/// `farmem summarize` for bench-redis records.
pub fn summarize_lines(lines: &[String]) -> Result<()> {
    let all = crate::bench::parse_records(lines, "bench-redis", RedisRecord::from_json_line)?;
    summary(&all);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_whole_pages() {
        assert_eq!(budget(0.125, 1 << 30), 128 << 20);
        assert_eq!(budget(1.0, 1 << 30), 1 << 30);
        assert_eq!(budget(0.3, 10_000_000) % 4096, 0);
        assert!(budget(0.3, 10_000_000) >= 3_000_000);
        assert_eq!(budget(0.001, 4096), 1 << 20);
    }
}
