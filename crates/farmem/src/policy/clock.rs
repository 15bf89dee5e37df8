//! CLOCK with real reference bits, a 2 MiB chunk at a time.
//!
//! The hand walks every region chunk by chunk, in address order, wrapping around. At each
//! chunk it asks the view for one pass ([`ResidentView::age`]): the pages that were not
//! referenced since the hand last came by are the victims, and the reference information
//! of the others is cleared. The hand then stays on the chunk until its victims are taken
//! (a selection may stop half-way and the next one goes on), and moves to the next chunk.
//!
//! This is the textbook CLOCK with two changes that this hardware forces: reference bits
//! are read and cleared for a whole chunk at once (one `madvise`, so at most one TLB
//! shootdown per chunk), and a page whose use the hardware's per-chunk count cannot tell
//! is tested by unmapping it (a touch maps it again with a minor fault). How the view
//! decides is in the engine's `reclaim/age.rs`.

use super::{CHUNK_PAGES, ChunkBits, EvictionPolicy, PageRef, PageStatus, ResidentView};

/// CLOCK (second chance) over chunks.
#[derive(Debug, Default)]
pub struct Clock {
    region: u32,
    /// The first page of the next chunk to age.
    page: u64,
    /// The victims of the chunk the hand is on, not yet taken.
    cold: Option<Cold>,
}

#[derive(Debug, Clone, Copy)]
struct Cold {
    region: u32,
    first: u64,
    bits: ChunkBits,
}

impl Cold {
    fn pop(&mut self) -> Option<u64> {
        for (w, word) in self.bits.iter_mut().enumerate() {
            if *word != 0 {
                let b = word.trailing_zeros() as u64;
                *word &= *word - 1;
                return Some(self.first + w as u64 * 64 + b);
            }
        }
        None
    }
}

impl Clock {
    /// A clock whose hand starts at the first page of the first region.
    pub fn new() -> Clock {
        Clock::default()
    }

    /// Where the hand is: (region, first page of the next chunk to age).
    pub fn hand(&self) -> (u32, u64) {
        (self.region, self.page)
    }
}

impl EvictionPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn select(&mut self, want: usize, view: &mut dyn ResidentView) {
        // Each chunk can be aged at most twice per selection (a page in use the first
        // time may be a victim the second), then give up: everything is busy.
        let mut wrapped = 0;
        let mut visited_regions = 0u32;
        while view.victims() < want {
            if let Some(c) = &mut self.cold {
                match c.pop() {
                    Some(page) => {
                        let p = PageRef::at(c.region, page);
                        // Touched since the pass (mapped again): it stays.
                        if view.status(p) == PageStatus::Unreferenced {
                            view.evict(p);
                        }
                        continue;
                    }
                    None => self.cold = None,
                }
            }
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
            let first = self.page / CHUNK_PAGES * CHUNK_PAGES;
            let end = (first + CHUNK_PAGES).min(pages);
            let mut bits = ChunkBits::default();
            let n = view.age(region, first, end, &mut bits);
            self.page = end;
            if n > 0 {
                self.cold = Some(Cold {
                    region,
                    first,
                    bits,
                });
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
        // One pass over the chunk: page 2 is the victim, the others lose their bits.
        assert_eq!(v.victims_taken, vec![2]);
        assert_eq!(v.demoted, vec![0, 1, 3]);
        assert_eq!(v.age_calls, 1);
        // Page 1 is touched again (mapped): the next pass spares it.
        v.state.insert(1, Referenced);
        c.select(3, &mut v);
        assert_eq!(v.victims_taken, vec![2, 0, 3]);
        assert_eq!(v.age_calls, 2);
    }

    #[test]
    fn a_chunk_is_aged_once_however_selections_fall() {
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
        assert_eq!(v.age_calls, 1);
    }

    #[test]
    fn one_pass_per_chunk_per_lap() {
        let mut v = view(&vec![PageStatus::Referenced; 3 * CHUNK_PAGES as usize]);
        let mut c = Clock::new();
        c.select(1, &mut v);
        assert_eq!(v.age_calls, 4, "three chunks aged, then the first again");
        assert_eq!(v.victims_taken, vec![0]);
    }

    #[test]
    fn a_victim_touched_after_its_pass_is_spared() {
        use PageStatus::*;
        let mut v = view(&[Unreferenced, Unreferenced, Referenced]);
        let mut c = Clock::new();
        c.select(1, &mut v);
        assert_eq!(v.victims_taken, vec![0]);
        // Page 1 was a victim of that pass, but is touched before it is taken.
        v.state.insert(1, Referenced);
        c.select(2, &mut v);
        assert!(!v.victims_taken[1..].contains(&1), "{:?}", v.victims_taken);
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
        /// a referenced page before a pass cleared it, and stops at `want`.
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
