//! CLOCK with real reference bits, sweeping the address space.
//!
//! The hand walks every region page by page, in address order, wrapping around. At the
//! hand, a page that is still unmapped since the hand last passed has not been touched for
//! a whole turn: it is evicted. A page that is mapped was touched since (or is new): it
//! gets a second chance, and its reference bit is cleared by unmapping it, the data kept.
//! If it is touched again before the hand returns, a minor fault maps it, setting the bit.
//!
//! Reference bits are cleared a chunk at a time ([`CHUNK_PAGES`] pages, one page-table
//! page) with a single `madvise`, so the whole chunk costs at most one TLB shootdown; the
//! victims are unmapped already and cost none. This is the textbook CLOCK with the
//! hardware accessed bit replaced by the mapping itself, and with Linux's batching of
//! accessed-bit clearing.

use super::{EvictionPolicy, PageRef, PageStatus, ResidentView};

/// Pages whose reference bits are cleared together (2 MiB, one page-table page).
pub const CHUNK_PAGES: u64 = 512;

/// CLOCK (second chance) over mapped / unmapped reference bits.
#[derive(Debug, Default)]
pub struct Clock {
    region: u32,
    page: u64,
    /// A selection that stopped inside a chunk leaves the part it passed to be demoted
    /// when the hand finishes the chunk: one `demote_range` (one TLB shootdown) per chunk
    /// however the selections fall. Measured: demoting each part as it is passed cost
    /// 18% of the random-access throughput.
    pending: Option<Pending>,
}

/// The part of a chunk the hand passed before a selection stopped.
#[derive(Debug, Clone, Copy)]
struct Pending {
    region: u32,
    start: u64,
    referenced: bool,
}

impl Clock {
    /// A clock whose hand starts at the first page of the first region.
    pub fn new() -> Clock {
        Clock::default()
    }

    /// Where the hand is: (region, page).
    pub fn hand(&self) -> (u32, u64) {
        (self.region, self.page)
    }
}

impl EvictionPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn select(&mut self, want: usize, view: &mut dyn ResidentView) {
        // Visit each page at most twice (a referenced page is demoted on the first pass
        // and can be evicted on the second), then give up: everything is busy.
        let mut visited_regions = 0u32;
        let mut wrapped = 0;
        while view.victims() < want {
            let Some((region, pages)) = view.region_from(self.region) else {
                // Past the last region: wrap to the first.
                wrapped += 1;
                if wrapped > 2 || view.region_from(0).is_none() {
                    return;
                }
                self.region = 0;
                self.page = 0;
                continue;
            };
            if region != self.region {
                self.region = region;
                self.page = 0;
            }
            if self.page >= pages {
                self.region += 1;
                self.page = 0;
                visited_regions += 1;
                if visited_regions > 1 << 20 {
                    return;
                }
                continue;
            }
            let chunk_end = ((self.page / CHUNK_PAGES + 1) * CHUNK_PAGES).min(pages);
            // Resume a chunk left half-way, or start a new one.
            let (chunk_start, mut referenced) = match self.pending.take() {
                Some(p) if p.region == region && p.start <= self.page && self.page < chunk_end => {
                    (p.start, p.referenced)
                }
                Some(p) => {
                    // The region changed under us: settle what was left, then go on.
                    if p.referenced {
                        view.demote_range(p.region, p.start, p.start + CHUNK_PAGES);
                    }
                    (self.page, false)
                }
                None => (self.page, false),
            };
            while self.page < chunk_end && view.victims() < want {
                let p = PageRef::at(region, self.page);
                match view.status(p) {
                    PageStatus::Unreferenced => {
                        view.evict(p);
                    }
                    PageStatus::Referenced => referenced = true,
                    PageStatus::Busy | PageStatus::Stale => {}
                }
                self.page += 1;
            }
            if self.page < chunk_end {
                // Stopped inside the chunk: demote its passed part when it is finished.
                self.pending = Some(Pending {
                    region,
                    start: chunk_start,
                    referenced,
                });
                return;
            }
            if referenced {
                // The second chance: clear the bits of the referenced pages the hand
                // passed in this chunk, with one call.
                view.demote_range(region, chunk_start, chunk_end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::ModelView;
    use super::*;
    use proptest::prelude::*;

    fn view(states: &[PageStatus]) -> ModelView {
        let mut v = ModelView {
            pages: states.len() as u64,
            ..ModelView::default()
        };
        for (p, s) in states.iter().enumerate() {
            v.state.insert(p as u64, *s);
        }
        v
    }

    #[test]
    fn referenced_pages_get_a_second_chance() {
        use PageStatus::*;
        let mut v = view(&[Referenced, Referenced, Unreferenced, Referenced]);
        let mut c = Clock::new();
        c.select(1, &mut v);
        assert_eq!(v.victims_taken, vec![2]);
        assert!(
            v.demoted.is_empty(),
            "the chunk is not finished: no demotion yet"
        );
        // The next selection finishes the chunk (page 3 is referenced too), demotes the
        // whole chunk at once, wraps, and evicts the first page still unreferenced.
        c.select(2, &mut v);
        assert_eq!(v.demoted, vec![0, 1, 3]);
        assert_eq!(v.demote_calls, 1);
        assert_eq!(v.victims_taken, vec![2, 0]);
        // Page 1 is touched again (mapped): it survives the next pass; 3 does not.
        v.state.insert(1, Referenced);
        c.select(3, &mut v);
        assert_eq!(v.victims_taken, vec![2, 0, 3]);
    }

    #[test]
    fn a_chunk_is_demoted_once_however_selections_fall() {
        let mut states = vec![PageStatus::Referenced; CHUNK_PAGES as usize];
        for p in (0..CHUNK_PAGES as usize).step_by(8) {
            states[p] = PageStatus::Unreferenced;
        }
        let mut v = view(&states);
        let mut c = Clock::new();
        for want in 1..=(CHUNK_PAGES as usize / 8) {
            c.select(want, &mut v);
        }
        assert_eq!(v.victims_taken.len(), CHUNK_PAGES as usize / 8);
        assert!(
            v.demote_calls <= 1,
            "{} calls for one chunk",
            v.demote_calls
        );
    }

    #[test]
    fn one_demotion_call_per_chunk() {
        let mut v = view(&vec![PageStatus::Referenced; 3 * CHUNK_PAGES as usize]);
        let mut c = Clock::new();
        c.select(1, &mut v);
        assert_eq!(v.demote_calls, 3, "one call per chunk in the first lap");
        assert_eq!(v.victims_taken, vec![0]);
    }

    #[test]
    fn busy_and_stale_pages_are_skipped_and_it_terminates() {
        use PageStatus::*;
        let mut v = view(&[Busy, Stale, Busy]);
        let mut c = Clock::new();
        c.select(4, &mut v);
        assert!(v.victims_taken.is_empty());
    }

    proptest! {
        /// Whatever the reference pattern, select never evicts a page twice, never evicts
        /// a referenced page before demoting it, and stops at `want`.
        #[test]
        fn select_is_sane(refs in proptest::collection::vec(any::<bool>(), 1..1500), want in 1usize..50) {
            let states: Vec<_> = refs.iter().map(|r| if *r { PageStatus::Referenced } else { PageStatus::Unreferenced }).collect();
            let mut v = view(&states);
            let mut c = Clock::new();
            c.select(want, &mut v);
            prop_assert_eq!(v.victims_taken.len(), want.min(refs.len()));
            let mut seen = std::collections::HashSet::new();
            for p in &v.victims_taken {
                prop_assert!(seen.insert(*p));
                if refs[*p as usize] {
                    prop_assert!(v.demoted.contains(p));
                }
            }
        }
    }
}
