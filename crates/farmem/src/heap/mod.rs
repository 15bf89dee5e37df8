//! Heaps: malloc-style allocators whose memory is a far [`Region`].
//!
//! Far memory pages whatever the allocator put together, so the allocator decides what a
//! fault drags in. [`Heap`] is one interface (the crate's `Allocator` trait) with three implementations,
//! picked by [`HeapKind`] (`farmem run --allocator NAME`):
//!
//! | name | what it is |
//! | --- | --- |
//! | `farslab` | farmem's own: small objects in allocation order, size-class slabs, page-aligned large blocks, per-thread caches, no metadata in far pages |
//! | `mimalloc` | Microsoft's mimalloc (2.x) over the region as an exclusive arena, as its authors tuned it |
//! | `tlsf` | a TLSF allocator (the rlsf crate) behind one lock, in-band headers |
//!
//! Each keeps the counters of [`HeapStats`]: live bytes, bytes requested and handed out
//! (internal fragmentation), and bytes of the region it holds.
//!
//! ```no_run
//! use farmem::{Engine, heap::{Heap, HeapKind}};
//! let engine = Engine::builder().local_budget(64 << 20).build()?;
//! // A heap serves the rest of the process: its region lives as long.
//! let region = Box::leak(Box::new(engine.map(1 << 30)?));
//! let heap = Heap::new(region, HeapKind::Farslab)?;
//! let p = heap.alloc(100, 16).expect("heap has room");
//! // SAFETY: `p` is a live block of this heap.
//! unsafe { heap.free(p) };
//! # Ok::<(), farmem::Error>(())
//! ```

mod counters;
mod farslab;
mod mimalloc;
mod tlsf;

use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;

use crate::{Error, Region};
use counters::Counters;

/// The allocators a [`Heap`] can be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HeapKind {
    /// farmem's far-aware slab allocator.
    #[default]
    Farslab,
    /// mimalloc over the region as an exclusive arena.
    Mimalloc,
    /// TLSF (rlsf) behind one lock.
    Tlsf,
}

impl HeapKind {
    /// Every allocator, the default first.
    pub const ALL: [HeapKind; 3] = [HeapKind::Farslab, HeapKind::Mimalloc, HeapKind::Tlsf];

    /// The name `farmem run --allocator` takes.
    pub fn name(self) -> &'static str {
        match self {
            HeapKind::Farslab => "farslab",
            HeapKind::Mimalloc => "mimalloc",
            HeapKind::Tlsf => "tlsf",
        }
    }

    /// One line on what it is and when it fits.
    pub fn about(self) -> &'static str {
        match self {
            HeapKind::Farslab => {
                "farmem's own: objects up to 128 B side by side in the order they are allocated, up to 8 KiB in slabs of one size class (never between large values), larger blocks page-aligned, per-thread caches, and no allocator metadata in far pages (a free never faults)"
            }
            HeapKind::Mimalloc => {
                "mimalloc 2 over the far region (an exclusive arena), as its authors tuned it: a heap per thread, size-segregated 64 KiB pages, free lists inside the blocks"
            }
            HeapKind::Tlsf => {
                "two-level segregated fit (rlsf) behind one lock: compact, headers next to the data, so small objects sit between large values"
            }
        }
    }
}

impl fmt::Display for HeapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HeapKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        HeapKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown allocator `{s}` (choose farslab, mimalloc or tlsf; `farmem run --allocator list` describes them)"
                )
            })
    }
}

/// What one allocator does. Implementations hand out blocks of the region they were made
/// over and take back only blocks they handed out.
///
/// # Safety
/// `alloc` returns blocks of at least `size` bytes aligned to `align`, inside the region,
/// that no other live block overlaps; `usable_size` is at least the size asked for.
pub(crate) unsafe trait Allocator: Send + Sync {
    /// A block of `size` bytes aligned to `align` (a power of two, at least 16), or None
    /// when the region is full.
    fn alloc(&self, size: usize, align: usize) -> Option<NonNull<u8>>;

    /// As `alloc`, and the block reads as zeros.
    fn alloc_zeroed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let p = self.alloc(size, align)?;
        // SAFETY: a fresh block of at least `size` bytes.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, size) };
        Some(p)
    }

    /// Frees a block of `usable` bytes (its `usable_size`, which the caller has already).
    ///
    /// # Safety
    /// `p` is a live block of this allocator and `usable` its usable size.
    unsafe fn free(&self, p: NonNull<u8>, usable: usize);

    /// The bytes the block may hold.
    ///
    /// # Safety
    /// `p` is a live block of this allocator.
    unsafe fn usable_size(&self, p: NonNull<u8>) -> usize;

    /// Resizes a block, in place where the allocator can (None: no room; the old block
    /// is still live). The result is aligned to 16, whatever `p` was aligned to.
    ///
    /// # Safety
    /// `p` is a live block of this allocator.
    unsafe fn realloc(&self, p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        // SAFETY: the caller's contract.
        let old = unsafe { self.usable_size(p) };
        if size <= old && size >= old / 2 {
            return Some(p);
        }
        let q = self.alloc(size, 16)?;
        // SAFETY: two live, distinct blocks; copy what both hold.
        unsafe {
            std::ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), old.min(size));
            self.free(p, old);
        }
        Some(q)
    }

    /// Bytes of the region the allocator holds for blocks, live or free (its footprint in
    /// address space, not what is resident); None where the allocator does not count it.
    fn held_bytes(&self) -> Option<u64>;

    /// Where its blocks are, for the pointer chase ([`Region::set_block_table`]): a
    /// lookup that reads only the allocator's own tables in local memory (never a block
    /// header in far memory), takes no lock and allocates nothing. None where the
    /// allocator keeps no such tables (its headers are in the blocks).
    fn block_table(&self) -> Option<Box<crate::prefetch::BlockTable>> {
        None
    }

    /// Takes every lock the allocator has, until the returned guard is dropped: a fork
    /// while another thread is inside the allocator must not leave the child a lock that
    /// nobody will release.
    fn lock_all(&self) -> Box<dyn Held + '_>;
}

/// Anything held for its drop (lock guards).
pub(crate) trait Held {}
impl<T> Held for T {}

/// A heap over a far region: malloc, free, realloc, aligned and usable-size calls, from
/// any thread. The blocks are ordinary memory of the region (faulted in and evicted like
/// the rest of it).
pub struct Heap {
    kind: HeapKind,
    region: &'static Region,
    imp: Box<dyn Allocator>,
    counters: Counters,
    observer: std::sync::OnceLock<Box<Observer>>,
}

/// What a heap tells its observer ([`Heap::set_observer`]): a plug-in's `alloc` and
/// `free` callbacks, for the library's users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapEvent {
    /// A block was handed out: its address and the bytes asked for.
    Alloc {
        /// The block.
        addr: usize,
        /// Bytes asked for.
        size: usize,
    },
    /// A block is about to be freed: its address and usable size.
    Free {
        /// The block.
        addr: usize,
        /// Its usable size.
        size: usize,
    },
}

/// A heap's observer (see [`Heap::set_observer`]).
pub type Observer = dyn Fn(HeapEvent) + Send + Sync;

impl fmt::Debug for Heap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap")
            .field("kind", &self.kind)
            .field("base", &self.region.as_ptr())
            .field("len", &self.region.len())
            .finish()
    }
}

/// The smallest region a heap is made over.
pub const MIN_HEAP: usize = 64 << 20;

impl Heap {
    /// A heap of allocator `kind` over all of `region` (at least [`MIN_HEAP`] bytes). The
    /// region should be used only through the heap from now on. A farslab heap tells the
    /// region where its blocks are, for the pointer chase ([`Region::set_block_table`]). It must live for the rest
    /// of the process: mimalloc keeps state in it until every thread that used the heap
    /// has exited, and has no call to let go of an arena.
    pub fn new(region: &'static Region, kind: HeapKind) -> Result<Heap, Error> {
        if region.len() < MIN_HEAP {
            return Err(Error::InvalidArgument(format!(
                "a heap needs a region of at least {} MiB, not {} bytes",
                MIN_HEAP >> 20,
                region.len()
            )));
        }
        let imp: Box<dyn Allocator> = match kind {
            HeapKind::Farslab => Box::new(farslab::Farslab::new(region)),
            HeapKind::Mimalloc => Box::new(mimalloc::Mimalloc::new(region)?),
            HeapKind::Tlsf => Box::new(tlsf::Tlsf::new(region)),
        };
        if let Some(t) = imp.block_table() {
            region.set_block_table(t);
        }
        Ok(Heap {
            kind,
            region,
            imp,
            counters: Counters::default(),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Sets the observer, told of every block handed out and every block about to be
    /// freed (a realloc is both, the free first, even when the block stays in place), in
    /// the allocating thread. Once per heap; it
    /// must not allocate from this heap. Returns false if one is set already.
    pub fn set_observer(&self, f: impl Fn(HeapEvent) + Send + Sync + 'static) -> bool {
        self.observer.set(Box::new(f)).is_ok()
    }

    /// Which allocator this is.
    pub fn kind(&self) -> HeapKind {
        self.kind
    }

    /// Whether `p` points into this heap's region.
    #[inline]
    pub fn contains(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.region.as_ptr() as usize) < self.region.len()
    }

    /// A block of `size` bytes (at least 1) aligned to `align`, or None if `align` is not
    /// a power of two, the size overflows, or the region is full.
    #[inline]
    pub fn alloc(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let (size, align) = Self::check(size, align)?;
        let p = self.imp.alloc(size, align)?;
        self.note_alloc(size, p);
        Some(p)
    }

    /// As [`Heap::alloc`], and the block reads as zeros. Fresh pages are not touched to
    /// zero them where the allocator knows they are zero already.
    pub fn alloc_zeroed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let (size, align) = Self::check(size, align)?;
        let p = self.imp.alloc_zeroed(size, align)?;
        self.note_alloc(size, p);
        Some(p)
    }

    fn check(size: usize, align: usize) -> Option<(usize, usize)> {
        if !align.is_power_of_two() || size > isize::MAX as usize - align {
            return None;
        }
        Some((size.max(1), align.max(16)))
    }

    #[inline]
    fn note_alloc(&self, size: usize, p: NonNull<u8>) {
        // SAFETY: `p` was just handed out by this allocator.
        let usable = unsafe { self.imp.usable_size(p) };
        self.counters.alloc(size, usable);
        if let Some(o) = self.observer.get() {
            o(HeapEvent::Alloc {
                addr: p.as_ptr() as usize,
                size,
            });
        }
    }

    #[inline]
    fn tell(&self, e: HeapEvent) {
        if let Some(o) = self.observer.get() {
            o(e);
        }
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `p` is a live block of this heap, not used after this call.
    #[inline]
    pub unsafe fn free(&self, p: NonNull<u8>) {
        // SAFETY: the caller's contract.
        unsafe { self.free_sized(p, self.imp.usable_size(p)) }
    }

    /// Frees a block whose [`Heap::usable_size`] the caller has just asked for, without
    /// asking again.
    ///
    /// # Safety
    /// `p` is a live block of this heap, not used after this call, and `usable` is its
    /// `usable_size`.
    #[inline]
    pub unsafe fn free_sized(&self, p: NonNull<u8>, usable: usize) {
        self.counters.free(usable);
        self.tell(HeapEvent::Free {
            addr: p.as_ptr() as usize,
            size: usable,
        });
        // SAFETY: the caller's contract.
        unsafe { self.imp.free(p, usable) }
    }

    /// The bytes block `p` may hold (at least what was asked for).
    ///
    /// # Safety
    /// `p` is a live block of this heap.
    #[inline]
    pub unsafe fn usable_size(&self, p: NonNull<u8>) -> usize {
        // SAFETY: the caller's contract.
        unsafe { self.imp.usable_size(p) }
    }

    /// Resizes block `p` to `size` bytes, in place where possible (aligned to 16, as
    /// realloc(3)); None leaves `p` live and unchanged.
    ///
    /// # Safety
    /// `p` is a live block of this heap.
    pub unsafe fn realloc(&self, p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        let (size, _) = Self::check(size, 16)?;
        // SAFETY: the caller's contract.
        unsafe {
            let old = self.imp.usable_size(p);
            // Told before the allocator may free it: another thread may be handed `p`
            // (and its observer told) as soon as it is.
            self.tell(HeapEvent::Free {
                addr: p.as_ptr() as usize,
                size: old,
            });
            let Some(q) = self.imp.realloc(p, size) else {
                // Still live, unchanged.
                self.tell(HeapEvent::Alloc {
                    addr: p.as_ptr() as usize,
                    size: old,
                });
                return None;
            };
            self.counters.free(old);
            self.note_alloc(size, q);
            Some(q)
        }
    }

    /// The heap's counters now.
    pub fn stats(&self) -> HeapStats {
        let c = self.counters.sum();
        HeapStats {
            allocator: self.kind.name(),
            live_blocks: c.blocks.max(0) as u64,
            live_bytes: c.live.max(0) as u64,
            requested_bytes: c.requested,
            handed_out_bytes: c.handed_out,
            held_bytes: self.imp.held_bytes(),
        }
    }

    /// Holds every lock of the allocator until the guard is dropped (for fork handlers:
    /// take it in `prepare`, drop it in `parent` and `child`).
    pub fn lock_for_fork(&self) -> ForkLock<'_> {
        ForkLock(self.imp.lock_all())
    }
}

/// Every lock of a heap, held until dropped ([`Heap::lock_for_fork`]).
#[must_use]
pub struct ForkLock<'a>(#[allow(dead_code)] Box<dyn Held + 'a>);

impl fmt::Debug for ForkLock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForkLock")
    }
}

/// A heap's counters. Updated on every call through per-thread shards, so a snapshot taken
/// while other threads allocate is a moment's picture, not an exact one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeapStats {
    /// The allocator's name.
    pub allocator: &'static str,
    /// Blocks live now.
    pub live_blocks: u64,
    /// Usable bytes of the live blocks.
    pub live_bytes: u64,
    /// Bytes asked for, by every allocation so far.
    pub requested_bytes: u64,
    /// Usable bytes handed out for them.
    pub handed_out_bytes: u64,
    /// Bytes of the region the allocator holds for blocks, live or free (None: mimalloc
    /// counts this only in its debug builds).
    pub held_bytes: Option<u64>,
}

impl HeapStats {
    /// Share of the bytes handed out that nobody asked for (size-class rounding, alignment):
    /// `1 - requested / handed out`.
    pub fn internal_fragmentation(&self) -> f64 {
        if self.handed_out_bytes == 0 {
            0.0
        } else {
            1.0 - self.requested_bytes as f64 / self.handed_out_bytes as f64
        }
    }
}

impl fmt::Display for HeapStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let held = self
            .held_bytes
            .map_or("not counted".to_string(), |b| format!("{:.1} MiB", mib(b)));
        write!(
            f,
            "allocator {}: {} live blocks, {:.1} MiB live, held {}, internal fragmentation {:.1}% ({:.1} MiB requested in all)",
            self.allocator,
            self.live_blocks,
            mib(self.live_bytes),
            held,
            100.0 * self.internal_fragmentation(),
            mib(self.requested_bytes)
        )
    }
}

/// Gives a freed block's whole pages back: `discard` (the local frame and the far copy go;
/// the pages read as zeros) or only the far copies of pages not resident (`forget_far`:
/// no unmapping; a resident page stays for the next use). `[start, end)` is clipped to
/// whole pages.
fn release(region: &Region, start: usize, end: usize, discard: bool) {
    let base = region.as_ptr() as usize;
    let (s, e) = (start.next_multiple_of(4096), end & !4095);
    if e <= s {
        return;
    }
    let r = if discard {
        region.discard(s - base, e - s)
    } else {
        region.forget_far(s - base, e - s)
    };
    if let Err(e) = r {
        crate::fatal::die_msg(&format!(
            "internal error: a heap gave back pages outside its region ({e}); please report this bug"
        ));
    }
}
