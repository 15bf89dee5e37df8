//! `mimalloc`: Microsoft's mimalloc (2.x, the libmimalloc-sys crate) over the region as an
//! exclusive arena, used as its authors tuned it.
//!
//! `mi_manage_os_memory_ex` hands mimalloc the region (committed, zeroed, exclusive), and
//! each thread allocates from a heap of its own in that arena (`mi_heap_new_in_arena`,
//! made on the thread's first allocation); any thread may free any block. When a thread
//! exits, mimalloc hands its heap's pages on as it always does (abandoned, reclaimed by
//! the next thread that needs them).
//!
//! One option differs from mimalloc's defaults, because the region is farmem's: no purging
//! (`purge_delay = -1`). mimalloc purges with madvise(MADV_DONTNEED) behind farmem's back,
//! which the page-state table would not see. Freed pages turn cold and leave with the
//! rest, as under TLSF.
//!
//! Sizes are rounded up to 16 bytes: mimalloc aligns an 8- or 24-byte block to 8, and
//! malloc's blocks must be aligned to 16 on x86-64. mimalloc keeps its free lists inside
//! the freed blocks and its page descriptors at the start of each 32 MiB segment: a free
//! writes to the block, and faults it in if it was far.
//!
//! mimalloc 3 (the crate's default) has first-class heaps that any thread may use; with
//! the region evicting under a tiny budget, its thread exit read a per-thread heap whose
//! owner another thread had just cleared (a crash in `mi_theap_collect_ex`), so farmem
//! uses mimalloc 2.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr::NonNull;

use libmimalloc_sys as mi;

use super::Allocator;
use crate::{Error, Region};

/// mimalloc 2's option number (mimalloc.h's `mi_option_e`) that the crate does not name.
const PURGE_DELAY: mi::mi_option_t = 15;

pub(super) struct Mimalloc {
    arena: mi::mi_arena_id_t,
    _region: &'static Region,
}

thread_local! {
    /// This thread's heap, and the arena it is in.
    static HEAP: Cell<(mi::mi_arena_id_t, *mut mi::mi_heap_t)> =
        const { Cell::new((-1, std::ptr::null_mut())) };
}

impl Mimalloc {
    pub fn new(region: &'static Region) -> Result<Mimalloc, Error> {
        let align = 32 << 20;
        let base = region.as_ptr() as usize;
        let start = base.next_multiple_of(align);
        let len = (base + region.len()).saturating_sub(start) & !(align - 1);
        let mut arena: mi::mi_arena_id_t = -1;
        // SAFETY: the option setter takes any value; the arena is the region's aligned
        // part, committed (mapped), zeroed (never touched) and ours for the rest of the
        // region's life; the out pointer is a local.
        let ok = unsafe {
            mi::mi_option_set(PURGE_DELAY, -1);
            len >= align
                && mi::mi_manage_os_memory_ex(
                    start as *mut c_void,
                    len,
                    true,
                    false,
                    true,
                    -1,
                    true,
                    &mut arena,
                )
        };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "mimalloc refused the region of {} bytes as an arena",
                region.len()
            )));
        }
        Ok(Mimalloc {
            arena,
            _region: region,
        })
    }

    /// This thread's heap in the arena (made on first use), or None.
    #[inline]
    fn heap(&self) -> Option<*mut mi::mi_heap_t> {
        HEAP.try_with(|h| {
            let (arena, heap) = h.get();
            if arena == self.arena && !heap.is_null() {
                return Some(heap);
            }
            // SAFETY: our arena; the heap belongs to this thread.
            let heap = unsafe { mi::mi_heap_new_in_arena(self.arena) };
            (!heap.is_null()).then(|| {
                h.set((self.arena, heap));
                heap
            })
        })
        .ok()
        .flatten()
    }
}

// SAFETY: mimalloc hands out disjoint blocks of the arena, which is inside the region, and
// reports their usable sizes itself.
unsafe impl Allocator for Mimalloc {
    fn alloc(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let heap = self.heap()?;
        // SAFETY: this thread's heap; mimalloc checks the size.
        let p = unsafe {
            if align <= 16 {
                mi::mi_heap_malloc(heap, size.next_multiple_of(16))
            } else {
                mi::mi_heap_malloc_aligned(heap, size, align)
            }
        };
        NonNull::new(p.cast())
    }

    fn alloc_zeroed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let heap = self.heap()?;
        // SAFETY: as above; mimalloc knows which of its memory is still zero.
        let p = unsafe {
            if align <= 16 {
                mi::mi_heap_zalloc(heap, size.next_multiple_of(16))
            } else {
                mi::mi_heap_zalloc_aligned(heap, size, align)
            }
        };
        NonNull::new(p.cast())
    }

    unsafe fn free(&self, p: NonNull<u8>, _usable: usize) {
        // SAFETY: a live block of this heap (the caller's contract); mimalloc frees blocks
        // of any thread's heap.
        unsafe { mi::mi_free(p.as_ptr().cast()) }
    }

    unsafe fn usable_size(&self, p: NonNull<u8>) -> usize {
        // SAFETY: as above.
        unsafe { mi::mi_usable_size(p.as_ptr().cast()) }
    }

    unsafe fn realloc(&self, p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        let heap = self.heap()?;
        // SAFETY: as above; on failure mimalloc leaves `p` live.
        let q = unsafe { mi::mi_heap_realloc(heap, p.as_ptr().cast(), size.next_multiple_of(16)) };
        NonNull::new(q.cast())
    }

    fn held_bytes(&self) -> Option<u64> {
        None
    }

    fn lock_all(&self) -> Box<dyn super::Held + '_> {
        Box::new(())
    }
}
