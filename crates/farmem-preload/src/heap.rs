//! The far heap: a TLSF allocator (rlsf) over the far region, behind one lock.
//!
//! TLSF keeps its block headers in-band, next to the data, so a free or a split may touch
//! a far page; that is an ordinary fault. The pool grows in steps of [`GROW`] from the
//! region's start, so the heap stays compact and the sweep of the reclaimer only covers
//! what was used. Large frees give their pages back at once (the far copy and the local
//! frame both), so a program that frees memory does not keep paying for it.
//!
//! Pointers that the heap did not hand out (the C library's own allocations, and those
//! made while the heap was starting) belong to glibc's allocator and go back to it.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use libc::c_void;

use crate::rt;

type Tlsf = rlsf::Tlsf<'static, u64, u64, 40, 64>;

/// The pool grows by this much at a time.
const GROW: usize = 64 << 20;
/// Frees of at least this many bytes give their whole pages back. Smaller freed blocks
/// keep their pages: programs reuse such blocks at once (Redis allocates and frees a reply
/// buffer as large as the value for every GET of a big value), and a discarded page costs
/// a zero-fill fault on its next use. At 64 KiB Redis's GET mix ran 35% slower (8.0k vs
/// 12.4k requests/s at 25% local). Freed pages that are not reused turn cold and leave
/// with the rest.
const DISCARD_MIN: usize = 1 << 20;

pub(crate) struct Inner {
    tlsf: Tlsf,
    /// Bytes of the region handed to TLSF so far (from the region's start).
    pool: usize,
    /// Allocations aligned above 16 bytes: TLSF needs their alignment to free them.
    over_aligned: BTreeMap<usize, usize>,
    /// Blocks that stand for anonymous mmaps: start -> (length, bytes still mapped).
    mmaps: BTreeMap<usize, (usize, usize)>,
}

// SAFETY: the TLSF's raw pointers point into the far region, which every thread may use;
// all access is under the mutex.
unsafe impl Send for Inner {}

static HEAP: Mutex<Inner> = Mutex::new(Inner {
    tlsf: Tlsf::new(),
    pool: 0,
    over_aligned: BTreeMap::new(),
    mmaps: BTreeMap::new(),
});

pub(crate) fn lock() -> MutexGuard<'static, Inner> {
    HEAP.lock().unwrap_or_else(|e| e.into_inner())
}

fn layout(size: usize, align: usize) -> Option<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(size.max(1), align).ok()
}

impl Inner {
    fn allocate(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let l = layout(size, align)?;
        loop {
            if let Some(p) = self.tlsf.allocate(l) {
                if align > 16 {
                    self.over_aligned.insert(p.as_ptr() as usize, align);
                }
                return Some(p);
            }
            if !self.grow(size.checked_add(align)?.checked_add(4096)?) {
                return None;
            }
        }
    }

    /// Hands the next part of the region to TLSF; false when the region is used up.
    fn grow(&mut self, at_least: usize) -> bool {
        let (base, len) = rt::heap_range();
        let step = at_least.next_multiple_of(GROW).max(GROW);
        let step = step.min(len - self.pool);
        if step < at_least.min(len - self.pool) || step == 0 {
            return false;
        }
        let start = (base + self.pool) as *mut u8;
        let block = NonNull::slice_from_raw_parts(NonNull::new(start).expect("heap base"), step);
        // SAFETY: `block` is the unused part of the far region, which lives for the rest of
        // the process, and starts where the pool so far ends.
        let used = unsafe {
            if self.pool == 0 {
                self.tlsf
                    .insert_free_block_ptr(block)
                    .map_or(0, |n| n.get())
            } else {
                self.tlsf.append_free_block_ptr(block)
            }
        };
        if used == 0 {
            return false;
        }
        self.pool += used;
        true
    }

    /// The alignment `p` was allocated with.
    fn align_of(&self, p: usize) -> usize {
        if self.over_aligned.is_empty() {
            16
        } else {
            self.over_aligned.get(&p).copied().unwrap_or(16)
        }
    }

    /// Frees `p` (a block of this heap).
    ///
    /// # Safety
    /// `p` is a live block of this heap.
    unsafe fn deallocate(&mut self, p: usize) {
        let align = if self.over_aligned.is_empty() {
            16
        } else {
            self.over_aligned.remove(&p).unwrap_or(16)
        };
        // SAFETY: the caller's contract; the alignment is the one it was allocated with.
        unsafe {
            self.tlsf
                .deallocate(NonNull::new_unchecked(p as *mut u8), align)
        };
    }
}

/// Usable bytes of a block of this heap. Under the heap lock: TLSF finds the header by
/// looking at the previous block's, which other threads change as they free and split.
///
/// # Safety
/// `p` is a live block of this heap; the caller holds the lock.
unsafe fn block_size(_locked: &Inner, p: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { Tlsf::allocation_usable_size(NonNull::new_unchecked(p as *mut u8)) }
}

/// Gives the whole pages inside a block that is about to be freed back (they read as
/// zeros afterwards; TLSF's own links, written at the block's start, are spared).
///
/// Smaller blocks keep their resident pages (they are likely reused at once), but the
/// pages already far are forgotten: they were garbage, and their next use, after the
/// block is allocated again, is then a zero-fill rather than a fetch of that garbage.
fn give_back(p: usize, size: usize) {
    let start = (p + 64).next_multiple_of(4096);
    let end = (p + size) & !4095;
    if end <= start {
        return;
    }
    if size >= DISCARD_MIN {
        rt::discard(start, end - start);
    } else {
        rt::forget_far(start, end - start);
    }
}

/// malloc and friends: `size` bytes aligned to `align` (a power of two, at least 16).
pub(crate) fn alloc(size: usize, align: usize, caller: usize, zero: bool) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    if !rt::ready() || rt::is_libc_caller(caller) {
        return local_alloc(size, align, zero);
    }
    let p = lock().allocate(size, align);
    match p {
        Some(p) => {
            crate::extent::record(p.as_ptr() as usize, size);
            if zero {
                // SAFETY: a fresh block of at least `size` bytes.
                unsafe { std::ptr::write_bytes(p.as_ptr(), 0, size) };
            }
            p.as_ptr().cast()
        }
        None => {
            // SAFETY: this thread's errno slot.
            unsafe { *libc::__errno_location() = libc::ENOMEM };
            std::ptr::null_mut()
        }
    }
}

fn local_alloc(size: usize, align: usize, zero: bool) -> *mut c_void {
    // SAFETY: plain calls into glibc's allocator.
    unsafe {
        match (align <= 16, zero) {
            (true, true) => crate::libc_calloc(1, size),
            (true, false) => crate::libc_malloc(size),
            (false, _) => {
                let p = crate::libc_memalign(align, size);
                if zero && !p.is_null() {
                    std::ptr::write_bytes(p.cast::<u8>(), 0, size);
                }
                p
            }
        }
    }
}

/// Whether `p` is in the far heap.
#[inline]
pub(crate) fn owns(p: usize) -> bool {
    let (base, len) = rt::heap_range_relaxed();
    p.wrapping_sub(base) < len
}

/// free(3).
///
/// # Safety
/// `p` is null or a live allocation.
pub(crate) unsafe fn free(p: *mut c_void) {
    let _sud = farmem::sys::sud::allow();
    let a = p as usize;
    if p.is_null() {
        return;
    }
    if !owns(a) {
        // SAFETY: not ours, so glibc's.
        unsafe { crate::libc_free(p) };
        return;
    }
    let mut h = lock();
    // SAFETY: a live block of ours (free's contract), under the lock.
    let size = unsafe { block_size(&h, a) };
    crate::extent::forget(a, size);
    if size >= 2 * 4096 + 64 {
        // Give the pages back outside the lock (the block is still ours meanwhile).
        drop(h);
        give_back(a, size);
        h = lock();
    }
    // SAFETY: as above.
    unsafe { h.deallocate(a) };
}

/// realloc(3).
///
/// # Safety
/// `p` is null or a live allocation.
pub(crate) unsafe fn realloc(p: *mut c_void, size: usize, caller: usize) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    let a = p as usize;
    if p.is_null() {
        return alloc(size, 16, caller, false);
    }
    if !owns(a) {
        // SAFETY: not ours, so glibc's; it stays there.
        return unsafe { crate::libc_realloc(p, size) };
    }
    if size == 0 {
        // SAFETY: as free.
        unsafe { free(p) };
        return std::ptr::null_mut();
    }
    let mut h = lock();
    // SAFETY: a live block of ours, under the lock.
    let old = unsafe { block_size(&h, a) };
    let align = h.align_of(a);
    if align == 16 {
        let Some(l) = layout(size, 16) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a live block of ours, allocated with alignment 16.
        if let Some(q) = unsafe { h.tlsf.reallocate(NonNull::new_unchecked(a as *mut u8), l) } {
            crate::extent::forget(a, old);
            crate::extent::record(q.as_ptr() as usize, size);
            return q.as_ptr().cast();
        }
    }
    // In place failed (or over-aligned): a new block, copy, free the old.
    let Some(q) = h.allocate(size, align) else {
        drop(h);
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return std::ptr::null_mut();
    };
    drop(h);
    crate::extent::record(q.as_ptr() as usize, size);
    // SAFETY: both blocks are live and distinct; copy what fits.
    unsafe { std::ptr::copy_nonoverlapping(a as *const u8, q.as_ptr(), old.min(size)) };
    // SAFETY: the old block is ours and no longer used.
    unsafe { free(p) };
    q.as_ptr().cast()
}

/// malloc_usable_size(3).
///
/// # Safety
/// `p` is null or a live allocation.
pub(crate) unsafe fn usable_size(p: *mut c_void) -> usize {
    let _sud = farmem::sys::sud::allow();
    let a = p as usize;
    if p.is_null() {
        0
    } else if owns(a) {
        let h = lock();
        // SAFETY: a live block of ours, under the lock.
        unsafe { block_size(&h, a) }
    } else {
        rt::libc_usable_size(p)
    }
}

// ---- anonymous mmaps -------------------------------------------------------------------

/// A far block standing for an anonymous private mapping of `len` bytes, or None.
pub(crate) fn mmap_alloc(len: usize) -> Option<usize> {
    let len = len.checked_next_multiple_of(4096)?;
    let mut h = lock();
    let p = h.allocate(len, 4096)?.as_ptr() as usize;
    h.mmaps.insert(p, (len, len));
    drop(h);
    // Fresh mappings read as zeros; a reused block may hold old data.
    rt::discard(p, len);
    Some(p)
}

/// munmap of a range inside the far heap: forgets the pages; frees a block once all of
/// it is unmapped. Returns false if the range is not an mmap block of ours.
pub(crate) fn mmap_free(addr: usize, len: usize) -> bool {
    let len = len.next_multiple_of(4096);
    let mut h = lock();
    let Some((&start, &(blen, left))) = h.mmaps.range(..=addr).next_back() else {
        return false;
    };
    if addr >= start + blen {
        return false;
    }
    let end = (addr + len).min(start + blen);
    let gone = end - addr;
    let left = left.saturating_sub(gone);
    if left == 0 {
        h.mmaps.remove(&start);
        drop(h);
        rt::discard(start, blen);
        // SAFETY: the block is ours and the program has unmapped all of it.
        unsafe { lock().deallocate(start) };
    } else {
        h.mmaps.insert(start, (blen, left));
        drop(h);
        rt::discard(addr, gone);
    }
    true
}

/// The block and length of the mmap block containing `addr`.
pub(crate) fn mmap_block(addr: usize) -> Option<(usize, usize)> {
    let h = lock();
    let (&start, &(len, _)) = h.mmaps.range(..=addr).next_back()?;
    (addr < start + len).then_some((start, len))
}
