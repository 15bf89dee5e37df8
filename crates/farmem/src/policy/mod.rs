//! Eviction policies: which resident pages go when frames are needed.
//!
//! A policy picks victims through a [`ResidentView`]. The view gives two kinds of
//! reference information:
//!
//! - [`ResidentView::status`], per page: mapped (`Referenced`: touched since it was last
//!   unmapped, or new) or not (`Unreferenced`: in local memory, unmapped, untouched since).
//! - [`ResidentView::age`], per 2 MiB chunk: one pass of a clock hand. The engine reads
//!   the hardware's accessed bits of the chunk (an exact count per chunk, from
//!   `/proc/self/smaps`; `MADV_COLD` clears them) and decides page by page from that and
//!   from what each page did since the last pass: pages in use stay mapped and cost
//!   nothing; pages it cannot judge are unmapped, and a touch maps them again with a minor
//!   fault (about 2 us here), which marks them in use; pages untouched since the last
//!   pass come back as victims, already unmapped.
//!
//! Unmapping a page that another CPU may have in its TLB costs a TLB shootdown: an
//! inter-processor interrupt, which under virtualisation is a VM exit on both sides, and
//! for shared-memory pages the kernel sends one per `madvise` range. So the view unmaps
//! and clears whole chunks with one call each, and victims are pages already unmapped:
//! evicting those needs no shootdown at all. [`Clock`] ages the address space chunk by
//! chunk and takes the victims each pass returns; [`Fifo`] evicts mapped pages in arrival
//! order and pays a shootdown per page (kept for comparison).
//!
//! # Threading and lifecycle
//! One policy per engine, behind a mutex taken by whoever selects victims (the reclaimer,
//! or a faulting thread doing direct reclaim). Policies that want to see pages arrive
//! ([`EvictionPolicy::wants_arrivals`]) get them through `insert`, fed from a lock-free
//! queue that the fault path fills. Entries may go stale (the page was evicted by another
//! route, or its region is gone): the view reports that and the policy drops them.

mod clock;
mod fifo;

pub use clock::Clock;

/// Pages in a chunk: the unit of [`ResidentView::age`] (2 MiB, one page-table page, one
/// mapping of its own so that its accessed bits can be counted).
pub const CHUNK_PAGES: u64 = (crate::sys::mem::CHUNK_BYTES / crate::backend::PAGE_SIZE) as u64;

/// One bit per page of a chunk: bit `i` of word `i / 64` is the chunk's page `i`.
pub type ChunkBits = [u64; CHUNK_PAGES as usize / 64];
pub use fifo::Fifo;

/// A resident page as the policy knows it: region, page index and the generation the page
/// had when it became resident (a mismatch later means the entry is stale;
/// [`PageRef::ANY_GENERATION`] matches any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRef {
    /// Region id.
    pub region: u32,
    /// Generation of the page when inserted.
    pub generation: u32,
    /// Page index in the region.
    pub page: u64,
}

impl PageRef {
    /// Matches whatever generation the page has now.
    pub const ANY_GENERATION: u32 = u32::MAX;

    /// A reference to a page in whatever generation it is.
    pub fn at(region: u32, page: u64) -> PageRef {
        PageRef {
            region,
            generation: Self::ANY_GENERATION,
            page,
        }
    }
}

/// What the view says about a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageStatus {
    /// Not resident, or the entry is out of date: drop it.
    Stale,
    /// Mapped: touched since it was last demoted (or never demoted).
    Referenced,
    /// Unmapped but local: not touched since it was demoted.
    Unreferenced,
    /// Another thread holds the page: skip it for now.
    Busy,
}

/// The reclaimer's view of resident pages during one selection.
pub trait ResidentView {
    /// The page's status.
    fn status(&self, page: PageRef) -> PageStatus;
    /// Takes the page as a victim. Returns false if it changed state meanwhile, or if the
    /// selection already has as many victims as it asked for.
    fn evict(&mut self, page: PageRef) -> bool;
    /// One pass of a clock hand over `[first, end)` of `region` (at most one chunk,
    /// starting at a multiple of [`CHUNK_PAGES`]): sets in `cold` (bit `i` for page
    /// `first + i`) the pages not referenced since the previous pass, unmapped and ready
    /// to [`evict`](ResidentView::evict) (while their status stays `Unreferenced`), and
    /// clears the reference information of the others. Returns how many it set.
    fn age(&mut self, region: u32, first: u64, end: u64, cold: &mut ChunkBits) -> usize;
    /// The first region with an id at or after `id`, and its size in pages.
    fn region_from(&self, id: u32) -> Option<(u32, u64)>;
    /// Victims taken so far in this selection.
    fn victims(&self) -> usize;
}

/// An eviction policy. See the module docs for its contract.
pub trait EvictionPolicy: Send + std::fmt::Debug {
    /// A short name (`clock`, `fifo`).
    fn name(&self) -> &'static str;
    /// Whether the policy wants `insert` calls for pages that become resident.
    fn wants_arrivals(&self) -> bool {
        false
    }
    /// Makes room for at least `entries` entries so that `insert` rarely allocates.
    fn reserve(&mut self, _entries: usize) {}
    /// A page became resident (only if `wants_arrivals`).
    fn insert(&mut self, _page: PageRef) {}
    /// Takes victims through `view` until `view.victims() >= want` or no candidate is
    /// left in one pass over the resident pages.
    fn select(&mut self, want: usize, view: &mut dyn ResidentView);
}

/// The policies farmem ships, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// CLOCK over real reference bits (the default).
    #[default]
    Clock,
    /// First in, first out, for comparison.
    Fifo,
}

impl PolicyKind {
    /// A new policy of this kind.
    pub fn build(self) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Clock => Box::new(Clock::new()),
            PolicyKind::Fifo => Box::new(Fifo::new()),
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "clock" => Ok(PolicyKind::Clock),
            "fifo" => Ok(PolicyKind::Fifo),
            _ => Err(format!("unknown eviction policy `{s}`: use clock or fifo")),
        }
    }
}

#[cfg(test)]
pub(crate) mod model {
    //! A scripted view for policy tests: one region of `pages` pages.
    use super::*;
    use std::collections::HashMap;

    #[derive(Default, Debug)]
    pub struct ModelView {
        pub pages: u64,
        pub state: HashMap<u64, PageStatus>,
        pub demoted: Vec<u64>,
        pub victims_taken: Vec<u64>,
        pub age_calls: usize,
    }

    impl ResidentView for ModelView {
        fn status(&self, page: PageRef) -> PageStatus {
            *self.state.get(&page.page).unwrap_or(&PageStatus::Stale)
        }
        fn evict(&mut self, page: PageRef) -> bool {
            self.victims_taken.push(page.page);
            self.state.insert(page.page, PageStatus::Stale);
            true
        }
        fn age(&mut self, _region: u32, first: u64, end: u64, cold: &mut ChunkBits) -> usize {
            self.age_calls += 1;
            let mut n = 0;
            for p in first..end {
                match self.state.get(&p) {
                    Some(PageStatus::Referenced) => {
                        self.state.insert(p, PageStatus::Unreferenced);
                        self.demoted.push(p);
                    }
                    Some(PageStatus::Unreferenced) => {
                        let i = (p - first) as usize;
                        cold[i / 64] |= 1 << (i % 64);
                        n += 1;
                    }
                    _ => {}
                }
            }
            n
        }
        fn region_from(&self, id: u32) -> Option<(u32, u64)> {
            (id == 0).then_some((0, self.pages))
        }
        fn victims(&self) -> usize {
            self.victims_taken.len()
        }
    }

    pub fn pref(page: u64) -> PageRef {
        PageRef {
            region: 0,
            generation: 0,
            page,
        }
    }
}
