//! Readahead in the style of Linux: follow sequential streams with a window that doubles on
//! every fault that continues the stream, up to `max_window` pages (8 by default, the
//! kernel's swap-readahead cap).
//!
//! ```text
//!   one stream:   start ......... last ====== frontier ------->  (<------- if descending)
//!                                  ^ furthest fault   ^ furthest page requested
//!
//!   fault at last+1 (last-1 when descending), or a prefetch hit in [start, frontier]:
//!       window = min(max(2 * window, 2), max_window)
//!       if the fault reached the frontier:             the "PG_readahead marker"
//!           request (last, last + window]              never a page twice per stream
//!   any other fault starts a new stream:
//!       window = 1, or 0 after 4 stream starts in a row (random access), or 2 on a hit
//!       request (page, page + window]
//! ```
//!
//! A scan thus asks for 1, 2, then 8 pages at a time: `0 → [1]`, `1 → [2, 3]`,
//! `3 → [4, 11]`, `11 → [12, 19]`, …
//!
//! Decisions, and why:
//! - Minimum window 1. A fresh stream bets on the page after the fault: it rides in the
//!   same batch as the faulting page, and saves the second major fault of every
//!   sequential run. After [`Readahead::RANDOM_STREAK`] stream starts in a row with no
//!   continuation between them the bet is off (window 0) until a fault continues a stream
//!   again, like Linux's `mmap_miss` turning read-around off for random access.
//! - The marker sits on the last requested page: a stream asks for more only when a fault
//!   reaches its frontier, and then for a whole window. Linux marks a page inside the
//!   window so that the next read overlaps with the program's work; here the engine
//!   fetches synchronously on the fault path, so there is nothing to overlap, and an early
//!   marker only fetches more pages that a run ends before using. In the trace simulator
//!   (runs of 3 to 64 pages at random places) the late marker took the same major faults
//!   as a marker at half the window, with 40-60% of its fetch batches and a quarter to a
//!   half of its wasted pages.
//! - A major fault on a page the stream already asked for (the engine dropped the
//!   prefetch, or it was evicted before use) still continues the stream, but the page is
//!   not asked for again.
//! - Up to [`Readahead::STREAMS`] streams are tracked at once (the least recently used
//!   one is replaced), so interleaved scans — a copy, a merge, quicksort's two pointers —
//!   each keep their own window. When several streams match a fault, a continuation or a
//!   hit beats a fresh stream turning downwards, which beats a repeated fault; ties go to
//!   the most recently used stream.
//! - Descending streams are followed: a fresh stream bets upwards, and a fault at
//!   `last - 1` turns it around. The forced [`Readahead::sequential`] mode only goes
//!   upwards, like `MADV_SEQUENTIAL`.

use super::{Candidates, FaultInfo, MAX_PREFETCH, Prefetcher};

/// Window of a new stream while accesses do not look random.
const MIN_WINDOW: usize = 1;

/// Window of a new stream started by a prefetch hit: a stream lost track of, not a random
/// access.
const HIT_WINDOW: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

impl Dir {
    fn delta(self) -> i64 {
        match self {
            Dir::Up => 1,
            Dir::Down => -1,
        }
    }

    /// How far `to` lies ahead of `from` in this direction; `None` when it lies behind.
    fn ahead(self, from: u64, to: u64) -> Option<u64> {
        match self {
            Dir::Up => to.checked_sub(from),
            Dir::Down => from.checked_sub(to),
        }
    }

    /// The page after `page` in this direction.
    fn next(self, page: u64) -> Option<u64> {
        match self {
            Dir::Up => page.checked_add(1),
            Dir::Down => page.checked_sub(1),
        }
    }
}

/// How a fault relates to a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relation {
    /// The page after the stream's last fault, in its direction.
    Next,
    /// The page before a fresh stream's only fault: the stream descends.
    Turn,
    /// A prefetch hit on a page that the stream asked for.
    Hit,
    /// A major fault again on the stream's last page (evicted early, or a racing thread).
    Repeat,
}

impl Relation {
    fn strength(self) -> u8 {
        match self {
            Relation::Next | Relation::Hit => 3,
            Relation::Turn => 2,
            Relation::Repeat => 1,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    /// First page of the stream.
    start: u64,
    /// Furthest page faulted on, in the stream's direction.
    last: u64,
    /// Furthest page requested; not ahead of `last` when nothing is outstanding.
    frontier: u64,
    /// Pages to keep requested ahead of `last`.
    window: usize,
    /// Direction; a fresh stream bets on `Up`.
    dir: Dir,
    /// Whether the direction is known (a fault continued the stream, or forced mode).
    established: bool,
    /// Last use, for replacement; 0 marks a free slot.
    stamp: u64,
}

impl Stream {
    const FREE: Stream = Stream {
        start: 0,
        last: 0,
        frontier: 0,
        window: 0,
        dir: Dir::Up,
        established: false,
        stamp: 0,
    };

    fn relation(&self, page: u64, hit: bool) -> Option<Relation> {
        if self.stamp == 0 {
            return None;
        }
        if page == self.last && !hit {
            return Some(Relation::Repeat);
        }
        if self.dir.next(self.last) == Some(page) {
            return Some(Relation::Next);
        }
        if !self.established && self.last.checked_sub(1) == Some(page) {
            return Some(Relation::Turn);
        }
        if hit {
            let reach = self.dir.ahead(self.start, self.frontier).unwrap_or(0);
            if self.dir.ahead(self.start, page).is_some_and(|d| d <= reach) {
                return Some(Relation::Hit);
            }
        }
        None
    }

    /// Asks for the pages in (last, last + window] once no requested page is left ahead
    /// of `last`.
    fn top_up(&mut self, region_pages: u64, out: &mut Candidates) {
        if self
            .dir
            .ahead(self.last, self.frontier)
            .is_some_and(|ahead| ahead > 0)
        {
            return;
        }
        let run = push_stride(out, self.last, self.dir.delta(), self.window, region_pages);
        if let Some(page) = run {
            self.frontier = page;
        }
    }
}

/// Pushes `base + k * delta` for `k` in `1..=count`, stopping at the first page outside
/// `[0, region_pages)` or when `out` is full. Returns the last page pushed.
///
/// Shared with the majority prefetcher; all arithmetic is checked, so a negative stride
/// near page 0 stops instead of wrapping.
pub(super) fn push_stride(
    out: &mut Candidates,
    base: u64,
    delta: i64,
    count: usize,
    region_pages: u64,
) -> Option<u64> {
    let mut pushed = None;
    if delta == 0 {
        return pushed;
    }
    for k in 1..=count.min(MAX_PREFETCH) {
        // k <= 64 and |delta| < 2^63, so the product fits in i128 with room to spare.
        let page = i128::from(base) + (k as i128) * i128::from(delta);
        let Ok(page) = u64::try_from(page) else { break };
        if page >= region_pages || !out.push(page) {
            break;
        }
        pushed = Some(page);
    }
    pushed
}

/// Linux-style readahead over up to [`Readahead::STREAMS`] sequential streams; see the
/// module docs.
#[derive(Clone, Debug)]
pub struct Readahead {
    streams: [Stream; Readahead::STREAMS],
    max_window: usize,
    sequential: bool,
    /// Stream starts since a fault last continued a stream.
    random_streak: u32,
    tick: u64,
}

impl Default for Readahead {
    fn default() -> Self {
        Readahead::new(Readahead::DEFAULT_MAX_WINDOW)
    }
}

impl Readahead {
    /// Window cap of [`Readahead::default`]: Linux's swap readahead cap (`page-cluster` 3).
    pub const DEFAULT_MAX_WINDOW: usize = 8;

    /// Streams tracked at once.
    pub const STREAMS: usize = 4;

    /// Stream starts in a row, with no fault continuing a stream between them, after which
    /// a new stream prefetches nothing until a fault continues a stream again.
    pub const RANDOM_STREAK: u32 = 4;

    /// Adaptive readahead whose window never exceeds `max_window` pages (at most
    /// [`MAX_PREFETCH`]; 0 disables prefetching).
    pub fn new(max_window: usize) -> Readahead {
        Readahead {
            streams: [Stream::FREE; Readahead::STREAMS],
            max_window: max_window.min(MAX_PREFETCH),
            sequential: false,
            random_streak: 0,
            tick: 0,
        }
    }

    /// Forced sequential readahead, for regions advised as sequential: every fault keeps
    /// `window` pages ahead of it requested from the first fault on, and streams only go
    /// upwards (like `MADV_SEQUENTIAL`).
    pub fn sequential(window: usize) -> Readahead {
        Readahead {
            sequential: true,
            ..Readahead::new(window)
        }
    }

    /// The window cap, in pages.
    pub fn max_window(&self) -> usize {
        self.max_window
    }

    /// Whether this is the forced mode of [`Readahead::sequential`].
    pub fn is_sequential(&self) -> bool {
        self.sequential
    }

    fn start_stream(&mut self, page: u64, hit: bool) -> usize {
        let window = if self.sequential {
            self.max_window
        } else if hit {
            HIT_WINDOW
        } else if self.random_streak >= Readahead::RANDOM_STREAK {
            0
        } else {
            MIN_WINDOW
        };
        if hit {
            self.random_streak = 0;
        } else {
            self.random_streak = self.random_streak.saturating_add(1);
        }
        let slot = self.victim();
        self.streams[slot] = Stream {
            start: page,
            last: page,
            frontier: page,
            window: window.min(self.max_window),
            dir: Dir::Up,
            established: self.sequential,
            stamp: self.tick,
        };
        slot
    }

    /// A free slot, else the least recently used one.
    fn victim(&self) -> usize {
        let mut best = 0;
        for (i, s) in self.streams.iter().enumerate() {
            if s.stamp < self.streams[best].stamp {
                best = i;
            }
        }
        best
    }
}

impl Prefetcher for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
    }

    fn on_fault(&mut self, fault: &FaultInfo, out: &mut Candidates) {
        self.tick += 1;
        let page = fault.page;
        // The strongest relation wins (a fresh stream turning downwards must not steal a
        // page that another stream asked for), then the most recently used stream.
        let mut found: Option<(usize, Relation)> = None;
        for (i, s) in self.streams.iter().enumerate() {
            let Some(r) = s.relation(page, fault.hit) else {
                continue;
            };
            let better = found.is_none_or(|(j, best)| {
                (r.strength(), s.stamp) > (best.strength(), self.streams[j].stamp)
            });
            if better {
                found = Some((i, r));
            }
        }

        let slot = match found {
            Some((i, Relation::Repeat)) => {
                self.streams[i].stamp = self.tick;
                return;
            }
            Some((i, relation)) => {
                let max = self.max_window;
                let sequential = self.sequential;
                let s = &mut self.streams[i];
                if relation == Relation::Turn {
                    // A fresh stream turned out to descend: drop its upward bet.
                    s.dir = Dir::Down;
                    s.frontier = s.last;
                }
                s.established = true;
                if s.dir.ahead(s.last, page).is_some() {
                    s.last = page;
                }
                s.window = if sequential {
                    max
                } else {
                    (s.window * 2).max(2).min(max)
                };
                s.stamp = self.tick;
                self.random_streak = 0;
                i
            }
            None => self.start_stream(page, fault.hit),
        };
        self.streams[slot].top_up(fault.region_pages, out);
    }
}

// Test-only trace simulator shared with the majority tests; lives beside this file.
#[cfg(test)]
#[path = "sim.rs"]
pub(super) mod sim;

#[cfg(test)]
mod tests {
    use super::sim::{Sim, lcg};
    use super::*;
    use crate::prefetch::NoPrefetch;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn fault(page: u64, hit: bool) -> FaultInfo {
        FaultInfo {
            page,
            region_pages: 1 << 20,
            write: false,
            hit,
        }
    }

    fn ask(p: &mut impl Prefetcher, page: u64, hit: bool) -> Vec<u64> {
        let mut out = Candidates::new();
        p.on_fault(&fault(page, hit), &mut out);
        out.as_slice().to_vec()
    }

    #[test]
    fn ramps_up_then_tops_up_at_the_frontier() {
        let mut ra = Readahead::default();
        assert_eq!(ask(&mut ra, 100, false), [101]);
        assert_eq!(ask(&mut ra, 101, true), [102, 103]);
        assert!(ask(&mut ra, 102, true).is_empty());
        assert_eq!(ask(&mut ra, 103, true), (104..=111).collect::<Vec<_>>());
        for p in 104..111 {
            assert!(ask(&mut ra, p, true).is_empty());
        }
        assert_eq!(ask(&mut ra, 111, true), (112..=119).collect::<Vec<_>>());
    }

    #[test]
    fn major_faults_in_sequence_grow_the_window_too() {
        // Prefetches dropped by the engine (budget): the stream still continues.
        let mut ra = Readahead::default();
        assert_eq!(ask(&mut ra, 0, false), [1]);
        assert_eq!(ask(&mut ra, 1, false), [2, 3]);
        assert!(ask(&mut ra, 2, false).is_empty());
        assert_eq!(ask(&mut ra, 3, false), (4..=11).collect::<Vec<_>>());
    }

    #[test]
    fn descending_stream_is_followed() {
        let mut ra = Readahead::default();
        assert_eq!(ask(&mut ra, 50, false), [51]);
        assert_eq!(ask(&mut ra, 49, false), [48, 47]);
        assert!(ask(&mut ra, 48, true).is_empty());
        assert_eq!(ask(&mut ra, 47, true), (39..=46).rev().collect::<Vec<_>>());
    }

    #[test]
    fn descending_stream_stops_at_page_zero() {
        let mut ra = Readahead::default();
        ask(&mut ra, 3, false);
        assert_eq!(ask(&mut ra, 2, false), [1, 0]);
        assert!(ask(&mut ra, 1, true).is_empty());
        assert!(ask(&mut ra, 0, true).is_empty());
    }

    #[test]
    fn stops_at_region_end() {
        let mut ra = Readahead::default();
        let mut out = Candidates::new();
        ra.on_fault(
            &FaultInfo {
                page: 9,
                region_pages: 10,
                write: false,
                hit: false,
            },
            &mut out,
        );
        assert!(out.is_empty());
        ra.on_fault(
            &FaultInfo {
                page: 7,
                region_pages: 10,
                write: true,
                hit: false,
            },
            &mut out,
        );
        assert_eq!(out.as_slice(), [8]);
        out.clear();
        ra.on_fault(
            &FaultInfo {
                page: 8,
                region_pages: 10,
                write: false,
                hit: true,
            },
            &mut out,
        );
        assert_eq!(out.as_slice(), [9]);
    }

    #[test]
    fn random_faults_get_the_minimum_window_then_none() {
        let mut ra = Readahead::default();
        let mut rng = lcg(7);
        for i in 0..200u32 {
            // Pages 3 apart or more never continue one another.
            let page = (rng() % 100_000) * 3;
            let c = ask(&mut ra, page, false);
            if i < Readahead::RANDOM_STREAK {
                assert_eq!(c, [page + 1]);
            } else {
                assert!(c.is_empty(), "fault {i} at {page}: {c:?}");
            }
        }
        // A sequential run switches prefetching back on.
        ask(&mut ra, 500_000, false);
        assert_eq!(ask(&mut ra, 500_001, false), [500_002, 500_003]);
    }

    #[test]
    fn repeat_fault_is_neutral() {
        let mut ra = Readahead::default();
        assert_eq!(ask(&mut ra, 10, false), [11]);
        assert!(ask(&mut ra, 10, false).is_empty());
        assert_eq!(ask(&mut ra, 11, true), [12, 13]);
    }

    #[test]
    fn interleaved_streams_keep_their_windows() {
        // A copy from [0, 1000) to [5000, 6000): faults alternate between two streams.
        let mut sim = Sim::new(Readahead::default(), 10_000, usize::MAX);
        for i in 0..1000 {
            sim.access(i);
            sim.access(5000 + i);
        }
        assert_eq!(sim.stats.major, 2, "{:?}", sim.stats);
        assert_eq!(sim.stats.duplicate_requests, 0);
    }

    #[test]
    fn quicksort_pointers_two_directions() {
        let mut sim = Sim::new(Readahead::default(), 2000, usize::MAX);
        let (mut lo, mut hi) = (0u64, 1999u64);
        while lo < hi {
            sim.access(lo);
            sim.access(hi);
            lo += 1;
            hi -= 1;
        }
        // The first fault of the descending pointer is a fresh stream, its second turns it.
        assert!(sim.stats.major <= 3, "{:?}", sim.stats);
    }

    #[test]
    fn sequential_mode_uses_the_full_window_at_once() {
        let mut ra = Readahead::sequential(8);
        assert!(ra.is_sequential());
        assert_eq!(ask(&mut ra, 0, false), (1..=8).collect::<Vec<_>>());
        assert!(ask(&mut ra, 4, true).is_empty());
        assert_eq!(ask(&mut ra, 8, true), (9..=16).collect::<Vec<_>>());
        // Random faults do not shrink it.
        assert_eq!(ask(&mut ra, 1000, false), (1001..=1008).collect::<Vec<_>>());
        assert_eq!(ask(&mut ra, 3000, false), (3001..=3008).collect::<Vec<_>>());
    }

    #[test]
    fn max_window_is_clamped_and_zero_disables() {
        assert_eq!(Readahead::new(1000).max_window(), MAX_PREFETCH);
        let mut ra = Readahead::sequential(1000);
        assert_eq!(ask(&mut ra, 0, false).len(), MAX_PREFETCH);
        let mut off = Readahead::new(0);
        for p in 0..100 {
            assert!(ask(&mut off, p, p > 0).is_empty());
        }
    }

    #[test]
    fn scan_cuts_major_faults_at_least_fourfold() {
        let n = 4096;
        let mut none = Sim::new(NoPrefetch, n, 256);
        let mut ra = Sim::new(Readahead::default(), n, 256);
        for p in 0..n {
            none.access(p);
            ra.access(p);
        }
        assert_eq!(none.stats.major, n);
        assert!(ra.stats.major * 4 <= none.stats.major, "{:?}", ra.stats);
        // Every page after the first was requested exactly once, a full window at a time.
        assert_eq!(ra.stats.major, 1);
        assert_eq!(ra.stats.duplicate_requests, 0);
        assert_eq!(ra.stats.requested, n - 1);
        assert_eq!(ra.stats.wasted, 0);
        assert!(ra.stats.batches <= n / 8 + 2, "{:?}", ra.stats);
    }

    #[test]
    fn scan_with_dropped_prefetches_still_requests_once() {
        // Every prefetch dropped by the engine: all faults are major, no page asked twice.
        let mut ra = Readahead::default();
        let mut seen = HashSet::new();
        for p in 0..1000 {
            for c in ask(&mut ra, p, false) {
                assert!(seen.insert(c), "page {c} requested twice");
            }
        }
        // Every page of the scan, plus the lookahead past its end.
        assert!((1..1000).all(|p| seen.contains(&p)));
        assert!(seen.len() <= 999 + Readahead::DEFAULT_MAX_WINDOW);
    }

    proptest! {
        #[test]
        fn sequential_stream_requests_each_page_once(
            start in 0u64..1000, len in 1u64..600, max in 1usize..=80,
        ) {
            let mut sim = Sim::new(Readahead::new(max), start + len + 100, usize::MAX);
            for p in start..start + len {
                sim.access(p);
            }
            prop_assert_eq!(sim.stats.duplicate_requests, 0);
            prop_assert!(sim.stats.max_batch <= max.min(MAX_PREFETCH));
            prop_assert!(sim.stats.max_reach <= max.min(MAX_PREFETCH) as u64);
            // Pages after the first fault all came in by prefetch.
            prop_assert_eq!(sim.stats.major, 1);
        }

        #[test]
        fn random_faults_stay_within_the_minimum_window(
            pages in proptest::collection::vec(0u64..10_000, 1..200),
        ) {
            // Multiples of 3 never continue one another; repeats are allowed.
            let mut ra = Readahead::default();
            for p in pages {
                let page = p * 3;
                let c = ask(&mut ra, page, false);
                prop_assert!(c.is_empty() || c == [page + 1], "{page}: {c:?}");
            }
        }

        #[test]
        fn candidates_are_sane_for_any_trace(
            region in 1u64..300,
            max in 0usize..100,
            sequential in any::<bool>(),
            trace in proptest::collection::vec((0u64..320, any::<bool>()), 1..300),
        ) {
            let mut ra = if sequential { Readahead::sequential(max) } else { Readahead::new(max) };
            for (page, hit) in trace {
                let mut out = Candidates::new();
                ra.on_fault(&FaultInfo { page, region_pages: region, write: false, hit }, &mut out);
                let c = out.as_slice();
                prop_assert!(c.len() <= max.min(MAX_PREFETCH));
                let mut seen = HashSet::new();
                for &x in c {
                    prop_assert!(x < region);
                    prop_assert!(x != page);
                    prop_assert!(seen.insert(x));
                }
            }
        }
    }
}
