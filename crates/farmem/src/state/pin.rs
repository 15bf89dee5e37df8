//! Pinned ranges: pages the reclaimer must leave mapped while the kernel may touch them.
//!
//! In the in-thread fault mode the kernel cannot fault a far page in for a system call
//! (`read(2)` into a far buffer fails with EFAULT). A caller about to hand far memory to
//! the kernel pins the range, touches every page of it (which faults them in through
//! the normal path), makes the call, and drops the pin. While the pin lives, reference
//! sampling and eviction skip those pages, so the kernel finds them mapped.
//!
//! The ordering that makes this airtight (Dekker's): a reclaimer announces that it is
//! zapping, then looks for pins and leaves pinned pages alone, zaps the rest, and
//! withdraws its announcement. A pinning thread publishes its pin, then waits until no
//! zap is announced, then touches. Either the reclaimer sees the pin, or the pinner waits
//! for that zap to finish and its touch faults the page in again; no zap can then take a
//! pinned page away while the kernel uses it.
//!
//! The table is small and fixed (no allocation, usable from any context); when it is
//! full, or a range is too large to pin within the budget, [`Pin::new`] returns `None` and
//! the caller falls back to touching and retrying on EFAULT.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicUsize, fence};

/// Pins that can be held at once, process-wide.
pub const SLOTS: usize = 128;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Slots in use (a fast "none" test for the reclaimer).
static USED: AtomicUsize = AtomicUsize::new(0);
/// Reclaimers between announcing a zap and finishing it.
static ZAPPERS: AtomicUsize = AtomicUsize::new(0);
/// Bytes pinned now.
static PINNED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A pinned range; dropping it unpins.
#[derive(Debug)]
pub struct Pin {
    slot: usize,
    len: usize,
}

impl Pin {
    /// Pins `[addr, addr+len)` (widened to whole pages) if a slot is free and no more than
    /// `limit` bytes would then be pinned process-wide. The caller must touch the pages
    /// after this returns, before it relies on them being mapped.
    pub fn new(addr: usize, len: usize, limit: usize) -> Option<Pin> {
        if len == 0 {
            return None;
        }
        let start = addr & !(crate::backend::PAGE_SIZE - 1);
        let end = addr
            .checked_add(len)?
            .next_multiple_of(crate::backend::PAGE_SIZE);
        let bytes = end - start;
        let mut cur = PINNED_BYTES.load(Relaxed);
        loop {
            if cur + bytes > limit {
                return None;
            }
            match PINNED_BYTES.compare_exchange_weak(cur, cur + bytes, SeqCst, Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        for (i, s) in TABLE.iter().enumerate() {
            if s.end.load(Relaxed) == 0
                && s.end
                    .compare_exchange(0, usize::MAX, SeqCst, Relaxed)
                    .is_ok()
            {
                // Reserved with an empty-but-busy marker; publish the range.
                s.start.store(start, SeqCst);
                s.end.store(end, SeqCst);
                USED.fetch_add(1, SeqCst);
                fence(SeqCst);
                // A zap takes tens of microseconds (its TLB shootdown waits for the other
                // CPUs): spin briefly, then give the CPU away, since the zapping thread
                // may need this very CPU to finish. Spinning alone took 12% of all CPU
                // time on memcached with four threads on two CPUs.
                let backoff = crossbeam_utils::Backoff::new();
                while ZAPPERS.load(SeqCst) != 0 {
                    backoff.snooze();
                }
                return Some(Pin {
                    slot: i,
                    len: bytes,
                });
            }
        }
        PINNED_BYTES.fetch_sub(bytes, SeqCst);
        None
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let s = &TABLE[self.slot];
        USED.fetch_sub(1, SeqCst);
        s.start.store(0, SeqCst);
        s.end.store(0, SeqCst);
        PINNED_BYTES.fetch_sub(self.len, SeqCst);
    }
}

/// A zap in progress (see the module docs); look for pins after this, zap, then drop it.
pub(crate) struct Zapping(());

/// Announces a zap.
pub(crate) fn zapping() -> Zapping {
    ZAPPERS.fetch_add(1, SeqCst);
    fence(SeqCst);
    Zapping(())
}

impl Drop for Zapping {
    fn drop(&mut self) {
        ZAPPERS.fetch_sub(1, SeqCst);
    }
}

/// Whether any pin is held (cheap; the reclaimer's fast path).
#[inline]
pub(crate) fn any() -> bool {
    fence(SeqCst);
    USED.load(SeqCst) != 0
}

/// Whether the page at `addr` is pinned. Call after the zap that it must be ordered after.
pub(crate) fn is_pinned(addr: usize) -> bool {
    fence(SeqCst);
    if USED.load(SeqCst) == 0 {
        return false;
    }
    TABLE.iter().any(|s| {
        let end = s.end.load(SeqCst);
        end != 0 && end != usize::MAX && s.start.load(SeqCst) <= addr && addr < end
    })
}

/// The pinned ranges now (for fork, which must not unmap them).
pub(crate) fn ranges(out: &mut Vec<(usize, usize)>) {
    for s in &TABLE {
        let end = s.end.load(SeqCst);
        if end != 0 && end != usize::MAX {
            out.push((s.start.load(SeqCst), end));
        }
    }
}

/// Forgets every pin (in a forked child: the threads that held them do not exist there).
pub(crate) fn clear_all() {
    for s in &TABLE {
        s.start.store(0, SeqCst);
        s.end.store(0, SeqCst);
    }
    USED.store(0, SeqCst);
    PINNED_BYTES.store(0, SeqCst);
}

/// Touches every page of `[addr, addr+len)` so that it is mapped (faulting it in if it is
/// not). Reads only: a fault resolution always maps the page writable.
pub fn touch(addr: usize, len: usize) {
    if len == 0 {
        return;
    }
    let ps = crate::backend::PAGE_SIZE;
    let mut p = addr & !(ps - 1);
    let end = addr.saturating_add(len);
    while p < end {
        let q = p.max(addr);
        // SAFETY: the caller hands us memory it is about to give to the kernel, so it is
        // mapped memory of the process; a volatile one-byte read has no other effect.
        unsafe { std::ptr::read_volatile(q as *const u8) };
        p += ps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_found_and_released() {
        let p = Pin::new(0x10_0000 + 100, 5000, usize::MAX).unwrap();
        assert!(is_pinned(0x10_0000));
        assert!(is_pinned(0x10_1000));
        assert!(!is_pinned(0x10_2000));
        drop(p);
        assert!(!is_pinned(0x10_0000));
    }

    #[test]
    fn the_limit_is_respected() {
        assert!(Pin::new(0x20_0000, 8192, 4096).is_none());
        let a = Pin::new(0x20_0000, 4096, usize::MAX).unwrap();
        assert_eq!(a.len, 4096);
    }
}
