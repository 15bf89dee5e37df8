//! FIFO: evicts pages in the order they became resident, ignoring references. Kept for
//! comparison; it loses badly on skewed workloads.

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
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
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

    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{ModelView, pref};
    use super::*;

    #[test]
    fn evicts_in_arrival_order_regardless_of_references() {
        let mut f = Fifo::new();
        let mut v = ModelView::default();
        for p in 0..5 {
            f.insert(pref(p));
            v.state.insert(p, PageStatus::Referenced);
        }
        f.select(3, &mut v);
        assert_eq!(v.victims_taken, vec![0, 1, 2]);
        assert!(v.demoted.is_empty());
    }
}
