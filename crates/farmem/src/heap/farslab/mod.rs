//! `farslab`: farmem's far-aware allocator.
//!
//! - **Small objects** (up to 8 KiB, [`classes`]) never sit between large values. Those
//!   up to 128 bytes (keys, dictionary entries, object headers) are carved from 64 KiB
//!   mixed units in the order they are allocated, whatever their class, so the objects a
//!   program creates together (a key's entry, string and header) share a page; larger
//!   ones live in 64 KiB slabs that hold one size class only. (One class per slab for the
//!   smallest objects too was measured first: Redis with 64 B values then touched up to
//!   four slabs per GET, and ran 1.4x slower than under TLSF.)
//! - **Large blocks** are page-aligned runs of pages ([`large`]): a value's pages are its
//!   own, and the object prefetch knows exactly where it ends.
//! - **Per-thread caches** ([`cache`]): the common malloc and free take no lock.
//! - **No allocator metadata in far pages**: which objects are free is kept in bitmaps
//!   (slabs) or lists of offsets (mixed classes) in local memory, and a block's class or
//!   length in tables indexed by address (one byte per 16 bytes of a mixed unit), so a
//!   free never touches (or faults in) the block it frees.
//!
//! Slabs and large blocks come from one run allocator that grows from the region's
//! start (a slab is a 64 KiB-aligned run of 16 pages), so the heap stays compact and the
//! reclaimer's sweep covers only what was used. (Slabs from the region's start and large
//! blocks from its middle were tried first: the sweep then covered half the region, and
//! reading the accessed bits of its 2 MiB chunks made CPython's dict build 4.5x slower.)
//!
//! **Giving pages back.** Freed memory is reused before new memory is touched (the same
//! thread's frees first, then lowest slab first; best fit for large blocks). Mixed units
//! are never given back: their freed objects are reused by their class. A slab whose objects are all free stays with its
//! class while the class has fewer than [`slabs::KEEP_EMPTY`] empty slabs; beyond that
//! it is discarded (its pages read as zeros and cost no budget and no far copy) and may
//! serve any class later. A freed large block of 1 MiB or more is discarded at once;
//! smaller ones keep their resident pages (programs allocate the same size again at once,
//! and a discarded page costs a zero-fill fault on its next use: giving back every free of
//! 64 KiB or more cost Redis's GET mix 35%) and only forget the far copies of pages that
//! were evicted.

mod cache;
mod classes;
mod large;
mod slabs;

use std::ptr::NonNull;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Allocator, Held, release};
use crate::Region;
use classes::{MIXED, N, SIZES, SLAB, SMALL_MAX};
use large::Large;
use slabs::Class;

const PAGE: usize = 4096;
/// Freed large blocks from this size up are discarded; smaller ones keep resident pages.
const DISCARD_MIN: usize = 1 << 20;
/// How far back from an address in a large block its start is looked for (the pointer
/// chase's block table), in pages: up to 256 KiB, past which a block is an array better
/// left to readahead.
const LOOKBACK: usize = 64;
/// `unit_class` of a mixed unit.
const MIXED_UNIT: u8 = u8::MAX;
/// Bytes per entry of a mixed unit's class table.
const GRANULE: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A zeroed table of `n` atomics, in memory the kernel fills lazily.
fn zeroed_table<T>(n: usize) -> Box<[T]> {
    let layout = std::alloc::Layout::array::<T>(n.max(1)).expect("table size");
    // SAFETY: a non-zero layout; T is an atomic integer, for which all-zero bytes are a
    // valid value; the box takes ownership of the allocation with the same layout.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n.max(1)))
    }
}

/// What threads' caches share with the heap (and keep alive until they exit).
pub(super) struct Shared {
    /// Each 64 KiB unit's class + 1 if it is a slab, MIXED_UNIT if it is a mixed unit, 0
    /// if it is neither.
    unit_class: Box<[AtomicU8]>,
    /// For each mixed unit, the class + 1 of the object starting at each 16-byte granule.
    mixed_meta: Box<[AtomicPtr<AtomicU8>]>,
    /// Freed objects of the mixed classes, by class.
    mixed_free: [Mutex<Vec<usize>>; MIXED],
    /// Where threads without a cache carve mixed objects: (next, end) offsets.
    mixed_bump: Mutex<(usize, usize)>,
    /// For each page that starts a live large block, its length in pages.
    large_len: Box<[AtomicU32]>,
    classes: [Mutex<Class>; N],
    /// Runs of pages: large blocks and slabs.
    runs: Mutex<Large>,
    /// Empty slab units to give back (discard) and reuse.
    pending: Mutex<Vec<u32>>,
    pending_n: AtomicUsize,
    held: AtomicU64,
}

impl Shared {
    /// The block containing the heap offset `off`: (start, end) offsets. A slot of a slab
    /// or an object of a mixed unit counts whether handed out or free (which the tables
    /// do not say without a lock); a large block only while live, and only within
    /// [`LOOKBACK`] pages of its start.
    fn block_at(&self, off: usize) -> Option<(usize, usize)> {
        let unit = off / SLAB;
        let base = unit * SLAB;
        match self.unit_class.get(unit)?.load(Acquire) {
            0 => {
                let page = off / PAGE;
                for start in (page.saturating_sub(LOOKBACK)..=page).rev() {
                    let n = self.large_len[start].load(Acquire) as usize;
                    if n != 0 {
                        return (start + n > page).then_some((start * PAGE, (start + n) * PAGE));
                    }
                }
                None
            }
            MIXED_UNIT => {
                let t = self.mixed_meta[unit].load(Acquire);
                if t.is_null() {
                    return None;
                }
                let g = (off - base) / GRANULE;
                // Objects of mixed units are at most 128 bytes: 8 granules.
                for k in (g.saturating_sub(SIZES[MIXED - 1] as usize / GRANULE - 1)..=g).rev() {
                    // SAFETY: a mixed unit's table has SLAB / GRANULE entries and is never
                    // freed (see `mixed_entry`).
                    let c = unsafe { &*t.add(k) }.load(Acquire);
                    if c != 0 {
                        let start = base + k * GRANULE;
                        let end = start + SIZES[c as usize - 1] as usize;
                        return (off < end).then_some((start, end));
                    }
                }
                None
            }
            c => {
                let size = SIZES[c as usize - 1] as usize;
                let start = base + (off - base) / size * size;
                (start + size <= base + SLAB).then_some((start, start + size))
            }
        }
    }

    /// Up to `out.len()` free objects of class `c`, a new slab if the class has none.
    fn take(&self, c: usize, out: &mut [usize]) -> usize {
        let n = lock(&self.classes[c]).take(c, out);
        if n > 0 {
            return n;
        }
        const SLAB_PAGES: u32 = (SLAB / PAGE) as u32;
        let Some((page, _)) = lock(&self.runs).alloc(SLAB_PAGES, SLAB_PAGES) else {
            return 0;
        };
        let unit = page / SLAB_PAGES;
        self.held.fetch_add(SLAB as u64, Relaxed);
        self.unit_class[unit as usize].store(c as u8 + 1, Release);
        let mut k = lock(&self.classes[c]);
        k.add(c, unit);
        k.take(c, out)
    }

    /// A fresh mixed unit: its (start, end) offsets.
    fn new_mixed_unit(&self) -> Option<(usize, usize)> {
        const SLAB_PAGES: u32 = (SLAB / PAGE) as u32;
        let (page, _) = lock(&self.runs).alloc(SLAB_PAGES, SLAB_PAGES)?;
        let unit = (page / SLAB_PAGES) as usize;
        let meta: Box<[AtomicU8]> = zeroed_table(SLAB / GRANULE);
        // The table lives as long as the unit, which is never given back.
        self.mixed_meta[unit].store(Box::leak(meta).as_mut_ptr(), Release);
        self.unit_class[unit].store(MIXED_UNIT, Release);
        self.held.fetch_add(SLAB as u64, Relaxed);
        Some((unit * SLAB, (unit + 1) * SLAB))
    }

    /// Notes that the object at offset `off` (in a mixed unit) is of class `c`.
    #[inline]
    fn note_mixed(&self, off: usize, c: usize) {
        self.mixed_entry(off).store(c as u8 + 1, Release);
    }

    #[inline]
    fn mixed_entry(&self, off: usize) -> &AtomicU8 {
        let t = self.mixed_meta[off / SLAB].load(Acquire);
        // SAFETY: a mixed unit's table is set (and never freed) before the unit is marked
        // mixed, and has SLAB / GRANULE entries.
        unsafe { &*t.add((off % SLAB) / GRANULE) }
    }

    /// Carves one object of mixed class `c` from `(next, end)`, taking a new unit when the
    /// current one is used up.
    fn carve(&self, bump: &mut (usize, usize), c: usize) -> Option<usize> {
        let size = SIZES[c] as usize;
        if bump.0 + size > bump.1 {
            *bump = self.new_mixed_unit()?;
        }
        let off = bump.0;
        bump.0 += size;
        self.note_mixed(off, c);
        Some(off)
    }

    /// Up to `out.len()` freed objects of mixed class `c`.
    fn take_mixed(&self, c: usize, out: &mut [usize]) -> usize {
        let mut f = lock(&self.mixed_free[c]);
        let n = out.len().min(f.len());
        let at = f.len() - n;
        out[..n].copy_from_slice(&f[at..]);
        f.truncate(at);
        n
    }

    /// Frees objects of class `c`, mixed or slab.
    fn put(&self, c: usize, offs: &[usize]) {
        if c < MIXED {
            lock(&self.mixed_free[c]).extend_from_slice(offs);
        } else {
            self.put_many(c, offs);
        }
    }

    /// Frees objects of class `c`; slabs this empties beyond the class's reserve wait in
    /// `pending` to be given back.
    fn put_many(&self, c: usize, offs: &[usize]) {
        let mut gone = [0u32; cache::CAP_MAX];
        let mut n = 0;
        {
            let mut k = lock(&self.classes[c]);
            for &off in offs {
                if let Some(u) = k.put(c, off) {
                    self.unit_class[u as usize].store(0, Relaxed);
                    gone[n] = u;
                    n += 1;
                }
            }
        }
        if n > 0 {
            lock(&self.pending).extend_from_slice(&gone[..n]);
            self.pending_n.fetch_add(n, Release);
        }
    }
}

pub(super) struct Farslab {
    region: &'static Region,
    base: usize,
    shared: Arc<Shared>,
}

impl Farslab {
    pub fn new(region: &'static Region) -> Farslab {
        // Regions are 2 MiB-aligned, so units are 64 KiB-aligned.
        let base = region.as_ptr() as usize;
        let pages = (region.len() / PAGE).min(u32::MAX as usize);
        let units = pages.div_ceil(SLAB / PAGE);
        Farslab {
            region,
            base,
            shared: Arc::new(Shared {
                unit_class: zeroed_table(units),
                mixed_meta: zeroed_table(units),
                mixed_free: std::array::from_fn(|_| Mutex::new(Vec::new())),
                mixed_bump: Mutex::new((0, 0)),
                large_len: zeroed_table(pages),
                classes: std::array::from_fn(|_| Mutex::new(Class::default())),
                runs: Mutex::new(Large::new(pages as u32)),
                pending: Mutex::new(Vec::new()),
                pending_n: AtomicUsize::new(0),
                held: AtomicU64::new(0),
            }),
        }
    }

    fn small_alloc(&self, c: usize) -> Option<NonNull<u8>> {
        let off = cache::with(&self.shared, |tc| tc.pop(c)).unwrap_or_else(|| {
            let mut one = [0];
            if c < MIXED {
                if self.shared.take_mixed(c, &mut one) == 1 {
                    return Some(one[0]);
                }
                return self.shared.carve(&mut lock(&self.shared.mixed_bump), c);
            }
            (self.shared.take(c, &mut one) == 1).then_some(one[0])
        })?;
        NonNull::new((self.base + off) as *mut u8)
    }

    fn large_alloc(&self, size: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
        let n = u32::try_from(size.div_ceil(PAGE)).ok()?;
        let a = u32::try_from((align / PAGE).max(1)).ok()?;
        let (page, fresh) = lock(&self.shared.runs).alloc(n, a)?;
        self.shared.large_len[page as usize].store(n, Release);
        self.shared.held.fetch_add(n as u64 * PAGE as u64, Relaxed);
        let p = (self.base + page as usize * PAGE) as *mut u8;
        if zero && !fresh {
            // SAFETY: a block of `n` pages just handed out.
            unsafe { std::ptr::write_bytes(p, 0, size) };
        }
        NonNull::new(p)
    }

    fn alloc_any(&self, size: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
        if size <= SMALL_MAX {
            let c = if align <= 16 {
                Some(classes::of(size))
            } else {
                classes::aligned(size, align)
            };
            if let Some(c) = c {
                let p = self.small_alloc(c)?;
                if zero {
                    // SAFETY: a block of at least `size` bytes just handed out.
                    unsafe { std::ptr::write_bytes(p.as_ptr(), 0, size) };
                }
                return Some(p);
            }
        }
        self.large_alloc(size, align, zero)
    }

    /// The class of the small object at `p`, or None if `p` is not in a slab or a mixed
    /// unit.
    #[inline]
    fn class_at(&self, p: usize) -> Option<usize> {
        let off = p - self.base;
        match self.shared.unit_class[off / SLAB].load(Acquire) {
            0 => None,
            MIXED_UNIT => match self.shared.mixed_entry(off).load(Acquire) {
                0 => crate::fatal::die_msg(
                    "the program freed or resized a pointer the far heap did not hand out",
                ),
                c => Some(c as usize - 1),
            },
            c => Some(c as usize - 1),
        }
    }

    /// The pages of the large block at `p`, or a loud stop.
    #[inline]
    fn large_pages_at(&self, p: usize) -> usize {
        let n = if p.is_multiple_of(PAGE) {
            self.shared.large_len[(p - self.base) / PAGE].load(Acquire)
        } else {
            0
        };
        if n == 0 {
            crate::fatal::die_msg(
                "the program freed or resized a pointer the far heap did not hand out (or freed it twice)",
            );
        }
        n as usize
    }

    /// Gives back the slabs that emptied beyond their class's reserve.
    fn give_back_pending(&self) {
        if self.shared.pending_n.load(Acquire) == 0 {
            return;
        }
        let units = std::mem::take(&mut *lock(&self.shared.pending));
        self.shared.pending_n.fetch_sub(units.len(), Release);
        for &u in &units {
            let a = self.base + u as usize * SLAB;
            release(self.region, a, a + SLAB, true);
        }
        self.shared
            .held
            .fetch_sub((units.len() * SLAB) as u64, Relaxed);
        let mut runs = lock(&self.shared.runs);
        for &u in &units {
            runs.free(u * (SLAB / PAGE) as u32, (SLAB / PAGE) as u32);
        }
    }
}

// SAFETY: slab objects are disjoint slots of slabs owned by one class at a time (the
// bitmaps say which are handed out); large blocks are disjoint runs of the large area;
// both areas are inside the region. Usable sizes are the class size or the run's pages.
unsafe impl Allocator for Farslab {
    #[inline]
    fn alloc(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.alloc_any(size, align, false)
    }

    fn alloc_zeroed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.alloc_any(size, align, true)
    }

    #[inline]
    unsafe fn free(&self, p: NonNull<u8>, _usable: usize) {
        let a = p.as_ptr() as usize;
        if let Some(c) = self.class_at(a) {
            let off = a - self.base;
            let size = SIZES[c] as usize;
            if size >= PAGE {
                // The slot's whole pages hold nothing now: if they are far, the tier
                // forgets them (no system call), and the next owner's first write is a
                // zero-fill, not a fetch of dead bytes. (Redis's SET of a 4 KiB value
                // reuses the slot its last SET freed, whose page is as likely far as any.)
                // Before the slot is cached: no other thread can own it yet.
                release(self.region, a, a + size, false);
            }
            if cache::with(&self.shared, |tc| tc.push(c, off)).is_none() {
                self.shared.put(c, &[off]);
            }
            self.give_back_pending();
            return;
        }
        let n = self.large_pages_at(a);
        let page = (a - self.base) / PAGE;
        if self.shared.large_len[page]
            .compare_exchange(n as u32, 0, AcqRel, Relaxed)
            .is_err()
        {
            crate::fatal::die_msg("the program freed a far heap block twice");
        }
        release(self.region, a, a + n * PAGE, n * PAGE >= DISCARD_MIN);
        lock(&self.shared.runs).free(page as u32, n as u32);
        self.shared.held.fetch_sub((n * PAGE) as u64, Relaxed);
    }

    #[inline]
    unsafe fn usable_size(&self, p: NonNull<u8>) -> usize {
        let a = p.as_ptr() as usize;
        match self.class_at(a) {
            Some(c) => SIZES[c] as usize,
            None => self.large_pages_at(a) * PAGE,
        }
    }

    fn held_bytes(&self) -> Option<u64> {
        Some(self.shared.held.load(Relaxed))
    }

    fn block_table(&self) -> Option<Box<crate::prefetch::BlockTable>> {
        let (shared, base, len) = (self.shared.clone(), self.base, self.region.len());
        Some(Box::new(move |a: usize| {
            let off = a.checked_sub(base).filter(|&o| o < len)?;
            let (s, e) = shared.block_at(off)?;
            Some((base + s, base + e))
        }))
    }

    fn lock_all(&self) -> Box<dyn Held + '_> {
        let s = &*self.shared;
        let classes: Vec<_> = s.classes.iter().map(lock).collect();
        let mixed: Vec<_> = s.mixed_free.iter().map(lock).collect();
        Box::new((
            lock(&s.runs),
            lock(&s.pending),
            lock(&s.mixed_bump),
            classes,
            mixed,
        ))
    }
}
