//! `farmem bench`: the same access loop under farmem, all-local, and Linux swap.

use crate::opts;
use anyhow::{Context, Result, bail};
use clap::Args;
use farmem::policy::PolicyKind;
use farmem::{Engine, FaultMode, PrefetchKind};
use farmem_bench::linux_swap::{self, SwapBaseline, SwapConfig};
use farmem_bench::workload::{Workload, WorkloadResult};
use farmem_bench::{AccessStream, BenchRecord, LruSim, Pattern, Stop, System, Target, median};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Size of the far region (K/M/G suffixes).
    #[arg(long, default_value = "1G", value_parser = opts::size)]
    pub size: u64,
    /// Local memory budget.
    #[arg(long = "local-mem", default_value = "256M", value_parser = opts::size)]
    pub local_mem: u64,
    /// Far tier: mem, compressed (lz4), compressed:zstd, compressed:zstd:LEVEL, or
    /// tcp://HOST:PORT (a memory node; its token from FARMEM_TOKEN_FILE or FARMEM_TOKEN).
    #[arg(long, default_value = "compressed")]
    pub backend: String,
    /// Access pattern: seq, random, or skewed (90% of accesses on 10% of the pages).
    #[arg(long, default_value = "random")]
    pub pattern: Pattern,
    /// Threads accessing the region, each with its own stream.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// How faults are resolved: auto, sigbus (in the faulting thread) or thread.
    #[arg(long = "fault-mode", default_value = "auto")]
    pub fault_mode: FaultMode,
    /// Prefetcher: none, readahead or majority.
    #[arg(long, default_value = "readahead")]
    pub prefetch: PrefetchKind,
    /// Eviction policy: clock or fifo.
    #[arg(long, default_value = "clock")]
    pub evict: PolicyKind,
    /// Learn the hot set only by unmapping pages (minor faults), not from the hardware's
    /// accessed bits.
    #[arg(long)]
    pub no_accessed_bits: bool,
    /// Seconds of accesses per system per run (after the fill).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Fraction of accesses that write (read-modify-write of one word).
    #[arg(long, default_value_t = 0.3)]
    pub writes: f64,
    /// Runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also run all-local and Linux swap to zram under the same budget (root needed).
    #[arg(long)]
    pub baseline: bool,
    /// One JSON object per line per system run, nothing else on stdout.
    #[arg(long)]
    pub json: bool,
    /// Skip checking every page after each run.
    #[arg(long = "no-verify")]
    pub no_verify: bool,
    /// Seed of the access streams.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
}

pub fn run(a: BenchArgs) -> Result<()> {
    opts::check_budget(a.size, a.local_mem)?;
    if a.threads == 0 || a.runs == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        bail!("--threads, --runs and --seconds must be positive");
    }
    if !(0.0..=1.0).contains(&a.writes) {
        bail!("--writes is a fraction between 0 and 1");
    }
    opts::backend(&a.backend)?;
    let swap_ok = if a.baseline {
        match linux_swap::check(&swap_config(&a)) {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "farmem: the Linux-swap baseline is not possible here, running without it: {e}"
                );
                false
            }
        }
    } else {
        false
    };
    if !a.json {
        println!(
            "bench: {} region, {} local ({:.1}%), {} tier, pattern {}, {} thread(s), {} writes, {}s x {} runs",
            opts::human(a.size),
            opts::human(a.local_mem),
            a.local_mem as f64 * 100.0 / a.size as f64,
            a.backend,
            a.pattern,
            a.threads,
            a.writes,
            a.seconds,
            a.runs
        );
    }
    let mut all: Vec<BenchRecord> = Vec::new();
    for run in 0..a.runs {
        let mut rec = run_farmem(&a).with_context(|| format!("farmem run {}", run + 1))?;
        rec.set_extra("run", run + 1);
        emit(&a, &rec);
        all.push(rec);
        if a.baseline {
            let mut rec = run_all_local(&a).context("all-local run")?;
            rec.set_extra("run", run + 1);
            emit(&a, &rec);
            all.push(rec);
            if swap_ok {
                let mut rec = run_linux_swap(&a).context("Linux-swap run")?;
                rec.set_extra("run", run + 1);
                emit(&a, &rec);
                all.push(rec);
            }
        }
    }
    if !a.json {
        summary(&all);
    }
    Ok(())
}

fn emit(a: &BenchArgs, r: &BenchRecord) {
    if a.json {
        println!("{}", r.to_json_line());
        return;
    }
    let lat = match (r.fault_p50_us, r.fault_p99_us) {
        (Some(p50), Some(p99)) => format!(", fault p50 {p50:.1} us p99 {p99:.1} us"),
        _ => String::new(),
    };
    let lru = r
        .faults_vs_lru
        .map(|x| format!(", faults/LRU {x:.2}"))
        .unwrap_or_default();
    println!(
        "  run {:>2}  {:<10} {:>12.0} acc/s  {:>10} faults{lat}{lru}",
        r.extra.get("run").and_then(|v| v.as_u64()).unwrap_or(0),
        r.system.to_string(),
        r.accesses_per_sec,
        r.faults
    );
}

/// Medians per system of a set of runs, and the ratios every figure is reported as.
pub fn summary(all: &[BenchRecord]) {
    let of = |sys: System, f: &dyn Fn(&BenchRecord) -> Option<f64>| {
        let v: Vec<f64> = all
            .iter()
            .filter(|r| r.system == sys)
            .filter_map(f)
            .collect();
        median(&v)
    };
    let ok = |r: &BenchRecord| r.extra.get("oom_killed").and_then(|v| v.as_bool()) != Some(true);
    let aps = |sys| of(sys, &|r: &BenchRecord| ok(r).then_some(r.accesses_per_sec));
    println!("medians:");
    for sys in [System::Farmem, System::AllLocal, System::LinuxSwap] {
        let n = all.iter().filter(|r| r.system == sys).count();
        if n == 0 {
            continue;
        }
        let killed = all.iter().filter(|r| r.system == sys && !ok(r)).count();
        if killed == n {
            println!(
                "  {:<10} killed by the kernel's OOM killer in all {n} runs",
                sys.to_string()
            );
            continue;
        }
        let faults = of(sys, &|r: &BenchRecord| ok(r).then_some(r.faults as f64)).unwrap_or(0.0);
        let mut line = format!(
            "  {:<10} {:>12.0} acc/s  {:>10.0} faults",
            sys.to_string(),
            aps(sys).unwrap_or(0.0),
            faults
        );
        if let (Some(p50), Some(p99)) = (
            of(sys, &|r: &BenchRecord| r.fault_p50_us),
            of(sys, &|r: &BenchRecord| r.fault_p99_us),
        ) {
            line += &format!("  fault p50 {p50:.1} us p99 {p99:.1} us");
        }
        if killed > 0 {
            line += &format!("  ({killed} of {n} runs OOM-killed)");
        }
        println!("{line}");
    }
    if let (Some(f), Some(l)) = (aps(System::Farmem), aps(System::LinuxSwap)) {
        println!("  farmem / linux-swap = {:.2}x", f / l);
    }
    if let (Some(f), Some(l)) = (aps(System::Farmem), aps(System::AllLocal)) {
        println!("  farmem / all-local  = {:.3}x", f / l);
    }
    let extra = |k: &'static str| {
        of(System::Farmem, &move |r: &BenchRecord| {
            r.extra.get(k).and_then(|v| v.as_f64())
        })
    };
    if let Some(m) = of(System::Farmem, &|r: &BenchRecord| r.faults_vs_lru) {
        println!("  farmem faults / exact-LRU misses = {m:.2}");
    }
    if let (Some(minor), Some(acc), Some(cov)) = (
        extra("minor_faults"),
        extra("prefetch_accuracy"),
        extra("prefetch_coverage"),
    ) {
        println!(
            "  farmem minor faults {minor:.0}, prefetch accuracy {:.0}%, coverage {:.0}%",
            acc * 100.0,
            cov * 100.0
        );
    }
}

fn workload(a: &BenchArgs) -> Workload {
    Workload {
        pattern: a.pattern,
        size_bytes: a.size,
        threads: a.threads,
        seed: a.seed,
        stop: Stop::For(Duration::from_secs_f64(a.seconds)),
        write_fraction: a.writes,
        verify: !a.no_verify,
        thp: false,
    }
}

fn run_farmem(a: &BenchArgs) -> Result<BenchRecord> {
    let engine = Engine::builder()
        .local_budget(a.local_mem as usize)
        .backend(opts::backend(&a.backend)?)
        .policy(a.evict)
        .prefetch(a.prefetch)
        .fault_mode(a.fault_mode)
        .accessed_bits(!a.no_accessed_bits)
        .build()?;
    let region = engine.map(a.size as usize)?;
    // SAFETY: the region stays mapped until it drops at the end of this function, after
    // the last use of `target`, and is reached only through raw pointers.
    let target = unsafe { Target::new(region.as_ptr(), region.len()) }?;
    let t0 = Instant::now();
    target.fill();
    let fill = t0.elapsed();
    engine.reset_stats();
    let w = workload(a);
    let stats = target.run_parallel(w.pattern, w.seed, w.threads, w.stop, w.write_fraction)?;
    let st = engine.stats();
    if w.verify {
        target.verify().context("farmem returned wrong data")?;
    }
    let mut rec = BenchRecord::new(System::Farmem, a.pattern, a.size, a.local_mem, a.threads);
    rec.accesses_per_sec = stats.accesses_per_sec();
    rec.faults = st.major_faults;
    rec.fault_p50_us = Some(st.major_latency.p50_us);
    rec.fault_p99_us = Some(st.major_latency.p99_us);
    // Exact LRU on the same streams, with the same budget, warmed by the same fill.
    let pages = (a.size / 4096) as usize;
    let mut lru = LruSim::with_pages((a.local_mem / 4096) as usize, pages);
    for p in 0..pages {
        lru.access(p);
    }
    lru.reset_stats();
    let mut streams: Vec<AccessStream> = (0..a.threads)
        .map(|i| AccessStream::new(a.pattern, pages, a.seed, i, a.threads))
        .collect::<Result<_, _>>()?;
    let counts: Vec<u64> = stats.threads.iter().map(|t| t.accesses).collect();
    let mut done = vec![0u64; a.threads];
    loop {
        let mut any = false;
        for (i, s) in streams.iter_mut().enumerate() {
            if done[i] < counts[i] {
                lru.access(s.next_page());
                done[i] += 1;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    rec.set_faults_vs_lru(lru.stats().misses());
    rec.set_extra("fault_mode", engine.fault_mode().to_string());
    rec.set_extra("backend", engine.backend_name());
    rec.set_extra("evict", format!("{:?}", a.evict).to_lowercase());
    rec.set_extra("accessed_bits", !a.no_accessed_bits);
    rec.set_extra("prefetch", format!("{:?}", a.prefetch).to_lowercase());
    rec.set_extra("fill_s", fill.as_secs_f64());
    rec.set_extra("writes", a.writes);
    rec.set_extra("lru_misses", lru.stats().misses());
    rec.set_extra("minor_faults", st.minor_faults);
    rec.set_extra("zero_faults", st.zero_faults);
    rec.set_extra("demoted", st.demoted_pages);
    rec.set_extra("aged_chunks", st.aged_chunks);
    rec.set_extra("counted_chunks", st.counted_chunks);
    rec.set_extra("kept_mapped", st.kept_mapped_pages);
    rec.set_extra("cold_mapped", st.cold_mapped_pages);
    rec.set_extra("fault_mean_us", st.major_latency.mean_us);
    rec.set_extra("fault_p999_us", st.major_latency.p999_us);
    rec.set_extra("minor_p50_us", st.minor_latency.p50_us);
    rec.set_extra("fetched", st.fetched_pages);
    rec.set_extra("prefetched", st.prefetched_pages);
    rec.set_extra("prefetch_accuracy", st.prefetch_accuracy());
    rec.set_extra("prefetch_coverage", st.prefetch_coverage());
    rec.set_extra("evicted", st.evicted_pages);
    rec.set_extra("written_back", st.written_back_pages);
    rec.set_extra("dropped_clean", st.dropped_clean_pages);
    rec.set_extra("direct_reclaims", st.direct_reclaims);
    rec.set_extra("peak_resident_bytes", st.peak_resident_pages * 4096);
    rec.set_extra("far_bytes", st.far_bytes);
    rec.set_extra("far_ratio", st.far_ratio);
    rec.set_extra("verified", w.verify);
    Ok(rec)
}

fn run_all_local(a: &BenchArgs) -> Result<BenchRecord> {
    let r = workload(a).run_anonymous()?;
    Ok(record_from(System::AllLocal, a, &r, a.size))
}

fn record_from(sys: System, a: &BenchArgs, r: &WorkloadResult, local: u64) -> BenchRecord {
    let mut rec = BenchRecord::new(sys, a.pattern, a.size, local, a.threads);
    rec.accesses_per_sec = r.accesses_per_sec;
    rec.faults = r.major_faults;
    rec.set_extra("fill_s", r.fill.as_secs_f64());
    rec.set_extra("writes", a.writes);
    rec.set_extra("verified", r.verified);
    rec
}

fn swap_config(a: &BenchArgs) -> SwapConfig {
    // zram holds what does not fit, uncompressed size; leave room.
    SwapConfig::new(a.local_mem, a.size + a.size / 2 + (64 << 20))
}

fn run_linux_swap(a: &BenchArgs) -> Result<BenchRecord> {
    let baseline = SwapBaseline::setup(swap_config(a))?;
    let exe = std::env::current_exe().context("find the farmem executable")?;
    let job = crate::worker::Job::Workload(workload(a));
    let out = baseline.run(Command::new(exe).arg("__worker").arg(job.to_arg()))?;
    let oom = crate::opts::oom_kills(baseline.cgroup_path());
    if oom > 0 {
        // Linux could not run the workload in this budget: that is a result, not an error.
        let mut rec =
            BenchRecord::new(System::LinuxSwap, a.pattern, a.size, a.local_mem, a.threads);
        rec.set_extra("oom_killed", true);
        rec.set_extra("pswpin", out.stats.pswpin);
        rec.set_extra("seconds_before_kill", out.elapsed.as_secs_f64());
        baseline.teardown()?;
        return Ok(rec);
    }
    if !out.status.success() {
        bail!(
            "the Linux-swap child failed ({}): {}",
            out.status,
            out.stderr.trim()
        );
    }
    let r = WorkloadResult::from_output(&out.stdout)?;
    let mut rec = record_from(System::LinuxSwap, a, &r, a.local_mem);
    rec.set_extra("pswpin", out.stats.pswpin);
    rec.set_extra("pswpout", out.stats.pswpout);
    rec.set_extra("peak_resident_bytes", out.stats.max_usage_bytes);
    if let Some(ratio) = out.stats.zram_ratio() {
        rec.set_extra("zram_ratio", ratio);
    }
    baseline.teardown()?;
    Ok(rec)
}

/// Parses one `farmem KIND --json` record per non-empty line; an error names the line,
/// and no records at all is an error that says what to pipe in.
pub fn parse_records<T>(
    lines: &[String],
    kind: &str,
    parse: impl Fn(&str) -> Result<T, serde_json::Error>,
) -> Result<Vec<T>> {
    let mut all = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim().is_empty() {
            all.push(
                parse(line).with_context(|| format!("line {} is not a {kind} record", i + 1))?,
            );
        }
    }
    if all.is_empty() {
        bail!("no {kind} records on stdin: pipe `farmem {kind} --json` into it");
    }
    Ok(all)
}

/// `farmem summarize` without --table: the medians of one kind of record (told apart by
/// the first line: bench-redis records carry a workload, bench-cmd records a command,
/// bench records a pattern).
pub fn summarize_lines(lines: &[String]) -> Result<()> {
    let first = lines
        .iter()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    if first.as_ref().is_some_and(|v| v.get("workload").is_some()) {
        return crate::bench_redis::summarize_lines(lines);
    }
    if first.as_ref().is_some_and(|v| v.get("command").is_some()) {
        return crate::bench_cmd::summarize_lines(lines);
    }
    let all = parse_records(lines, "bench", BenchRecord::from_json_line)?;
    summary(&all);
    Ok(())
}
