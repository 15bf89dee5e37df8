//! Fetch buffers for the fault paths: 64 slots of [`BATCH_PAGES`] pages, handed out
//! through an atomic bitmap so that a signal handler can take one without locks or
//! allocation.

use crate::backend::PAGE_SIZE;
use crate::sys::mem::Mapping;
use std::sync::atomic::{AtomicU64, Ordering::*};

/// Pages one fetch or eviction batch handles at most (the size of a buffer).
pub(crate) const BATCH_PAGES: usize = 72;

pub(crate) struct BufPool {
    map: Mapping,
    free: AtomicU64,
    /// Bytes per slot: a batch of 4 KiB pages, or one page of the engine's size if larger.
    slot_bytes: usize,
}

pub(crate) struct PoolBuf<'a> {
    pool: &'a BufPool,
    slot: usize,
}

impl BufPool {
    const SLOTS: usize = 64;

    /// A pool for an engine whose pages are `unit` bytes.
    pub(crate) fn new(unit: usize) -> std::io::Result<BufPool> {
        let slot_bytes = (BATCH_PAGES * PAGE_SIZE).max(unit);
        Ok(BufPool {
            map: Mapping::anon(Self::SLOTS * slot_bytes)?,
            free: AtomicU64::new(u64::MAX),
            slot_bytes,
        })
    }

    /// Bytes in one buffer.
    pub(crate) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    pub(crate) fn acquire(&self) -> PoolBuf<'_> {
        loop {
            let cur = self.free.load(Acquire);
            if cur == 0 {
                // 64 faults in flight at once: wait for one to finish.
                std::hint::spin_loop();
                std::thread::yield_now();
                continue;
            }
            let slot = cur.trailing_zeros() as usize;
            if self
                .free
                .compare_exchange_weak(cur, cur & !(1 << slot), AcqRel, Relaxed)
                .is_ok()
            {
                return PoolBuf { pool: self, slot };
            }
        }
    }
}

impl PoolBuf<'_> {
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: slot `slot` is ours alone until drop (its bit is clear in `free`), and
        // lies inside the pool's mapping, which outlives this borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.map.ptr().add(self.slot * self.pool.slot_bytes),
                self.pool.slot_bytes,
            )
        }
    }
}

impl Drop for PoolBuf<'_> {
    fn drop(&mut self) {
        self.pool.free.fetch_or(1 << self.slot, AcqRel);
    }
}
