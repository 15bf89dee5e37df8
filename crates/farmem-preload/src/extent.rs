//! Object extents: for each page of the far heap, the mid-sized block covering it. The
//! prefetch upcall uses it: a major fault inside a block of 4 KiB to 256 KiB brings in
//! the rest of the block at once, and nothing past it.
//!
//! That is what a program that reads whole objects needs (Redis copying a value into its
//! reply): Linux-style readahead has to rediscover every object's length by growing its
//! window fault after fault, and its last window runs past the object's end into a
//! neighbour nobody asked for. Smaller blocks have no entry (the prefetcher runs as
//! usual); larger ones neither, as a big array is better served by readahead's adaptive
//! window than by fetching all of it.
//!
//! The table is one `u64` per heap page, the block's start (byte offset in the heap) and
//! length in pages, in an anonymous `MAP_NORESERVE` mapping: 0.2% of the heap's touched
//! size, in local memory. The start tells a fault on the block's first page from one on
//! the small objects before it on the same page (Redis's keys and dictionary entries sit
//! next to the values). Entries are hints: a page shared by two blocks holds the later
//! one's, and racing updates on such a page lose nothing but a prefetch. The upcall reads
//! it with plain atomic loads, so it is safe in signal context.

use std::sync::atomic::AtomicPtr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Blocks from this size up get entries; smaller ones are left to the readahead. Under
/// farslab, whose size classes keep a 4 KiB value (a 4,608-byte slot) apart from the
/// small objects, 4 KiB against 8 KiB made Redis with 4 KiB values 15-29% faster and
/// LRANGE 2-44% faster, the GET mix 1-5% slower (BENCHMARKS.md, "Allocators"). Under
/// TLSF, entries from 2 KiB had cost LRANGE (lists of listpack nodes of a few KiB,
/// allocated one after the other) 203k major faults where readahead alone took 35k:
/// each node fetched whole stopped the readahead that brought in the next nodes too.
pub(crate) const MIN: usize = 4 << 10;
/// ...up to this size.
pub(crate) const MAX: usize = 256 << 10;

const PAGE: usize = 4096;
/// An entry: start offset in the low 40 bits, end (exclusive) in pages from the start
/// page above.
const START_BITS: u32 = 40;

static TABLE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static BASE: AtomicUsize = AtomicUsize::new(0);
static PAGES: AtomicUsize = AtomicUsize::new(0);

/// Reserves the table for a heap of `len` bytes at `base`.
pub(crate) fn init(base: usize, len: usize) -> Result<(), String> {
    if len >= 1 << START_BITS {
        return Err(format!(
            "the far heap may be at most 1 TiB (FARMEM_HEAP_MAX), not {len} bytes"
        ));
    }
    let pages = len / PAGE;
    let bytes = (pages * 8).next_multiple_of(PAGE);
    // SAFETY: a fresh private anonymous mapping (through the raw system call, so that it
    // does not come from the far heap); nothing else refers to it.
    let p = unsafe {
        farmem::sys::raw::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "cannot reserve the heap's extent table ({bytes} bytes of address space)"
        ));
    }
    BASE.store(base, Relaxed);
    PAGES.store(pages, Relaxed);
    TABLE.store(p.cast(), Release);
    Ok(())
}

fn table() -> Option<(&'static [AtomicU64], usize)> {
    let t = TABLE.load(Acquire);
    if t.is_null() {
        return None;
    }
    // SAFETY: `init` mapped PAGES entries at `t` for the rest of the process, and zeroed
    // anonymous memory is a valid array of AtomicU64.
    Some((
        unsafe { std::slice::from_raw_parts(t, PAGES.load(Relaxed)) },
        BASE.load(Relaxed),
    ))
}

fn entry(off: usize, size: usize) -> u64 {
    let first = off / PAGE;
    let end = (off + size).div_ceil(PAGE);
    off as u64 | (((end - first) as u64) << START_BITS)
}

/// Notes a block of `size` bytes at `addr` (a live block of the heap).
#[inline]
pub(crate) fn record(addr: usize, size: usize) {
    if !(MIN..=MAX).contains(&size) {
        return;
    }
    let Some((t, base)) = table() else { return };
    let off = addr - base;
    let (first, end) = (off / PAGE, (off + size).div_ceil(PAGE));
    if end > t.len() {
        return;
    }
    let v = entry(off, size);
    for e in &t[first..end] {
        e.store(v, Relaxed);
    }
}

/// Forgets a block about to be freed or resized, at `addr` with `usable` bytes: the
/// entries that name its start, not those of neighbours sharing its first or last page.
#[inline]
pub(crate) fn forget(addr: usize, usable: usize) {
    if usable < MIN {
        return;
    }
    let Some((t, base)) = table() else { return };
    let off = addr - base;
    let (first, end) = (off / PAGE, (off + usable).div_ceil(PAGE).min(t.len()));
    for e in t.get(first..end).unwrap_or(&[]) {
        let v = e.load(Relaxed);
        if v != 0 && (v & ((1 << START_BITS) - 1)) as usize == off {
            let _ = e.compare_exchange(v, 0, Relaxed, Relaxed);
        }
    }
}

/// The recorded block at `addr` (an address in the heap at `base`): its start and the
/// end of its last page, or None if `addr` is in no recorded block (before the start of
/// the one that holds its page, say).
#[inline]
pub(crate) fn block_at(addr: usize) -> Option<(usize, usize)> {
    let (t, base) = table()?;
    let off = addr.checked_sub(base)?;
    let v = t.get(off / PAGE)?.load(Relaxed);
    if v == 0 {
        return None;
    }
    let start = (v & ((1 << START_BITS) - 1)) as usize;
    let end = (start / PAGE + (v >> START_BITS) as usize) * PAGE;
    (start <= off && off < end).then_some((base + start, base + end))
}
