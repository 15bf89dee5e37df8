//! Prefetchers: given a fault, which pages to bring in with it.
//!
//! The engine calls [`Prefetcher::on_fault`] on every *major* fault (the page had to come
//! from the far tier) and on every first touch of a page that an earlier prefetch brought
//! in (a *prefetch hit*: the page was waiting in local memory, unmapped, and its first
//! touch took a cheap minor fault). Readahead uses hits the way Linux uses its
//! `PG_readahead` marker: a hit means the stream goes on, so the window grows and the next
//! one is fetched.
//!
//! The engine filters the candidates: pages outside the region, already local or locked
//! by another thread are skipped, and prefetches never push residency over the budget
//! (they are dropped instead). Prefetched pages are installed unmapped and count as not
//! yet referenced, so a wrong guess is the first thing the reclaimer evicts.
//!
//! # Threading and lifecycle
//! One prefetcher instance per region, behind a lock; `on_fault` runs on the fault path
//! (in signal context in the in-thread mode), so it must not allocate, block or touch far
//! memory. It should take well under a microsecond.

mod majority;
pub mod pointer;
mod readahead;
mod request;
mod throttle;

pub use majority::Majority;
pub use pointer::BlockTable;
pub use readahead::Readahead;
pub use request::{PrefetchHook, PrefetchRequest};
pub(crate) use throttle::Throttle;

/// Readahead's largest window in the thread fault mode, where a fault costs about ten
/// times the in-thread one (about 45 us against 5 us on this project's machine: two
/// context switches), so reading further ahead pays: a KVM guest's 64 MiB sort took 2.0 s
/// with 32 pages against 2.45 s with 8, with no change on random access (BENCHMARKS.md).
pub const THREAD_MODE_WINDOW: usize = 32;

/// A fresh prefetcher of a built-in kind for regions faulting in `mode`.
pub(crate) fn build(kind: crate::PrefetchKind, mode: crate::FaultMode) -> Box<dyn Prefetcher> {
    match kind {
        crate::PrefetchKind::None => Box::new(NoPrefetch),
        crate::PrefetchKind::Readahead if mode == crate::FaultMode::Thread => {
            Box::new(Readahead::new(THREAD_MODE_WINDOW))
        }
        crate::PrefetchKind::Readahead => Box::<Readahead>::default(),
        crate::PrefetchKind::Majority => Box::<Majority>::default(),
    }
}

/// The most pages one fault may ask to prefetch.
pub const MAX_PREFETCH: usize = 64;

/// What the engine tells a prefetcher about a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInfo {
    /// Index of the faulting page in its region.
    pub page: u64,
    /// Pages in the region (candidates at or past this are dropped).
    pub region_pages: u64,
    /// The access was a write.
    pub write: bool,
    /// The page had been prefetched and this is its first touch.
    pub hit: bool,
}

/// A fixed-capacity list of pages to prefetch; filled without allocating.
#[derive(Debug, Clone)]
pub struct Candidates {
    pages: [u64; MAX_PREFETCH],
    len: usize,
}

impl Default for Candidates {
    fn default() -> Self {
        Candidates {
            pages: [0; MAX_PREFETCH],
            len: 0,
        }
    }
}

impl Candidates {
    /// An empty list.
    pub fn new() -> Candidates {
        Candidates::default()
    }

    /// Adds a page; returns false (and drops it) when the list is full.
    pub fn push(&mut self, page: u64) -> bool {
        if self.len == MAX_PREFETCH {
            return false;
        }
        self.pages[self.len] = page;
        self.len += 1;
        true
    }

    /// The pages pushed so far.
    pub fn as_slice(&self) -> &[u64] {
        &self.pages[..self.len]
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no page was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the list.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps only the first `len` pages.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// A prefetch policy. See the module docs for when it is called and what it may do.
pub trait Prefetcher: Send + std::fmt::Debug {
    /// A short name (`none`, `readahead`, `majority`).
    fn name(&self) -> &'static str;

    /// Observes a fault and pushes the pages to bring in with it into `out`.
    fn on_fault(&mut self, fault: &FaultInfo, out: &mut Candidates);
}

/// Prefetches nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPrefetch;

impl Prefetcher for NoPrefetch {
    fn name(&self) -> &'static str {
        "none"
    }

    fn on_fault(&mut self, _fault: &FaultInfo, _out: &mut Candidates) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultMode, PrefetchKind};

    /// The largest batch a prefetcher asks for over a long sequential stream of hits.
    fn widest(p: &mut dyn Prefetcher) -> usize {
        let mut widest = 0;
        for page in 0..2000u64 {
            let mut out = Candidates::new();
            let info = FaultInfo {
                page,
                region_pages: 1 << 20,
                write: false,
                hit: page > 0,
            };
            p.on_fault(&info, &mut out);
            widest = widest.max(out.len());
        }
        widest
    }

    #[test]
    fn readahead_reads_further_ahead_in_the_thread_fault_mode() {
        let sigbus = widest(build(PrefetchKind::Readahead, FaultMode::Sigbus).as_mut());
        let thread = widest(build(PrefetchKind::Readahead, FaultMode::Thread).as_mut());
        assert_eq!(sigbus, Readahead::DEFAULT_MAX_WINDOW);
        assert_eq!(thread, THREAD_MODE_WINDOW);
        assert_eq!(
            widest(build(PrefetchKind::None, FaultMode::Thread).as_mut()),
            0
        );
    }
}
