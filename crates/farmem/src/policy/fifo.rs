//! FIFO: evicts pages in the order they became resident, ignoring references. Kept for
//! comparison: it loses on skewed workloads, and since its victims are usually mapped it
//! pays a TLB shootdown per page that CLOCK's victims do not.

use super::{EvictionPolicy, PageRef, PageStatus, ResidentView};
use std::collections::VecDeque;

/// First in, first out.
#[derive(Debug, Default)]
pub struct Fifo {
    queue: VecDeque<PageRef>,
}

impl Fifo {
    /// An empty queue.
    pub fn new() -> Fifo {
        Fifo::default()
    }

    /// Entries held (stale ones included).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn wants_arrivals(&self) -> bool {
        true
    }

    fn reserve(&mut self, entries: usize) {
        self.queue.reserve(entries.saturating_sub(self.queue.len()));
    }

    fn insert(&mut self, page: PageRef) {
        self.queue.push_back(page);
    }

    fn select(&mut self, want: usize, view: &mut dyn ResidentView) {
        let mut budget = self.queue.len();
        while view.victims() < want && budget > 0 {
            budget -= 1;
            let Some(e) = self.queue.pop_front() else {
                break;
            };
            match view.status(e) {
                PageStatus::Stale => {}
                PageStatus::Busy => self.queue.push_back(e),
                PageStatus::Referenced | PageStatus::Unreferenced => {
                    if !view.evict(e) {
                        self.queue.push_back(e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{ModelView, pref};
    use super::*;

    #[test]
    fn evicts_in_arrival_order_regardless_of_references() {
        let mut f = Fifo::new();
        let mut v = ModelView {
            pages: 5,
            ..ModelView::default()
        };
        for p in [3, 0, 4, 1, 2] {
            f.insert(pref(p));
            v.state.insert(p, PageStatus::Referenced);
        }
        f.select(3, &mut v);
        assert_eq!(v.victims_taken, vec![3, 0, 4]);
        assert!(v.demoted.is_empty());
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn busy_entries_wait_and_stale_ones_go() {
        let mut f = Fifo::new();
        let mut v = ModelView {
            pages: 2,
            ..ModelView::default()
        };
        f.insert(pref(0));
        f.insert(pref(1));
        v.state.insert(0, PageStatus::Busy);
        f.select(1, &mut v);
        assert!(v.victims_taken.is_empty());
        assert_eq!(f.len(), 1, "the stale entry is gone, the busy one kept");
    }
}
