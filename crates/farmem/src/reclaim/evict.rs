//! Evicting pages that are locked: unmap the mapped ones with one call, read every page
//! out, drop the clean and all-zero ones, write the dirty ones back in one batched store,
//! free the frames.
//!
//! Dirty detection is by content: the page's xxh3-128 against the checksum of its far
//! copy. No write-protect faults are needed, and the engine needs the hash anyway to
//! check fetches end to end.

use crate::backend::PageKey;
use crate::policy::PageRef;
use crate::state::bufs::BATCH_PAGES;
use crate::state::page::{HAS_FAR, State, Tag};
use crate::state::region::{RegionState, page_hash, zero_hash};
use crate::state::shared::Shared;
use crate::stats::Counters;
use std::sync::Arc;

/// A locked page to evict: its region, index, and the state it had when locked.
pub(crate) type Victim = (Arc<RegionState>, u64, State);

/// Evicts pages the caller has locked (`prev` is the state each had): unmaps the mapped
/// ones, writes back the dirty ones, frees their frames. Returns how many.
pub(crate) fn evict_locked(s: &Shared, victims: Vec<Victim>, scratch: &mut [u8]) -> usize {
    if victims.is_empty() {
        return 0;
    }
    let zapping = crate::pin::zapping();
    let mut victims = if crate::pin::any() {
        // Pages pinned for a system call stay (see `pin`).
        let (keep, go): (Vec<_>, Vec<_>) = victims
            .into_iter()
            .partition(|(r, page, _)| crate::pin::is_pinned(r.page_addr(*page)));
        for (r, page, prev) in &keep {
            r.states[*page as usize].unlock(*prev);
            s.policy_insert(&[PageRef {
                region: r.id,
                generation: prev.generation(),
                page: *page,
            }]);
        }
        go
    } else {
        victims
    };
    // In page order, so that neighbours are read out and freed with one call per run.
    victims.sort_unstable_by_key(|(r, page, _)| (r.id, *page));
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(victims.len());
    for (r, page, prev) in &victims {
        if prev.tag() == Tag::Active {
            iov.push(libc::iovec {
                iov_base: r.page_addr(*page) as *mut libc::c_void,
                iov_len: r.unit,
            });
        }
    }
    if let Err(e) = s.zapper.zap(&iov) {
        crate::fatal::die_io("could not unmap pages for eviction (madvise)", &e);
    }
    drop(zapping);
    write_back_and_free(s, &victims, scratch);
    victims.len()
}

/// Victims are locked and unmapped: read them out, write back the dirty ones, free
/// their frames.
fn write_back_and_free(s: &Shared, victims: &[Victim], scratch: &mut [u8]) {
    let n = victims.len();
    let u = s.unit();
    debug_assert!(n <= BATCH_PAGES && n * u <= scratch.len());
    let mut hashes = [0u128; BATCH_PAGES];
    // Far-tier keys of the dirty pages: one per 4 KiB (a batch of small pages, or the 512
    // of one huge page).
    let mut dirty_keys = [PageKey(0); KEYS];
    let mut nkeys = 0;
    let mut dirty_idx = [0usize; BATCH_PAGES];
    let mut ndirty = 0;
    let mut zero = [false; BATCH_PAGES];
    for (i, j) in runs(victims) {
        let (r, page, _) = &victims[i];
        let buf = &mut scratch[i * u..j * u];
        if let Err(e) = r.memfd.read_at(buf, *page as usize * u) {
            crate::fatal::die_io("could not read a page out of local memory for eviction", &e);
        }
    }
    for (i, (r, page, prev)) in victims.iter().enumerate() {
        let buf = &scratch[i * u..(i + 1) * u];
        let h = page_hash(buf);
        hashes[i] = h;
        if h == zero_hash(u) && buf.iter().all(|&b| b == 0) {
            zero[i] = true;
        } else if !(prev.has_far() && r.far_hash(*page) == h) {
            for k in r.keys(*page) {
                dirty_keys[nkeys] = k;
                nkeys += 1;
            }
            dirty_idx[ndirty] = i;
            ndirty += 1;
        }
    }
    if ndirty > 0 {
        // Pack the dirty pages at the front of the buffer for one batched store.
        for (j, &i) in dirty_idx[..ndirty].iter().enumerate() {
            if i != j {
                scratch.copy_within(i * u..(i + 1) * u, j * u);
            }
        }
        if let Err(e) = s
            .backend
            .store(&dirty_keys[..nkeys], &scratch[..ndirty * u])
        {
            crate::fatal::die_tier("write back evicted pages", s.backend.name(), &e);
        }
    }
    let mut zero_keys = [PageKey(0); KEYS];
    let mut nzero_far = 0;
    let (mut clean, mut nzero, mut unused) = (0u64, 0u64, 0u64);
    let mut next = [State(0); BATCH_PAGES];
    for (i, j) in runs(victims) {
        let (r, page, _) = &victims[i];
        if let Err(e) = r.memfd.punch(*page as usize * u, (j - i) * u) {
            crate::fatal::die_io("could not free evicted pages (fallocate)", &e);
        }
    }
    for (i, (r, page, prev)) in victims.iter().enumerate() {
        if prev.prefetched() || prev.ahead() {
            unused += 1;
            r.pointer_feedback(*page, false);
        }
        next[i] = if zero[i] {
            nzero += 1;
            if prev.has_far() {
                for k in r.keys(*page) {
                    zero_keys[nzero_far] = k;
                    nzero_far += 1;
                }
            }
            State::new(Tag::Untouched, 0, prev.generation())
        } else {
            if dirty_idx[..ndirty].contains(&i) {
                r.set_far_hash(*page, hashes[i]);
            } else {
                clean += 1;
            }
            State::new(Tag::Far, HAS_FAR, prev.generation())
        };
    }
    // The tier forgets the old far copies of pages that became zero while those pages are
    // still locked: unlocked first, a page could be written, evicted and stored again
    // under the same key before the discard arrives, which would then delete the new copy.
    if nzero_far > 0 {
        s.backend.discard(&zero_keys[..nzero_far]);
    }
    for (i, (r, page, _)) in victims.iter().enumerate() {
        r.states[*page as usize].unlock(next[i]);
        crate::trace::record(crate::trace::Kind::Evict, *page);
    }
    s.release_frames(n);
    let c = &s.counters;
    Counters::bump(&c.evicted, n as u64);
    Counters::bump(&c.written_back, ndirty as u64);
    Counters::bump(&c.dropped_clean, clean);
    Counters::bump(&c.evicted_zero, nzero);
    Counters::bump(&c.prefetch_unused, unused);
}

/// The most far-tier keys one eviction batch holds: a batch of 4 KiB pages, or one 2 MiB
/// page.
const KEYS: usize = if BATCH_PAGES > 512 { BATCH_PAGES } else { 512 };

/// The runs of `victims` (sorted by region and page) that are neighbours in one region, as
/// index ranges `[i, j)`: each is read out with one `pread` and freed with one
/// `fallocate`, where a call per page cost the reclaimer half its time on Redis.
fn runs(victims: &[Victim]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i == victims.len() {
            return None;
        }
        let start = i;
        i += 1;
        while i < victims.len()
            && Arc::ptr_eq(&victims[i].0, &victims[start].0)
            && victims[i].1 == victims[i - 1].1 + 1
        {
            i += 1;
        }
        Some((start, i))
    })
}
