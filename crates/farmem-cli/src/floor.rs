//! `farmem floor`: the raw mechanism costs beside farmem's own faults, in one run.

use anyhow::Result;
use clap::Args;
use farmem::probe::{self, Floor};
use farmem::{Engine, FaultMode, PrefetchKind};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Faults measured per probe.
    #[arg(long, default_value_t = 20000)]
    pub pages: usize,
    /// Repetitions; figures are medians of the per-repetition medians.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// One JSON object per line per probe.
    #[arg(long)]
    pub json: bool,
}

/// farmem's round-trip major-fault latency: random reads of a region four times its
/// budget on the `mem` tier, each read timed, keeping those that took a major fault.
fn farmem_faults(mode: FaultMode, pages: usize) -> Result<Floor> {
    let budget = (pages / 4).max(64);
    let engine = Engine::builder()
        .local_budget(budget * 4096)
        .fault_mode(mode)
        .prefetch(PrefetchKind::None)
        .build()?;
    timed_major_faults(&engine, pages)
}

/// Fills a region of `pages` pages of `engine` (whose budget should be a fraction of it),
/// then reads random pages, each read timed, and keeps the times of those that took a
/// major fault. Every value read is checked.
pub fn timed_major_faults(engine: &Engine, pages: usize) -> Result<Floor> {
    let region = engine.map(pages * 4096)?;
    let base = region.as_ptr();
    for p in 0..pages {
        // SAFETY: inside the region.
        unsafe {
            base.add(p * 4096)
                .cast::<u64>()
                .write_volatile(p as u64 + 1)
        };
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut ns = Vec::with_capacity(pages);
    for _ in 0..pages * 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x % pages as u64) as usize;
        let before = engine.major_faults();
        let t = Instant::now();
        // SAFETY: inside the region.
        let v = unsafe { base.add(p * 4096).cast::<u64>().read_volatile() };
        let dt = t.elapsed().as_nanos() as u64;
        anyhow::ensure!(v == p as u64 + 1, "page {p} came back wrong");
        if engine.major_faults() == before + 1 {
            ns.push(dt);
        }
    }
    Ok(Floor::of(ns))
}

fn median_floor(runs: usize, mut f: impl FnMut() -> Result<Floor>) -> Result<Floor> {
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(f()?);
    }
    let med = |g: fn(&Floor) -> f64| {
        let mut x: Vec<f64> = v.iter().map(g).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    Ok(Floor {
        samples: v.iter().map(|f| f.samples).sum(),
        p50_us: med(|f| f.p50_us),
        p99_us: med(|f| f.p99_us),
        mean_us: med(|f| f.mean_us),
    })
}

pub fn run(a: FloorArgs) -> Result<()> {
    let n = a.pages.max(1000);
    let runs = a.runs.max(1);
    let probes: Vec<(&str, Floor)> = vec![
        (
            "raw sigbus+copy",
            median_floor(runs, || Ok(probe::sigbus(n, false)?))?,
        ),
        (
            "raw sigbus+continue",
            median_floor(runs, || Ok(probe::sigbus(n, true)?))?,
        ),
        (
            "raw thread+copy (blocking poll)",
            median_floor(runs, || Ok(probe::thread(n / 4, false)?))?,
        ),
        (
            "raw thread+copy (busy poll)",
            median_floor(runs, || Ok(probe::thread(n / 4, true)?))?,
        ),
        (
            "farmem major fault, sigbus, mem tier",
            median_floor(runs, || farmem_faults(FaultMode::Sigbus, n))?,
        ),
        (
            "farmem major fault, thread, mem tier",
            median_floor(runs, || farmem_faults(FaultMode::Thread, n / 4))?,
        ),
    ];
    for (name, f) in &probes {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"probe": name, "samples": f.samples, "p50_us": f.p50_us, "p99_us": f.p99_us, "mean_us": f.mean_us})
            );
        } else {
            println!(
                "{name:<40} p50 {:>7.2} us  p99 {:>7.2} us  mean {:>7.2} us  ({} faults)",
                f.p50_us, f.p99_us, f.mean_us, f.samples
            );
        }
    }
    if !a.json {
        let raw = probes[0].1.p50_us;
        let ours = probes[4].1.p50_us;
        println!(
            "farmem in-thread major fault p50 / raw sigbus+copy p50 = {:.2}x",
            ours / raw
        );
    }
    Ok(())
}
