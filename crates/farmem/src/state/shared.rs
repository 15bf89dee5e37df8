//! What every region of an engine shares: the frames, the far tier, the eviction policy
//! and the queue that feeds it, the table of regions, the counters, the zapper and the
//! fetch buffers.

use crate::Error;
use crate::FaultMode;
use crate::PrefetchKind;
use crate::backend::Backend;
use crate::policy::{EvictionPolicy, PageRef};
use crate::prefetch::Prefetcher;
use crate::state::accessed::AccessedBits;
use crate::state::budget::Frames;
use crate::state::bufs::BufPool;
use crate::state::config::Config;
use crate::state::region::RegionState;
use crate::stats::{Counters, Stats};
use crate::sys::mem::Zapper;
use crate::sys::sched::{Priority, gettid, set_thread_priority};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI32};
use std::sync::{Arc, Mutex, RwLock};

/// Capacity of the lock-free arrivals queue.
const ARRIVALS: usize = 16384;

/// The process-wide state every region of an engine shares.
/// The reclaimer's priority while it is behind. When the program's threads keep every
/// CPU busy, a reclaimer at the program's priority falls behind and faulting threads
/// reclaim for themselves; a higher priority lets it keep the free reserve up. Without
/// the privilege to raise it, it runs at nice 0.
const RECLAIMER_URGENT: Priority = Priority::Urgent(-10);

pub(crate) struct Shared {
    pub frames: Frames,
    pub backend: Arc<dyn Backend>,
    pub policy: Mutex<Box<dyn EvictionPolicy>>,
    /// The accessed-bit counts, read by whoever holds `policy` (taken after it).
    pub accessed: Mutex<AccessedBits>,
    /// Pages that became resident, waiting to be handed to the policy: the fault path
    /// pushes here without a lock; whoever selects victims drains it first.
    arrivals: crossbeam_queue::ArrayQueue<PageRef>,
    wants_arrivals: bool,
    pub regions: RwLock<Vec<Option<Arc<RegionState>>>>,
    pub counters: Counters,
    pub zapper: Zapper,
    pub bufs: BufPool,
    pub config: Config,
    pub fault_mode: FaultMode,
    /// The huge pages taken from the kernel's pool for the budget (huge pages only).
    pub huge_pages: Mutex<Option<crate::sys::hugepages::Reservation>>,
    pub shutdown: AtomicBool,
    /// The last selection found no victim with eviction hints honoured: the next one
    /// ignores `Priority::Keep` (a hint never stops reclaim).
    pub hints_off: AtomicBool,
    /// The reclaimer thread's id (0 until it runs), so that other threads can raise its
    /// priority (`raise_reclaimer`).
    reclaimer_tid: AtomicI32,
    /// Whether the reclaimer runs at `RECLAIMER_URGENT`.
    reclaimer_urgent: AtomicBool,
    /// The prefetcher chosen since the engine started (`Engine::set_prefetch`), which
    /// replaces the configuration's for every region, now and later.
    prefetch_now: Mutex<Option<PrefetchKind>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("frames", &self.frames)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        budget_pages: usize,
        fault_mode: FaultMode,
        policy: Box<dyn EvictionPolicy>,
    ) -> Result<Shared, Error> {
        let unit = config.page_size.bytes();
        Ok(Shared {
            frames: Frames::new(budget_pages),
            backend: config.backend.clone(),
            wants_arrivals: policy.wants_arrivals(),
            policy: Mutex::new(policy),
            accessed: Mutex::new(AccessedBits::new(config.accessed_bits)),
            arrivals: crossbeam_queue::ArrayQueue::new(ARRIVALS),
            regions: RwLock::new(Vec::new()),
            counters: Counters::default(),
            zapper: Zapper::new(),
            bufs: BufPool::new(unit).map_err(|e| Error::os("mmap fetch buffers", e))?,
            config,
            fault_mode,
            huge_pages: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            hints_off: AtomicBool::new(false),
            reclaimer_tid: AtomicI32::new(0),
            reclaimer_urgent: AtomicBool::new(false),
            prefetch_now: Mutex::new(None),
        })
    }

    /// Bytes in one page of every region (4 KiB, or 2 MiB with huge pages): the unit of
    /// the state table, the budget, filling and eviction.
    #[inline]
    pub(crate) fn unit(&self) -> usize {
        self.config.page_size.bytes()
    }

    /// Whether pages are 2 MiB huge pages (`PageSize::Huge`).
    #[inline]
    pub(crate) fn huge(&self) -> bool {
        self.config.page_size == crate::PageSize::Huge
    }

    /// Pages one fetch or eviction batch holds: `BATCH_PAGES` of 4 KiB, one of 2 MiB.
    pub(crate) fn batch_pages(&self) -> usize {
        (self.bufs.slot_bytes() / self.unit()).min(crate::state::bufs::BATCH_PAGES)
    }

    /// A prefetcher for a new region: the one chosen last, or the configuration's.
    pub(crate) fn new_prefetcher(&self) -> Box<dyn Prefetcher> {
        let now = *self.prefetch_now.lock().unwrap_or_else(|e| e.into_inner());
        match (now, &self.config.custom_prefetcher) {
            (Some(kind), _) => crate::prefetch::build(kind, self.fault_mode),
            (None, Some(f)) => f.make(),
            (None, None) => crate::prefetch::build(self.config.prefetch, self.fault_mode),
        }
    }

    /// The name of the prefetcher regions use: a built-in kind, or "custom".
    pub(crate) fn prefetch_name(&self) -> &'static str {
        let now = *self.prefetch_now.lock().unwrap_or_else(|e| e.into_inner());
        match (now, &self.config.custom_prefetcher) {
            (Some(kind), _) => kind.name(),
            (None, Some(_)) => "custom",
            (None, None) => self.config.prefetch.name(),
        }
    }

    /// Gives every region, now and later, a fresh prefetcher of `kind`.
    pub(crate) fn set_prefetch(&self, kind: PrefetchKind) {
        let mut now = self.prefetch_now.lock().unwrap_or_else(|e| e.into_inner());
        *now = Some(kind);
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        for r in regions.iter().flatten() {
            *r.prefetcher.lock().unwrap_or_else(|e| e.into_inner()) =
                crate::prefetch::build(kind, self.fault_mode);
        }
    }

    /// Makes the calling thread the reclaimer, and runs it in the background.
    pub(crate) fn become_reclaimer(&self) {
        self.reclaimer_tid.store(gettid(), Relaxed);
        self.reclaimer_urgent.store(true, Relaxed);
        self.lower_reclaimer();
    }

    /// Runs the reclaimer in the background (`SCHED_IDLE`): in CPU time nobody else
    /// wants. On a machine whose CPUs a program and its clients take turns on, a
    /// reclaimer at a normal priority holds the CPU a client wakes up on (DESIGN.md,
    /// "the reclaimer's priority").
    pub(crate) fn lower_reclaimer(&self) {
        if self.reclaimer_urgent.swap(false, Relaxed) {
            let _ = set_thread_priority(self.reclaimer_tid.load(Relaxed), Priority::Background);
        }
    }

    /// Raises the reclaimer to `RECLAIMER_URGENT` until it lowers itself again (when the
    /// free reserve is back at the high watermark). A faulting thread calls this when it
    /// leaves the reserve below the low watermark, when it finds no free frame, and when
    /// it waits on a locked page: a background reclaimer may be starved and unable to
    /// notice, or starved while it holds the page. One system call, once per episode.
    pub(crate) fn raise_reclaimer(&self) {
        let tid = self.reclaimer_tid.load(Relaxed);
        if tid != 0
            && !self.reclaimer_urgent.load(Relaxed)
            && !self.reclaimer_urgent.swap(true, Relaxed)
        {
            Counters::bump(&self.counters.reclaimer_raised, 1);
            let _ = set_thread_priority(tid, RECLAIMER_URGENT);
        }
    }

    /// The reclaimer thread's id, once it runs.
    #[cfg(test)]
    pub(crate) fn reclaimer_tid(&self) -> Option<i32> {
        Some(self.reclaimer_tid.load(Relaxed)).filter(|&t| t != 0)
    }

    /// Enters a region made by `make(id)` under a free id.
    pub(crate) fn add_region(
        self: &Arc<Self>,
        make: impl FnOnce(u32) -> RegionState,
    ) -> Result<Arc<RegionState>, Error> {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        let id = match regions.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                regions.push(None);
                regions.len() - 1
            }
        };
        if id >= 1 << 24 {
            return Err(Error::InvalidArgument(
                "too many regions in one engine (16 million)".into(),
            ));
        }
        let r = Arc::new(make(id as u32));
        regions[id] = Some(r.clone());
        drop(regions);
        self.policy_reserve(self.frames.budget());
        Ok(r)
    }

    /// Takes a region out of the table (its pages are the caller's to release).
    pub(crate) fn remove_region(&self, id: u32) {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        regions[id as usize] = None;
    }

    /// The region with this id, if it is still mapped.
    pub(crate) fn region_arc(&self, id: u32) -> Option<Arc<RegionState>> {
        self.regions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize)?
            .clone()
    }

    /// Takes up to `want` frames without evicting; returns how many it got.
    #[inline]
    pub(crate) fn try_reserve(&self, want: usize) -> usize {
        self.try_reserve_keeping(want, 0)
    }

    /// Takes up to `want` frames without evicting and without dipping into the low
    /// watermark's reserve: for pages nobody asked for yet (zero-fill runs), which must
    /// not make the reclaimer evict real pages or leave the next fault to reclaim.
    #[inline]
    pub(crate) fn try_reserve_spare(&self, want: usize) -> usize {
        let (low, _) = crate::state::budget::watermarks(self.frames.budget());
        self.try_reserve_keeping(want, low)
    }

    fn try_reserve_keeping(&self, want: usize, keep: usize) -> usize {
        let (got, now) = self.frames.try_reserve(want, keep);
        if got > 0 {
            self.counters.note_resident(now as u64);
        }
        got
    }

    /// Gives `n` frames back.
    #[inline]
    pub(crate) fn release_frames(&self, n: usize) {
        self.frames.release(n);
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

    /// Hands the queued arrivals to `p` (the policy, locked by the caller).
    pub(crate) fn drain_arrivals(&self, p: &mut dyn EvictionPolicy) {
        while let Some(r) = self.arrivals.pop() {
            p.insert(r);
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
        st.page_bytes = self.unit() as u64;
        st.resident_pages = self.frames.resident() as u64;
        st.budget_pages = self.frames.budget() as u64;
        let t = self.backend.stats();
        st.far_pages = t.pages;
        st.far_bytes = t.stored_bytes;
        st.far_ratio = t.ratio();
        st
    }
}
