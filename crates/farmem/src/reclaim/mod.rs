//! Reclaim: freeing frames when the budget runs short.
//!
//! ```text
//!  faulting threads ──reserve a frame──► frames ◄──free frames── reclaimer thread
//!        │ (direct reclaim only when       watermarks: keep `low..high` free;
//!        │  no frame is left)              evict in batches
//!        ▼                                        ▼
//!   policy (CLOCK / FIFO) picks victims through the view (`view.rs`);
//!   `evict.rs` unmaps them, writes the dirty ones back in one batch, frees the frames
//! ```

mod age;
mod evict;
mod view;

pub(crate) use evict::evict_locked;

use crate::backend::PAGE_SIZE;
use crate::state::budget::watermarks;
use crate::state::bufs::BATCH_PAGES;
use crate::state::shared::Shared;
use crate::stats::Counters;
use crate::sys::mem::Mapping;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::time::Duration;
use view::View;

/// How long the reclaimer naps between checks while pages are being faulted in, and
/// while nothing happens. It is never woken by the fault path: a wake-up costs the
/// faulting thread a system call, and the scheduler then tends to run the reclaimer on
/// the faulting thread's CPU, where the two take turns instead of running in parallel.
/// A timer wake-up keeps it on its own CPU. DESIGN.md has the measurements.
const NAP_BUSY: Duration = Duration::from_micros(500);
const NAP_IDLE: Duration = Duration::from_millis(20);

/// Starts the reclaimer thread of `shared` (also in a forked child, where the parent's
/// did not survive the fork).
pub(crate) fn spawn(shared: &Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let s2 = shared.clone();
    std::thread::Builder::new()
        .name("farmem-reclaim".into())
        .spawn(move || reclaimer_loop(&s2))
}

fn reclaimer_loop(s: &Shared) {
    s.become_reclaimer();
    let map = match Mapping::anon((BATCH_PAGES * PAGE_SIZE).max(s.unit())) {
        Ok(m) => m,
        Err(e) => crate::fatal::die_io("could not map the reclaimer's buffer", &e),
    };
    // SAFETY: the mapping is ours, private, and outlives this slice (dropped at the end).
    let buf = unsafe { std::slice::from_raw_parts_mut(map.ptr(), map.len()) };
    let batch = s.config.reclaim_batch;
    let mut last_resident = usize::MAX;
    let mut quiet = 0u32;
    while !s.shutdown.load(Relaxed) {
        let budget = s.frames.budget();
        let (low, high) = watermarks(budget);
        let resident = s.frames.resident();
        let free = s.frames.free();
        if free < low {
            s.raise_reclaimer();
        } else if free >= high {
            s.lower_reclaimer();
        }
        if free < high {
            // Full batches keep the selection cheap (see `Clock`); on a small budget a
            // batch is capped at an eighth of it, so that the policy is not asked to evict
            // far more than is missing.
            let want = (high - free).max(batch.min(budget / 8)).clamp(1, batch);
            let evicted = {
                let _pass = crate::state::gate::enter();
                evict_some(s, want, buf)
            };
            if evicted == 0 {
                // Everything is locked or referenced-and-undemotable right now.
                std::thread::sleep(NAP_BUSY);
            }
            quiet = 0;
            continue;
        }
        if resident != last_resident {
            quiet = 0;
        } else {
            quiet = quiet.saturating_add(1);
        }
        last_resident = resident;
        // Busy naps for a while after the last change, then idle ones.
        std::thread::park_timeout(if quiet < 200 { NAP_BUSY } else { NAP_IDLE });
    }
    drop(map);
}

/// Chooses and evicts up to `want` pages (fewer if `scratch` holds fewer); returns the
/// frames freed.
pub(crate) fn evict_some(s: &Shared, want: usize, scratch: &mut [u8]) -> usize {
    let want = want.min(BATCH_PAGES).min(scratch.len() / s.unit());
    let victims = {
        let regions = s.regions.read().unwrap_or_else(|e| e.into_inner());
        let mut view = View::new(s, &regions, want);
        let mut p = s.policy.lock().unwrap_or_else(|e| e.into_inner());
        s.drain_arrivals(&mut **p);
        p.select(want, &mut view);
        view.into_victims()
    };
    // Hints kept every page the hand could take: the next selection ignores `Keep`.
    // Stored only when it changes: every reclaiming thread passes here, and a store each
    // time bounced the flag's cache line between them (the hot-set test's minor faults
    // went over its bound in 2 of 8 runs).
    let stuck = victims.is_empty() && want > 0;
    if s.hints_off.load(Relaxed) != stuck {
        s.hints_off.store(stuck, Relaxed);
    }
    evict_locked(s, victims, scratch)
}

/// Reserves one frame for a faulting page, reclaiming in this thread if none is free
/// (direct reclaim).
pub(crate) fn reserve_frame(s: &Shared, scratch: &mut [u8]) {
    let mut tries = 0u32;
    while s.try_reserve(1) == 0 {
        Counters::bump(&s.counters.direct_reclaims, 1);
        s.raise_reclaimer();
        // A few pages at a time, to amortise the selection, but never a large share of a
        // small budget.
        let want = (s.frames.budget() / 256).clamp(1, 16);
        if evict_some(s, want, scratch) == 0 {
            tries += 1;
            if tries > 64 {
                // Everything resident is locked by other faulting threads: let them finish.
                std::thread::yield_now();
            }
        }
    }
    if s.frames.free() < watermarks(s.frames.budget()).0 {
        s.raise_reclaimer();
    }
}

/// Frames for `n` prefetched pages: free ones first, then as Linux's readahead does, by
/// evicting as many older pages (the policy's coldest) as the prefetch needs.
pub(crate) fn reserve_for_prefetch(s: &Shared, n: usize, scratch: &mut [u8]) -> usize {
    let mut granted = s.try_reserve(n);
    if granted < n {
        evict_some(s, n - granted, scratch);
        granted += s.try_reserve(n - granted);
    }
    granted
}
