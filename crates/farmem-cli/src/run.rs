//! `farmem run`: an unmodified program with its heap in far memory.
//!
//! Checks the options and the machine, then replaces itself (exec) with PROGRAM, with
//! the preload library in LD_PRELOAD and the configuration in FARMEM_* variables (see
//! crates/farmem-preload/src/rt.rs). The program keeps farmem's pid, so signals, job
//! control and the exit status are its own.

use anyhow::{Context, Result, bail};
use clap::Args;
use farmem::backend::Backend;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::opts;

/// Options of `farmem run`.
#[derive(Args, Debug)]
#[command(
    after_help = "The heap is every malloc-family allocation and every anonymous private read-write mmap of at least 256 KiB (FARMEM_MMAP_THRESHOLD). The C library's own allocations (stdio buffers and the like) stay local. Programs PROGRAM runs get the library too, each with its own budget; a forked child gets a snapshot of the parent's far memory and its own budget.\n\nExamples:\n  farmem run --local-mem 256M -- redis-server --port 7000\n  farmem run --local-mem 64M --backend compressed:zstd --stats -- python3 job.py\n  farmem run --local-mem 512M --allocator mimalloc -- memcached -t 4 -m 2048\n  farmem run --local-mem 1G --backend tcp://10.0.0.2:7070 --token-file node.token -- redis-server\n  farmem run --local-mem 64M --plugin ./minimal.so -- ./program   (plugins/minimal.c)"
)]
pub struct RunArgs {
    /// Local memory budget for the program's heap (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = opts::size)]
    pub local_mem: u64,
    /// Far tier: mem:, compressed: (lz4), compressed:zstd, compressed:zstd:LEVEL, or
    /// tcp://HOST:PORT (a memory node, `farmem serve`).
    #[arg(long, value_name = "URI", default_value = "compressed:")]
    pub backend: String,
    /// The memory node's token, read from this file (for --backend tcp://HOST:PORT;
    /// FARMEM_TOKEN_FILE or FARMEM_TOKEN otherwise).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The heap's allocator: farslab (farmem's own: small objects in allocation order,
    /// size-class slabs, per-thread caches, no metadata in far pages), mimalloc or tlsf.
    /// `--allocator list` describes them.
    #[arg(long, value_name = "NAME", env = "FARMEM_ALLOCATOR", default_value_t = farmem::heap::HeapKind::default().to_string())]
    pub allocator: String,
    /// Prefetchers, comma-separated: one of none, readahead and majority, and `pointer`
    /// to chase pointers: a fault follows the faulting thread's registers and the
    /// faulting block's words to the far heap blocks they point at (through the
    /// allocator's block table) and fetches them with it (`readahead,pointer`; `pointer`
    /// alone: no readahead).
    #[arg(long, value_name = "LIST", default_value = "readahead")]
    pub prefetch: String,
    /// Eviction policy: clock or fifo.
    #[arg(long, value_name = "NAME", default_value = "clock")]
    pub evict: String,
    /// Fault path: sigbus (in the faulting thread, fast), thread (handler threads, about
    /// ten times slower per fault here) or auto (sigbus where available).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub fault_mode: String,
    /// The unit the heap is filled and evicted in: 4K, or 2M (hugetlbfs huge pages, taken
    /// from the kernel's pool for the budget and given back at exit; thread fault mode
    /// only, no prefetch beyond the page itself).
    #[arg(long, value_name = "4K|2M", default_value = "4K")]
    pub page_size: String,
    /// Turn off the object prefetch (on by default): a fault inside a heap block of 4 to
    /// 256 KiB brings in the rest of the block and maps it at once, and the prefetcher
    /// does not fetch past it.
    #[arg(long)]
    pub no_object_prefetch: bool,
    /// Learn which pages are in use only by unmapping them and counting the minor faults
    /// that map them again, not from the hardware's accessed bits (which farmem reads per
    /// 2 MiB chunk from /proc/self/smaps; on by default). For comparison, and for systems
    /// where /proc is not readable (there it is off anyway).
    #[arg(long)]
    pub no_accessed_bits: bool,
    /// Turn off the syscall guard (on by default in the sigbus fault mode, Linux 5.11+):
    /// system calls the program makes outside the C library's common entry points (the
    /// `syscall` instruction, the C library's internal calls) go through farmem first, so
    /// that the kernel never meets an evicted far buffer; about 1 us per such call.
    /// Without it, such a call on an evicted buffer fails with EFAULT.
    #[arg(long)]
    pub no_syscall_guard: bool,
    /// Large anonymous PROT_NONE reservations become far memory too, and a read-write
    /// anonymous MAP_FIXED mapping inside one is its pages zeroed: for programs that
    /// reserve address space and map their memory into it, such as QEMU's guest RAM.
    /// The reserved range is readable and writable from the start (guard pages in it do
    /// not trap). KVM touches guest RAM from the kernel: with `-accel kvm`, also give
    /// `--fault-mode thread`.
    #[arg(long)]
    pub take_reserved: bool,
    /// A policy plug-in: a shared object with the ABI of farmem_plugin.h, loaded into the
    /// program and called on the far heap's faults (it says what to bring in with them),
    /// allocations and frees. `plugins/minimal.c` is a starting point.
    #[arg(long, value_name = "PATH.so", env = "FARMEM_PLUGIN")]
    pub plugin: Option<PathBuf>,
    /// Serve live control on a Unix socket at PATH while the program runs: `farmem ctl
    /// PATH budget SIZE | stats [--json|--prometheus] | prefetch NAME`. The socket belongs
    /// to PROGRAM's own process (not to programs it starts) and goes away when it exits
    /// (one that ends with _exit leaves it behind, and the next --control replaces it).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print a summary of what far memory did when the program exits.
    #[arg(long)]
    pub stats: bool,
    /// Print one live line to stderr every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<f64>,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

/// Where the preload library is: FARMEM_PRELOAD, or next to this binary, or in
/// ../lib/farmem/ (an installed layout).
pub fn find_preload() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FARMEM_PRELOAD") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("FARMEM_PRELOAD={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("libfarmem_preload.so"),
        dir.join("../lib/farmem/libfarmem_preload.so"),
        dir.join("../libfarmem_preload.so"),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    bail!(
        "cannot find libfarmem_preload.so next to {} (build it with `cargo build -p farmem-preload`, with the same profile, or point FARMEM_PRELOAD at it)",
        exe.display()
    )
}

/// The far tier `uri`; a memory node's token comes from `token_file` if given.
fn backend(uri: &str, token_file: Option<&Path>) -> Result<Arc<dyn Backend>> {
    let Some(path) = token_file else {
        return Ok(farmem::backend::from_uri(uri)?);
    };
    let Some(addr) = uri.strip_prefix("tcp://") else {
        bail!("--token-file is for a memory node (--backend tcp://HOST:PORT), not `{uri}`");
    };
    let mut cfg = farmem::backend::RemoteConfig::from_env(addr.trim_end_matches('/'))?;
    cfg.token = farmem::backend::read_token_file(path)?;
    Ok(Arc::new(farmem::backend::Remote::connect(cfg)?))
}

/// Runs `farmem run`: returns only on error.
pub fn run(a: RunArgs) -> Result<()> {
    if a.allocator == "list" {
        for k in farmem::heap::HeapKind::ALL {
            let default = if k == farmem::heap::HeapKind::default() {
                " (default)"
            } else {
                ""
            };
            println!("{:<9} {}{default}", k.name(), k.about());
        }
        return Ok(());
    }
    let allocator: farmem::heap::HeapKind = a.allocator.parse().map_err(anyhow::Error::msg)?;
    if a.program.is_empty() {
        bail!("farmem run needs a program to run: farmem run [OPTIONS] -- PROGRAM [ARGS...]");
    }
    if a.local_mem < farmem::MIN_BUDGET_PAGES as u64 * 4096 {
        bail!(
            "--local-mem must be at least {} KiB",
            farmem::MIN_BUDGET_PAGES * 4
        );
    }
    let token_file =
        match &a.token_file {
            Some(p) => Some(std::path::absolute(p).with_context(|| {
                format!("--token-file {}: cannot resolve the path", p.display())
            })?),
            None => None,
        };
    // Connects to a memory node now (and frees this check's session when dropped below),
    // so that an unreachable node or a wrong token is one line before the program runs.
    let backend = backend(&a.backend, token_file.as_deref())?;
    let prefetch: farmem::PrefetchSpec = a.prefetch.parse().map_err(anyhow::Error::msg)?;
    let evict: farmem::policy::PolicyKind = a.evict.parse().map_err(anyhow::Error::msg)?;
    let mode: farmem::FaultMode = a.fault_mode.parse().map_err(anyhow::Error::msg)?;
    let page_size: farmem::PageSize = a.page_size.parse().map_err(anyhow::Error::msg)?;
    if let Some(s) = a.stats_interval
        && !(s > 0.0 && s.is_finite())
    {
        bail!("--stats-interval must be a positive number of seconds (got {s})");
    }
    // The same checks the program's start would make, but with a clear error here.
    let check = farmem::Engine::builder()
        .local_budget(a.local_mem as usize)
        .backend(backend)
        .prefetch(prefetch.kind)
        .pointer_prefetch(prefetch.pointer)
        .policy(evict)
        .fault_mode(mode)
        .page_size(page_size)
        .build()
        .context("far memory is not available on this machine")?;
    drop(check);
    let control = match &a.control {
        Some(p) => {
            let p = std::path::absolute(p)
                .with_context(|| format!("--control {}: cannot resolve the path", p.display()))?;
            farmem::control::check_free(&p)?;
            Some(p)
        }
        None => None,
    };
    let plugin = match &a.plugin {
        Some(p) => {
            let abs = std::path::absolute(p)
                .with_context(|| format!("--plugin {}: cannot resolve the path", p.display()))?;
            if !abs.is_file() {
                bail!(
                    "--plugin {}: no such file (build one with `cc -shared -fPIC -I include plugins/minimal.c -o minimal.so`)",
                    p.display()
                );
            }
            Some(abs)
        }
        None => None,
    };
    let preload = find_preload()?;
    let mut ld = preload.display().to_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        ld.push(':');
        ld.push_str(&old.to_string_lossy());
    }
    let mut cmd = std::process::Command::new(&a.program[0]);
    cmd.args(&a.program[1..])
        .env("LD_PRELOAD", ld)
        .env("FARMEM_LOCAL_MEM", a.local_mem.to_string())
        .env("FARMEM_BACKEND", &a.backend)
        .env("FARMEM_ALLOCATOR", allocator.name())
        .env("FARMEM_PREFETCH", prefetch.to_string())
        .env("FARMEM_EVICT", &a.evict)
        .env("FARMEM_FAULT_MODE", &a.fault_mode)
        .env("FARMEM_PAGE_SIZE", page_size.name());
    cmd.env(
        "FARMEM_OBJECT_PREFETCH",
        if a.no_object_prefetch { "0" } else { "1" },
    );
    match &plugin {
        Some(p) => cmd.env("FARMEM_PLUGIN", p),
        None => cmd.env_remove("FARMEM_PLUGIN"),
    };
    if a.take_reserved {
        cmd.env("FARMEM_TAKE_RESERVED", "1");
    } else {
        cmd.env_remove("FARMEM_TAKE_RESERVED");
    }
    if a.no_syscall_guard {
        cmd.env("FARMEM_SYSCALL_GUARD", "0");
    }
    cmd.env(
        "FARMEM_ACCESSED_BITS",
        if a.no_accessed_bits { "0" } else { "1" },
    );
    if let Some(p) = &token_file {
        cmd.env("FARMEM_TOKEN_FILE", p);
    }
    match &control {
        Some(p) => cmd.env("FARMEM_CONTROL", p),
        None => cmd.env_remove("FARMEM_CONTROL"),
    };
    // A fresh report owner: the preload of the program about to start records its pid.
    cmd.env_remove("FARMEM_STATS_PID");
    if a.stats {
        cmd.env("FARMEM_STATS", "1");
    }
    if let Some(s) = a.stats_interval {
        cmd.env("FARMEM_STATS_INTERVAL", s.to_string());
    }
    let err = cmd.exec();
    bail!("cannot run {}: {err}", a.program[0])
}
