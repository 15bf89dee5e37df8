//! One pass of the clock hand over a chunk: which pages are in use, which are victims.
//!
//! A page earns its place in the hot set by passing two tests in a row: the hand unmaps
//! it, and a touch within a lap maps it again (a minor fault, about 2-5 us here). Pages in
//! the hot set (KEPT) stay mapped, and the hand learns whether they are still used from
//! the hardware's accessed bits, counted per chunk (`state/accessed.rs`), which cost the
//! program nothing but the bit being set again (about 0.3 us once per lap).
//!
//! | page when the hand comes | accessed bit since the last pass | the pass |
//! |---|---|---|
//! | INACTIVE (unmapped) | no touch for a lap | a victim |
//! | ACTIVE, new (fault, zero-fill, prefetch run) | set | unmap: first test |
//! | ACTIVE\|WARM (passed one test) | set | unmap again: second test (INACTIVE\|WARM) |
//! | ACTIVE\|KEPT (hot set) | in the chunk's count | stays, unless the count says otherwise |
//!
//! The count of a chunk (`referenced`) covers every mapped page, and new and WARM pages
//! are mapped since the last pass, so `touched = referenced - new - warm` of its KEPT
//! pages were used. All of them: they stay. None: they are victims (unmapped now and
//! evicted by the policy). Some: nobody can tell which, so the difference is added to the
//! chunk's debt, and only when the debt passes an eighth of the hot pages (plus two) are
//! they all tested again (unmapped as WARM, so a touch puts a page straight back). A few
//! cold pages may thus stay mapped a while; the alternative, unmapping every hot page of
//! a chunk whenever one of them went cold, is the fault storm this avoids. A page must
//! pass two tests because one is weak evidence: a cold page touched twice a lap apart is
//! rare, one touched once within a lap of its last use is not.
//!
//! Then one `MADV_COLD` clears the chunk's bits for the next lap and one
//! `process_madvise` unmaps what must go. Without counts (accessed bits off, /proc
//! unreadable, a chunk that is not a mapping of its own) every mapped page is unmapped
//! and tested every pass: the classic CLOCK over mappings, where a hot page pays a minor
//! fault every lap.

use crate::Priority;
use crate::policy::{CHUNK_PAGES, ChunkBits};
use crate::state::accessed::ChunkCounts;
use crate::state::page::{KEPT, Tag, WARM, YOUNG};
use crate::state::region::RegionState;
use crate::state::shared::Shared;
use crate::stats::Counters;
use std::sync::atomic::Ordering::Relaxed;

const CHUNK: usize = CHUNK_PAGES as usize;

fn set(b: &mut ChunkBits, i: usize) {
    b[i / 64] |= 1 << (i % 64);
}

fn get(b: &ChunkBits, i: usize) -> bool {
    b[i / 64] & (1 << (i % 64)) != 0
}

fn count(b: &ChunkBits) -> u64 {
    b.iter().map(|w| w.count_ones() as u64).sum()
}

fn or(a: &mut ChunkBits, b: &ChunkBits) {
    for (x, y) in a.iter_mut().zip(b) {
        *x |= y;
    }
}

/// What the pass does with the chunk's hot-set (KEPT) pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hot {
    /// Leave them mapped (all in use, or too few unused to be worth a test).
    Stay,
    /// Unmap them all as WARM: a touch puts a page straight back.
    Test,
    /// None was used for a lap: victims.
    Cold,
}

/// One pass over `[first, end)` of `r` (one chunk at most). See the module docs and
/// `ResidentView::age`.
pub(super) fn age(
    s: &Shared,
    r: &RegionState,
    first: u64,
    end: u64,
    counts: Option<ChunkCounts>,
    cold: &mut ChunkBits,
) -> usize {
    let end = end.min(r.pages).min(first + CHUNK_PAGES);
    let len = (end - first) as usize;
    let (mut new, mut warm, mut kept) = (
        ChunkBits::default(),
        ChunkBits::default(),
        ChunkBits::default(),
    );
    let mut victims = 0;
    let hint = r.evict_hint.try_read().ok().and_then(|h| h.clone());
    let keep_ok = !s.hints_off.load(Relaxed);
    let mut first_out = ChunkBits::default();
    // Mapped pages the hint decided for: their accessed bits are in the chunk's count,
    // but they are in none of the sets below.
    let mut hinted_mapped = 0u64;
    for i in 0..len {
        let w = &r.states[first as usize + i];
        let st = w.load();
        if let Some(h) = &hint
            && st.is_resident()
        {
            let p = h(r.page_addr(first + i as u64));
            if st.tag() == Tag::Active
                && (p == Priority::EvictFirst || (p == Priority::Keep && keep_ok))
            {
                hinted_mapped += 1;
            }
            match p {
                Priority::Keep if keep_ok => {
                    Counters::bump(&s.counters.kept_by_hint, 1);
                    continue;
                }
                Priority::EvictFirst => {
                    if st.tag() == Tag::Inactive {
                        set(cold, i);
                        victims += 1;
                    } else {
                        set(&mut first_out, i);
                    }
                    continue;
                }
                _ => {}
            }
        }
        match st.tag() {
            Tag::Inactive if st.young() => {
                // An unmapped prefetch: its bit is the YOUNG flag, cleared without a zap.
                w.replace(st, st.with_flags(st.flags() & !YOUNG));
            }
            Tag::Inactive => {
                set(cold, i);
                victims += 1;
            }
            Tag::Active if st.flags() & KEPT != 0 => set(&mut kept, i),
            Tag::Active if st.flags() & WARM != 0 => set(&mut warm, i),
            Tag::Active => set(&mut new, i),
            Tag::Untouched | Tag::Far | Tag::Locked => {}
        }
    }
    let c = &s.counters;
    Counters::bump(&c.aged_chunks, 1);
    let n_kept = count(&kept);
    let debt = &r.chunk_debt[(first / CHUNK_PAGES) as usize];
    let hot = match counts {
        _ if n_kept == 0 => Hot::Stay,
        None => Hot::Test,
        Some(k) => {
            let touched = k
                .referenced
                .saturating_sub(count(&new) + count(&warm) + hinted_mapped)
                .min(n_kept);
            let owed = debt.load(Relaxed) as u64 + (n_kept - touched);
            if touched == 0 {
                Hot::Cold
            } else if owed > n_kept / 8 + 2 {
                Hot::Test
            } else {
                debt.store(owed as u8, Relaxed);
                Hot::Stay
            }
        }
    };
    if counts.is_some() {
        Counters::bump(&c.counted_chunks, 1);
    }
    if hot != Hot::Stay {
        debt.store(0, Relaxed);
    }
    if hot == Hot::Stay && n_kept > 0 {
        // Clear the bits of what stays mapped before anything is unmapped: a page unmapped
        // below and mapped again by a touch must keep the bit that touch sets.
        if let Err(e) = crate::sys::mem::cold(r.page_addr(first), len * r.unit) {
            crate::fatal::die_io("could not clear accessed bits (madvise MADV_COLD)", &e);
        }
        Counters::bump(&c.kept_mapped, n_kept);
    }
    // Unmap new pages (first test) and WARM ones (second test, staying WARM), and the hot
    // set unless it stays.
    let mut zap = new;
    or(&mut zap, &warm);
    or(&mut zap, &first_out);
    let mut warm_after = warm;
    match hot {
        Hot::Stay => {}
        Hot::Test => {
            or(&mut zap, &kept);
            or(&mut warm_after, &kept);
        }
        Hot::Cold => or(&mut zap, &kept),
    }
    let stay = if hot == Hot::Stay {
        kept
    } else {
        ChunkBits::default()
    };
    let unmapped = unmap(s, r, first, len, &zap, &warm_after, &stay);
    // Pages hinted out: victims now, used or not, once unmapped.
    for i in 0..len {
        if get(&first_out, i) && get(&unmapped, i) {
            set(cold, i);
            victims += 1;
        }
    }
    if hot == Hot::Cold {
        // Unused for a whole lap although mapped: victims now, already unmapped above.
        let mut n = 0;
        for i in 0..len {
            if get(&kept, i) && get(&unmapped, i) {
                set(cold, i);
                n += 1;
            }
        }
        victims += n;
        Counters::bump(&c.cold_mapped, n as u64);
    }
    victims
}

/// Unmaps the pages of `zap` that are still ACTIVE (locked meanwhile, pinned pages left
/// alone) and marks them INACTIVE, WARM where `warm_after` says so (AHEAD stays: an ahead
/// page touched later still counts as a prefetch hit). Returns the pages it unmapped.
///
/// The ranges unmapped run over every page between them that need not stay mapped
/// (`stay`, and pinned pages): unmapping a page that is not mapped changes nothing, and
/// each range costs a TLB shootdown. Measured on memcached (`-t 4`, 4 KiB values, 68 MiB
/// local, memcaslap): one range per run of pages, 27.7k ops/s; ranges spanning the gaps,
/// 41.7k. An ACTIVE page unmapped that way (a fault filling it right then) is one the
/// fault path maps again.
fn unmap(
    s: &Shared,
    r: &RegionState,
    first: u64,
    len: usize,
    zap: &ChunkBits,
    warm_after: &ChunkBits,
    stay: &ChunkBits,
) -> ChunkBits {
    let mut stay = *stay;
    let mut locked = ChunkBits::default();
    let mut n = 0;
    for i in 0..len {
        if !get(zap, i) {
            continue;
        }
        let w = &r.states[first as usize + i];
        let st = w.load();
        if st.tag() == Tag::Active && w.try_lock(st) {
            set(&mut locked, i);
            n += 1;
        }
    }
    if n == 0 {
        return locked;
    }
    let zapping = crate::state::pin::zapping();
    if crate::state::pin::any() {
        // Leave pinned pages mapped (see `pin`): they stay as they were.
        for i in 0..len {
            if crate::state::pin::is_pinned(r.page_addr(first + i as u64)) {
                if get(&locked, i) {
                    let w = &r.states[first as usize + i];
                    w.unlock(w.load().with_tag(Tag::Active));
                    locked[i / 64] &= !(1 << (i % 64));
                }
                set(&mut stay, i);
            }
        }
    }
    // One range from each locked page to the last locked one before a page that stays.
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; CHUNK / 2 + 1];
    let mut runs = 0;
    let mut i = 0;
    while i < len {
        if !get(&locked, i) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut k = j;
        while k < len && !get(&stay, k) {
            k += 1;
            if get(&locked, k - 1) {
                j = k;
            }
        }
        iov[runs] = libc::iovec {
            iov_base: r.page_addr(first + i as u64) as *mut libc::c_void,
            iov_len: (j - i) * r.unit,
        };
        runs += 1;
        i = j;
    }
    if let Err(e) = s.zapper.zap(&iov[..runs]) {
        crate::fatal::die_io("could not unmap pages to sample references (madvise)", &e);
    }
    drop(zapping);
    let mut demoted = 0;
    for i in 0..len {
        if get(&locked, i) {
            let w = &r.states[first as usize + i];
            let st = w.load();
            let heat = if get(warm_after, i) { WARM } else { 0 };
            w.unlock(
                st.with_tag(Tag::Inactive)
                    .with_flags((st.flags() & !(KEPT | WARM)) | heat),
            );
            demoted += 1;
        }
    }
    Counters::bump(&s.counters.demoted, demoted);
    locked
}
