//! The policy's view of resident pages during one selection: reference bits, taking
//! victims, and demoting a range with one TLB shootdown.

use super::evict::Victim;
use crate::backend::PAGE_SIZE;
use crate::policy::{PageRef, PageStatus, ResidentView};
use crate::state::page::{State, Tag, YOUNG};
use crate::state::region::RegionState;
use crate::state::shared::Shared;
use crate::stats::Counters;
use std::sync::Arc;

/// The policy's view of resident pages during one selection.
pub(super) struct View<'a> {
    regions: &'a [Option<Arc<RegionState>>],
    victims: Vec<Victim>,
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

    fn demote_range(&mut self, region: u32, first: u64, end: u64) -> usize {
        let Some(r) = self.region(region, first) else {
            return 0;
        };
        let end = end.min(r.pages);
        // Lock the mapped pages, unmap the whole range with one call (one TLB shootdown;
        // pages of the range that are not mapped are untouched by it), unlock them as
        // unreferenced. A page that another thread is filling meanwhile may be unmapped
        // too: its fault path then finds it ACTIVE but unmapped, and maps it again.
        let mut locked = [(0u64, State(0)); CHUNK];
        let mut n = 0;
        let (mut lo, mut hi) = (u64::MAX, 0);
        let mut young = 0;
        for p in first..end {
            let w = &r.states[p as usize];
            let s = w.load();
            if s.tag() == Tag::Inactive && s.young() {
                // An unmapped prefetch: its bit is the YOUNG flag, cleared without a zap.
                if w.replace(s, s.with_flags(s.flags() & !YOUNG)) {
                    young += 1;
                }
                continue;
            }
            if s.tag() == Tag::Active && w.try_lock(s) {
                if n == CHUNK {
                    w.unlock(s);
                    break;
                }
                locked[n] = (p, s);
                n += 1;
                lo = lo.min(p);
                hi = p + 1;
            }
        }
        if n == 0 {
            return young;
        }
        let zapping = crate::pin::zapping();
        let mut demoted = n;
        if crate::pin::any() {
            // Leave pinned pages mapped (see `pin`): zap the runs between them, one call
            // each, and keep the pinned ones as they were.
            let mut run_start = None;
            let mut keep = [false; CHUNK];
            for (i, &(p, s)) in locked[..n].iter().enumerate() {
                if crate::pin::is_pinned(r.page_addr(p)) {
                    keep[i] = true;
                    r.states[p as usize].unlock(s);
                    demoted -= 1;
                }
            }
            for (i, &(p, _)) in locked[..n].iter().enumerate() {
                match (keep[i], run_start) {
                    (false, None) => run_start = Some(p),
                    (true, Some(s0)) => {
                        zap_pages(self.shared, r, s0, p);
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s0) = run_start {
                zap_pages(self.shared, r, s0, hi);
            }
            for (i, &(p, s)) in locked[..n].iter().enumerate() {
                if !keep[i] {
                    r.states[p as usize].unlock(s.with_tag(Tag::Inactive));
                }
            }
            drop(zapping);
            Counters::bump(&self.shared.counters.demoted, demoted as u64);
            return demoted + young;
        }
        zap_pages(self.shared, r, lo, hi);
        drop(zapping);
        for &(p, s) in &locked[..n] {
            r.states[p as usize].unlock(s.with_tag(Tag::Inactive));
        }
        Counters::bump(&self.shared.counters.demoted, n as u64);
        n + young
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

/// Unmaps pages `[first, end)` of `r` (locked or unmapped by the caller) with one call.
fn zap_pages(shared: &Shared, r: &RegionState, first: u64, end: u64) {
    let iov = [libc::iovec {
        iov_base: r.page_addr(first) as *mut libc::c_void,
        iov_len: (end - first) as usize * PAGE_SIZE,
    }];
    if let Err(e) = shared.zapper.zap(&iov) {
        crate::fatal::die_io("could not unmap pages to sample references (madvise)", &e);
    }
}

/// Most pages one `demote_range` call handles.
const CHUNK: usize = crate::policy::CHUNK_PAGES as usize;
