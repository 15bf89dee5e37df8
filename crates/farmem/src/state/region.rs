//! One region's state: a memfd mapped shared and registered with userfaultfd, its
//! page-state table, the checksums of its far copies, and the application's hints.
//!
//! ```text
//!   RegionState ──► memfd ──── page cache (resident pages)
//!       │              └──── mapping [base, base+len)
//!       ├── states: one page word per page      far_hashes: xxh3-128 per far copy
//!       └──► Shared (budget, tier, policy)
//! ```

use crate::backend::{PAGE_SIZE, PageKey};
use crate::policy::CHUNK_PAGES;
use crate::prefetch::{BlockTable, PrefetchHook, Prefetcher, Throttle};
use crate::state::page::{PageWord, State, zeroed_table};
use crate::state::shared::Shared;
use crate::sys::mem::{Mapping, Memfd};
use crate::sys::uffd::{self, Uffd};
use crate::{Advice, Error, FaultMode};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicIsize, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};
use std::sync::{Arc, Mutex, RwLock};

/// An eviction hint: a page's address to its [`crate::Priority`].
pub type EvictHint = dyn Fn(usize) -> crate::Priority + Send + Sync;

pub(crate) struct RegionState {
    pub id: u32,
    pub base: usize,
    pub len: usize,
    pub pages: u64,
    /// Bytes in one page (the engine's page size).
    pub unit: usize,
    pub memfd: Memfd,
    pub uffd: Uffd,
    pub mode: FaultMode,
    pub states: Box<[PageWord]>,
    far_hashes: Box<[AtomicU64]>,
    pub shared: Arc<Shared>,
    pub prefetcher: Mutex<Box<dyn Prefetcher>>,
    /// How much the prefetcher may ask for, from how much of its recent work was used.
    pub throttle: Throttle,
    pub advice: RwLock<Vec<(u64, u64, Advice)>>,
    pub hook: RwLock<Option<Arc<PrefetchHook>>>,
    /// The eviction hint, asked for each resident page the clock hand passes
    /// (`reclaim/age.rs`).
    pub evict_hint: RwLock<Option<Arc<EvictHint>>>,
    /// Where the heap's blocks are, for the pointer chase (`prefetch::pointer`).
    pub blocks: RwLock<Option<Arc<BlockTable>>>,
    /// Whether faults here chase pointers.
    pointer: AtomicBool,
    /// What the pointer chase learnt here (None with huge pages).
    pub learnt: Option<crate::prefetch::pointer::Learnt>,
    /// One past the highest page ever touched: sweeps and fork stop here, so that a
    /// huge sparse region costs only what was used.
    high: AtomicU64,
    /// Where the last zero-fill run ended, and its length (the fault path's
    /// `zero_fill` grows runs along a region filled front to back).
    pub zero_next: AtomicU64,
    pub zero_window: AtomicU32,
    /// Chunks `[0, split)` are mappings of their own (see `split_through`).
    split: AtomicU64,
    /// Per chunk: hot-set pages found unused but left mapped since the chunk's last full
    /// test (`reclaim/age.rs`). Used under the policy lock.
    pub chunk_debt: Box<[AtomicU8]>,
    /// The handler threads' stop eventfd and count (thread mode), for a forked child.
    pub stop_fd: AtomicI32,
    pub handler_count: AtomicUsize,
    /// Dropped last: the mapping must outlive every use of `base`.
    _map: Mapping,
}

impl std::fmt::Debug for RegionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

/// xxh3-128 of a page: the end-to-end checksum and the dirty test.
#[inline]
pub(crate) fn page_hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// The hash of an all-zero page of `unit` bytes (4 KiB or 2 MiB; computed once each, the
/// huge one when the engine starts: see `Engine::new`).
pub(crate) fn zero_hash(unit: usize) -> u128 {
    static SMALL: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static HUGE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    if unit == PAGE_SIZE {
        *SMALL.get_or_init(|| page_hash(&[0u8; PAGE_SIZE]))
    } else {
        *HUGE.get_or_init(|| page_hash(&vec![0u8; unit]))
    }
}

/// Chunks that may still be split into mappings of their own, process-wide: half of
/// `vm.max_map_count`, leaving the rest to the program (set by [`init_split_allowance`]).
static SPLIT_ALLOWANCE: AtomicIsize = AtomicIsize::new(0);

/// Sets the allowance of split mappings once per process (not in a signal handler: it
/// reads /proc).
pub(crate) fn init_split_allowance() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        SPLIT_ALLOWANCE.store((crate::sys::mem::max_map_count() / 2) as isize, Relaxed);
    });
}

/// Generation of the next residency of a page.
#[inline]
pub(crate) fn next_gen(s: State) -> u32 {
    s.generation().wrapping_add(1)
}

impl RegionState {
    /// Creates a region of `len` bytes (rounded up to pages) and enters it in `shared`'s
    /// table under a free id.
    pub(crate) fn new(shared: &Arc<Shared>, len: usize) -> Result<Arc<RegionState>, Error> {
        if len == 0 {
            return Err(Error::InvalidArgument(
                "a region needs at least one byte".into(),
            ));
        }
        let unit = shared.unit();
        let len = len.div_ceil(unit) * unit;
        let pages = (len / unit) as u64;
        if pages * (unit / PAGE_SIZE) as u64 > PageKey::MAX_PAGE {
            return Err(Error::InvalidArgument(format!(
                "a region may hold at most {} pages",
                PageKey::MAX_PAGE
            )));
        }
        let mode = shared.fault_mode;
        let no_tables = || {
            Error::InvalidArgument(format!(
                "cannot allocate the page tables of a {len}-byte region ({} bytes of farmem metadata): map a smaller region",
                pages * 24
            ))
        };
        let states = zeroed_table(pages as usize).ok_or_else(no_tables)?;
        let far_hashes = zeroed_table(pages as usize * 2).ok_or_else(no_tables)?;
        let chunk_debt =
            zeroed_table(pages.div_ceil(CHUNK_PAGES) as usize).ok_or_else(no_tables)?;
        let memfd = if shared.huge() {
            Memfd::new_huge(c"farmem-region", len)
                .map_err(|e| Error::os("create the region's hugetlbfs memfd", e))?
        } else {
            Memfd::new(c"farmem-region", len)
                .map_err(|e| Error::os("create the region's memfd", e))?
        };
        let map = memfd.map(len).map_err(|e| Error::os("map the region", e))?;
        // A forked child must not inherit the mapping: without the userfaultfd
        // registration, its touches would put zero pages into the parent's page cache.
        // The child gets no mapping at all (SIGSEGV if it touches the region) unless the
        // fork handlers give it a copy.
        map.dont_fork()
            .map_err(|e| Error::os("exclude the region from fork (MADV_DONTFORK)", e))?;
        let mut features = if shared.huge() {
            uffd::feature::MISSING_HUGETLBFS | uffd::feature::MINOR_HUGETLBFS
        } else {
            uffd::feature::MISSING_SHMEM | uffd::feature::MINOR_SHMEM
        };
        if mode == FaultMode::Sigbus {
            features |= uffd::feature::SIGBUS;
        } else if crate::sys::mem::kernel_at_least(6, 0) {
            // The faulting byte, not its page: the pointer chase starts from the block
            // the program touched (a SIGBUS's address is always exact).
            features |= uffd::feature::EXACT_ADDRESS;
        }
        let uffd = Uffd::new(features, mode == FaultMode::Thread).map_err(Error::userfaultfd)?;
        uffd.register(
            map.ptr() as usize,
            len,
            uffd::REGISTER_MODE_MISSING | uffd::REGISTER_MODE_MINOR,
        )
        .map_err(|e| Error::os("register the region with userfaultfd", e))?;
        let prefetcher = shared.new_prefetcher();
        let learnt = if shared.huge() {
            None
        } else {
            Some(crate::prefetch::pointer::Learnt::new(pages as usize).ok_or_else(no_tables)?)
        };
        debug_assert_eq!(map.ptr() as usize % crate::sys::mem::CHUNK_BYTES, 0);
        let state = shared.add_region(|id| RegionState {
            id,
            base: map.ptr() as usize,
            len,
            pages,
            unit,
            memfd,
            uffd,
            mode,
            states,
            far_hashes,
            shared: shared.clone(),
            prefetcher: Mutex::new(prefetcher),
            throttle: Throttle::default(),
            advice: RwLock::new(Vec::new()),
            hook: RwLock::new(None),
            evict_hint: RwLock::new(None),
            blocks: RwLock::new(None),
            pointer: AtomicBool::new(shared.config.pointer_prefetch),
            learnt,
            high: AtomicU64::new(0),
            zero_next: AtomicU64::new(u64::MAX),
            zero_window: AtomicU32::new(1),
            split: AtomicU64::new(0),
            chunk_debt,
            stop_fd: AtomicI32::new(-1),
            handler_count: AtomicUsize::new(0),
            _map: map,
        })?;
        Ok(state)
    }

    /// Copies `out.len()` bytes at `addr` of this region out of the page cache (`pread`
    /// on the memfd), mapped or not, without a fault: usable in a signal handler. A page
    /// that is not resident (or is evicted meanwhile) reads as zeros; nothing is mapped
    /// or allocated. False if the read failed.
    pub fn read_resident(&self, addr: usize, out: &mut [u8]) -> bool {
        self.memfd.read_at(out, addr - self.base).is_ok()
    }

    /// Copies `out.len()` bytes at `addr` into `out` if they are all in this region and
    /// resident (mapped or not), without a fault: the pages' states are checked before
    /// and after the copy, so a page evicted meanwhile makes it fail rather than read
    /// zeros. Usable in a signal handler.
    pub fn read_local(&self, addr: usize, out: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(out.len()) else {
            return false;
        };
        if out.is_empty() || addr < self.base || end > self.base + self.len {
            return false;
        }
        let pages = (addr - self.base) / self.unit..(end - 1 - self.base) / self.unit + 1;
        let resident = || pages.clone().all(|p| self.states[p].load().is_resident());
        resident() && self.read_resident(addr, out) && resident()
    }

    /// A page prefetched earlier was used, or evicted unused: the pointer chase learns
    /// from it if it was one of its own.
    #[inline]
    pub fn pointer_feedback(&self, page: u64, used: bool) {
        if let Some(l) = &self.learnt {
            l.feedback(page, used);
        }
    }

    /// Whether faults here chase pointers (`prefetch::pointer`).
    #[inline]
    pub fn pointer_prefetch(&self) -> bool {
        self.pointer.load(Relaxed)
    }

    pub fn set_pointer_prefetch(&self, on: bool) {
        self.pointer.store(on, Relaxed);
    }

    #[inline]
    pub fn page_addr(&self, page: u64) -> usize {
        self.base + page as usize * self.unit
    }

    /// The far tier's keys of page `page`: one, or one per 4 KiB of a huge page.
    pub fn keys(&self, page: u64) -> impl Iterator<Item = PageKey> + use<'_> {
        let per = (self.unit / PAGE_SIZE) as u64;
        (page * per..(page + 1) * per).map(|p| PageKey::new(self.id, p))
    }

    /// The checksum of the page's far copy. Read and written only under the page lock.
    #[inline]
    pub fn far_hash(&self, page: u64) -> u128 {
        let i = page as usize * 2;
        (self.far_hashes[i].load(Relaxed) as u128)
            | ((self.far_hashes[i + 1].load(Relaxed) as u128) << 64)
    }

    #[inline]
    pub fn set_far_hash(&self, page: u64, h: u128) {
        let i = page as usize * 2;
        self.far_hashes[i].store(h as u64, Relaxed);
        self.far_hashes[i + 1].store((h >> 64) as u64, Relaxed);
    }

    /// One past the highest page ever touched.
    #[inline]
    pub fn high_water(&self) -> u64 {
        self.high.load(Relaxed)
    }

    /// Notes that `page` is being touched.
    #[inline]
    pub fn note_touched(&self, page: u64) {
        if page >= self.high.load(Relaxed) {
            self.high.fetch_max(page + 1, Relaxed);
        }
    }

    /// The advice covering `page`, if any (never blocks: skipped while being changed).
    pub fn advice_at(&self, page: u64) -> Option<Advice> {
        let a = self.advice.try_read().ok()?;
        a.iter()
            .rev()
            .find(|(s, e, _)| (*s..*e).contains(&page))
            .map(|(_, _, a)| *a)
    }

    /// Makes chunks `0..=chunk` mappings of their own, so that `/proc/self/smaps` counts
    /// each one's accessed bits apart (`sys::mem::split_mapping` on every odd chunk).
    /// Returns false if that is not possible: the process-wide allowance of split
    /// mappings is spent (they count against `vm.max_map_count`), or the kernel refused.
    /// Called by whoever selects victims (under the policy lock).
    pub fn split_through(&self, chunk: u64) -> bool {
        let done = self.split.load(Relaxed);
        if chunk < done {
            return true;
        }
        let chunks = (self.pages).div_ceil(CHUNK_PAGES);
        let upto = (chunk + 2).min(chunks); // marking chunk+1 separates chunk from it
        if upto > done
            && SPLIT_ALLOWANCE.fetch_sub((upto - done) as isize, Relaxed) < (upto - done) as isize
        {
            SPLIT_ALLOWANCE.fetch_add((upto - done) as isize, Relaxed);
            return false;
        }
        for c in done..upto {
            if c % 2 == 1 {
                let at = self.page_addr(c * CHUNK_PAGES);
                let len = ((c + 1) * CHUNK_PAGES).min(self.pages) as usize * self.unit
                    - c as usize * CHUNK_PAGES as usize * self.unit;
                if crate::sys::mem::split_mapping(at, len).is_err() {
                    self.split.store(c.saturating_sub(1), Relaxed);
                    return false;
                }
            }
        }
        // Chunk `upto - 1` is separate from its right neighbour if one of the two is
        // marked (or it ends the region).
        let separate = if upto == chunks || (upto - 1) % 2 == 1 {
            upto
        } else {
            upto - 1
        };
        self.split.store(separate, Relaxed);
        chunk < separate
    }

    /// In a forked child: copies the resident pages into a memfd of the child's own, maps
    /// it in place of the parent's (which fork left out), and registers it with a new
    /// userfaultfd. Descriptor numbers stay the same, so nothing else changes.
    pub fn take_over_after_fork(&self) -> std::io::Result<()> {
        if self.shared.huge() {
            // hugetlbfs has no copy_file_range: map a new file and read each resident
            // huge page of the parent's into it.
            let new = Memfd::new_huge(c"farmem-region", self.len)?;
            // SAFETY: the range fork left unmapped in the child (MADV_DONTFORK); it is this
            // region's own address range.
            unsafe { new.map_fixed(self.base, self.len)? };
            for p in 0..self.high_water() {
                if self.states[p as usize].load().is_resident() {
                    let at = self.page_addr(p);
                    // SAFETY: one page of the mapping just made, not yet registered with
                    // userfaultfd, which nothing else in the child uses yet.
                    let dst = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, self.unit) };
                    self.memfd.read_at(dst, at - self.base)?;
                }
            }
            // The copies were mapped by writing them: unmap them again, so that page
            // states and mappings agree (an INACTIVE page must be unmapped before it is
            // evicted; an ACTIVE one is mapped again by its next touch).
            let end = self.page_addr(self.high_water()) - self.base;
            if end > 0 {
                let iov = [libc::iovec {
                    iov_base: self.base as *mut libc::c_void,
                    iov_len: end,
                }];
                self.shared.zapper.zap(&iov)?;
            }
            self.memfd.replace_with(&new)?;
            drop(new);
        } else {
            let new = Memfd::new(c"farmem-region", self.len)?;
            let end = self.page_addr(self.high_water()) - self.base;
            self.memfd.copy_data_to(&new, end)?;
            // The old file stays open in the parent.
            self.memfd.replace_with(&new)?;
            drop(new);
            // SAFETY: the range fork left unmapped in the child (MADV_DONTFORK); it is this
            // region's own address range.
            unsafe { self.memfd.map_fixed(self.base, self.len)? };
        }
        // The new mapping is one VMA again: chunks are split anew as the hand reaches them.
        self.split.store(0, Relaxed);
        let uffd = Uffd::new(self.uffd.features(), self.mode == FaultMode::Thread)?;
        self.uffd.replace_with(&uffd)?;
        drop(uffd);
        self.uffd.register(
            self.base,
            self.len,
            uffd::REGISTER_MODE_MISSING | uffd::REGISTER_MODE_MINOR,
        )
    }

    /// Pages resident now (mapped or not).
    pub fn resident_pages(&self) -> u64 {
        self.states
            .iter()
            .filter(|w| w.load().is_resident())
            .count() as u64
    }
}
