//! `farmem replay`: a trace's references under other eviction policies and prefetchers,
//! beside exact LRU and Belady's optimum (`replay_sim`), and how far the live policy's
//! replay sits from the live run.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::replay_sim::{self, Evict, Replayed};

/// `farmem replay` options.
#[derive(Args, Debug)]
#[command(
    after_help = "Each line is one eviction policy with one prefetcher, replayed with the same budget over the references in the trace (faults and first touches the live run took, and its touches of pages the reclaimer had unmapped; touches of pages that stayed mapped are not in a fault trace). LRU and Belady without prefetch are always there: the exact LRU pager and the optimum for that budget. `live` is what the traced run itself counted.\n\nExample:\n  farmem replay redis.trace --local-mem 64M --evict clock,lru,fifo --prefetch none,readahead,majority"
)]
pub struct ReplayArgs {
    /// The trace (`farmem trace --out PATH`).
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Local memory for the replay (K/M/G suffixes): the traced run's budget if not given.
    #[arg(long, value_name = "SIZE", value_parser = crate::opts::size)]
    pub local_mem: Option<u64>,
    /// Eviction policies, comma-separated: lru, fifo, clock, belady.
    #[arg(long, value_name = "LIST", default_value = "clock,lru,fifo")]
    pub evict: String,
    /// Prefetchers, comma-separated: none, readahead, majority, and traced (what the live
    /// run brought in after each reference: its readahead, object prefetch, upcalls and
    /// plug-in together).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "none,readahead,majority,traced"
    )]
    pub prefetch: String,
}

fn line(policy: &str, prefetch: &str, r: &Replayed) {
    println!(
        "  {policy:<8} {prefetch:<10} {:>12} {:>12} {:>12} {:>9.1}% {:>9.1}%",
        r.major_faults,
        r.prefetched,
        r.prefetch_hits,
        r.accuracy() * 100.0,
        r.coverage() * 100.0
    );
}

/// Runs `farmem replay`.
pub fn replay(a: ReplayArgs) -> Result<()> {
    let t = farmem::trace::Trace::read(&a.trace)
        .with_context(|| format!("cannot read the trace {}", a.trace.display()))?;
    let budget = match a.local_mem {
        Some(b) => (b / 4096) as usize,
        None => t.budget_pages as usize,
    };
    if budget == 0 {
        bail!("the budget is 0 pages: give --local-mem");
    }
    let evicts: Vec<Evict> = a
        .evict
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let prefetchers: Vec<&str> = a.prefetch.split(',').map(str::trim).collect();
    for p in &prefetchers {
        replay_sim::prefetcher(p).map_err(anyhow::Error::msg)?;
    }
    let all = replay_sim::References::of(&t);
    let refs = &all.pages;
    println!(
        "farmem replay: {} events ({} dropped), {} references to {} pages, budget {} pages ({:.1} MiB)",
        t.events.len(),
        t.dropped,
        refs.len(),
        refs.iter().collect::<std::collections::HashSet<_>>().len(),
        budget,
        budget as f64 / 256.0
    );
    println!(
        "  {:<8} {:<10} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "evict", "prefetch", "major faults", "prefetched", "used", "accuracy", "coverage"
    );
    for (name, e) in [("lru", Evict::Lru), ("belady", Evict::Belady)] {
        line(
            name,
            "none",
            &replay_sim::replay(&all, budget, e, replay_sim::Prefetch::None),
        );
    }
    let mut live_like = None;
    for &e in &evicts {
        for p in &prefetchers {
            if matches!((e, *p), (Evict::Lru | Evict::Belady, "none")) {
                continue;
            }
            let r = replay_sim::replay(
                &all,
                budget,
                e,
                replay_sim::prefetcher(p).map_err(anyhow::Error::msg)?,
            );
            line(e.name(), p, &r);
            if (e, *p) == (Evict::Clock, "traced") {
                live_like = Some(r);
            }
        }
    }
    match t.live {
        Some([major, prefetched, hits, _minor]) => {
            let live = Replayed {
                major_faults: major,
                prefetched,
                prefetch_hits: hits,
                ..Replayed::default()
            };
            line("live", "(traced)", &live);
            if let Some(r) = live_like.filter(|_| a.local_mem.is_none()) {
                println!(
                    "  clock+traced (the live decisions) replayed / live: major faults {:.2}x, accuracy {:.1}% against {:.1}%",
                    r.major_faults as f64 / major.max(1) as f64,
                    r.accuracy() * 100.0,
                    live.accuracy() * 100.0
                );
            }
        }
        None => println!("  (the traced run did not exit normally: no live counters)"),
    }
    Ok(())
}
