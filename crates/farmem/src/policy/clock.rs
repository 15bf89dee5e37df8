//! CLOCK with real reference bits.
//!
//! The clock is a queue in residency order; the hand is its head. At the hand, a page
//! that is still mapped has been touched since the hand last passed (or was never
//! demoted): it is demoted (unmapped, data kept: its reference bit cleared) and goes to the
//! tail for another turn. A page that is still unmapped when the hand comes back has not
//! been touched for a whole turn: it is evicted. A demoted page that is touched takes a
//! minor fault and is mapped again, which sets its bit. This is the textbook CLOCK with the
//! hardware bit replaced by the mapping itself.

use super::{EvictionPolicy, PageRef, PageStatus, ResidentView};
use std::collections::VecDeque;

/// CLOCK (second chance) over mapped / unmapped reference bits.
#[derive(Debug, Default)]
pub struct Clock {
    ring: VecDeque<PageRef>,
}

impl Clock {
    /// An empty clock.
    pub fn new() -> Clock {
        Clock::default()
    }
}

impl EvictionPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn reserve(&mut self, entries: usize) {
        self.ring.reserve(entries.saturating_sub(self.ring.len()));
    }

    fn insert(&mut self, page: PageRef) {
        // Capacity was reserved for every page of every region; stale entries are
        // dropped as the hand passes, so this does not grow in steady state.
        self.ring.push_back(page);
    }

    fn select(&mut self, want: usize, view: &mut dyn ResidentView) {
        // One full turn at most, plus the pages demoted on the way coming round again.
        let mut budget = self.ring.len() * 2 + 1;
        while view.victims() < want && budget > 0 {
            budget -= 1;
            let Some(e) = self.ring.pop_front() else {
                break;
            };
            match view.status(e) {
                PageStatus::Stale => {}
                PageStatus::Busy => self.ring.push_back(e),
                PageStatus::Referenced => {
                    // If the view cannot demote now, the page simply stays referenced.
                    let _ = view.demote(e);
                    self.ring.push_back(e);
                }
                PageStatus::Unreferenced => {
                    if !view.evict(e) {
                        self.ring.push_back(e);
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{ModelView, pref};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn referenced_pages_get_a_second_chance() {
        let mut c = Clock::new();
        let mut v = ModelView::default();
        for p in 0..4 {
            c.insert(pref(p));
            v.state.insert(p, PageStatus::Referenced);
        }
        // Page 2 was already demoted and not touched since.
        v.state.insert(2, PageStatus::Unreferenced);
        c.select(1, &mut v);
        assert_eq!(v.victims_taken, vec![2]);
        assert_eq!(v.demoted, vec![0, 1]);
        // Page 0 is touched again (mapped): it survives the next pass; 1 does not.
        v.state.insert(0, PageStatus::Referenced);
        c.select(2, &mut v);
        assert_eq!(v.victims_taken, vec![2, 3, 1]);
    }

    #[test]
    fn busy_and_stale_entries_are_skipped() {
        let mut c = Clock::new();
        let mut v = ModelView::default();
        c.insert(pref(0));
        c.insert(pref(1));
        v.state.insert(0, PageStatus::Busy);
        c.select(1, &mut v);
        assert!(v.victims_taken.is_empty());
        assert_eq!(c.len(), 1, "the stale entry is gone, the busy one kept");
    }

    proptest! {
        /// Whatever the reference pattern, select never evicts a page twice, never evicts
        /// a referenced page before demoting it, and stops at `want`.
        #[test]
        fn select_is_sane(refs in proptest::collection::vec(any::<bool>(), 1..200), want in 1usize..50) {
            let mut c = Clock::new();
            let mut v = ModelView::default();
            for (p, r) in refs.iter().enumerate() {
                c.insert(pref(p as u64));
                v.state.insert(p as u64, if *r { PageStatus::Referenced } else { PageStatus::Unreferenced });
            }
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
