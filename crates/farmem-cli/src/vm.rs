//! `farmem vm`: a KVM guest whose RAM is far memory (crates/farmem-vm).

use crate::opts;
use anyhow::{Result, bail};
use clap::Args;
use farmem::{Engine, FaultMode, PrefetchKind};
use farmem_vm::{GuestSpec, Workload};

#[derive(Args, Debug, Clone)]
#[command(
    group(clap::ArgGroup::new("payload").required(true).args(["guest", "kernel"])),
    after_help = "Examples:\n  farmem vm --memory 68M --local-mem 16M --stats --guest sort 64M\n  farmem vm --memory 68M --local-mem 17M --cpus 2 --control /tmp/vm.sock --guest random 64M 3000000\n  farmem ctl /tmp/vm.sock budget 68M\n  farmem vm --memory 68M --local-mem 4M --prefetch none --guest latency 32M 50000\n  farmem vm --memory 256M --local-mem 64M --kernel /boot/vmlinuz-$(uname -r) --initrd initrd.cpio.gz\n      (scripts/vm-initramfs.sh builds the initramfs)\n\nThe baseline: the same with --all-local (plain RAM). farmem bench-cmd --vm runs a guest under farmem, Linux swap and all-local."
)]
pub struct VmArgs {
    /// The guest's RAM (K/M/G suffixes; a multiple of 2 MiB, 8 MiB or more).
    #[arg(long, default_value = "256M", value_parser = opts::size)]
    pub memory: u64,
    /// Local memory budget for the guest's RAM.
    #[arg(long = "local-mem", default_value = "64M", value_parser = opts::size)]
    pub local_mem: u64,
    /// Far tier: mem, compressed (lz4), compressed:zstd, compressed:zstd:LEVEL, or
    /// tcp://HOST:PORT (a memory node; its token from FARMEM_TOKEN_FILE or FARMEM_TOKEN).
    #[arg(long, default_value = "compressed")]
    pub backend: String,
    /// Prefetcher on the guest's physical address stream: none, readahead or majority.
    #[arg(long, default_value = "readahead")]
    pub prefetch: PrefetchKind,
    /// The unit guest RAM is filled and evicted in: 4K, or 2M (hugetlbfs huge pages, which
    /// farmem reserves from the kernel's pool for the budget and gives back at exit; root
    /// may be needed to raise the pool).
    #[arg(long, value_name = "4K|2M", default_value = "4K")]
    pub page_size: farmem::PageSize,
    /// Print the engine's statistics when the guest exits.
    #[arg(long)]
    pub stats: bool,
    /// vCPUs (1 to 8), each a thread of this process; the workloads share their work
    /// and their memory among them.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Serve live control on a Unix socket at PATH while the guest runs: `farmem ctl PATH
    /// budget SIZE | stats [--json|--prometheus] | prefetch NAME`.
    #[arg(long, value_name = "PATH")]
    pub control: Option<std::path::PathBuf>,
    /// Leave the vCPUs and their fault handler threads wherever the scheduler puts them.
    /// By default vCPU i and handler thread i share one CPU, the i-th of those this
    /// process may use (give each VM its own CPUs with `taskset -c LIST farmem vm ...`):
    /// a fault then wakes its handler without a cross-CPU interrupt.
    #[arg(long)]
    pub no_pin: bool,
    /// Fault handler threads spin on the userfaultfd instead of sleeping (each takes a
    /// whole CPU, the one after its vCPU's): a vCPU's fault needs no wake-up of its
    /// handler. Measured slower than the default on this project's 2-CPU machine
    /// (BENCHMARKS.md); for hosts with CPUs to spare.
    #[arg(long)]
    pub busy_poll: bool,
    /// Stop the guest, and fail with its last console output, if it has not finished
    /// after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// The project's minimal guest to run: sort, random or kv (or crash and hang, which
    /// go wrong on purpose; `--guest list` says what each does).
    #[arg(long)]
    pub guest: Option<String>,
    /// Boot a Linux kernel instead: a bzImage (Debian's /boot/vmlinuz-*), loaded with
    /// rust-vmm's linux-loader, its serial console (ttyS0) on stdout, one vCPU. The guest's
    /// exit code is the byte its init writes to port 0xf4. Linux cannot boot on a nested
    /// hypervisor that emulates the guest's ring 0 (this project's test machine): there
    /// farmem reports KVM's emulation failure with the console's last lines.
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: Option<std::path::PathBuf>,
    /// An initramfs for --kernel (scripts/vm-initramfs.sh builds one from busybox-static).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<std::path::PathBuf>,
    /// The kernel's command line.
    #[arg(long, value_name = "STR", requires = "kernel", default_value = farmem_vm::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// The guest's arguments: SIZE (bytes of its RAM the workload uses; default: all of
    /// it but the first 4 MiB) and OPS (operations for random and kv; default 1M).
    #[arg(value_name = "ARGS")]
    pub args: Vec<String>,
    /// Run the guest with plain local RAM instead (no farmem): the baseline.
    #[arg(long = "all-local")]
    pub all_local: bool,
    /// Seed of the guest's random numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What `farmem vm` starts.
enum Payload {
    Guest(GuestSpec),
    Kernel(farmem_vm::Kernel),
}

/// The minimal guest `name` with its SIZE and OPS.
fn guest_spec(a: &VmArgs, name: &str) -> Result<GuestSpec> {
    let Some(workload) = Workload::by_name(name) else {
        bail!(
            "unknown guest {name:?}; use one of: {} (`farmem vm --guest list` says what each does)",
            Workload::ALL.map(|w| w.0).join(", ")
        );
    };
    if a.args.len() > 2 {
        bail!(
            "the guest takes at most two arguments, SIZE and OPS (got {:?})",
            a.args
        );
    }
    let size = match a.args.first() {
        Some(s) => opts::size(s).map_err(|e| anyhow::anyhow!("guest SIZE {s:?}: {e}"))?,
        None => a.memory.saturating_sub(farmem_vm::HEAP_START),
    };
    let ops = match a.args.get(1) {
        Some(s) => s
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("guest OPS {s:?} is not a whole number"))?,
        None => 1_000_000,
    };
    Ok(GuestSpec {
        workload,
        size,
        ops,
        seed: a.seed,
    })
}

pub fn vm(a: VmArgs) -> Result<i32> {
    if a.guest.as_deref() == Some("list") {
        for (name, _, what) in Workload::ALL {
            println!("{name:<8}{what}");
        }
        return Ok(0);
    }
    let payload = match (&a.guest, &a.kernel) {
        (Some(name), _) => Payload::Guest(guest_spec(&a, name)?),
        (None, Some(image)) => {
            if !a.args.is_empty() {
                bail!(
                    "arguments after the options are for --guest; pass a kernel's with --cmdline"
                );
            }
            Payload::Kernel(farmem_vm::Kernel {
                image: image.clone(),
                initrd: a.initrd.clone(),
                cmdline: a.cmdline.clone(),
            })
        }
        (None, None) => bail!("farmem vm needs --guest NAME or --kernel BZIMAGE"),
    };
    let name = match &payload {
        Payload::Guest(_) => format!("guest {}", a.guest.as_deref().unwrap_or("")),
        Payload::Kernel(k) => format!("kernel {}", k.image.display()),
    };
    let timeout = match a.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            bail!("--timeout must be a positive number of seconds (got {t})")
        }
        t => t.map(std::time::Duration::from_secs_f64),
    };
    let pin_cpus = if a.no_pin {
        Vec::new()
    } else {
        farmem_vm::vcpu_cpus(a.cpus)?
    };
    let machine = farmem_vm::Machine {
        memory: a.memory,
        cpus: a.cpus,
        timeout,
        pin_cpus,
    };
    match &payload {
        Payload::Guest(spec) => farmem_vm::check(&machine, spec)?,
        Payload::Kernel(k) => {
            farmem_vm::check_machine(&machine)?;
            for (what, p) in [
                ("--kernel", Some(&k.image)),
                ("--initrd", k.initrd.as_ref()),
            ] {
                if let Some(p) = p
                    && let Err(e) = std::fs::metadata(p)
                {
                    bail!("{what} {}: {e}", p.display());
                }
            }
        }
    }
    if let Some(p) = &a.control {
        if a.all_local {
            bail!("--control needs far memory to control; it does not go with --all-local");
        }
        farmem::control::check_free(p)?;
    }
    farmem_vm::check_kvm()?;
    if a.local_mem < farmem::MIN_BUDGET_PAGES as u64 * 4096 {
        bail!(
            "--local-mem must be at least {} KiB",
            farmem::MIN_BUDGET_PAGES * 4
        );
    }
    if a.page_size == farmem::PageSize::Huge && a.local_mem < 8 << 20 && !a.all_local {
        bail!("--local-mem must be at least 8 MiB (four 2 MiB pages) with --page-size 2M");
    }
    let t0 = std::time::Instant::now();
    let mut out = std::io::stdout();
    let (outcome, engine) = if a.all_local {
        let o = match &payload {
            Payload::Guest(spec) => farmem_vm::run_all_local(&machine, spec, &mut out)?,
            Payload::Kernel(k) => farmem_vm::run_kernel_all_local(&machine, k, &mut out)?,
        };
        (o, None)
    } else {
        let engine = std::sync::Arc::new(
            Engine::builder()
                .local_budget(a.local_mem as usize)
                .backend(opts::backend(&a.backend)?)
                .prefetch(a.prefetch)
                .fault_mode(FaultMode::Thread)
                .page_size(a.page_size)
                .handler_threads(a.cpus as usize)
                .handler_cpus(if a.busy_poll && !a.no_pin {
                    farmem_vm::poller_cpus(a.cpus)?
                } else {
                    machine.pin_cpus.clone()
                })
                .handler_busy_poll(a.busy_poll)
                .build()?,
        );
        let _control = match &a.control {
            Some(p) => Some(farmem::control::ControlServer::start(p, engine.clone())?),
            None => None,
        };
        let o = match &payload {
            Payload::Guest(spec) => farmem_vm::run(&engine, &machine, spec, &mut out)?,
            Payload::Kernel(k) => farmem_vm::run_kernel(&engine, &machine, k, &mut out)?,
        };
        (o, Some(engine))
    };
    if a.stats {
        let ram = match &engine {
            Some(e) => format!(
                "{} local in {} pages, {} tier",
                opts::human(a.local_mem),
                e.page_size(),
                e.backend_name()
            ),
            None => "all local".into(),
        };
        eprintln!(
            "farmem: {name} exited with {} after {:.2} s ({} RAM, {ram})",
            outcome.exit_code,
            t0.elapsed().as_secs_f64(),
            opts::human(a.memory)
        );
        if let Some(e) = &engine {
            eprintln!(
                "farmem: stats at exit ({} fault mode, {} tier)",
                e.fault_mode(),
                e.backend_name()
            );
            for line in e.stats().to_string().lines() {
                eprintln!("farmem:   {line}");
            }
        }
    }
    Ok(outcome.exit_code as i32)
}
