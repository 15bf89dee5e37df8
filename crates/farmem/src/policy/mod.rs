//! Eviction policies: which resident pages go when frames are needed.
//!
//! A policy keeps its own order of resident pages ([`PageRef`]s, handed to it by
//! [`EvictionPolicy::insert`] whenever a page becomes resident) and, when the reclaimer
//! asks, picks victims through a [`ResidentView`]. The view exposes the only access
//! information userspace can get cheaply and exactly on stock Linux: whether a page has
//! been touched since it was last *demoted*. Demoting a page unmaps it while its data stays
//! in local memory; its next touch takes a minor fault (about 1.6 us here) that maps it
//! again. So "mapped" is a real reference bit, and demotion clears it. CLOCK is built on
//! exactly that; FIFO ignores it.
//!
//! # Threading and lifecycle
//! One policy per engine, behind a mutex that the fault path takes briefly to insert, and
//! the reclaimer (or a faulting thread doing direct reclaim) takes to select. `insert` runs
//! in signal context: it must not allocate (the engine calls [`EvictionPolicy::reserve`]
//! with the total page count whenever a region is added). Entries may go stale (the page
//! was evicted by another route, or its region is gone): the view reports that and the
//! policy drops them.

mod clock;
mod fifo;

pub use clock::Clock;
pub use fifo::Fifo;

/// A resident page as the policy knows it: region, page index and the generation the page
/// had when it became resident (a mismatch later means the entry is stale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRef {
    /// Region id.
    pub region: u32,
    /// Generation of the page when inserted.
    pub generation: u32,
    /// Page index in the region.
    pub page: u64,
}

/// What the view says about a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageStatus {
    /// The entry is out of date: drop it.
    Stale,
    /// Mapped: touched since it was last demoted (or never demoted).
    Referenced,
    /// Unmapped but local: not touched since it was demoted.
    Unreferenced,
    /// Another thread holds the page: skip it for now, keep the entry.
    Busy,
}

/// The reclaimer's view of resident pages during one selection.
pub trait ResidentView {
    /// The page's status.
    fn status(&self, page: PageRef) -> PageStatus;
    /// Clears the page's reference bit (unmaps it, keeping the data). Returns false if the
    /// page changed state meanwhile or the view cannot take more demotions now.
    fn demote(&mut self, page: PageRef) -> bool;
    /// Takes the page as a victim. Returns false if it changed state meanwhile.
    fn evict(&mut self, page: PageRef) -> bool;
    /// Victims taken so far in this selection.
    fn victims(&self) -> usize;
}

/// An eviction policy. See the module docs for its contract.
pub trait EvictionPolicy: Send + std::fmt::Debug {
    /// A short name (`clock`, `fifo`).
    fn name(&self) -> &'static str;
    /// Makes room for at least `entries` entries so that `insert` never allocates.
    fn reserve(&mut self, entries: usize);
    /// A page became resident.
    fn insert(&mut self, page: PageRef);
    /// Takes victims through `view` until `view.victims() >= want` or no candidate is
    /// left in one pass.
    fn select(&mut self, want: usize, view: &mut dyn ResidentView);
    /// Entries held (stale ones included).
    fn len(&self) -> usize;
    /// Whether no entry is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    //! A scripted view for policy tests.
    use super::*;
    use std::collections::HashMap;

    #[derive(Default, Debug)]
    pub struct ModelView {
        pub state: HashMap<u64, PageStatus>,
        pub demoted: Vec<u64>,
        pub victims_taken: Vec<u64>,
    }

    impl ResidentView for ModelView {
        fn status(&self, page: PageRef) -> PageStatus {
            *self.state.get(&page.page).unwrap_or(&PageStatus::Stale)
        }
        fn demote(&mut self, page: PageRef) -> bool {
            self.demoted.push(page.page);
            self.state.insert(page.page, PageStatus::Unreferenced);
            true
        }
        fn evict(&mut self, page: PageRef) -> bool {
            self.victims_taken.push(page.page);
            self.state.insert(page.page, PageStatus::Stale);
            true
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
