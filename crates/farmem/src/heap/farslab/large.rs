//! farslab's runs of pages: large blocks (page-aligned, so a value's pages are its own: a
//! fault in it fetches nothing of a neighbour, and the object prefetch knows exactly
//! where it ends) and slabs.
//!
//! Free runs are kept by address (to merge neighbours) and by length (best fit, lowest
//! address among equals), in local memory. Runs never handed out lie above `top` and read
//! as zeros.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub(super) struct Large {
    by_addr: BTreeMap<u32, u32>,
    by_len: BTreeSet<(u32, u32)>,
    /// Pages from here up were never handed out.
    top: u32,
    /// Pages in the region.
    limit: u32,
}

impl Large {
    pub fn new(limit: u32) -> Large {
        Large {
            limit,
            ..Large::default()
        }
    }

    fn insert(&mut self, at: u32, n: u32) {
        if n > 0 {
            self.by_addr.insert(at, n);
            self.by_len.insert((n, at));
        }
    }

    fn remove(&mut self, at: u32, n: u32) {
        self.by_addr.remove(&at);
        self.by_len.remove(&(n, at));
    }

    /// `n` pages starting at a multiple of `align` pages: (first page, whether they were
    /// never used, so read as zeros).
    pub fn alloc(&mut self, n: u32, align: u32) -> Option<(u32, bool)> {
        // Best fit among the free runs; with alignment, the first few that fit.
        let fit = self
            .by_len
            .range((n, 0)..)
            .take(if align > 1 { 16 } else { 1 })
            .map(|&(len, at)| (len, at, at.next_multiple_of(align)))
            .find(|&(len, at, start)| start + n <= at + len);
        if let Some((len, at, start)) = fit {
            self.remove(at, len);
            self.insert(at, start - at);
            self.insert(start + n, at + len - (start + n));
            return Some((start, false));
        }
        let start = self.top.next_multiple_of(align);
        let end = start.checked_add(n).filter(|&e| e <= self.limit)?;
        self.insert(self.top, start - self.top);
        self.top = end;
        Some((start, true))
    }

    /// Takes back `n` pages at `at`, merging with free neighbours.
    pub fn free(&mut self, at: u32, n: u32) {
        let (mut at, mut n) = (at, n);
        if let Some((&p, &pl)) = self.by_addr.range(..at).next_back()
            && p + pl == at
        {
            self.remove(p, pl);
            at = p;
            n += pl;
        }
        if let Some(&nl) = self.by_addr.get(&(at + n)) {
            self.remove(at + n, nl);
            n += nl;
        }
        self.insert(at, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_reuse_merging_and_alignment() {
        let mut l = Large::new(1000);
        let (a, fresh) = l.alloc(3, 1).unwrap();
        assert_eq!((a, fresh), (0, true));
        let (b, _) = l.alloc(5, 1).unwrap();
        let (c, _) = l.alloc(3, 1).unwrap();
        assert_eq!((b, c), (3, 8));
        l.free(a, 3);
        l.free(c, 3);
        // Best fit: a 3-page request takes the lowest 3-page run, not fresh pages.
        assert_eq!(l.alloc(3, 1), Some((0, false)));
        l.free(0, 3);
        l.free(b, 5);
        // 0..11 merged into one run.
        assert_eq!(l.alloc(11, 1), Some((0, false)));
        // Aligned: from the top, the gap before it stays free.
        assert_eq!(l.alloc(2, 16), Some((16, true)));
        assert_eq!(l.alloc(5, 1), Some((11, false)));
        assert_eq!(l.alloc(1000, 1), None);
    }
}
