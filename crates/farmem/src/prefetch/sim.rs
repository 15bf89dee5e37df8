//! Test-only trace simulator: runs a prefetcher over an access trace against a tiny model
//! of the engine (a resident set with FIFO eviction, prefetched pages waiting unmapped
//! until their first touch) and counts faults. It also checks, on every call, what every
//! prefetcher promises: candidates are in the region, never the faulting page, never
//! repeated within a call.

use super::super::{Candidates, FaultInfo, MAX_PREFETCH, Prefetcher};
use std::collections::{HashMap, HashSet, VecDeque};

/// A deterministic pseudo-random generator (splitmix64), so tests need no `rand`.
pub(crate) fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    Mapped,
    Prefetched,
}

/// What a run cost.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    /// Accesses in the trace.
    pub accesses: u64,
    /// Faults that had to go to the far tier.
    pub major: u64,
    /// First touches of prefetched pages.
    pub hits: u64,
    /// Candidates returned, in total.
    pub requested: u64,
    /// Candidates that an earlier call had already returned.
    pub duplicate_requests: u64,
    /// Candidates brought in (not already local).
    pub fetched: u64,
    /// Prefetched pages evicted before any touch.
    pub wasted: u64,
    /// Calls that returned at least one candidate (one far round trip each).
    pub batches: u64,
    /// Most candidates from one call.
    pub max_batch: usize,
    /// Furthest candidate from its faulting page.
    pub max_reach: u64,
}

/// The engine model.
#[derive(Debug)]
pub(crate) struct Sim<P> {
    pub prefetcher: P,
    region_pages: u64,
    capacity: usize,
    local: HashMap<u64, Local>,
    fifo: VecDeque<u64>,
    ever_requested: HashSet<u64>,
    pub stats: Stats,
}

impl<P: Prefetcher> Sim<P> {
    /// A region of `region_pages` pages, holding at most `capacity` of them locally.
    pub fn new(prefetcher: P, region_pages: u64, capacity: usize) -> Sim<P> {
        Sim {
            prefetcher,
            region_pages,
            capacity: capacity.max(1),
            local: HashMap::new(),
            fifo: VecDeque::new(),
            ever_requested: HashSet::new(),
            stats: Stats::default(),
        }
    }

    /// The program touches `page`.
    pub fn access(&mut self, page: u64) {
        assert!(page < self.region_pages);
        self.stats.accesses += 1;
        let hit = match self.local.get(&page) {
            Some(Local::Mapped) => return,
            Some(Local::Prefetched) => {
                self.stats.hits += 1;
                self.local.insert(page, Local::Mapped);
                true
            }
            None => {
                self.stats.major += 1;
                self.install(page, Local::Mapped);
                false
            }
        };
        let mut out = Candidates::new();
        let info = FaultInfo {
            page,
            region_pages: self.region_pages,
            write: false,
            hit,
        };
        self.prefetcher.on_fault(&info, &mut out);
        self.take(page, out.as_slice());
    }

    fn take(&mut self, page: u64, candidates: &[u64]) {
        assert!(candidates.len() <= MAX_PREFETCH);
        if !candidates.is_empty() {
            self.stats.batches += 1;
        }
        self.stats.max_batch = self.stats.max_batch.max(candidates.len());
        let mut this_call = HashSet::new();
        for &c in candidates {
            assert!(
                c < self.region_pages,
                "candidate {c} outside {} pages",
                self.region_pages
            );
            assert_ne!(c, page, "the faulting page itself was a candidate");
            assert!(this_call.insert(c), "candidate {c} twice in one call");
            self.stats.requested += 1;
            self.stats.max_reach = self.stats.max_reach.max(c.abs_diff(page));
            if !self.ever_requested.insert(c) {
                self.stats.duplicate_requests += 1;
            }
            if !self.local.contains_key(&c) {
                self.stats.fetched += 1;
                self.install(c, Local::Prefetched);
            }
        }
    }

    fn install(&mut self, page: u64, state: Local) {
        self.local.insert(page, state);
        self.fifo.push_back(page);
        while self.local.len() > self.capacity {
            let Some(victim) = self.fifo.pop_front() else {
                break;
            };
            if self.local.remove(&victim) == Some(Local::Prefetched) {
                self.stats.wasted += 1;
            }
        }
    }
}
