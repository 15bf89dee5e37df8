//! Range operations: what the application asks for a range of a region, outside any
//! fault: bring it in (`prefetch`, `WillNeed`), evict it (`DontNeed`), throw it away
//! (`discard`) or forget its far copies (`forget_far`).

use crate::backend::PageKey;
use crate::fault::prefetch_pages;
use crate::reclaim::evict_locked;
use crate::state::bufs::BATCH_PAGES;
use crate::state::page::{State, Tag};
use crate::state::region::RegionState;

/// Brings `[first, end)` in (the application asked: `prefetch` or `WillNeed`), at most
/// half the budget per call so that a large request cannot flush everything else.
pub(crate) fn prefetch_range(r: &RegionState, first: u64, end: u64) {
    let limit = (r.shared.frames.budget() / 2) as u64;
    let end = end.min(first + limit);
    let mut p = first;
    let mut cands = [0u64; BATCH_PAGES - 1];
    // As many pages as one fetch buffer holds (one, with 2 MiB pages).
    let per = r.shared.batch_pages().min(cands.len());
    while p < end {
        let chunk_end = (p + per as u64).min(end);
        // Pages still far after a pass were skipped because they were locked (being
        // evicted, say) or no frame could be freed for them just then: try again a few
        // times, since the application asked for them explicitly.
        for attempt in 0..PREFETCH_ATTEMPTS {
            let mut k = 0;
            for q in p..chunk_end {
                let t = r.states[q as usize].load().tag();
                if t == Tag::Far || t == Tag::Locked {
                    cands[k] = q;
                    k += 1;
                }
            }
            if k == 0 {
                break;
            }
            if prefetch_pages(r, &cands[..k], &[], None) < k && attempt + 1 < PREFETCH_ATTEMPTS {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        p = chunk_end;
    }
}

/// Passes an explicit prefetch makes over pages it could not bring in at once.
const PREFETCH_ATTEMPTS: usize = 4;

/// Evicts `[first, end)` now (`DontNeed`): dirty pages are written back, data is kept.
pub(crate) fn evict_range(r: &RegionState, first: u64, end: u64) {
    let Some(arc) = r.shared.region_arc(r.id) else {
        return;
    };
    let mut buf = r.shared.bufs.acquire();
    let batch = (buf.bytes().len() / r.unit).min(BATCH_PAGES);
    let mut p = first;
    while p < end {
        let mut victims = Vec::with_capacity(batch);
        while p < end && victims.len() < batch {
            let w = &r.states[p as usize];
            let s = w.wait_unlocked();
            if s.is_resident() && w.try_lock(s) {
                victims.push((arc.clone(), p, s));
            } else if s.is_resident() {
                continue; // changed under us: look again
            }
            p += 1;
        }
        evict_locked(&r.shared, victims, buf.bytes());
    }
}

/// Discards `[first, end)`: the pages read as zeros afterwards.
pub(crate) fn discard_range(r: &RegionState, first: u64, end: u64) {
    let shared = &r.shared;
    let mut iov = Vec::new();
    let mut locked = Vec::new();
    let mut far = Vec::new();
    for p in first..end {
        let s = r.states[p as usize].lock_any();
        if s.tag() == Tag::Active {
            iov.push(libc::iovec {
                iov_base: r.page_addr(p) as *mut libc::c_void,
                iov_len: r.unit,
            });
        }
        if s.has_far() {
            far.extend(r.keys(p));
        }
        locked.push((p, s));
    }
    if let Err(e) = shared.zapper.zap(&iov) {
        crate::fatal::die_io("could not unmap discarded pages (madvise)", &e);
    }
    // Free the resident pages' frames, one hole punch per run of consecutive pages.
    let mut freed = 0;
    let mut run: Option<(u64, u64)> = None;
    let punch = |(a, b): (u64, u64)| {
        if let Err(e) = r
            .memfd
            .punch(a as usize * r.unit, (b - a) as usize * r.unit)
        {
            crate::fatal::die_io("could not free discarded pages (fallocate)", &e);
        }
    };
    for &(p, s) in &locked {
        if !s.is_resident() {
            continue;
        }
        freed += 1;
        run = match run {
            Some((a, b)) if b == p => Some((a, p + 1)),
            Some(prev) => {
                punch(prev);
                Some((p, p + 1))
            }
            None => Some((p, p + 1)),
        };
    }
    if let Some(last) = run {
        punch(last);
    }
    // The tier forgets the far copies while the pages are still locked (see
    // `forget_far_range`).
    shared.backend.discard(&far);
    for &(p, s) in &locked {
        r.states[p as usize].unlock(State::new(Tag::Untouched, 0, s.generation()));
    }
    shared.release_frames(freed);
}

/// Forgets the far copies of the pages of `[first, end)` that are only far (not
/// resident): they read as zeros afterwards. Resident pages are left as they are, so
/// nothing is unmapped and no TLB is flushed: this is for memory whose content no longer
/// matters but which will likely be reused soon (a freed heap block), where a discard
/// would cost a zero-fill fault on every resident page's next use.
pub(crate) fn forget_far_range(r: &RegionState, first: u64, end: u64) {
    // Pages stay locked until the tier has forgotten them: unlocked earlier, a page could
    // be written, evicted and stored again under the same key before the discard reaches
    // the tier, which would then delete the new copy.
    let mut keys: Vec<PageKey> = Vec::with_capacity(512);
    let mut held = [(0u64, State(0)); 64];
    let mut n = 0;
    let flush = |keys: &mut Vec<PageKey>, held: &[(u64, State)]| {
        r.shared.backend.discard(keys);
        keys.clear();
        for &(p, s) in held {
            r.states[p as usize].unlock(State::new(Tag::Untouched, 0, s.generation()));
        }
    };
    for p in first..end.min(r.pages) {
        let w = &r.states[p as usize];
        let s = w.load();
        if s.tag() != Tag::Far || !w.try_lock(s) {
            continue;
        }
        keys.extend(r.keys(p));
        held[n] = (p, s);
        n += 1;
        if n == held.len() {
            flush(&mut keys, &held);
            n = 0;
        }
    }
    if n > 0 {
        flush(&mut keys, &held[..n]);
    }
}
