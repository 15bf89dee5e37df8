//! Exact LRU simulation: how many faults an ideal LRU pager with the same local budget
//! would take on the same access stream. Benchmarks report farmem's faults as a ratio to it.
//!
//! Pages are dense (`0..n`), so the recency list is intrusive: `prev`/`next` arrays indexed
//! by page (u32, `NIL` for none) plus a per-page state byte. Every access is O(1) with no
//! hashing and no allocation once the arrays cover the pages (they grow on demand, or are
//! sized up front by [`LruSim::with_pages`]).
//!
//! ```text
//!  head (MRU) -> p7 <-> p2 <-> p9 <-> p4 <- tail (LRU, evicted next)
//! ```

use serde::{Deserialize, Serialize};

const NIL: u32 = u32::MAX;
const NEVER: u8 = 0;
const RESIDENT: u8 = 1;
const EVICTED: u8 = 2;

/// Counters of an [`LruSim`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LruStats {
    /// Accesses simulated.
    pub accesses: u64,
    /// Accesses to a resident page.
    pub hits: u64,
    /// Misses on a page's first touch (compulsory; any pager takes them).
    pub cold_misses: u64,
    /// Misses on a page touched before and evicted since (due to the capacity).
    pub reref_misses: u64,
}

impl LruStats {
    /// All misses: cold plus re-reference.
    pub fn misses(&self) -> u64 {
        self.cold_misses + self.reref_misses
    }

    /// Hits over accesses (0 with no accesses).
    pub fn hit_ratio(&self) -> f64 {
        if self.accesses == 0 {
            0.0
        } else {
            self.hits as f64 / self.accesses as f64
        }
    }
}

/// An exact LRU cache of `capacity` pages over page indices `0..u32::MAX - 1`.
#[derive(Clone, Debug)]
pub struct LruSim {
    capacity: usize,
    len: usize,
    head: u32,
    tail: u32,
    prev: Vec<u32>,
    next: Vec<u32>,
    state: Vec<u8>,
    stats: LruStats,
}

impl LruSim {
    /// An empty cache holding at most `capacity_pages` pages (0 means every access misses).
    pub fn new(capacity_pages: usize) -> Self {
        Self::with_pages(capacity_pages, 0)
    }

    /// As [`LruSim::new`], with the per-page arrays sized for pages `0..pages` up front.
    pub fn with_pages(capacity_pages: usize, pages: usize) -> Self {
        Self {
            capacity: capacity_pages,
            len: 0,
            head: NIL,
            tail: NIL,
            prev: vec![NIL; pages],
            next: vec![NIL; pages],
            state: vec![NEVER; pages],
            stats: LruStats::default(),
        }
    }

    /// Capacity in pages.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pages resident now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no page is resident.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The counters so far.
    pub fn stats(&self) -> LruStats {
        self.stats
    }

    /// Zeroes the counters but keeps the cache contents and the first-touch history, e.g.
    /// to leave a warm-up phase out of the figures.
    pub fn reset_stats(&mut self) {
        self.stats = LruStats::default();
    }

    /// Whether `page` is resident (does not count as an access).
    pub fn contains(&self, page: usize) -> bool {
        self.state.get(page) == Some(&RESIDENT)
    }

    /// Simulates an access to `page`; true on a hit. A miss makes the page most recently
    /// used and evicts the least recently used page if the cache was full.
    ///
    /// # Panics
    ///
    /// If `page >= u32::MAX - 1` (16 TiB of 4 KiB pages; the arrays are u32 to halve their
    /// size).
    #[inline]
    pub fn access(&mut self, page: usize) -> bool {
        assert!(
            page < (NIL - 1) as usize,
            "LruSim supports pages below 2^32 - 2, got {page}"
        );
        if page >= self.state.len() {
            let n = (page + 1).max(self.state.len() * 2);
            self.prev.resize(n, NIL);
            self.next.resize(n, NIL);
            self.state.resize(n, NEVER);
        }
        let p = page as u32;
        self.stats.accesses += 1;
        match self.state[page] {
            RESIDENT => {
                self.stats.hits += 1;
                if self.head != p {
                    self.unlink(p);
                    self.push_front(p);
                }
                true
            }
            s => {
                if s == NEVER {
                    self.stats.cold_misses += 1;
                } else {
                    self.stats.reref_misses += 1;
                }
                if self.capacity == 0 {
                    self.state[page] = EVICTED;
                    return false;
                }
                if self.len == self.capacity {
                    let victim = self.tail;
                    self.unlink(victim);
                    self.state[victim as usize] = EVICTED;
                    self.len -= 1;
                }
                self.push_front(p);
                self.state[page] = RESIDENT;
                self.len += 1;
                false
            }
        }
    }

    fn unlink(&mut self, p: u32) {
        let (prev, next) = (self.prev[p as usize], self.next[p as usize]);
        if prev == NIL {
            self.head = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.prev[p as usize] = NIL;
        self.next[p as usize] = NIL;
    }

    fn push_front(&mut self, p: u32) {
        self.prev[p as usize] = NIL;
        self.next[p as usize] = self.head;
        if self.head == NIL {
            self.tail = p;
        } else {
            self.prev[self.head as usize] = p;
        }
        self.head = p;
    }

    /// Resident pages from most to least recently used (O(len); for tests and debugging).
    pub fn resident_mru_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.len);
        let mut p = self.head;
        while p != NIL {
            out.push(p as usize);
            p = self.next[p as usize];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious O(n) LRU: a Vec with the most recent page first.
    struct NaiveLru {
        cap: usize,
        pages: Vec<usize>,
        touched: std::collections::HashSet<usize>,
        stats: LruStats,
    }

    impl NaiveLru {
        fn access(&mut self, page: usize) -> bool {
            self.stats.accesses += 1;
            if let Some(i) = self.pages.iter().position(|&p| p == page) {
                self.pages.remove(i);
                self.pages.insert(0, page);
                self.stats.hits += 1;
                return true;
            }
            if self.touched.insert(page) {
                self.stats.cold_misses += 1;
            } else {
                self.stats.reref_misses += 1;
            }
            if self.cap > 0 {
                if self.pages.len() == self.cap {
                    self.pages.pop();
                }
                self.pages.insert(0, page);
            }
            false
        }
    }

    #[test]
    fn small_example() {
        let mut l = LruSim::new(2);
        assert!(!l.access(1));
        assert!(!l.access(2));
        assert!(l.access(1));
        assert!(!l.access(3)); // evicts 2
        assert!(!l.access(2)); // evicts 1
        assert!(l.access(3));
        assert_eq!(l.resident_mru_order(), vec![3, 2]);
        let s = l.stats();
        assert_eq!(
            (s.accesses, s.hits, s.cold_misses, s.reref_misses),
            (6, 2, 3, 1)
        );
        assert_eq!(s.misses(), 4);
        l.reset_stats();
        assert_eq!(l.stats(), LruStats::default());
        assert!(l.contains(2) && !l.contains(1) && !l.contains(99));
    }

    #[test]
    fn zero_capacity_always_misses() {
        let mut l = LruSim::new(0);
        assert!(!l.access(5));
        assert!(!l.access(5));
        assert_eq!(l.stats().cold_misses, 1);
        assert_eq!(l.stats().reref_misses, 1);
        assert!(l.is_empty());
    }

    #[test]
    fn sequential_scan_larger_than_capacity_always_misses() {
        let mut l = LruSim::with_pages(99, 100);
        for _ in 0..3 {
            for p in 0..100 {
                assert!(!l.access(p));
            }
        }
        assert_eq!(l.stats().cold_misses, 100);
        assert_eq!(l.stats().reref_misses, 200);
    }

    proptest! {
        #[test]
        fn matches_naive_model(
            cap in 0usize..12,
            accesses in prop::collection::vec(0usize..20, 0..400),
        ) {
            let mut sim = LruSim::new(cap);
            let mut model = NaiveLru {
                cap,
                pages: Vec::new(),
                touched: Default::default(),
                stats: LruStats::default(),
            };
            for &p in &accesses {
                prop_assert_eq!(sim.access(p), model.access(p), "page {}", p);
                prop_assert_eq!(sim.len(), model.pages.len());
            }
            prop_assert_eq!(sim.stats(), model.stats);
            prop_assert_eq!(sim.resident_mru_order(), model.pages);
        }
    }
}
