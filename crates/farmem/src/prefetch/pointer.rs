//! Pointer chasing: on a fault, follow the pointers the program is about to follow, and
//! prefetch the far blocks they lead to. No knowledge of the program's types is needed,
//! only where heap blocks start and end (a [`BlockTable`], which farmem's heap gives its
//! region; without one, a pointer stands for the 64 bytes it points at).
//!
//! A walk of a linked structure (a list, a tree, a hash chain, Redis's quicklist) faults
//! once per far node, each fault a round trip the next one waits for. The chase starts
//! from two kinds of roots:
//!
//! - **the faulting thread's registers** (in the in-thread fault mode, from the signal's
//!   context): the walk's cursor (a list node, an iterator) is usually in one. This is
//!   what finds the next far block when the structure's nodes are local and only what
//!   they point at is far: in Redis's LRANGE at 12.5% local, 97% of the major faults land
//!   in listpacks (4-8 KiB), whose quicklist nodes (32 bytes, all on a few hot pages)
//!   never fault (BENCHMARKS.md);
//! - **the faulting block's own words**, once fetched: a far node's `next`.
//!
//! From a root that is a pointer into the heap: a far block is a *target* (its pages,
//! up to 64 KiB, are prefetched as guesses, so that their use is counted); a local block
//! is read (up to [`SCAN`] bytes, from the page cache with `pread`, which never faults)
//! and its words are roots one hop further. The registers' targets come in with the
//! faulting page, in its batch; once a batch is in, the targets' own words (and the
//! faulting block's) are read from it and lead to the next round, up to [`DEPTH`] hops.
//! Every chase is bounded: [`MAX_READS`] local blocks read and [`MAX_TARGETS`] far blocks
//! fetched per fault. A prefetched page's first touch (its minor fault) starts the next
//! chase, so a walk is followed a few blocks ahead all the way along.
//!
//! Which pointers are followed is learnt (`Learnt`): a walk's next pointer and the
//! ones beside it look alike.
//!
//! # What it costs, and when it pays
//!
//! Measured here (BENCHMARKS.md, "Pointer prefetch"), it does not pay yet, and is off
//! by default. A chase replaces a major fault by a minor one, but the work of bringing a
//! page in (decompressing, copying, or a memory node's round trip) is the same whoever
//! does it, and a serial chain (a list whose every node is far) can be fetched no faster
//! than one node per fetch however far ahead one looks: the walk of a far list took 97%
//! fewer major faults and twice as long. Where the index is local and only its leaves
//! are far (Redis's quicklist), the leaves could come in together, but reaching them from
//! the registers takes reads the fault path pays for. Tried and measured before this
//! shape: reads through a second, read-only mapping of the memfd (TLB shootdowns on every
//! eviction of a page read that way), and a chaser thread off the fault path (its
//! wake-ups cost Redis 16% of its time in `eventfd_write`; polling instead, it broke
//! even). Eight targets per chase instead of two took LRANGE's accuracy from 61-81% down
//! to 52%: past the next block or two, a chase mostly fetches what the walk never
//! reaches (LRANGE 0 99 stops halfway along its lists).
//!
//! Pointer values are hints. A stale pointer, an integer that looks like one, or a block
//! freed meanwhile costs a wasted prefetch, never wrong data: the engine fetches whole
//! verified pages, and a prefetched page counts as unreferenced until it is touched.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI8, AtomicU32, AtomicU64};

use super::Candidates;
use crate::backend::PAGE_SIZE;
use crate::state::page::Tag;
use crate::state::region::RegionState;

/// Where heap blocks are: for an address, the live block containing it as
/// `(start, end)`, or None. Called on the fault path (in signal context in the in-thread
/// mode) for every word that may be a pointer: it must be cheap, and must not allocate,
/// block or touch far memory.
pub type BlockTable = dyn Fn(usize) -> Option<(usize, usize)> + Send + Sync;

/// Hops from a register root (and rounds of fetches per chase).
pub const DEPTH: u8 = 6;
/// Local blocks read per fault.
pub const MAX_READS: usize = 4;
/// Far blocks prefetched per fault.
pub const MAX_TARGETS: usize = 2;
/// Bytes of a block read for pointers: a small block whole, a larger one from where
/// the pointer to it points.
pub const SCAN: usize = 128;
/// The most of one far block fetched (the rest faults for itself).
const MAX_OBJECT: usize = 64 << 10;
/// Without a block table, a pointer stands for this many bytes.
const FALLBACK: usize = 64;
/// Blocks remembered per chase (not visited twice).
const SEEN: usize = 64;

/// A window of a block to read for pointers, how many hops from a root it is, and the
/// path that led there.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    lo: usize,
    hi: usize,
    depth: u8,
    /// Bytes in the block (the first part of its words' edges).
    len: usize,
    path: Path,
}

/// Edges the chase tells apart: a pointer's edge is where it was found, the length of
/// the block holding it and the word's place in the window (or the register).
pub const EDGES: usize = 4096;
/// An edge whose score falls below this is not followed (but see [`EXPLORE`]).
const PRUNE: i8 = -8;
/// One chase in this many follows pruned edges too, so an edge can earn its way back
/// when the program changes what it does (a path is followed only if every edge on it
/// is, so exploring edge by edge would almost never reach past two pruned ones; the
/// load phase of a benchmark prunes most edges before the measured phase begins).
const EXPLORE: u32 = 32;
/// The most edges a path remembers (the first ones from the root).
const PATH_EDGES: u32 = 4;

/// The first [`PATH_EDGES`] edges of the path to a block, packed: a count in the low 3
/// bits, then 12 bits per edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Path(u64);

impl Path {
    fn then(self, edge: u16) -> Path {
        let n = (self.0 & 7) as u32;
        if n == PATH_EDGES {
            return self;
        }
        Path((self.0 & !7) | u64::from(edge) << (3 + 12 * n) | u64::from(n + 1))
    }

    fn edges(self) -> impl Iterator<Item = usize> {
        let n = (self.0 & 7) as u32;
        (0..n).map(move |i| ((self.0 >> (3 + 12 * i)) & (EDGES as u64 - 1)) as usize)
    }
}

/// The edge of word `i` of a block of `len` bytes (`len` 0: register `i`).
fn edge(len: usize, i: usize) -> u16 {
    let h = ((len as u64) << 8 | i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 52) as u16
}

/// What the chase has learnt in one region: a score per edge (up for each prefetched
/// page used, down for each evicted unused), and for each page the chase prefetched, the
/// path that led to it, until it is used or evicted.
///
/// A walk's pointers and the ones beside them look alike: a quicklist node's `next` and
/// `prev`, a list's `head` and `tail`, a tree node's two children. A chase from an
/// LRANGE's cursor can reach the list's tail and walk back from it as readily as it
/// walks forward; the scores prune the edges that lead to unused pages. A use counts
/// twice an unused page, so an edge on both kinds of paths (a node's `entry`) stays, and
/// an edge is pruned below about one use in three. (On LRANGE the scores split into
/// edges pinned at the top and the bottom of their range, but accuracy moved only from
/// 52% to 49-65%: most waste is past the range's end, on edges that also lead to used
/// pages.)
pub(crate) struct Learnt {
    scores: [AtomicI8; EDGES],
    paths: Box<[AtomicU64]>,
    explore: AtomicU32,
}

impl Learnt {
    /// For a region of `pages` pages (none when the chase cannot run there).
    pub(crate) fn new(pages: usize) -> Option<Learnt> {
        Some(Learnt {
            scores: [const { AtomicI8::new(0) }; EDGES],
            paths: crate::state::page::zeroed_table(pages)?,
            explore: AtomicU32::new(0),
        })
    }

    fn follows(&self, e: u16) -> bool {
        self.scores[e as usize].load(Relaxed) >= PRUNE
    }

    /// Whether the next chase explores: follows every edge, pruned or not.
    fn explores(&self) -> bool {
        self.explore.fetch_add(1, Relaxed).is_multiple_of(EXPLORE)
    }

    fn note(&self, page: u64, p: Path) {
        if let Some(a) = self.paths.get(page as usize) {
            a.store(p.0, Relaxed);
        }
    }

    /// A page prefetched earlier was used (`used`) or evicted unused.
    #[inline]
    pub(crate) fn feedback(&self, page: u64, used: bool) {
        let Some(a) = self.paths.get(page as usize) else {
            return;
        };
        if a.load(Relaxed) == 0 {
            return;
        }
        let p = Path(a.swap(0, Relaxed));
        let d: i8 = if used { 2 } else { -1 };
        for e in p.edges() {
            let s = &self.scores[e];
            let _ = s.fetch_update(Relaxed, Relaxed, |v| {
                Some(v.saturating_add(d).clamp(-64, 63))
            });
        }
    }
}

/// One fault's chase. See the module docs.
pub(crate) struct Chase<'r> {
    r: &'r RegionState,
    table: Option<Arc<BlockTable>>,
    /// The block the fault landed in (fetched or mapped by the fault itself).
    own: (usize, usize),
    seen: [usize; SEEN],
    n_seen: usize,
    /// Local blocks to read.
    queue: [Window; MAX_READS],
    n_queue: usize,
    /// Far blocks asked for, read once fetched.
    pending: [Window; MAX_TARGETS + 1],
    n_pending: usize,
    reads: usize,
    targets: usize,
    /// This chase follows pruned edges too.
    explore: bool,
}

impl<'r> Chase<'r> {
    /// A chase for a fault at `addr`, if the region chases pointers.
    pub(crate) fn new(r: &'r RegionState, addr: usize) -> Option<Chase<'r>> {
        if !r.pointer_prefetch() || r.shared.huge() {
            return None;
        }
        let table = r.blocks.try_read().ok().and_then(|t| t.clone());
        let mut c = Chase {
            r,
            table,
            own: (addr, addr + 1),
            seen: [0; SEEN],
            n_seen: 0,
            queue: [Window::default(); MAX_READS],
            n_queue: 0,
            pending: [Window::default(); MAX_TARGETS + 1],
            n_pending: 0,
            reads: 0,
            targets: 0,
            explore: false,
        };
        c.explore = r.learnt.as_ref().is_some_and(Learnt::explores);
        if let Some((s, e, w)) = c.block(addr) {
            c.own = (s, e);
            c.remember(s);
            // The faulting block itself is read once its page is in (`fetched`), or
            // now if it is local (`own_is_local`).
            c.pending[0] = Window {
                depth: 0,
                len: e - s,
                ..w
            };
            c.n_pending = 1;
        }
        Some(c)
    }

    /// The fault's own block is local (a prefetch hit): read it from the page cache.
    pub(crate) fn own_is_local(&mut self) {
        if self.n_pending == 1 && self.n_queue < MAX_READS {
            self.queue[self.n_queue] = self.pending[0];
            self.n_queue += 1;
            self.n_pending = 0;
        }
    }

    /// Pages read and far blocks found so far.
    pub(crate) fn work(&self) -> (usize, usize) {
        (self.reads, self.targets)
    }

    /// The block of the heap containing `v` (start, end) and the window of it to read,
    /// or None if `v` points at nothing the chase follows.
    fn block(&self, v: usize) -> Option<(usize, usize, Window)> {
        let r = self.r;
        if v < r.base || v >= r.base + r.len {
            return None;
        }
        let (s, e) = match &self.table {
            Some(t) => t(v)?,
            None => (v & !7, ((v & !7) + FALLBACK).min(r.base + r.len)),
        };
        if !(s <= v && v < e && e <= r.base + r.len) {
            return None;
        }
        let lo = if v - s < SCAN { s } else { v & !7 };
        Some((
            s,
            e,
            Window {
                lo,
                hi: e.min(lo + SCAN),
                ..Window::default()
            },
        ))
    }

    fn remember(&mut self, start: usize) -> bool {
        if self.seen[..self.n_seen].contains(&start) || self.n_seen == SEEN {
            return false;
        }
        self.seen[self.n_seen] = start;
        self.n_seen += 1;
        true
    }

    /// Follows the words of `words` (each a possible pointer), `depth` hops from a root;
    /// far blocks go into `out`.
    pub(crate) fn registers(&mut self, regs: &[u64], out: &mut Candidates) {
        let from = Window::default();
        self.roots(regs.iter().copied(), &from, out);
    }

    /// Follows `words`, read from the window `from` (registers: a default window).
    fn roots(&mut self, words: impl IntoIterator<Item = u64>, from: &Window, out: &mut Candidates) {
        for (i, v) in words.into_iter().enumerate() {
            if self.targets >= MAX_TARGETS && self.n_queue >= MAX_READS {
                return;
            }
            let e = edge(from.len, i);
            let depth = if from.len == 0 { 0 } else { from.depth + 1 };
            self.follow(v as usize, depth, from.path.then(e), e, out);
        }
    }

    fn follow(&mut self, v: usize, depth: u8, path: Path, e: u16, out: &mut Candidates) {
        let Some((s, end, w)) = self.block(v) else {
            return;
        };
        if s == self.own.0 || self.seen[..self.n_seen].contains(&s) {
            return;
        }
        let r = self.r;
        let page = ((w.lo - r.base) / PAGE_SIZE) as u64;
        let learnt = r
            .learnt
            .as_ref()
            .expect("a region that chases has its scores");
        if !(self.explore || learnt.follows(e)) || !self.remember(s) {
            return;
        }
        let w = Window {
            depth,
            len: end - s,
            path,
            ..w
        };
        let e = end;
        match r.states[page as usize].load().tag() {
            Tag::Far if self.targets < MAX_TARGETS => {
                // The block's pages from where the pointer points (the whole block when
                // it points near its start), up to MAX_OBJECT.
                let from = if v - s < MAX_OBJECT { s } else { v };
                let to = e.min(from + MAX_OBJECT);
                let (first, last) = (
                    (from - r.base) / PAGE_SIZE,
                    (to - r.base).div_ceil(PAGE_SIZE),
                );
                let before = out.len();
                for p in first..last {
                    if !out.as_slice().contains(&(p as u64)) {
                        if !out.push(p as u64) {
                            break;
                        }
                        learnt.note(p as u64, path);
                    }
                }
                if out.len() > before {
                    self.targets += 1;
                    if depth < DEPTH && self.n_pending < self.pending.len() {
                        self.pending[self.n_pending] = w;
                        self.n_pending += 1;
                    }
                }
            }
            Tag::Active | Tag::Inactive if depth < DEPTH && self.n_queue < MAX_READS => {
                self.queue[self.n_queue] = w;
                self.n_queue += 1;
            }
            _ => {}
        }
    }

    /// Reads the local blocks queued (and those their pointers lead to), up to the
    /// budget; far blocks found go into `out`.
    pub(crate) fn run_local(&mut self, out: &mut Candidates) {
        let mut i = 0;
        while i < self.n_queue && self.reads < MAX_READS {
            let w = self.queue[i];
            i += 1;
            let mut buf = [0u64; SCAN / 8];
            // Up to the end of the window's page: the rest of a block that crosses pages
            // is not read.
            let end = w.hi.min((w.lo | (PAGE_SIZE - 1)) + 1);
            let n = (end.saturating_sub(w.lo)).min(SCAN) / 8;
            // SAFETY: a u64 array viewed as its bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), n * 8) };
            if n == 0 || !self.r.read_resident(w.lo, bytes) {
                continue;
            }
            self.reads += 1;
            self.roots(buf[..n].iter().copied(), &w, out);
        }
        self.n_queue = 0;
    }

    /// A batch came in: `pages` (sorted) with their data back to back in `data`. Reads
    /// the far blocks asked for that it holds, then the local blocks they lead to; the
    /// next far blocks go into `out`.
    pub(crate) fn fetched(&mut self, pages: &[u64], data: &[u8], out: &mut Candidates) {
        let pending = self.pending;
        let n = std::mem::take(&mut self.n_pending);
        for w in &pending[..n] {
            // Words of pages not in the batch stay 0 (no pointer), so each word keeps
            // its place (its edge).
            let mut words = [0u64; SCAN / 8];
            let mut k = 0;
            let mut a = w.lo & !7;
            while a + 8 <= w.hi && k < words.len() {
                let off = a - self.r.base;
                let page = (off / PAGE_SIZE) as u64;
                if let Ok(i) = pages.binary_search(&page) {
                    let at = i * PAGE_SIZE + off % PAGE_SIZE;
                    words[k] = u64::from_ne_bytes(data[at..at + 8].try_into().expect("8 bytes"));
                }
                k += 1;
                a += 8;
            }
            self.roots(words[..k].iter().copied(), w, out);
        }
        self.run_local(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PrefetchKind, PrefetchSpec};

    #[test]
    fn a_path_keeps_its_first_edges() {
        let mut p = Path::default();
        for e in [1u16, 4095, 7, 300, 9, 10] {
            p = p.then(e);
        }
        assert_eq!(p.edges().collect::<Vec<_>>(), [1, 4095, 7, 300]);
        assert_eq!(Path::default().edges().count(), 0);
        // Registers and a block's words are edges of their own.
        assert_ne!(edge(0, 3), edge(32, 3));
        assert_ne!(edge(32, 0), edge(32, 1));
    }

    #[test]
    fn scores_prune_edges_that_lead_to_unused_pages_and_keep_mixed_ones() {
        let l = Learnt::new(16).unwrap();
        let (bad, mixed) = (5u16, 6u16);
        for round in 0..40u64 {
            let page = round % 16;
            let used = round % 2 == 0;
            let p = Path::default().then(mixed);
            let p = if used { p } else { p.then(bad) };
            l.note(page, p);
            l.feedback(page, used);
        }
        assert!(!l.follows(bad), "an edge only on unused paths is pruned");
        assert!(
            l.follows(mixed),
            "an edge on used paths half the time stays"
        );
        // Feedback for a page the chase did not prefetch changes nothing.
        l.feedback(3, false);
        assert!(l.follows(mixed));
    }

    #[test]
    fn prefetch_lists_parse() {
        let p = |s: &str| s.parse::<PrefetchSpec>();
        assert_eq!(
            p("readahead,pointer").unwrap(),
            PrefetchSpec {
                kind: PrefetchKind::Readahead,
                pointer: true
            }
        );
        assert_eq!(p("pointer").unwrap().kind, PrefetchKind::None);
        assert_eq!(p("majority").unwrap().to_string(), "majority");
        assert_eq!(
            p("pointer, majority").unwrap().to_string(),
            "majority,pointer"
        );
        assert!(
            p("readahead,majority")
                .unwrap_err()
                .contains("two prefetchers")
        );
        assert!(p("pointr").unwrap_err().contains("`pointr`"));
    }
}
