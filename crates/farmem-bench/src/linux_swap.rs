//! The kernel baseline: a workload in a memory cgroup capped at the local budget, with the
//! kernel swapping to zram (lz4). It is what a user would do instead of farmem, and every
//! farmem figure is reported as a ratio to it.
//!
//! [`SwapBaseline::setup`] takes the machine from "no swap" to:
//!
//! ```text
//!  /dev/zram0  comp_algorithm=lz4, disksize=N, swap header, swapon prio 32767
//!  /sys/fs/cgroup/memory/farmem-bench-<pid>/
//!      memory.limit_in_bytes      = budget  (caps RAM; overflow goes to swap = zram)
//!      memory.memsw.limit_in_bytes = -1     (RAM+swap unlimited, if swap accounting is on)
//!      memory.swappiness          = 100
//! ```
//!
//! and dropping it (or [`SwapBaseline::teardown`]) undoes exactly the steps that were done,
//! in reverse: kill what is left in the cgroup and rmdir it, swapoff, reset zram and restore
//! its compressor. Setup that fails half-way tears down the half it did.
//!
//! Children join the cgroup in `pre_exec`: after fork, before exec, the child writes its own
//! pid into the cgroup's `cgroup.procs` (an fd the parent opened beforehand, so the child
//! only calls the async-signal-safe `getpid` and `write`). Every page the program touches,
//! the dynamic loader's included, is therefore charged to the cgroup; no window exists in
//! which it runs outside.
//!
//! Safety of the machine: zram0 is refused if it is already swap or otherwise initialised
//! (someone else's), and concurrent baselines, in this process or another, are excluded by
//! an `flock` on zram's `initstate` sysfs file (a lock no one can leave behind: it dies with
//! its process, and it leaves no file).
//!
//! The swap header is written here rather than by `mkswap`, so nothing depends on `PATH`
//! (it is one page: the `SWAPSPACE2` magic, version 1, last page, a UUID and a label).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pattern::mix64;
use crate::size::format_size;

/// Where the cgroup v1 memory controller is normally mounted.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup/memory";
/// The zram device used by default.
pub const DEFAULT_ZRAM: &str = "zram0";
/// The swap priority given to zram: the highest, so it is used before any other swap.
pub const DEFAULT_PRIORITY: i32 = 32767;

const SWAP_FLAG_PREFER: libc::c_int = 0x8000;
const SWAP_FLAG_PRIO_MASK: libc::c_int = 0x7fff;
const SWAP_PAGE: usize = 4096;
const ZRAM_SAMPLE_EVERY: Duration = Duration::from_millis(10);
const TEARDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// Set while a SwapBaseline exists in this process (the flock covers other processes).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Errors of the Linux-swap baseline. Each says what is missing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Not running as root.
    #[error(
        "the Linux-swap baseline needs root to configure zram, swap and cgroups (euid is {euid}); run the benchmark as root, or skip the linux-swap system"
    )]
    NotRoot {
        /// The effective uid.
        euid: u32,
    },
    /// No cgroup v1 memory controller.
    #[error(
        "no cgroup v1 memory controller at {path} (no memory.limit_in_bytes there); mount one with `mkdir -p {path} && mount -t cgroup -o memory memory {path}` (kernel needs CONFIG_MEMCG_V1; cgroup v2-only hosts are not supported yet)"
    )]
    NoCgroupV1 {
        /// The expected mount point.
        path: PathBuf,
    },
    /// No zram device.
    #[error(
        "no zram device {device} (or {sysfs} missing); load the module with `modprobe zram num_devices=1`"
    )]
    NoZram {
        /// The device node.
        device: PathBuf,
        /// Its sysfs directory.
        sysfs: PathBuf,
    },
    /// zram is already active swap.
    #[error(
        "{device} is already in use as swap (listed in /proc/swaps); refusing to disturb it. If it is a leftover of a crashed farmem bench, run `swapoff {device} && echo 1 > {sysfs}/reset`"
    )]
    ZramInUse {
        /// The device node.
        device: PathBuf,
        /// Its sysfs directory.
        sysfs: PathBuf,
    },
    /// zram is initialised by someone else.
    #[error(
        "{device} is initialised (disksize {disksize} bytes), so something else uses it; refusing to reset it. If it is unused, run `echo 1 > {sysfs}/reset`"
    )]
    ZramBusy {
        /// The device node.
        device: PathBuf,
        /// Its sysfs directory.
        sysfs: PathBuf,
        /// Its current disksize.
        disksize: u64,
    },
    /// Another baseline holds the zram device.
    #[error(
        "another Linux-swap baseline is running (in this process or another, holding the lock on {lock}); wait for it to finish or drop it first"
    )]
    Locked {
        /// The file locked.
        lock: PathBuf,
    },
    /// The compressor is not available.
    #[error(
        "zram compressor {wanted:?} is not offered by {device} (it offers: {available}); load it with `modprobe {wanted}` or configure one of those"
    )]
    CompressorUnavailable {
        /// The compressor asked for.
        wanted: String,
        /// The device.
        device: PathBuf,
        /// What it offers.
        available: String,
    },
    /// A configuration value is out of range.
    #[error("invalid Linux-swap configuration: {0}")]
    Config(String),
    /// A sysfs/cgroupfs/procfs read failed.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A sysfs/cgroupfs write failed.
    #[error(
        "could not write {value:?} to {path}: {source}; check that the kernel accepts this value for this setting"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        source: io::Error,
    },
    /// A kernel file had unexpected contents.
    #[error("could not parse {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The swap header could not be written.
    #[error("could not write the swap header to {device}: {source}")]
    SwapHeader {
        /// The device.
        device: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// swapon failed.
    #[error("swapon {device} failed: {source}; check dmesg for the kernel's reason")]
    Swapon {
        /// The device.
        device: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The cgroup directory could not be created.
    #[error(
        "could not create cgroup {path}: {source}; if it is a leftover of a crashed run, remove it with `rmdir {path}`"
    )]
    CreateCgroup {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A child could not be spawned or waited for.
    #[error("could not {what} {program}: {source}")]
    Child {
        /// spawn or wait.
        what: &'static str,
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// Teardown left something behind.
    #[error("Linux-swap teardown left state behind: {}; fix it by hand (swapoff, echo 1 > .../reset, rmdir the cgroup)", problems.join("; "))]
    Teardown {
        /// What went wrong, one entry per step.
        problems: Vec<String>,
    },
}

/// What to set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwapConfig {
    /// RAM the cgroup may use (`memory.limit_in_bytes`), bytes.
    pub budget_bytes: u64,
    /// Size of the zram swap device (uncompressed capacity), bytes.
    pub zram_bytes: u64,
    /// zram compressor.
    pub comp_algorithm: String,
    /// Swap priority (0..=32767).
    pub priority: i32,
    /// The cgroup v1 memory controller's mount point.
    pub cgroup_root: PathBuf,
    /// The zram device name (`zram0`).
    pub zram: String,
}

impl SwapConfig {
    /// lz4 zram of `zram_bytes` at the highest priority, cgroup capped at `budget_bytes`.
    pub fn new(budget_bytes: u64, zram_bytes: u64) -> Self {
        Self {
            budget_bytes,
            zram_bytes,
            comp_algorithm: "lz4".into(),
            priority: DEFAULT_PRIORITY,
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
            zram: DEFAULT_ZRAM.into(),
        }
    }

    fn device(&self) -> PathBuf {
        Path::new("/dev").join(&self.zram)
    }

    fn sysfs(&self) -> PathBuf {
        Path::new("/sys/block").join(&self.zram)
    }
}

/// Counters of one child run, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwapStats {
    /// Pages swapped in during the run (machine-wide `/proc/vmstat` delta).
    pub pswpin: u64,
    /// Pages swapped out during the run (machine-wide `/proc/vmstat` delta).
    pub pswpout: u64,
    /// Major faults in the cgroup: the child's swap-ins (and file reads). This is Linux's
    /// "faults" figure.
    pub pgmajfault: u64,
    /// All page faults in the cgroup.
    pub pgfault: u64,
    /// Times the cgroup hit its limit (`memory.failcnt` delta).
    pub failcnt: u64,
    /// Peak RAM use of the cgroup (`memory.max_usage_in_bytes`), bytes.
    pub max_usage_bytes: u64,
    /// Peak RAM+swap use (`memory.memsw.max_usage_in_bytes`), if swap accounting is on.
    pub memsw_max_usage_bytes: Option<u64>,
    /// Largest uncompressed amount zram held during the run (sampled every 10 ms), bytes.
    pub zram_peak_orig_bytes: u64,
    /// zram's compressed size at that peak, bytes.
    pub zram_peak_compr_bytes: u64,
}

impl SwapStats {
    /// zram's compression ratio at the peak, if anything was swapped.
    pub fn zram_ratio(&self) -> Option<f64> {
        (self.zram_peak_compr_bytes > 0)
            .then(|| self.zram_peak_orig_bytes as f64 / self.zram_peak_compr_bytes as f64)
    }
}

/// A finished child run.
#[derive(Debug)]
pub struct BaselineRun {
    /// How the child exited.
    pub status: ExitStatus,
    /// Its standard output (lossily decoded).
    pub stdout: String,
    /// Its standard error (lossily decoded).
    pub stderr: String,
    /// Wall time from spawn to exit (measured at 10 ms polling granularity).
    pub elapsed: Duration,
    /// What the kernel did meanwhile.
    pub stats: SwapStats,
}

/// zram swap plus a memory cgroup, torn down on drop. See the module docs.
#[derive(Debug)]
pub struct SwapBaseline {
    config: SwapConfig,
    cgroup: PathBuf,
    owns_active: bool,
    lock: Option<File>,
    original_algorithm: Option<String>,
    zram_touched: bool,
    swap_on: bool,
    cgroup_created: bool,
    procs: Option<File>,
    torn_down: bool,
}

/// Checks everything [`SwapBaseline::setup`] needs without changing anything; returns the
/// zram device's current compressor.
pub fn check(config: &SwapConfig) -> Result<String, SwapError> {
    if config.budget_bytes < SWAP_PAGE as u64 * 16 {
        return Err(SwapError::Config(format!(
            "budget {} is too small; give at least 64KiB",
            format_size(config.budget_bytes)
        )));
    }
    if config.zram_bytes < SWAP_PAGE as u64 * 16 {
        return Err(SwapError::Config(format!(
            "zram size {} is too small; give at least 64KiB (and enough for the workload's overflow)",
            format_size(config.zram_bytes)
        )));
    }
    if !(0..=SWAP_FLAG_PRIO_MASK).contains(&config.priority) {
        return Err(SwapError::Config(format!(
            "swap priority {} is outside 0..=32767",
            config.priority
        )));
    }
    if config.zram.is_empty() || config.zram.contains('/') {
        return Err(SwapError::Config(format!(
            "zram device name {:?} should look like zram0",
            config.zram
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(SwapError::NotRoot { euid });
    }
    if !config.cgroup_root.join("memory.limit_in_bytes").exists() {
        return Err(SwapError::NoCgroupV1 {
            path: config.cgroup_root.clone(),
        });
    }
    let (device, sysfs) = (config.device(), config.sysfs());
    let is_block = fs::metadata(&device).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block || !sysfs.join("disksize").exists() {
        return Err(SwapError::NoZram { device, sysfs });
    }
    if active_swaps()?.contains(&device) {
        return Err(SwapError::ZramInUse { device, sysfs });
    }
    let disksize = read_u64(&sysfs.join("disksize"))?;
    let initstate = read_u64(&sysfs.join("initstate"))?;
    if disksize != 0 || initstate != 0 {
        return Err(SwapError::ZramBusy {
            device,
            sysfs,
            disksize,
        });
    }
    let algs = read_string(&sysfs.join("comp_algorithm"))?;
    let (current, offered) = parse_comp_algorithms(&algs);
    if !offered.contains(&config.comp_algorithm) {
        return Err(SwapError::CompressorUnavailable {
            wanted: config.comp_algorithm.clone(),
            device,
            available: offered.join(", "),
        });
    }
    current.ok_or_else(|| SwapError::Parse {
        path: sysfs.join("comp_algorithm"),
        detail: format!("no [selected] compressor in {algs:?}"),
    })
}

impl SwapBaseline {
    /// Checks the machine ([`check`]), then sets up zram swap and the cgroup.
    pub fn setup(config: SwapConfig) -> Result<Self, SwapError> {
        let cgroup = config
            .cgroup_root
            .join(format!("farmem-bench-{}", std::process::id()));
        let lock_path = config.sysfs().join("initstate");
        if ACTIVE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(SwapError::Locked { lock: lock_path });
        }
        // From here on, an early return drops `me`, which undoes whatever was done.
        let mut me = Self {
            config,
            cgroup,
            owns_active: true,
            lock: None,
            original_algorithm: None,
            zram_touched: false,
            swap_on: false,
            cgroup_created: false,
            procs: None,
            torn_down: false,
        };
        if lock_path.exists() {
            me.lock = Some(lock_exclusive(&lock_path)?);
        }
        me.original_algorithm = Some(check(&me.config)?);
        me.setup_zram()?;
        me.swapon()?;
        me.setup_cgroup()?;
        Ok(me)
    }

    fn setup_zram(&mut self) -> Result<(), SwapError> {
        let sysfs = self.config.sysfs();
        self.zram_touched = true;
        write_file(&sysfs.join("reset"), "1")?;
        write_file(&sysfs.join("comp_algorithm"), &self.config.comp_algorithm)?;
        write_file(&sysfs.join("disksize"), &self.config.zram_bytes.to_string())?;
        let device = self.config.device();
        let size = read_u64(&sysfs.join("disksize"))?;
        let header = swap_header(size, mix64(u64::from(std::process::id()) ^ now_nanos()));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).open(&device)?;
            f.write_all(&header)?;
            f.sync_all()
        };
        write().map_err(|source| SwapError::SwapHeader { device, source })
    }

    fn swapon(&mut self) -> Result<(), SwapError> {
        let device = self.config.device();
        let path = cstring(&device)?;
        let flags = SWAP_FLAG_PREFER | (self.config.priority & SWAP_FLAG_PRIO_MASK);
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::swapon(path.as_ptr(), flags) } != 0 {
            return Err(SwapError::Swapon {
                device,
                source: io::Error::last_os_error(),
            });
        }
        self.swap_on = true;
        Ok(())
    }

    fn setup_cgroup(&mut self) -> Result<(), SwapError> {
        fs::create_dir(&self.cgroup).map_err(|source| SwapError::CreateCgroup {
            path: self.cgroup.clone(),
            source,
        })?;
        self.cgroup_created = true;
        write_file(&self.cgroup.join("memory.swappiness"), "100")?;
        let memsw = self.cgroup.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            // Unlimited RAM+swap: only RAM is capped, the overflow goes to zram.
            write_file(&memsw, "-1")?;
        }
        write_file(
            &self.cgroup.join("memory.limit_in_bytes"),
            &self.config.budget_bytes.to_string(),
        )?;
        let procs = self.cgroup.join("cgroup.procs");
        let file = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|source| SwapError::Write {
                path: procs,
                value: String::new(),
                source,
            })?;
        self.procs = Some(file);
        Ok(())
    }

    /// The configuration this baseline was set up with.
    pub fn config(&self) -> &SwapConfig {
        &self.config
    }

    /// The cgroup directory (`/sys/fs/cgroup/memory/farmem-bench-<pid>`).
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// How many times the kernel's OOM killer has fired in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        oom_kills(&self.cgroup)
    }

    /// Spawns `cmd` inside the cgroup: the child joins it before exec (see the module
    /// docs). The caller owns the child; anything still running in the cgroup is killed on
    /// teardown.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child, SwapError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let Some(procs) = &self.procs else {
            return Err(SwapError::Child {
                what: "spawn",
                program,
                source: io::Error::other("the baseline's cgroup is not set up"),
            });
        };
        let fd = procs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls getpid and
        // write on an fd the parent keeps open for the baseline's lifetime (the Command is
        // spawned below, while `self` is borrowed): both async-signal-safe, no allocation
        // (the errors it builds are allocation-free OS/simple kinds).
        unsafe {
            cmd.pre_exec(move || join_cgroup(fd));
        }
        cmd.spawn().map_err(|source| SwapError::Child {
            what: "spawn",
            program,
            source,
        })
    }

    /// Runs `cmd` in the cgroup to completion with piped stdout/stderr and null stdin, and
    /// reports what the kernel did meanwhile. The cgroup's peak-usage and fail counters are
    /// reset first, so each run's figures are its own.
    pub fn run(&self, cmd: &mut Command) -> Result<BaselineRun, SwapError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        for f in [
            "memory.max_usage_in_bytes",
            "memory.memsw.max_usage_in_bytes",
        ] {
            let p = self.cgroup.join(f);
            if p.exists() {
                write_file(&p, "0")?;
            }
        }
        let stat0 = self.memory_stat()?;
        let fail0 = read_u64(&self.cgroup.join("memory.failcnt"))?;
        let vm0 = read_vmstat()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = self.spawn(cmd)?;
        let readers = [
            child.stdout.take().map(|s| drain(Box::new(s))),
            child.stderr.take().map(|s| drain(Box::new(s))),
        ];
        let (mut peak_orig, mut peak_compr) = (0, 0);
        let status = loop {
            if let Some((orig, compr)) = self.zram_usage()
                && orig > peak_orig
            {
                (peak_orig, peak_compr) = (orig, compr);
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => thread::sleep(ZRAM_SAMPLE_EVERY),
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SwapError::Child {
                        what: "wait for",
                        program,
                        source,
                    });
                }
            }
        };
        let elapsed = start.elapsed();
        let [stdout, stderr] = readers.map(|r| {
            r.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        });
        let vm1 = read_vmstat()?;
        let stat1 = self.memory_stat()?;
        let delta = |m0: &BTreeMap<String, u64>, m1: &BTreeMap<String, u64>, k: &str| {
            m1.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(m0.get(k).copied().unwrap_or(0))
        };
        let memsw_max = self.cgroup.join("memory.memsw.max_usage_in_bytes");
        let stats = SwapStats {
            pswpin: delta(&vm0, &vm1, "pswpin"),
            pswpout: delta(&vm0, &vm1, "pswpout"),
            pgmajfault: delta(&stat0, &stat1, "pgmajfault"),
            pgfault: delta(&stat0, &stat1, "pgfault"),
            failcnt: read_u64(&self.cgroup.join("memory.failcnt"))?.saturating_sub(fail0),
            max_usage_bytes: self.max_usage_bytes()?,
            memsw_max_usage_bytes: if memsw_max.exists() {
                Some(read_u64(&memsw_max)?)
            } else {
                None
            },
            zram_peak_orig_bytes: peak_orig,
            zram_peak_compr_bytes: peak_compr,
        };
        Ok(BaselineRun {
            status,
            stdout,
            stderr,
            elapsed,
            stats,
        })
    }

    /// The cgroup's `memory.stat` counters.
    pub fn memory_stat(&self) -> Result<BTreeMap<String, u64>, SwapError> {
        read_key_values(&self.cgroup.join("memory.stat"))
    }

    /// The cgroup's `memory.max_usage_in_bytes` (peak RAM use since the last run started).
    pub fn max_usage_bytes(&self) -> Result<u64, SwapError> {
        read_u64(&self.cgroup.join("memory.max_usage_in_bytes"))
    }

    /// zram's current (uncompressed, compressed) data size, from `mm_stat`.
    pub fn zram_usage(&self) -> Option<(u64, u64)> {
        let s = fs::read_to_string(self.config.sysfs().join("mm_stat")).ok()?;
        let mut it = s.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    }

    /// Undoes the setup now, reporting anything that could not be undone (dropping does the
    /// same but can only print the problems).
    pub fn teardown(mut self) -> Result<(), SwapError> {
        let problems = self.undo();
        self.torn_down = true;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SwapError::Teardown { problems })
        }
    }

    /// Reverses whatever setup did, in reverse order; idempotent.
    fn undo(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        self.procs = None;
        if self.cgroup_created {
            match remove_cgroup(&self.cgroup) {
                Ok(()) => self.cgroup_created = false,
                Err(e) => problems.push(e),
            }
        }
        let device = self.config.device();
        if self.swap_on {
            match cstring(&device) {
                Ok(path) => {
                    // SAFETY: valid NUL-terminated path that outlives the call.
                    if unsafe { libc::swapoff(path.as_ptr()) } == 0 {
                        self.swap_on = false;
                    } else {
                        problems.push(format!(
                            "swapoff {}: {}",
                            device.display(),
                            io::Error::last_os_error()
                        ));
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if self.zram_touched && !self.swap_on {
            match self.reset_zram() {
                Ok(()) => self.zram_touched = false,
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            self.lock = None;
            if self.owns_active {
                ACTIVE.store(false, Ordering::Release);
                self.owns_active = false;
            }
        }
        problems
    }

    fn reset_zram(&self) -> Result<(), String> {
        let sysfs = self.config.sysfs();
        let deadline = Instant::now() + TEARDOWN_PATIENCE;
        // reset fails with EBUSY while the device is still held open, e.g. for a moment
        // after swapoff.
        loop {
            match write_file(&sysfs.join("reset"), "1") {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(alg) = &self.original_algorithm {
            write_file(&sysfs.join("comp_algorithm"), alg).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Drop for SwapBaseline {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        for p in self.undo() {
            eprintln!("farmem-bench: Linux-swap teardown: {p}");
        }
    }
}

/// Runs in the forked child before exec: moves the calling process into the cgroup whose
/// `cgroup.procs` is open on `fd`. Async-signal-safe: getpid, write, no allocation.
fn join_cgroup(fd: RawFd) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut buf = [0u8; 12];
    let mut i = buf.len();
    let mut v = pid.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = &buf[i..];
    // SAFETY: `digits` is a live buffer of `digits.len()` bytes; `fd` is open (see spawn).
    let n = unsafe { libc::write(fd, digits.as_ptr().cast(), digits.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != digits.len() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// Kills whatever is left in the cgroup, waits for it to empty, and removes it.
fn remove_cgroup(path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + TEARDOWN_PATIENCE;
    loop {
        let pids: Vec<i32> = fs::read_to_string(path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
        for &pid in &pids {
            // SAFETY: kill has no memory-safety preconditions; the pids are the cgroup's
            // members, which only this baseline's children can be.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if pids.is_empty() {
            match fs::remove_dir(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("rmdir {}: {e}", path.display()));
                }
                Err(_) => {}
            }
        } else if Instant::now() >= deadline {
            return Err(format!(
                "cgroup {} still has tasks {pids:?} after SIGKILL",
                path.display()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The swap header page: `SWAPSPACE2` signature, version 1, last usable page, a UUID and
/// a label (layout of the kernel's `union swap_header`).
fn swap_header(device_bytes: u64, uuid_seed: u64) -> Vec<u8> {
    let mut page = vec![0u8; SWAP_PAGE];
    let last_page = (device_bytes / SWAP_PAGE as u64).saturating_sub(1);
    let last_page = u32::try_from(last_page).unwrap_or(u32::MAX);
    page[1024..1028].copy_from_slice(&1u32.to_ne_bytes()); // version
    page[1028..1032].copy_from_slice(&last_page.to_ne_bytes());
    page[1032..1036].copy_from_slice(&0u32.to_ne_bytes()); // nr_badpages
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&mix64(uuid_seed).to_le_bytes());
    uuid[8..].copy_from_slice(&mix64(uuid_seed ^ 1).to_le_bytes());
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    page[1036..1052].copy_from_slice(&uuid);
    let label = b"farmem-bench";
    page[1052..1052 + label.len()].copy_from_slice(label);
    page[SWAP_PAGE - 10..].copy_from_slice(b"SWAPSPACE2");
    page
}

fn drain(mut r: Box<dyn Read + Send>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error (the pipe closing abnormally) only truncates the output.
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn cstring(path: &Path) -> Result<CString, SwapError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SwapError::Config(format!("path {} contains a NUL byte", path.display())))
}

fn lock_exclusive(path: &Path) -> Result<File, SwapError> {
    let f = File::open(path).map_err(|source| SwapError::Read {
        path: path.into(),
        source,
    })?;
    // SAFETY: flock on an fd we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(SwapError::Locked { lock: path.into() });
    }
    Ok(f)
}

fn read_string(path: &Path) -> Result<String, SwapError> {
    fs::read_to_string(path).map_err(|source| SwapError::Read {
        path: path.into(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, SwapError> {
    let s = read_string(path)?;
    s.trim().parse().map_err(|_| SwapError::Parse {
        path: path.into(),
        detail: format!("expected a number, found {:?}", s.trim()),
    })
}

fn write_file(path: &Path, value: &str) -> Result<(), SwapError> {
    let res = OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| SwapError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

/// `key value` lines (memory.stat, /proc/vmstat) into a map; other lines are skipped.
fn read_key_values(path: &Path) -> Result<BTreeMap<String, u64>, SwapError> {
    Ok(parse_key_values(&read_string(path)?))
}

fn parse_key_values(s: &str) -> BTreeMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?.parse().ok()?);
            Some((k.to_owned(), v))
        })
        .collect()
}

fn read_vmstat() -> Result<BTreeMap<String, u64>, SwapError> {
    read_key_values(Path::new("/proc/vmstat"))
}

/// Device paths of the active swap areas, from /proc/swaps.
pub fn active_swaps() -> Result<Vec<PathBuf>, SwapError> {
    Ok(parse_swaps(&read_string(Path::new("/proc/swaps"))?))
}

fn parse_swaps(s: &str) -> Vec<PathBuf> {
    s.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

/// `lzo [lz4] zstd` into (selected, all offered).
fn parse_comp_algorithms(s: &str) -> (Option<String>, Vec<String>) {
    let mut current = None;
    let mut all = Vec::new();
    for w in s.split_whitespace() {
        let name = w.trim_start_matches('[').trim_end_matches(']');
        if w.starts_with('[') {
            current = Some(name.to_owned());
        }
        all.push(name.to_owned());
    }
    (current, all)
}

/// How many times the kernel's OOM killer fired in a memory cgroup (`oom_kill` in
/// `memory.oom_control`); 0 when the file cannot be read.
pub fn oom_kills(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.oom_control"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_header_layout() {
        let h = swap_header(64 << 20, 7);
        assert_eq!(h.len(), 4096);
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_ne_bytes(h[1024..1028].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_ne_bytes(h[1028..1032].try_into().unwrap()),
            (64 << 20) / 4096 - 1
        );
        assert_eq!(u32::from_ne_bytes(h[1032..1036].try_into().unwrap()), 0);
        assert_eq!(h[1042] >> 4, 4);
        assert!(h[..1024].iter().all(|&b| b == 0));
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_comp_algorithms("[lzo-rle] lzo lz4 \n"),
            (
                Some("lzo-rle".into()),
                vec!["lzo-rle".into(), "lzo".into(), "lz4".into()]
            )
        );
        assert_eq!(parse_comp_algorithms("lzo lz4").0, None);
        let swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0  partition 1 0 100\n";
        assert_eq!(parse_swaps(swaps), vec![PathBuf::from("/dev/zram0")]);
        assert!(parse_swaps("Filename Type Size Used Priority\n").is_empty());
        let kv = parse_key_values("pswpin 5\npswpout 7\nbogus\nx y\n");
        assert_eq!(kv.get("pswpin"), Some(&5));
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn config_errors_are_caught_before_anything_changes() {
        let mut c = SwapConfig::new(1024, 1 << 30);
        assert!(matches!(check(&c), Err(SwapError::Config(_))));
        c.budget_bytes = 16 << 20;
        c.priority = 40_000;
        let e = check(&c).unwrap_err();
        assert!(e.to_string().contains("0..=32767"), "{e}");
        c.priority = 5;
        c.zram = "../sda".into();
        assert!(matches!(check(&c), Err(SwapError::Config(_))));
    }

    #[test]
    fn missing_pieces_are_named() {
        let mut c = SwapConfig::new(16 << 20, 64 << 20);
        c.cgroup_root = "/nonexistent/cgroup".into();
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let e = check(&c).unwrap_err();
        if root {
            assert!(matches!(e, SwapError::NoCgroupV1 { .. }), "{e}");
            assert!(e.to_string().contains("mount -t cgroup -o memory"));
            c.cgroup_root = DEFAULT_CGROUP_ROOT.into();
            c.zram = "zram4095".into();
            if c.cgroup_root.join("memory.limit_in_bytes").exists() {
                let e = check(&c).unwrap_err();
                assert!(matches!(e, SwapError::NoZram { .. }), "{e}");
                assert!(e.to_string().contains("modprobe zram"));
            }
        } else {
            assert!(matches!(e, SwapError::NotRoot { .. }), "{e}");
        }
    }
}
