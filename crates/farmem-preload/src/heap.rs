//! The far heap: the program's malloc family, served by one of farmem's allocators
//! (`farmem::heap`: farslab, mimalloc or tlsf; FARMEM_ALLOCATOR) over the far region.
//!
//! This layer decides who gets far memory (the C library's own allocations, and those
//! made while the heap is starting, go to glibc's allocator and go back to it), keeps the
//! object-prefetch table (`extent`) current, sets errno, and emulates anonymous mmaps
//! with page-aligned heap blocks.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

use farmem::heap::{ForkLock, Heap, HeapKind};
use libc::c_void;

use crate::rt;

static HEAP: OnceLock<Heap> = OnceLock::new();

/// Blocks that stand for anonymous mmaps: start -> (length, bytes still mapped).
static MMAPS: Mutex<BTreeMap<usize, (usize, usize)>> = Mutex::new(BTreeMap::new());

/// Starts the heap over `region` (before the runtime is published as ready).
pub(crate) fn init(region: &'static farmem::Region, kind: HeapKind) -> Result<(), String> {
    let heap = Heap::new(region, kind).map_err(|e| format!("cannot start the {kind} heap: {e}"))?;
    if crate::plugin::get().is_some() || std::env::var_os("FARMEM_TRACE").is_some() {
        heap.set_observer(|e| match e {
            farmem::heap::HeapEvent::Alloc { addr, size } => notify(Kind::Alloc, addr, size),
            farmem::heap::HeapEvent::Free { addr, size } => notify(Kind::Free, addr, size),
        });
    }
    HEAP.set(heap).map_err(|_| "heap started twice".to_string())
}

#[inline]
fn heap() -> &'static Heap {
    HEAP.get()
        .expect("the heap starts before the runtime is ready")
}

/// The heap's counters, once started.
pub(crate) fn stats() -> Option<farmem::heap::HeapStats> {
    HEAP.get().map(Heap::stats)
}

thread_local! {
    /// This thread is inside the allocator.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside the allocator until dropped: an mmap the allocator makes
/// for itself (mimalloc growing) must go to the kernel, not back into the heap.
struct Inside(bool);

#[inline]
fn inside() -> Inside {
    Inside(INSIDE.try_with(|c| c.replace(true)).unwrap_or(false))
}

impl Drop for Inside {
    #[inline]
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|c| c.set(self.0));
    }
}

fn set_errno(e: i32) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// malloc and friends: `size` bytes aligned to `align` (a power of two, at least 16).
pub(crate) fn alloc(size: usize, align: usize, caller: usize, zero: bool) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    if !rt::ready() || rt::is_libc_caller(caller) {
        return local_alloc(size, align, zero);
    }
    let h = heap();
    let _in = inside();
    let p = if zero {
        h.alloc_zeroed(size, align)
    } else {
        h.alloc(size, align)
    };
    match p {
        Some(p) => {
            crate::extent::record(p.as_ptr() as usize, size);
            p.as_ptr().cast()
        }
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

use farmem::trace::Kind;

/// Tells the plug-in and the trace of a block of the far heap allocated or about to be
/// freed (the heap's observer, set when either is on).
fn notify(kind: Kind, addr: usize, size: usize) {
    if let Some(pl) = crate::plugin::get() {
        if kind == Kind::Alloc {
            pl.allocated(addr, size);
        } else {
            pl.freeing(addr, size);
        }
    }
    let (base, _) = rt::heap_range();
    farmem::trace::record_block(kind, addr.wrapping_sub(base) as u64, size as u64);
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
    let Some(nn) = NonNull::new(p.cast::<u8>()) else {
        return;
    };
    if !owns(p as usize) {
        // SAFETY: not ours, so glibc's.
        unsafe { crate::libc_free(p) };
        return;
    }
    let h = heap();
    let _in = inside();
    // SAFETY: a live block of ours (free's contract).
    unsafe {
        let usable = h.usable_size(nn);
        crate::extent::forget(p as usize, usable);
        h.free_sized(nn, usable);
    }
}

/// realloc(3).
///
/// # Safety
/// `p` is null or a live allocation.
pub(crate) unsafe fn realloc(p: *mut c_void, size: usize, caller: usize) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    let Some(nn) = NonNull::new(p.cast::<u8>()) else {
        return alloc(size, 16, caller, false);
    };
    if !owns(p as usize) {
        // SAFETY: not ours, so glibc's; it stays there.
        return unsafe { crate::libc_realloc(p, size) };
    }
    if size == 0 {
        // SAFETY: as free.
        unsafe { free(p) };
        return std::ptr::null_mut();
    }
    let h = heap();
    let _in = inside();
    // SAFETY: a live block of ours (realloc's contract).
    unsafe {
        let old = h.usable_size(nn);
        match h.realloc(nn, size) {
            Some(q) => {
                crate::extent::forget(p as usize, old);
                crate::extent::record(q.as_ptr() as usize, size);

                q.as_ptr().cast()
            }
            None => {
                set_errno(libc::ENOMEM);
                std::ptr::null_mut()
            }
        }
    }
}

/// malloc_usable_size(3).
///
/// # Safety
/// `p` is null or a live allocation.
pub(crate) unsafe fn usable_size(p: *mut c_void) -> usize {
    let _sud = farmem::sys::sud::allow();
    match NonNull::new(p.cast::<u8>()) {
        None => 0,
        // SAFETY: a live block of ours (the caller's contract).
        Some(nn) if owns(p as usize) => unsafe { heap().usable_size(nn) },
        Some(_) => rt::libc_usable_size(p),
    }
}

/// Every lock of the heap and of the mmap table, held across a fork.
pub(crate) type ForkGuard = (
    Option<ForkLock<'static>>,
    MutexGuard<'static, BTreeMap<usize, (usize, usize)>>,
);

/// Takes every lock of the heap and of the mmap table (see `rt`'s fork handlers).
pub(crate) fn lock_for_fork() -> ForkGuard {
    let h = HEAP.get().map(Heap::lock_for_fork);
    (h, mmaps())
}

// ---- anonymous mmaps -------------------------------------------------------------------

fn mmaps() -> MutexGuard<'static, BTreeMap<usize, (usize, usize)>> {
    MMAPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A far block standing for an anonymous private mapping of `len` bytes, or None (the
/// call then goes to the kernel). The allocator's own mmaps (mimalloc growing while it
/// serves a malloc) are the kernel's.
pub(crate) fn mmap_alloc(len: usize) -> Option<usize> {
    if INSIDE.try_with(Cell::get).unwrap_or(true) {
        return None;
    }
    let len = len.checked_next_multiple_of(4096)?;
    let p = {
        let _in = inside();
        heap().alloc(len, 4096)?.as_ptr() as usize
    };
    mmaps().insert(p, (len, len));
    // Fresh mappings read as zeros; a reused block may hold old data.
    rt::discard(p, len);
    Some(p)
}

/// munmap of a range inside the far heap: forgets the pages; frees a block once all of
/// it is unmapped. Returns false if the range is not an mmap block of ours.
pub(crate) fn mmap_free(addr: usize, len: usize) -> bool {
    let len = len.next_multiple_of(4096);
    let mut m = mmaps();
    let Some((&start, &(blen, left))) = m.range(..=addr).next_back() else {
        return false;
    };
    if addr >= start + blen {
        return false;
    }
    let end = (addr + len).min(start + blen);
    let gone = end - addr;
    let left = left.saturating_sub(gone);
    if left == 0 {
        m.remove(&start);
        drop(m);
        rt::discard(start, blen);
        let p = NonNull::new(start as *mut u8).expect("an mmap block is not null");
        let _in = inside();
        // SAFETY: the block is ours and the program has unmapped all of it.
        unsafe { heap().free(p) };
    } else {
        m.insert(start, (blen, left));
        drop(m);
        rt::discard(addr, gone);
    }
    true
}

/// The block and length of the mmap block containing `addr`.
pub(crate) fn mmap_block(addr: usize) -> Option<(usize, usize)> {
    let m = mmaps();
    let (&start, &(len, _)) = m.range(..=addr).next_back()?;
    (addr < start + len).then_some((start, len))
}
