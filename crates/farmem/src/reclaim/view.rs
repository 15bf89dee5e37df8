//! The policy's view of resident pages during one selection: page status, taking
//! victims, and passes of the clock hand over chunks (`age.rs`).

use super::evict::Victim;
use crate::policy::{CHUNK_PAGES, ChunkBits, PageRef, PageStatus, ResidentView};
use crate::state::page::{State, Tag};
use crate::state::region::RegionState;
use crate::state::shared::Shared;
use std::sync::Arc;

/// The policy's view of resident pages during one selection.
pub(super) struct View<'a> {
    regions: &'a [Option<Arc<RegionState>>],
    victims: Vec<Victim>,
    /// The most victims the caller's buffer holds: a policy that asks for more is refused.
    want: usize,
    shared: &'a Shared,
}

impl<'a> View<'a> {
    pub(super) fn new(
        shared: &'a Shared,
        regions: &'a [Option<Arc<RegionState>>],
        want: usize,
    ) -> View<'a> {
        View {
            regions,
            victims: Vec::with_capacity(want),
            want,
            shared,
        }
    }

    pub(super) fn into_victims(self) -> Vec<Victim> {
        self.victims
    }

    fn region(&self, id: u32, page: u64) -> Option<&Arc<RegionState>> {
        self.regions
            .get(id as usize)?
            .as_ref()
            .filter(|r| page < r.pages)
    }

    fn current(p: PageRef, s: State) -> bool {
        p.generation == PageRef::ANY_GENERATION || s.generation() == p.generation
    }
}

impl ResidentView for View<'_> {
    fn status(&self, p: PageRef) -> PageStatus {
        let Some(r) = self.region(p.region, p.page) else {
            return PageStatus::Stale;
        };
        let s = r.states[p.page as usize].load();
        if !Self::current(p, s) {
            return PageStatus::Stale;
        }
        match s.tag() {
            Tag::Active => PageStatus::Referenced,
            Tag::Inactive if s.young() => PageStatus::Referenced,
            Tag::Inactive => PageStatus::Unreferenced,
            Tag::Locked => PageStatus::Busy,
            Tag::Far | Tag::Untouched => PageStatus::Stale,
        }
    }

    fn evict(&mut self, p: PageRef) -> bool {
        if self.victims.len() >= self.want {
            return false;
        }
        let Some(r) = self.region(p.region, p.page) else {
            return false;
        };
        let w = &r.states[p.page as usize];
        let s = w.load();
        if !Self::current(p, s) || !s.is_resident() || !w.try_lock(s) {
            return false;
        }
        self.victims.push((r.clone(), p.page, s));
        true
    }

    fn age(&mut self, region: u32, first: u64, end: u64, cold: &mut ChunkBits) -> usize {
        let Some(r) = self.region(region, first) else {
            return 0;
        };
        let counts = self
            .shared
            .accessed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chunk(r, first / CHUNK_PAGES);
        super::age::age(self.shared, r, first, end, counts, cold)
    }

    fn region_from(&self, id: u32) -> Option<(u32, u64)> {
        self.regions
            .iter()
            .enumerate()
            .skip(id as usize)
            .find_map(|(i, r)| r.as_ref().map(|r| (i as u32, r.high_water())))
    }

    fn victims(&self) -> usize {
        self.victims.len()
    }
}
