//! The accuracy throttle: how many pages a region's prefetcher may ask for per fault,
//! from how many of the pages it brought in lately were used.
//!
//! A guess that misses costs a fetch, a frame (something else is evicted for it) and its
//! install; one that hits saves a major fault. On a program whose objects span a page or
//! two at random places (Redis values of a few KiB), readahead's bet on the next pages is
//! right for the object's own next page and wrong for the rest: measured at 33% on
//! redis-benchmark. A wasted page costs about as much as a used one saves when about
//! 40% are used (a fetch and install, 1-2 us, and the eviction of a page that may be
//! needed, against a major fault of 6-9 us saved). So every [`EPOCH`] prefetched pages
//! the share used in that time sets the cap for the next epoch: all of what the
//! prefetcher asks at 45% or more, 1 page from 20%, none below (every [`PROBE`]th fault
//! may still take one page, so that a program whose access pattern changes is noticed).
//! The cap rises again as the share does. A cap of 4 pages from 45% and of all from 60%
//! was tried first: it cut Redis LRANGE's readahead (62-67% used overall, below 60% in
//! some epochs) and cost it major faults.
//!
//! Only the prefetcher's and advice's guesses are capped, not what the application's
//! upcall asks for (the object prefetch knows where an object ends).
//!
//! Counters are relaxed atomics; two threads ending an epoch at once both recompute the
//! cap from nearly the same figures, which is harmless.

use super::MAX_PREFETCH;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Prefetched pages per measurement.
pub(crate) const EPOCH: u64 = 256;
/// With the cap at 0, one fault in this many may still prefetch one page.
pub(crate) const PROBE: u32 = 32;

#[derive(Debug)]
pub(crate) struct Throttle {
    issued: AtomicU64,
    used: AtomicU64,
    /// `issued` and `used` when the current epoch began.
    epoch_issued: AtomicU64,
    epoch_used: AtomicU64,
    cap: AtomicU32,
    calls: AtomicU32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            issued: AtomicU64::new(0),
            used: AtomicU64::new(0),
            epoch_issued: AtomicU64::new(0),
            epoch_used: AtomicU64::new(0),
            cap: AtomicU32::new(MAX_PREFETCH as u32),
            calls: AtomicU32::new(0),
        }
    }
}

impl Throttle {
    /// Pages the prefetcher may add for this fault.
    pub(crate) fn cap(&self) -> usize {
        match self.cap.load(Relaxed) {
            0 if self.calls.fetch_add(1, Relaxed).is_multiple_of(PROBE) => 1,
            c => c as usize,
        }
    }

    /// `n` prefetched pages came in.
    pub(crate) fn issued(&self, n: u64) {
        let now = self.issued.fetch_add(n, Relaxed) + n;
        let start = self.epoch_issued.load(Relaxed);
        if now < start + EPOCH {
            return;
        }
        let used = self.used.load(Relaxed);
        let share =
            used.saturating_sub(self.epoch_used.load(Relaxed)) as f64 / (now - start) as f64;
        let cap = if share >= 0.45 {
            MAX_PREFETCH as u32
        } else if share >= 0.2 {
            1
        } else {
            0
        };
        self.cap.store(cap, Relaxed);
        self.epoch_issued.store(now, Relaxed);
        self.epoch_used.store(used, Relaxed);
    }

    /// `n` prefetched pages were touched.
    pub(crate) fn used(&self, n: u64) {
        self.used.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_share_used() {
        let t = Throttle::default();
        assert_eq!(t.cap(), MAX_PREFETCH);
        // An epoch at 10%: nothing but probes.
        t.used(EPOCH / 10);
        t.issued(EPOCH);
        let allowed: usize = (0..PROBE * 4).map(|_| t.cap()).sum();
        assert_eq!(allowed, 4, "one page per {PROBE} faults");
        // An epoch at 35%, then one at 50%.
        t.used(EPOCH * 35 / 100);
        t.issued(EPOCH);
        assert_eq!(t.cap(), 1);
        t.used(EPOCH / 2);
        t.issued(EPOCH);
        assert_eq!(t.cap(), MAX_PREFETCH);
    }
}
