//! `tlsf`: a TLSF allocator (the rlsf crate) over the region, behind one lock.
//!
//! TLSF keeps its block headers in-band, next to the data, so a free or a split may touch
//! a far page; that is an ordinary fault. The pool grows in steps of [`GROW`] from the
//! region's start, so the heap stays compact and the reclaimer's sweep covers only what
//! was used. Frees of [`DISCARD_MIN`] or more give their whole pages back at once (the far
//! copy and the local frame); smaller ones only forget the far copies of their pages that
//! are not resident.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use super::{Allocator, release};
use crate::Region;

type Rlsf = rlsf::Tlsf<'static, u64, u64, 40, 64>;

/// The pool grows by this much at a time.
const GROW: usize = 64 << 20;
/// Frees of at least this many bytes give their whole pages back. Smaller freed blocks
/// keep their pages: programs reuse such blocks at once (Redis allocates and frees a reply
/// buffer as large as the value for every GET of a big value), and a discarded page costs
/// a zero-fill fault on its next use. At 64 KiB Redis's GET mix ran 35% slower (8.0k vs
/// 12.4k requests/s at 25% local). Freed pages that are not reused turn cold and leave
/// with the rest.
const DISCARD_MIN: usize = 1 << 20;

struct Inner {
    tlsf: Rlsf,
    /// Bytes of the region handed to TLSF so far (from the region's start).
    pool: usize,
    /// Allocations aligned above 16 bytes: TLSF needs their alignment to free them.
    over_aligned: BTreeMap<usize, usize>,
}

// SAFETY: the TLSF's raw pointers point into the far region, which every thread may use;
// all access is under the mutex.
unsafe impl Send for Inner {}

pub(super) struct Tlsf {
    region: &'static Region,
    inner: Mutex<Inner>,
}

impl Tlsf {
    pub fn new(region: &'static Region) -> Tlsf {
        Tlsf {
            region,
            inner: Mutex::new(Inner {
                tlsf: Rlsf::new(),
                pool: 0,
                over_aligned: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the next part of the region to TLSF; false when the region is used up.
    fn grow(&self, h: &mut Inner, at_least: usize) -> bool {
        let (base, len) = (self.region.as_ptr() as usize, self.region.len());
        let step = at_least.next_multiple_of(GROW).max(GROW);
        let step = step.min(len - h.pool);
        if step < at_least.min(len - h.pool) || step == 0 {
            return false;
        }
        let start = (base + h.pool) as *mut u8;
        let block = NonNull::slice_from_raw_parts(NonNull::new(start).expect("heap base"), step);
        // SAFETY: `block` is the unused part of the region, which outlives the allocator,
        // and starts where the pool so far ends.
        let used = unsafe {
            if h.pool == 0 {
                h.tlsf.insert_free_block_ptr(block).map_or(0, |n| n.get())
            } else {
                h.tlsf.append_free_block_ptr(block)
            }
        };
        if used == 0 {
            return false;
        }
        h.pool += used;
        true
    }
}

fn layout(size: usize, align: usize) -> Option<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(size.max(1), align).ok()
}

// SAFETY: blocks come from TLSF over the region, which never hands out overlapping blocks;
// usable sizes are TLSF's own.
unsafe impl Allocator for Tlsf {
    fn alloc(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let l = layout(size, align)?;
        let mut h = self.lock();
        loop {
            if let Some(p) = h.tlsf.allocate(l) {
                if align > 16 {
                    h.over_aligned.insert(p.as_ptr() as usize, align);
                }
                return Some(p);
            }
            if !self.grow(&mut h, size.checked_add(align)?.checked_add(4096)?) {
                return None;
            }
        }
    }

    unsafe fn free(&self, p: NonNull<u8>, size: usize) {
        let a = p.as_ptr() as usize;
        if size >= 2 * 4096 + 64 {
            // TLSF's own links, written at the block's start, are spared.
            release(self.region, a + 64, a + size, size >= DISCARD_MIN);
        }
        let mut h = self.lock();
        let align = if h.over_aligned.is_empty() {
            16
        } else {
            h.over_aligned.remove(&a).unwrap_or(16)
        };
        // SAFETY: a live block of ours, freed with the alignment it was allocated with.
        unsafe { h.tlsf.deallocate(p, align) };
    }

    unsafe fn usable_size(&self, p: NonNull<u8>) -> usize {
        // Under the lock: TLSF finds the header by looking at the previous block's, which
        // other threads change as they free and split.
        let _h = self.lock();
        // SAFETY: a live block of ours (the caller's contract).
        unsafe { Rlsf::allocation_usable_size(p) }
    }

    unsafe fn realloc(&self, p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        let l = layout(size, 16)?;
        let mut h = self.lock();
        if !h.over_aligned.contains_key(&(p.as_ptr() as usize)) {
            // SAFETY: a live block of ours, allocated with alignment 16.
            if let Some(q) = unsafe { h.tlsf.reallocate(p, l) } {
                return Some(q);
            }
        }
        drop(h);
        // SAFETY: as above.
        let old = unsafe { self.usable_size(p) };
        let q = self.alloc(size, 16)?;
        // SAFETY: two live, distinct blocks.
        unsafe {
            std::ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), old.min(size));
            self.free(p, old);
        }
        Some(q)
    }

    fn held_bytes(&self) -> Option<u64> {
        Some(self.lock().pool as u64)
    }

    fn lock_all(&self) -> Box<dyn super::Held + '_> {
        Box::new(self.lock())
    }
}
