//! `farmem trace`: `farmem run` that also records the fault and allocation stream into a
//! file (`farmem::trace`), for `farmem replay`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

/// `farmem trace` options: those of `farmem run`, and where the trace goes.
#[derive(Args, Debug)]
#[command(
    after_help = "The trace holds every major fault, prefetch hit, first touch and re-touch of a page the reclaimer had unmapped (the references a replay sees), every prefetch and eviction, and every allocation and free of the far heap, 16 bytes each, written from the fault path without system calls. It is bounded: past --events, events are counted and dropped. A forked child does not record; a program PROGRAM execs records in its place.\n\nExamples:\n  farmem trace --out redis.trace --local-mem 128M -- redis-server --port 7000\n  farmem replay redis.trace --evict lru,clock,belady --prefetch none,readahead"
)]
pub struct TraceArgs {
    /// The trace file to write (replaced if it exists).
    #[arg(long, value_name = "PATH", default_value = "farmem.trace")]
    pub out: PathBuf,
    /// The most events to keep (16 bytes each; the file is sized for them up front and
    /// filled as the program runs).
    #[arg(long, value_name = "N", default_value_t = 16 << 20)]
    pub events: u64,
    #[command(flatten)]
    pub run: crate::run::RunArgs,
}

/// Runs the program under `farmem run` with the trace on; returns only on error.
pub fn trace(a: TraceArgs) -> Result<()> {
    if a.events == 0 {
        bail!("--events must be at least 1");
    }
    let out = std::path::absolute(&a.out)
        .with_context(|| format!("--out {}: cannot resolve the path", a.out.display()))?;
    if let Some(dir) = out.parent()
        && !dir.is_dir()
    {
        bail!("--out {}: no directory {}", a.out.display(), dir.display());
    }
    // SAFETY: the CLI is single-threaded here; the variables are for the program `run`
    // execs.
    unsafe {
        std::env::set_var("FARMEM_TRACE", &out);
        std::env::set_var("FARMEM_TRACE_EVENTS", a.events.to_string());
    }
    crate::run::run(a.run)
}
