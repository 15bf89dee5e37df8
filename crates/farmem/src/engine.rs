//! The engine: the handle that owns the shared state of its regions (one local budget,
//! the far tier, the eviction policy) and the background reclaimer.
//!
//! ```text
//!   Engine ──► Shared (state/shared.rs) ◄── every Region
//!     └── reclaimer thread (reclaim/)
//! ```

use crate::backend::{Backend, PAGE_SIZE};
use crate::policy::{EvictionPolicy, PolicyKind};
use crate::prefetch::Prefetcher;
use crate::reclaim;
use crate::region::Region;
use crate::state::budget::MIN_BUDGET_PAGES;
use crate::state::bufs::BATCH_PAGES;
use crate::state::config::{Config, Factory};
use crate::state::shared::Shared;
use crate::stats::Stats;
use crate::sys::uffd;
use crate::{Error, FaultMode, PageSize, PrefetchKind};
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::time::Duration;

/// How long `set_budget` waits for locked pages before it reports an error.
const SHRINK_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Local memory budget in bytes (rounded down to pages; at least 16 pages).
    pub fn local_budget(mut self, bytes: usize) -> Builder {
        self.config.local_budget = bytes;
        self
    }

    /// The far tier (default: uncompressed in memory).
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Builder {
        self.config.backend = backend;
        self
    }

    /// The eviction policy (default: CLOCK).
    pub fn policy(mut self, policy: PolicyKind) -> Builder {
        self.config.policy = policy;
        self
    }

    /// Your own eviction policy: `make` is called once, when the engine starts. See
    /// [`crate::policy`] for the contract a policy keeps.
    pub fn custom_policy(
        mut self,
        make: impl Fn() -> Box<dyn EvictionPolicy> + Send + Sync + 'static,
    ) -> Builder {
        self.config.custom_policy = Some(Factory(Arc::new(make)));
        self
    }

    /// Your own prefetcher: `make` is called once per region. See [`crate::prefetch`] for
    /// the contract a prefetcher keeps.
    pub fn custom_prefetcher(
        mut self,
        make: impl Fn() -> Box<dyn Prefetcher> + Send + Sync + 'static,
    ) -> Builder {
        self.config.custom_prefetcher = Some(Factory(Arc::new(make)));
        self
    }

    /// The prefetcher each region gets (default: readahead).
    pub fn prefetch(mut self, prefetch: PrefetchKind) -> Builder {
        self.config.prefetch = prefetch;
        self
    }

    /// Chase pointers on faults (off by default): from the faulting thread's registers
    /// and the faulting block's words to the far heap blocks they lead to, which are
    /// prefetched with the fault. Besides [`Builder::prefetch`]; see
    /// [`crate::prefetch::pointer`]. A region learns where blocks are from
    /// [`Region::set_block_table`](crate::Region::set_block_table) (farmem's heap sets
    /// it); without a table a pointer stands for the 64 bytes it points at.
    pub fn pointer_prefetch(mut self, on: bool) -> Builder {
        self.config.pointer_prefetch = on;
        self
    }

    /// How faults are resolved (default: auto).
    pub fn fault_mode(mut self, mode: FaultMode) -> Builder {
        self.config.fault_mode = mode;
        self
    }

    /// The page size: 4 KiB (default) or 2 MiB huge pages (see [`PageSize::Huge`]).
    pub fn page_size(mut self, size: PageSize) -> Builder {
        self.config.page_size = size;
        self
    }

    /// Handler threads per region when faults are resolved on handler threads.
    pub fn handler_threads(mut self, n: usize) -> Builder {
        self.config.handler_threads = n.max(1);
        self
    }

    /// Pins handler thread `i` of each region to `cpus[i % cpus.len()]` (thread fault
    /// mode). A fault's wake-up of a handler on the faulting thread's own CPU costs no
    /// cross-CPU interrupt: `farmem vm` puts each vCPU and its handler on one CPU.
    pub fn handler_cpus(mut self, cpus: Vec<usize>) -> Builder {
        self.config.handler_cpus = cpus;
        self
    }

    /// Handler threads spin reading the userfaultfd instead of sleeping until a fault
    /// arrives (thread fault mode): a fault then needs no wake-up of its handler, and
    /// each handler thread takes a whole CPU. Pin them away from the faulting threads
    /// (`handler_cpus`).
    pub fn handler_busy_poll(mut self, on: bool) -> Builder {
        self.config.handler_busy_poll = on;
        self
    }

    /// Whether to read the hardware's accessed bits to learn which pages are in use
    /// (default: yes). See [`Config::accessed_bits`].
    pub fn accessed_bits(mut self, on: bool) -> Builder {
        self.config.accessed_bits = on;
        self
    }

    /// Pages per reclaim batch (1 to 72).
    pub fn reclaim_batch(mut self, pages: usize) -> Builder {
        self.config.reclaim_batch = pages.clamp(1, BATCH_PAGES);
        self
    }

    /// Starts the engine and its reclaimer.
    pub fn build(self) -> Result<Engine, Error> {
        Engine::new(self.config)
    }
}

/// A far-memory engine: a local budget, a far tier and the regions that share them.
///
/// Dropping the engine stops its reclaimer; regions still alive keep working (faulting
/// threads then reclaim for themselves), so drop regions first.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    reclaimer: Option<std::thread::JoinHandle<()>>,
    /// The process that started the reclaimer (a forked child has its own).
    pid: u32,
}

impl Engine {
    /// A builder with the defaults: 256 MiB budget, `mem` tier, CLOCK, readahead, auto.
    pub fn builder() -> Builder {
        Builder {
            config: Config {
                local_budget: 256 << 20,
                backend: Arc::new(crate::backend::Memory::new()),
                policy: PolicyKind::default(),
                prefetch: PrefetchKind::default(),
                pointer_prefetch: false,
                fault_mode: FaultMode::Auto,
                page_size: PageSize::Small,
                handler_threads: 1,
                handler_cpus: Vec::new(),
                handler_busy_poll: false,
                reclaim_batch: 64,
                accessed_bits: true,
                custom_policy: None,
                custom_prefetcher: None,
            },
        }
    }

    fn new(mut config: Config) -> Result<Engine, Error> {
        if crate::sys::mem::page_size() != PAGE_SIZE {
            return Err(Error::Unsupported(format!(
                "farmem needs {PAGE_SIZE}-byte pages; this system uses {}",
                crate::sys::mem::page_size()
            )));
        }
        let unit = config.page_size.bytes();
        let min = min_budget(config.page_size);
        let budget = config.local_budget / unit;
        if budget < min {
            return Err(Error::BudgetTooSmall {
                requested: config.local_budget,
                minimum: min * unit,
            });
        }
        let huge_pages = if config.page_size == PageSize::Huge {
            // Faults in the kernel wait for a handler thread; the page itself is the only
            // prefetch, and the hand tests pages by unmapping them (accessed bits are read
            // per 4 KiB mapping).
            config.fault_mode = match config.fault_mode {
                FaultMode::Sigbus => {
                    return Err(Error::InvalidArgument(
                        "2 MiB pages need the thread fault mode (not sigbus)".into(),
                    ));
                }
                _ => FaultMode::Thread,
            };
            config.accessed_bits = false;
            config.prefetch = PrefetchKind::None;
            config.pointer_prefetch = false;
            config.custom_prefetcher = None;
            Some(crate::sys::hugepages::Reservation::take(budget + 1).map_err(Error::HugePages)?)
        } else {
            None
        };
        let fault_mode = resolve_mode(config.fault_mode)?;
        if config.page_size == PageSize::Huge {
            // MADV_DONTNEED on hugetlbfs mappings (eviction, the CLOCK test) came in 5.18.
            if !crate::sys::mem::kernel_at_least(5, 18) {
                return Err(Error::Unsupported(
                    "2 MiB pages need Linux 5.18 or newer (MADV_DONTNEED on hugetlbfs)".into(),
                ));
            }
            let need = uffd::feature::MISSING_HUGETLBFS | uffd::feature::MINOR_HUGETLBFS;
            if uffd::probe_features().map_err(Error::userfaultfd)? & need != need {
                return Err(Error::Unsupported(
                    "this kernel's userfaultfd lacks hugetlbfs minor faults (Linux 5.13 or newer is needed for 2 MiB pages)".into(),
                ));
            }
            // Computed here, not on the eviction path.
            crate::state::region::zero_hash(unit);
        }
        let policy = match &config.custom_policy {
            Some(f) => f.make(),
            None => config.policy.build(),
        };
        crate::state::region::init_split_allowance();
        let shared = Arc::new(Shared::new(config, budget, fault_mode, policy)?);
        *shared.huge_pages.lock().unwrap_or_else(|e| e.into_inner()) = huge_pages;
        let handle =
            reclaim::spawn(&shared).map_err(|e| Error::os("spawn the reclaimer thread", e))?;
        crate::fork::track_engine(&shared);
        Ok(Engine {
            shared,
            reclaimer: Some(handle),
            pid: std::process::id(),
        })
    }

    /// Maps a new far region of `len` bytes (rounded up to whole pages), all zeros.
    pub fn map(&self, len: usize) -> Result<Region, Error> {
        Region::new(self.shared.clone(), len)
    }

    /// The local budget in bytes.
    pub fn budget(&self) -> usize {
        self.shared.frames.budget() * self.shared.unit()
    }

    /// The page size regions of this engine use.
    pub fn page_size(&self) -> PageSize {
        self.shared.config.page_size
    }

    /// Changes the budget while regions are in use. Shrinking evicts down to the new
    /// budget before returning; growing lets more pages stay resident.
    pub fn set_budget(&self, bytes: usize) -> Result<(), Error> {
        let unit = self.shared.unit();
        let pages = bytes / unit;
        let min = min_budget(self.shared.config.page_size);
        if pages < min {
            return Err(Error::BudgetTooSmall {
                requested: bytes,
                minimum: min * unit,
            });
        }
        {
            // A larger budget of huge pages needs more of the kernel's pool first.
            let mut held = self
                .shared
                .huge_pages
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(r) = held.as_mut() {
                r.grow(pages + 1).map_err(Error::HugePages)?;
            }
        }
        self.shared.policy_reserve(pages);
        self.shared.frames.set_budget(pages);
        let mut buf = self.shared.bufs.acquire();
        let start = std::time::Instant::now();
        while self.shared.frames.resident() > pages {
            let evicted = {
                let _pass = crate::state::gate::enter();
                reclaim::evict_some(&self.shared, BATCH_PAGES, buf.bytes())
            };
            if evicted == 0 {
                // What is left is locked: pages being evicted by the reclaimer (their frames
                // come back when its batch ends) or filled by faulting threads.
                if start.elapsed() > SHRINK_TIMEOUT {
                    return Err(Error::Busy(format!(
                        "could not evict down to the new budget of {pages} pages within {}s: {} pages stay locked by faulting threads",
                        SHRINK_TIMEOUT.as_secs(),
                        self.shared.frames.resident()
                    )));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// Replaces every region's prefetcher, now and for regions mapped later, with a fresh
    /// one of `kind` (a custom prefetcher too).
    pub fn set_prefetch(&self, kind: PrefetchKind) {
        self.shared.set_prefetch(kind);
    }

    /// The prefetcher the regions use: `none`, `readahead`, `majority` or `custom`.
    pub fn prefetch(&self) -> &'static str {
        self.shared.prefetch_name()
    }

    /// A snapshot of what the engine has done.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Zeroes the counters and histograms (the resident and far figures stay).
    pub fn reset_stats(&self) {
        let c = &self.shared.counters;
        for a in [
            &c.zero_faults,
            &c.minor_faults,
            &c.major_faults,
            &c.fetched,
            &c.evicted,
        ] {
            a.store(0, Relaxed);
        }
        for a in [
            &c.spurious_faults,
            &c.prefetched,
            &c.object_pages,
            &c.object_remapped,
            &c.pointer_reads,
            &c.pointer_targets,
            &c.kept_by_hint,
            &c.prefetch_hits,
            &c.prefetch_unused,
            &c.prefetch_throttled,
            &c.written_back,
            &c.dropped_clean,
            &c.evicted_zero,
            &c.demoted,
            &c.aged_chunks,
            &c.counted_chunks,
            &c.kept_mapped,
            &c.cold_mapped,
            &c.zero_ahead,
            &c.direct_reclaims,
            &c.reclaimer_raised,
        ] {
            a.store(0, Relaxed);
        }
        c.peak_resident
            .store(self.shared.frames.resident() as u64, Relaxed);
        c.major_latency.reset();
        c.minor_latency.reset();
        c.zero_latency.reset();
    }

    /// Major faults so far: a cheap counter read, for probes that time single accesses.
    pub fn major_faults(&self) -> u64 {
        self.shared.counters.major_faults.load(Relaxed)
    }

    /// How faults are resolved in this engine (`auto` already decided).
    pub fn fault_mode(&self) -> FaultMode {
        self.shared.fault_mode
    }

    /// The far tier's name.
    pub fn backend_name(&self) -> &str {
        self.shared.backend.name()
    }

    /// The process is about to exit without dropping the engine (an exit hook): lets the
    /// far tier free what it holds elsewhere once the process is gone (a memory node
    /// frees the session). The engine keeps working until the process ends.
    pub fn before_exit(&self) {
        self.shared.backend.before_exit();
        // The surplus huge pages are freed with the process's memory; the limit raised for
        // them stays (the engine keeps working until the end, and may still need room).
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        let same_process = std::process::id() == self.pid;
        if let Some(h) = self.reclaimer.take()
            && same_process
        {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// The smallest budget in pages of `size`: a frame for every concurrently faulting
/// thread, and for 2 MiB pages at least four (one local page would thrash).
fn min_budget(size: PageSize) -> usize {
    match size {
        PageSize::Small => MIN_BUDGET_PAGES,
        PageSize::Huge => 4,
    }
}

/// Decides `auto` and checks that the kernel can do what was asked.
fn resolve_mode(mode: FaultMode) -> Result<FaultMode, Error> {
    let features = uffd::probe_features().map_err(Error::userfaultfd)?;
    let need = uffd::feature::MISSING_SHMEM | uffd::feature::MINOR_SHMEM;
    if features & need != need {
        return Err(Error::Unsupported(
            "this kernel's userfaultfd lacks shared-memory minor faults (Linux 5.13 or newer is needed)".into(),
        ));
    }
    let sigbus = features & uffd::feature::SIGBUS != 0;
    match mode {
        FaultMode::Auto => Ok(if sigbus {
            FaultMode::Sigbus
        } else {
            FaultMode::Thread
        }),
        FaultMode::Sigbus if !sigbus => Err(Error::Unsupported(
            "this kernel's userfaultfd lacks UFFD_FEATURE_SIGBUS: use --fault-mode thread".into(),
        )),
        m => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// (scheduling policy, nice) of thread `tid` of this process, from its stat line.
    fn sched_of(tid: i32) -> (u32, i32) {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) start at field 3.
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        (f[41 - 3].parse().unwrap(), f[19 - 3].parse().unwrap())
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_reclaimer_runs_in_the_background_until_raised() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let e = Engine::builder().local_budget(64 * 4096).build().unwrap();
        let s = &e.shared;
        wait_for("the reclaimer starts", || s.reclaimer_tid().is_some());
        let tid = s.reclaimer_tid().unwrap();
        wait_for("the reclaimer lowers itself", || {
            sched_of(tid).0 == SCHED_IDLE
        });

        // Frames taken (as faulting threads take them) until the reserve runs short:
        // the reclaimer raises itself, and stays raised while it cannot free any.
        let taken = s.try_reserve(64);
        assert_eq!(taken, 64);
        wait_for("the reclaimer raises itself", || {
            sched_of(tid).0 == SCHED_OTHER
        });
        let nice = sched_of(tid).1;
        // SAFETY: geteuid has no preconditions.
        let privileged = unsafe { libc::geteuid() } == 0;
        assert!(nice == -10 || (!privileged && nice == 0), "nice {nice}");
        assert!(e.stats().reclaimer_raised >= 1);

        // Frames back: it goes back to the background.
        s.frames.release(taken);
        wait_for("the reclaimer lowers itself again", || {
            sched_of(tid).0 == SCHED_IDLE
        });

        // A faulting thread raises it too (it may be starved and unable to look).
        let before = e.stats().reclaimer_raised;
        s.raise_reclaimer();
        assert_eq!(e.stats().reclaimer_raised, before + 1);
        wait_for("and it lowers itself again", || {
            sched_of(tid).0 == SCHED_IDLE
        });
    }
}
