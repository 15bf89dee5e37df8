//! The engine: one local budget shared by all regions, the far tier, the eviction policy,
//! the background reclaimer and the stats.
//!
//! ```text
//!  faulting threads ──reserve a frame──► resident counter ◄──free frames── reclaimer
//!        │  (direct reclaim only when        │   watermarks: keep `low..high`    │
//!        │   no frame is left)               │   frames free; evict in batches   │
//!        ▼                                   ▼                                   ▼
//!   regions (memfd page cache) ──────── policy (CLOCK / FIFO) ──────── far tier (batched)
//! ```
//!
//! Residency is counted in pages of the regions' page caches. A faulting thread reserves
//! a frame before it fills a page, so residency never exceeds the budget: the documented
//! slack is zero pages of region data (page tables and farmem's own metadata, about 24
//! bytes per page of region, are not counted).

use crate::backend::{Backend, PAGE_SIZE, PageKey};
use crate::page::{HAS_FAR, State, Tag, YOUNG};
use crate::policy::{EvictionPolicy, PageRef, PageStatus, PolicyKind, ResidentView};
use crate::prefetch::Prefetcher;
use crate::region::{Region, RegionInner};
use crate::stats::{Counters, Stats};
use crate::sys::mem::{Mapping, Zapper};
use crate::sys::uffd;
use crate::{Error, FaultMode, PrefetchKind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Pages one eviction batch handles at most (also the fetch buffer size in pages).
pub(crate) const BATCH_PAGES: usize = 72;
/// How long `set_budget` waits for locked pages before it reports an error.
const SHRINK_TIMEOUT: Duration = Duration::from_secs(30);
/// Smallest budget accepted, in pages: every concurrently faulting thread needs a frame.
pub const MIN_BUDGET_PAGES: usize = 16;

/// How an engine is set up. Build one with [`Engine::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Local memory, in bytes, that all regions together may keep resident.
    pub local_budget: usize,
    /// Where evicted pages go.
    pub backend: Arc<dyn Backend>,
    /// Which pages go first.
    pub policy: PolicyKind,
    /// What to fetch with a fault.
    pub prefetch: PrefetchKind,
    /// How faults are resolved.
    pub fault_mode: FaultMode,
    /// Handler threads per region in [`FaultMode::Thread`].
    pub handler_threads: usize,
    /// Pages evicted per batch by the reclaimer.
    pub reclaim_batch: usize,
    /// Your own eviction policy, used instead of `policy` when set.
    pub custom_policy: Option<Factory<dyn EvictionPolicy>>,
    /// Your own prefetcher (one per region), used instead of `prefetch` when set.
    pub custom_prefetcher: Option<Factory<dyn Prefetcher>>,
}

/// Makes a fresh policy or prefetcher: how your own plug into an engine.
pub struct Factory<T: ?Sized>(Arc<dyn Fn() -> Box<T> + Send + Sync>);

impl<T: ?Sized> Factory<T> {
    /// Makes one.
    pub fn make(&self) -> Box<T> {
        (self.0)()
    }
}

impl<T: ?Sized> Clone for Factory<T> {
    fn clone(&self) -> Self {
        Factory(self.0.clone())
    }
}

impl<T: ?Sized> std::fmt::Debug for Factory<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Factory(custom)")
    }
}

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

    /// How faults are resolved (default: auto).
    pub fn fault_mode(mut self, mode: FaultMode) -> Builder {
        self.config.fault_mode = mode;
        self
    }

    /// Handler threads per region when faults are resolved on handler threads.
    pub fn handler_threads(mut self, n: usize) -> Builder {
        self.config.handler_threads = n.max(1);
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

/// The process-wide state every region of an engine shares.
pub(crate) struct Shared {
    pub budget: AtomicUsize,
    pub resident: AtomicUsize,
    pub backend: Arc<dyn Backend>,
    pub policy: Mutex<Box<dyn EvictionPolicy>>,
    /// Pages that became resident, waiting to be handed to the policy: the fault path
    /// pushes here without a lock; whoever selects victims drains it first.
    pub arrivals: crossbeam_queue::ArrayQueue<PageRef>,
    wants_arrivals: bool,
    pub regions: RwLock<Vec<Option<Arc<RegionInner>>>>,
    pub counters: Counters,
    pub zapper: Zapper,
    pub bufs: BufPool,
    pub config: Config,
    pub fault_mode: FaultMode,
    shutdown: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("budget", &self.budget)
            .field("resident", &self.resident)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
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
    pid: libc::pid_t,
}

fn spawn_reclaimer(shared: &Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let s2 = shared.clone();
    std::thread::Builder::new()
        .name("farmem-reclaim".into())
        .spawn(move || reclaimer_loop(&s2))
}

/// Watermarks in free frames: the reclaimer wakes below `low` and stops at `high`.
pub(crate) fn watermarks(budget: usize) -> (usize, usize) {
    let low = (budget / 32).max((budget / 8).min(8)).clamp(1, 2048);
    (low, (2 * low).min(budget / 2).max(low))
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
                fault_mode: FaultMode::Auto,
                handler_threads: 1,
                reclaim_batch: 64,
                custom_policy: None,
                custom_prefetcher: None,
            },
        }
    }

    fn new(config: Config) -> Result<Engine, Error> {
        if crate::sys::mem::page_size() != PAGE_SIZE {
            return Err(Error::Unsupported(format!(
                "farmem needs {PAGE_SIZE}-byte pages; this system uses {}",
                crate::sys::mem::page_size()
            )));
        }
        let budget = config.local_budget / PAGE_SIZE;
        if budget < MIN_BUDGET_PAGES {
            return Err(Error::BudgetTooSmall {
                requested: config.local_budget,
                minimum: MIN_BUDGET_PAGES * PAGE_SIZE,
            });
        }
        let fault_mode = resolve_mode(config.fault_mode)?;
        let policy = match &config.custom_policy {
            Some(f) => f.make(),
            None => config.policy.build(),
        };
        let shared = Arc::new(Shared {
            budget: AtomicUsize::new(budget),
            resident: AtomicUsize::new(0),
            backend: config.backend.clone(),
            wants_arrivals: policy.wants_arrivals(),
            policy: Mutex::new(policy),
            arrivals: crossbeam_queue::ArrayQueue::new(ARRIVALS),
            regions: RwLock::new(Vec::new()),
            counters: Counters::default(),
            zapper: Zapper::new(),
            bufs: BufPool::new().map_err(|e| Error::os("mmap fetch buffers", e))?,
            config,
            fault_mode,
            shutdown: AtomicBool::new(false),
        });
        let handle =
            spawn_reclaimer(&shared).map_err(|e| Error::os("spawn the reclaimer thread", e))?;
        crate::fork::track_engine(&shared);
        Ok(Engine {
            shared,
            reclaimer: Some(handle),
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
        })
    }

    /// Maps a new far region of `len` bytes (rounded up to whole pages), all zeros.
    pub fn map(&self, len: usize) -> Result<Region, Error> {
        Region::new(self.shared.clone(), len)
    }

    /// The local budget in bytes.
    pub fn budget(&self) -> usize {
        self.shared.budget.load(Relaxed) * PAGE_SIZE
    }

    /// Changes the budget while regions are in use. Shrinking evicts down to the new
    /// budget before returning; growing lets more pages stay resident.
    pub fn set_budget(&self, bytes: usize) -> Result<(), Error> {
        let pages = bytes / PAGE_SIZE;
        if pages < MIN_BUDGET_PAGES {
            return Err(Error::BudgetTooSmall {
                requested: bytes,
                minimum: MIN_BUDGET_PAGES * PAGE_SIZE,
            });
        }
        self.shared.policy_reserve(pages);
        self.shared.budget.store(pages, SeqCst);
        let mut buf = self.shared.bufs.acquire();
        let start = std::time::Instant::now();
        while self.shared.resident.load(SeqCst) > pages {
            let evicted = {
                let _pass = crate::fork::enter();
                self.shared.evict_some(BATCH_PAGES, buf.bytes())
            };
            if evicted == 0 {
                // What is left is locked: pages being evicted by the reclaimer (their frames
                // come back when its batch ends) or filled by faulting threads.
                if start.elapsed() > SHRINK_TIMEOUT {
                    return Err(Error::Busy(format!(
                        "could not evict down to the new budget of {pages} pages within {}s: {} pages stay locked by faulting threads",
                        SHRINK_TIMEOUT.as_secs(),
                        self.shared.resident.load(SeqCst)
                    )));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
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
            &c.prefetch_hits,
            &c.prefetch_unused,
            &c.written_back,
            &c.dropped_clean,
            &c.evicted_zero,
            &c.demoted,
            &c.direct_reclaims,
        ] {
            a.store(0, Relaxed);
        }
        c.peak_resident
            .store(self.shared.resident.load(Relaxed) as u64, Relaxed);
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
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        // SAFETY: getpid has no preconditions.
        let same_process = unsafe { libc::getpid() } == self.pid;
        if let Some(h) = self.reclaimer.take()
            && same_process
        {
            h.thread().unpark();
            let _ = h.join();
        }
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

/// How long the reclaimer naps between checks while pages are being faulted in, and
/// while nothing happens. It is never woken by the fault path: a wake-up costs the
/// faulting thread a system call, and the scheduler then tends to run the reclaimer on
/// the faulting thread's CPU, where the two take turns instead of running in parallel.
/// A timer wake-up keeps it on its own CPU. DESIGN.md has the measurements.
const NAP_BUSY: Duration = Duration::from_micros(500);
const NAP_IDLE: Duration = Duration::from_millis(20);

fn reclaimer_loop(s: &Shared) {
    let map = match Mapping::anon(BATCH_PAGES * PAGE_SIZE) {
        Ok(m) => m,
        Err(e) => crate::fatal::die_io("could not map the reclaimer's buffer", &e),
    };
    // SAFETY: the mapping is ours, private, and outlives this slice (dropped at the end).
    let buf = unsafe { std::slice::from_raw_parts_mut(map.ptr(), map.len()) };
    let batch = s.config.reclaim_batch;
    let mut last_resident = usize::MAX;
    let mut quiet = 0u32;
    while !s.shutdown.load(Relaxed) {
        let budget = s.budget.load(Relaxed);
        let (_, high) = watermarks(budget);
        let resident = s.resident.load(Relaxed);
        let free = budget.saturating_sub(resident);
        if free < high {
            // Full batches keep the selection cheap (see `Clock`); on a small budget a
            // batch is capped at an eighth of it, so that the policy is not asked to evict
            // far more than is missing.
            let want = (high - free).max(batch.min(budget / 8)).clamp(1, batch);
            let evicted = {
                let _pass = crate::fork::enter();
                s.evict_some(want, buf)
            };
            if evicted == 0 {
                // Everything is locked or referenced-and-undemotable right now.
                std::thread::sleep(NAP_BUSY);
            }
            quiet = 0;
            continue;
        }
        if resident != last_resident {
            quiet = 0;
        } else {
            quiet = quiet.saturating_add(1);
        }
        last_resident = resident;
        // Busy naps for a while after the last change, then idle ones.
        std::thread::park_timeout(if quiet < 200 { NAP_BUSY } else { NAP_IDLE });
    }
    drop(map);
}

impl Shared {
    /// In a forked child: the reclaimer thread did not survive fork; start another.
    pub(crate) fn restart_after_fork(self: &Arc<Self>) {
        if let Err(e) = spawn_reclaimer(self) {
            crate::fatal::die_io("after fork: could not start the reclaimer thread", &e);
        }
    }

    /// Grows the policy's preallocated capacity for `budget_pages` resident pages.
    pub(crate) fn policy_reserve(&self, budget_pages: usize) {
        let total: usize = self.total_region_pages();
        let want = total.min(budget_pages * 2 + 1024);
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(want);
    }

    fn total_region_pages(&self) -> usize {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        regions.iter().flatten().map(|r| r.pages as usize).sum()
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut st = Stats::from_counters(&self.counters);
        st.resident_pages = self.resident.load(Relaxed) as u64;
        st.budget_pages = self.budget.load(Relaxed) as u64;
        let t = self.backend.stats();
        st.far_pages = t.pages;
        st.far_bytes = t.stored_bytes;
        st.far_ratio = t.ratio();
        st
    }

    /// Reserves up to `want` frames without evicting; returns how many it got.
    pub(crate) fn try_reserve(&self, want: usize) -> usize {
        if want == 0 {
            return 0;
        }
        let mut cur = self.resident.load(Relaxed);
        loop {
            let budget = self.budget.load(Relaxed);
            let got = want.min(budget.saturating_sub(cur));
            if got == 0 {
                return 0;
            }
            match self
                .resident
                .compare_exchange_weak(cur, cur + got, AcqRel, Relaxed)
            {
                Ok(_) => {
                    self.after_reserve(cur + got, budget);
                    return got;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves one frame for a faulting page, reclaiming in this thread if none is free.
    pub(crate) fn reserve_one(&self, scratch: &mut [u8]) {
        let mut tries = 0u32;
        while self.try_reserve(1) == 0 {
            Counters::bump(&self.counters.direct_reclaims, 1);
            // A few pages at a time, to amortise the selection, but never a large share
            // of a small budget.
            let want = (self.budget.load(Relaxed) / 256).clamp(1, 16);
            if self.evict_some(want, scratch) == 0 {
                tries += 1;
                if tries > 64 {
                    // Everything resident is locked by other faulting threads: let them finish.
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }

    pub(crate) fn release_frames(&self, n: usize) {
        if n > 0 {
            self.resident.fetch_sub(n, AcqRel);
        }
    }

    fn after_reserve(&self, now: usize, _budget: usize) {
        self.counters.note_resident(now as u64);
    }

    /// Hands pages that became resident to the policy, without taking its lock unless
    /// the arrivals queue is full.
    pub(crate) fn policy_insert(&self, refs: &[PageRef]) {
        if !self.wants_arrivals {
            return;
        }
        for r in refs {
            if let Err(r) = self.arrivals.push(*r) {
                let mut p = self.policy.lock().unwrap_or_else(|e| e.into_inner());
                self.drain_arrivals(&mut **p);
                p.insert(r);
            }
        }
    }

    fn drain_arrivals(&self, p: &mut dyn EvictionPolicy) {
        while let Some(r) = self.arrivals.pop() {
            p.insert(r);
        }
    }

    /// Chooses and evicts up to `want` pages; returns the frames freed. `scratch` must
    /// hold at least `want` pages.
    pub(crate) fn evict_some(&self, want: usize, scratch: &mut [u8]) -> usize {
        let want = want.min(BATCH_PAGES).min(scratch.len() / PAGE_SIZE);
        let victims = {
            let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
            let mut view = View {
                regions: &regions,
                victims: Vec::with_capacity(want),
                shared: self,
            };
            let mut p = self.policy.lock().unwrap_or_else(|e| e.into_inner());
            self.drain_arrivals(&mut **p);
            p.select(want, &mut view);
            view.victims
        };
        self.evict_locked(victims, scratch)
    }

    /// Evicts pages the caller has locked (`prev` is the state each had): unmaps the mapped
    /// ones, writes back the dirty ones, frees their frames. Returns how many.
    pub(crate) fn evict_locked(
        &self,
        victims: Vec<(Arc<RegionInner>, u64, State)>,
        scratch: &mut [u8],
    ) -> usize {
        if victims.is_empty() {
            return 0;
        }
        let zapping = crate::pin::zapping();
        let victims = if crate::pin::any() {
            // Pages pinned for a system call stay (see `pin`).
            let (keep, go): (Vec<_>, Vec<_>) = victims
                .into_iter()
                .partition(|(r, page, _)| crate::pin::is_pinned(r.page_addr(*page)));
            for (r, page, prev) in &keep {
                r.states[*page as usize].unlock(*prev);
                self.policy_insert(&[PageRef {
                    region: r.id,
                    generation: prev.generation(),
                    page: *page,
                }]);
            }
            go
        } else {
            victims
        };
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(victims.len());
        for (r, page, prev) in &victims {
            if prev.tag() == Tag::Active {
                iov.push(libc::iovec {
                    iov_base: r.page_addr(*page) as *mut libc::c_void,
                    iov_len: PAGE_SIZE,
                });
            }
        }
        if let Err(e) = self.zapper.zap(&iov) {
            crate::fatal::die_io("could not unmap pages for eviction (madvise)", &e);
        }
        drop(zapping);
        self.write_back_and_free(&victims, scratch);
        victims.len()
    }

    /// The region with this id, if it is still mapped.
    pub(crate) fn region_arc(&self, id: u32) -> Option<Arc<RegionInner>> {
        self.regions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize)?
            .clone()
    }

    /// Victims are locked and unmapped: read them out, write back the dirty ones, free
    /// their frames.
    fn write_back_and_free(&self, victims: &[(Arc<RegionInner>, u64, State)], scratch: &mut [u8]) {
        let n = victims.len();
        let mut hashes = [0u128; BATCH_PAGES];
        let mut dirty_keys: [PageKey; BATCH_PAGES] = [PageKey(0); BATCH_PAGES];
        let mut dirty_idx = [0usize; BATCH_PAGES];
        let mut ndirty = 0;
        let mut zero = [false; BATCH_PAGES];
        for (i, (r, page, prev)) in victims.iter().enumerate() {
            let buf = &mut scratch[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            if let Err(e) = r.memfd.read_at(buf, *page as usize * PAGE_SIZE) {
                crate::fatal::die_io("could not read a page out of local memory for eviction", &e);
            }
            let h = crate::region::page_hash(buf);
            hashes[i] = h;
            if h == crate::region::zero_hash() && buf.iter().all(|&b| b == 0) {
                zero[i] = true;
            } else if !(prev.has_far() && r.far_hash(*page) == h) {
                dirty_keys[ndirty] = r.key(*page);
                dirty_idx[ndirty] = i;
                ndirty += 1;
            }
        }
        if ndirty > 0 {
            // Pack the dirty pages at the front of the buffer for one batched store.
            for (j, &i) in dirty_idx[..ndirty].iter().enumerate() {
                if i != j {
                    scratch.copy_within(i * PAGE_SIZE..(i + 1) * PAGE_SIZE, j * PAGE_SIZE);
                }
            }
            if let Err(e) = self
                .backend
                .store(&dirty_keys[..ndirty], &scratch[..ndirty * PAGE_SIZE])
            {
                crate::fatal::die_tier("write back evicted pages", self.backend.name(), &e);
            }
        }
        let mut zero_keys: [PageKey; BATCH_PAGES] = [PageKey(0); BATCH_PAGES];
        let mut nzero_far = 0;
        let (mut clean, mut nzero, mut unused) = (0u64, 0u64, 0u64);
        for (i, (r, page, prev)) in victims.iter().enumerate() {
            if let Err(e) = r.memfd.punch(*page as usize * PAGE_SIZE, PAGE_SIZE) {
                crate::fatal::die_io("could not free an evicted page (fallocate)", &e);
            }
            if prev.prefetched() || prev.ahead() {
                unused += 1;
            }
            let next = if zero[i] {
                nzero += 1;
                if prev.has_far() {
                    zero_keys[nzero_far] = r.key(*page);
                    nzero_far += 1;
                }
                State::new(Tag::Untouched, 0, prev.generation())
            } else {
                if dirty_idx[..ndirty].contains(&i) {
                    r.set_far_hash(*page, hashes[i]);
                } else {
                    clean += 1;
                }
                State::new(Tag::Far, HAS_FAR, prev.generation())
            };
            r.states[*page as usize].unlock(next);
        }
        if nzero_far > 0 {
            self.backend.discard(&zero_keys[..nzero_far]);
        }
        self.release_frames(n);
        let c = &self.counters;
        Counters::bump(&c.evicted, n as u64);
        Counters::bump(&c.written_back, ndirty as u64);
        Counters::bump(&c.dropped_clean, clean);
        Counters::bump(&c.evicted_zero, nzero);
        Counters::bump(&c.prefetch_unused, unused);
    }
}

/// Capacity of the lock-free arrivals queue.
const ARRIVALS: usize = 16384;

/// The policy's view of resident pages during one selection.
struct View<'a> {
    regions: &'a [Option<Arc<RegionInner>>],
    victims: Vec<(Arc<RegionInner>, u64, State)>,
    shared: &'a Shared,
}

impl View<'_> {
    fn region(&self, id: u32, page: u64) -> Option<&Arc<RegionInner>> {
        self.regions
            .get(id as usize)?
            .as_ref()
            .filter(|r| page < r.pages)
    }

    fn current(p: PageRef, s: State) -> bool {
        p.generation == PageRef::ANY_GENERATION || s.generation() == p.generation
    }
}

impl ResidentView for View<'_> {
    fn status(&self, p: PageRef) -> PageStatus {
        let Some(r) = self.region(p.region, p.page) else {
            return PageStatus::Stale;
        };
        let s = r.states[p.page as usize].load();
        if !Self::current(p, s) {
            return PageStatus::Stale;
        }
        match s.tag() {
            Tag::Active => PageStatus::Referenced,
            Tag::Inactive if s.young() => PageStatus::Referenced,
            Tag::Inactive => PageStatus::Unreferenced,
            Tag::Locked => PageStatus::Busy,
            Tag::Far | Tag::Untouched => PageStatus::Stale,
        }
    }

    fn evict(&mut self, p: PageRef) -> bool {
        let Some(r) = self.region(p.region, p.page) else {
            return false;
        };
        let w = &r.states[p.page as usize];
        let s = w.load();
        if !Self::current(p, s) || !s.is_resident() || !w.try_lock(s) {
            return false;
        }
        self.victims.push((r.clone(), p.page, s));
        true
    }

    fn demote_range(&mut self, region: u32, first: u64, end: u64) -> usize {
        let Some(r) = self.region(region, first) else {
            return 0;
        };
        let end = end.min(r.pages);
        // Lock the mapped pages, unmap the whole range with one call (one TLB shootdown;
        // pages of the range that are not mapped are untouched by it), unlock them as
        // unreferenced. A page that another thread is filling meanwhile may be unmapped
        // too: its fault path then finds it ACTIVE but unmapped, and maps it again.
        let mut locked = [(0u64, State(0)); CHUNK];
        let mut n = 0;
        let (mut lo, mut hi) = (u64::MAX, 0);
        let mut young = 0;
        for p in first..end {
            let w = &r.states[p as usize];
            let s = w.load();
            if s.tag() == Tag::Inactive && s.young() {
                // An unmapped prefetch: its bit is the YOUNG flag, cleared without a zap.
                if w.replace(s, s.with_flags(s.flags() & !YOUNG)) {
                    young += 1;
                }
                continue;
            }
            if s.tag() == Tag::Active && w.try_lock(s) {
                if n == CHUNK {
                    w.unlock(s);
                    break;
                }
                locked[n] = (p, s);
                n += 1;
                lo = lo.min(p);
                hi = p + 1;
            }
        }
        if n == 0 {
            return young;
        }
        let zapping = crate::pin::zapping();
        let mut demoted = n;
        if crate::pin::any() {
            // Leave pinned pages mapped (see `pin`): zap the runs between them, one call
            // each, and keep the pinned ones as they were.
            let mut run_start = None;
            let mut keep = [false; CHUNK];
            for (i, &(p, s)) in locked[..n].iter().enumerate() {
                if crate::pin::is_pinned(r.page_addr(p)) {
                    keep[i] = true;
                    r.states[p as usize].unlock(s);
                    demoted -= 1;
                }
            }
            for (i, &(p, _)) in locked[..n].iter().enumerate() {
                match (keep[i], run_start) {
                    (false, None) => run_start = Some(p),
                    (true, Some(s0)) => {
                        zap_pages(self.shared, r, s0, p);
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s0) = run_start {
                zap_pages(self.shared, r, s0, hi);
            }
            for (i, &(p, s)) in locked[..n].iter().enumerate() {
                if !keep[i] {
                    r.states[p as usize].unlock(s.with_tag(Tag::Inactive));
                }
            }
            drop(zapping);
            Counters::bump(&self.shared.counters.demoted, demoted as u64);
            return demoted + young;
        }
        zap_pages(self.shared, r, lo, hi);
        drop(zapping);
        for &(p, s) in &locked[..n] {
            r.states[p as usize].unlock(s.with_tag(Tag::Inactive));
        }
        Counters::bump(&self.shared.counters.demoted, n as u64);
        n + young
    }

    fn region_from(&self, id: u32) -> Option<(u32, u64)> {
        self.regions
            .iter()
            .enumerate()
            .skip(id as usize)
            .find_map(|(i, r)| r.as_ref().map(|r| (i as u32, r.high_water())))
    }

    fn victims(&self) -> usize {
        self.victims.len()
    }
}

/// Unmaps pages `[first, end)` of `r` (locked or unmapped by the caller) with one call.
fn zap_pages(shared: &Shared, r: &RegionInner, first: u64, end: u64) {
    let iov = [libc::iovec {
        iov_base: r.page_addr(first) as *mut libc::c_void,
        iov_len: (end - first) as usize * PAGE_SIZE,
    }];
    if let Err(e) = shared.zapper.zap(&iov) {
        crate::fatal::die_io("could not unmap pages to sample references (madvise)", &e);
    }
}

/// Most pages one `demote_range` call handles.
const CHUNK: usize = crate::policy::CHUNK_PAGES as usize;

/// Fetch buffers for fault paths: 64 slots of [`BATCH_PAGES`] pages, handed out through
/// an atomic bitmap so that a signal handler can take one without locks or allocation.
pub(crate) struct BufPool {
    map: Mapping,
    free: AtomicU64,
}

pub(crate) struct PoolBuf<'a> {
    pool: &'a BufPool,
    slot: usize,
}

impl BufPool {
    const SLOTS: usize = 64;
    const SLOT_BYTES: usize = BATCH_PAGES * PAGE_SIZE;

    fn new() -> std::io::Result<BufPool> {
        Ok(BufPool {
            map: Mapping::anon(Self::SLOTS * Self::SLOT_BYTES)?,
            free: AtomicU64::new(u64::MAX),
        })
    }

    pub(crate) fn acquire(&self) -> PoolBuf<'_> {
        loop {
            let cur = self.free.load(Acquire);
            if cur == 0 {
                // 64 faults in flight at once: wait for one to finish.
                std::hint::spin_loop();
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
                continue;
            }
            let slot = cur.trailing_zeros() as usize;
            if self
                .free
                .compare_exchange_weak(cur, cur & !(1 << slot), AcqRel, Relaxed)
                .is_ok()
            {
                return PoolBuf { pool: self, slot };
            }
        }
    }
}

impl PoolBuf<'_> {
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: slot `slot` is ours alone until drop (its bit is clear in `free`), and
        // lies inside the pool's mapping, which outlives this borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.map.ptr().add(self.slot * BufPool::SLOT_BYTES),
                BufPool::SLOT_BYTES,
            )
        }
    }
}

impl Drop for PoolBuf<'_> {
    fn drop(&mut self) {
        self.pool.free.fetch_or(1 << self.slot, AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_fit_inside_the_budget() {
        for b in [16usize, 17, 100, 1000, 65536, 1 << 22] {
            let (low, high) = watermarks(b);
            assert!(
                low >= 1 && low <= high && high <= b / 2 + 1,
                "{b}: {low} {high}"
            );
        }
    }
}
