//! `farmem demo`: sort an array several times larger than local memory.

use crate::opts;
use anyhow::{Context, Result, bail};
use clap::Args;
use farmem::Engine;
use farmem_bench::linux_swap::{self, SwapBaseline, SwapConfig};
use std::io::Read;
use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Bytes of 64-bit numbers to sort.
    #[arg(long, default_value = "1G", value_parser = opts::size)]
    pub size: u64,
    /// Local memory budget.
    #[arg(long = "local-mem", default_value = "128M", value_parser = opts::size)]
    pub local_mem: u64,
    /// Far tier: mem, compressed (lz4), compressed:zstd, compressed:zstd:LEVEL, or
    /// tcp://HOST:PORT (a memory node; its token from FARMEM_TOKEN_FILE or FARMEM_TOKEN).
    #[arg(long, default_value = "compressed")]
    pub backend: String,
    /// Skip the Linux-swap comparison.
    #[arg(long = "no-baseline")]
    pub no_baseline: bool,
}

/// How long the demo lets the Linux-swap sort run (keeps the demo under a minute).
const LINUX_LIMIT: Duration = Duration::from_secs(25);

/// The sort, as a job for the Linux-swap child.
#[derive(Debug, Clone, Copy)]
pub struct SortJob {
    pub size_bytes: u64,
    pub seed: u64,
}

impl SortJob {
    pub fn to_json(self) -> String {
        serde_json::json!({"size_bytes": self.size_bytes, "seed": self.seed}).to_string()
    }

    pub fn from_json(s: &str) -> Result<SortJob> {
        let v: serde_json::Value = serde_json::from_str(s)?;
        Ok(SortJob {
            size_bytes: v["size_bytes"].as_u64().context("size_bytes")?,
            seed: v["seed"].as_u64().context("seed")?,
        })
    }
}

/// What a sort took.
#[derive(Debug, Clone, Copy)]
pub struct SortResult {
    pub fill: Duration,
    pub sort: Duration,
}

impl SortResult {
    pub fn to_line(self) -> String {
        format!(
            "FARMEM-SORT {} {}",
            self.fill.as_secs_f64(),
            self.sort.as_secs_f64()
        )
    }

    fn from_output(out: &str) -> Result<SortResult> {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("FARMEM-SORT "))
            .context("no result line from the child")?;
        let mut it = line.split_whitespace().map(|x| x.parse::<f64>());
        let fill = it.next().context("fill")??;
        let sort = it.next().context("sort")??;
        Ok(SortResult {
            fill: Duration::from_secs_f64(fill),
            sort: Duration::from_secs_f64(sort),
        })
    }
}

fn fill(v: &mut [u64], seed: u64) -> u64 {
    let mut x = seed | 1;
    let mut sum = 0u64;
    for e in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // 40-bit keys: random, but with some redundancy for the compressed tier, as
        // real keys usually have.
        *e = x >> 24;
        sum = sum.wrapping_add(x >> 24);
    }
    sum
}

fn check(v: &[u64], sum: u64) -> Result<()> {
    if let Some(i) = v.windows(2).position(|w| w[0] > w[1]) {
        bail!("the array is not sorted at index {i}: far memory returned wrong data");
    }
    if v.iter().fold(0u64, |a, &x| a.wrapping_add(x)) != sum {
        bail!(
            "the sorted array's checksum differs from the input's: far memory returned wrong data"
        );
    }
    Ok(())
}

fn sort_slice(v: &mut [u64], seed: u64) -> Result<SortResult> {
    let t = Instant::now();
    let sum = fill(v, seed);
    let fill_t = t.elapsed();
    let t = Instant::now();
    v.sort_unstable();
    let sort_t = t.elapsed();
    check(v, sum)?;
    Ok(SortResult {
        fill: fill_t,
        sort: sort_t,
    })
}

/// The sort in plain memory (all-local, or inside the Linux-swap cgroup).
pub fn sort_all_local(job: &SortJob) -> Result<SortResult> {
    let mut v = vec![0u64; (job.size_bytes / 8) as usize];
    sort_slice(&mut v, job.seed)
}

pub fn run(a: DemoArgs) -> Result<()> {
    opts::check_budget(a.size, a.local_mem)?;
    let job = SortJob {
        size_bytes: a.size,
        seed: 0xFA12_3E37,
    };
    println!(
        "farmem demo: sorting {} of random 64-bit numbers with {} of local memory ({:.1}%) on the {} tier",
        opts::human(a.size),
        opts::human(a.local_mem),
        a.local_mem as f64 * 100.0 / a.size as f64,
        a.backend
    );

    // farmem.
    let engine = Engine::builder()
        .local_budget(a.local_mem as usize)
        .backend(opts::backend(&a.backend)?)
        .build()?;
    let region = engine.map(a.size as usize)?;
    let words = region.len() / 8;
    // SAFETY: the region is `len` bytes of ordinary read-write memory, page aligned, for
    // as long as `region` lives (until the end of this function); nothing else touches it.
    let v = unsafe { std::slice::from_raw_parts_mut(region.as_ptr().cast::<u64>(), words) };
    let done = AtomicBool::new(false);
    let t_all = Instant::now();
    let farmem = std::thread::scope(|s| {
        s.spawn(|| progress(&engine, &done, t_all));
        let r = sort_slice(v, job.seed);
        done.store(true, Ordering::Relaxed);
        r
    })?;
    let st = engine.stats();
    println!(
        "farmem:     fill {:>6.2}s  sort {:>6.2}s  ({} major faults, fault p50 {:.1} us, peak resident {}, far tier {} at ratio {:.2})",
        farmem.fill.as_secs_f64(),
        farmem.sort.as_secs_f64(),
        st.major_faults,
        st.major_latency.p50_us,
        opts::human(st.peak_resident_pages * 4096),
        opts::human(st.far_bytes),
        st.far_ratio
    );
    drop(region);
    drop(engine);

    // All-local.
    let local = sort_all_local(&job)?;
    println!(
        "all-local:  fill {:>6.2}s  sort {:>6.2}s",
        local.fill.as_secs_f64(),
        local.sort.as_secs_f64()
    );

    // Linux swap.
    let mut swap = None;
    if !a.no_baseline {
        let cfg = SwapConfig::new(a.local_mem, a.size + a.size / 2 + (64 << 20));
        match linux_swap::check(&cfg) {
            Err(e) => println!("linux-swap: skipped ({e})"),
            Ok(_) => {
                print!(
                    "linux-swap: running the same sort in a memory cgroup of {} swapping to zram...",
                    opts::human(a.local_mem)
                );
                let _ = std::io::stdout().flush();
                // Overwrite the "running" line on a terminal; start a new one otherwise.
                let cr = if std::io::stdout().is_terminal() {
                    "\r"
                } else {
                    "\n"
                };
                let baseline = SwapBaseline::setup(cfg)?;
                let exe = std::env::current_exe()?;
                let mut cmd = Command::new(exe);
                cmd.arg("__worker")
                    .arg(crate::worker::Job::Sort(job).to_arg())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let started = Instant::now();
                let mut child = baseline.spawn(&mut cmd)?;
                // The demo stays under a minute: Linux gets LINUX_LIMIT, then is stopped.
                let status = loop {
                    if let Some(st) = child.try_wait()? {
                        break Some(st);
                    }
                    if started.elapsed() > LINUX_LIMIT {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                let elapsed = started.elapsed();
                let mut stdout = String::new();
                let mut stderr = String::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_string(&mut stdout);
                }
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                let oom = opts::oom_kills(baseline.cgroup_path());
                baseline.teardown()?;
                let farmem_total = (farmem.fill + farmem.sort).as_secs_f64();
                swap = if status.is_none() {
                    println!(
                        "{cr}linux-swap: still sorting after {:.0}s, when farmem had finished in {farmem_total:.1}s: stopped",
                        elapsed.as_secs_f64()
                    );
                    None
                } else if oom > 0 {
                    println!(
                        "{cr}linux-swap: the kernel's OOM killer stopped the same sort after {:.1}s: the memory cgroup could not reclaim fast enough swapping to zram",
                        elapsed.as_secs_f64()
                    );
                    None
                } else if let Some(st) = status.filter(|st| !st.success()) {
                    bail!("the Linux-swap child failed ({st}): {}", stderr.trim());
                } else {
                    let r = SortResult::from_output(&stdout)?;
                    println!(
                        "{cr}linux-swap: fill {:>6.2}s  sort {:>6.2}s",
                        r.fill.as_secs_f64(),
                        r.sort.as_secs_f64()
                    );
                    Some(r)
                };
            }
        }
    }
    let total = |r: &SortResult| (r.fill + r.sort).as_secs_f64();
    println!(
        "result: sorted and verified. farmem took {:.2}x the all-local time{}",
        total(&farmem) / total(&local),
        swap.map(|s| format!(
            " and ran {:.2}x as fast as Linux swap",
            total(&s) / total(&farmem)
        ))
        .unwrap_or_default()
    );
    Ok(())
}

fn progress(engine: &Engine, done: &AtomicBool, t0: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut last = Instant::now();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let st = engine.stats();
        let line = format!(
            "  {:>5.1}s  {} major faults, resident {}, far {} (ratio {:.2})",
            t0.elapsed().as_secs_f64(),
            st.major_faults,
            opts::human(st.resident_pages * 4096),
            opts::human(st.far_bytes),
            st.far_ratio
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprint!("\r{:80}\r", "");
    }
}
