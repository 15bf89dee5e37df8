//! Frames: the local budget, and how much of it is in use.
//!
//! Residency is counted in pages of the regions' page caches. Whoever fills a page
//! reserves its frame first (a compare-and-swap on `resident`), so residency never
//! exceeds the budget: the documented slack is zero pages of region data (page tables
//! and farmem's own metadata, about 24 bytes per page of region, are not counted).

use std::sync::atomic::{AtomicUsize, Ordering::*};

/// Smallest budget accepted, in pages: every concurrently faulting thread needs a frame.
pub const MIN_BUDGET_PAGES: usize = 16;

/// The budget and the frames taken from it, in pages.
#[derive(Debug)]
pub(crate) struct Frames {
    budget: AtomicUsize,
    resident: AtomicUsize,
}

impl Frames {
    pub(crate) fn new(budget: usize) -> Frames {
        Frames {
            budget: AtomicUsize::new(budget),
            resident: AtomicUsize::new(0),
        }
    }

    /// The budget.
    #[inline]
    pub(crate) fn budget(&self) -> usize {
        self.budget.load(Relaxed)
    }

    pub(crate) fn set_budget(&self, pages: usize) {
        self.budget.store(pages, SeqCst);
    }

    /// Frames in use.
    #[inline]
    pub(crate) fn resident(&self) -> usize {
        self.resident.load(Acquire)
    }

    /// Frames not in use (0 when over a budget that just shrank).
    #[inline]
    pub(crate) fn free(&self) -> usize {
        self.budget().saturating_sub(self.resident())
    }

    /// Takes up to `want` frames without evicting, leaving at least `keep` free. Returns
    /// how many it got and the residency after (0 and the current residency when none
    /// could be taken).
    pub(crate) fn try_reserve(&self, want: usize, keep: usize) -> (usize, usize) {
        let mut cur = self.resident.load(Relaxed);
        if want == 0 {
            return (0, cur);
        }
        loop {
            let got = want.min(self.budget().saturating_sub(cur).saturating_sub(keep));
            if got == 0 {
                return (0, cur);
            }
            match self
                .resident
                .compare_exchange_weak(cur, cur + got, AcqRel, Relaxed)
            {
                Ok(_) => return (got, cur + got),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives `n` frames back.
    #[inline]
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.resident.fetch_sub(n, AcqRel);
        }
    }
}

/// The most pages the low watermark keeps free (the high one keeps twice this: 4 MiB).
/// The reserve only has to cover the faults of one reclaimer nap (0.5 ms), and every
/// frame of it is budget the program cannot use: with a cap four times this, programs
/// whose footprint just fitted the budget paged (BENCHMARKS.md, the 100% rows).
pub(crate) const RESERVE_CAP: usize = 512;

/// Watermarks in free frames: the reclaimer evicts while fewer than `high` are free;
/// zero-fill runs leave `low` free.
pub(crate) fn watermarks(budget: usize) -> (usize, usize) {
    let low = (budget / 32).max((budget / 8).min(8)).clamp(1, RESERVE_CAP);
    (low, (2 * low).min(budget / 2).max(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_fit_inside_the_budget() {
        for b in [16usize, 17, 100, 1000, 65536, 1 << 22] {
            let (low, high) = watermarks(b);
            assert!(
                low >= 1 && low <= high && high <= b / 2 + 1 && high <= 2 * RESERVE_CAP,
                "{b}: {low} {high}"
            );
        }
    }

    #[test]
    fn reservations_never_pass_the_budget() {
        let f = Frames::new(10);
        assert_eq!(f.try_reserve(4, 0), (4, 4));
        assert_eq!(f.try_reserve(8, 0), (6, 10));
        assert_eq!(f.try_reserve(1, 0), (0, 10));
        f.release(3);
        assert_eq!(f.free(), 3);
        f.set_budget(5);
        assert_eq!(f.free(), 0);
        assert_eq!(f.try_reserve(1, 0).0, 0);
    }

    #[test]
    fn reservations_can_leave_frames_free() {
        let f = Frames::new(10);
        assert_eq!(f.try_reserve(8, 4), (6, 6));
        assert_eq!(f.try_reserve(1, 4), (0, 6));
        assert_eq!(f.try_reserve(3, 0), (3, 9));
        f.set_budget(2);
        assert_eq!(f.try_reserve(1, 4), (0, 9));
    }
}
