//! Far regions: a memfd mapped shared and registered with userfaultfd, its page-state
//! table, and the application's hints.
//!
//! ```text
//!   Region (user handle) ──► RegionInner ──► memfd ──── page cache (resident pages)
//!                               │   ▲            └──── mapping [base, base+len)
//!                               │   └── global registry: the SIGBUS handler finds the
//!                               │       region of a fault address here
//!                               └──► Shared (budget, tier, policy, reclaimer)
//! ```

use crate::backend::{PAGE_SIZE, PageKey};
use crate::engine::Shared;
use crate::page::{PageWord, State, zeroed_table};
use crate::prefetch::{Candidates, Majority, NoPrefetch, Prefetcher, Readahead};
use crate::sys::mem::{Mapping, Memfd};
use crate::sys::uffd::{self, Uffd};
use crate::{Advice, Error, FaultMode, PrefetchKind};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, RwLock};

/// A user prefetch upcall: called on the fault path with the faulting address; pushes the
/// ranges to bring in. Runs in signal context in the in-thread mode: it must not touch far
/// memory, block or allocate.
pub type PrefetchHook = dyn Fn(usize, &mut PrefetchRequest) + Send + Sync;

/// What a prefetch upcall asks for: address ranges of the faulting region.
#[derive(Debug)]
pub struct PrefetchRequest<'a> {
    base: usize,
    pages: u64,
    out: &'a mut Candidates,
    enough: bool,
    hit: bool,
}

impl<'a> PrefetchRequest<'a> {
    pub(crate) fn new(
        base: usize,
        pages: u64,
        out: &'a mut Candidates,
        hit: bool,
    ) -> PrefetchRequest<'a> {
        PrefetchRequest {
            base,
            pages,
            out,
            enough: false,
            hit,
        }
    }

    /// Whether the upcall runs for the first touch of a prefetched page (the end of a
    /// prefetched run was reached) rather than for a major fault.
    pub fn is_prefetch_hit(&self) -> bool {
        self.hit
    }

    /// Says that the ranges asked for are all this fault needs: the engine's own
    /// prefetcher (and range advice) is skipped for it. For an upcall that knows where
    /// the object being read ends, so that a guess does not fetch past it.
    pub fn enough(&mut self) {
        self.enough = true;
    }

    pub(crate) fn is_enough(&self) -> bool {
        self.enough
    }

    /// Asks for the pages covering `[addr, addr+len)`; parts outside the region are ignored.
    pub fn range(&mut self, addr: usize, len: usize) {
        if len == 0 {
            return;
        }
        let end = addr.saturating_add(len);
        let first = addr.max(self.base).saturating_sub(self.base) / PAGE_SIZE;
        let last = (end.saturating_sub(self.base))
            .div_ceil(PAGE_SIZE)
            .min(self.pages as usize);
        for p in first..last {
            if !self.out.push(p as u64) {
                break;
            }
        }
    }

    /// Asks for the page containing `addr`.
    pub fn page(&mut self, addr: usize) {
        self.range(addr, 1);
    }
}

pub(crate) struct RegionInner {
    pub id: u32,
    pub base: usize,
    pub len: usize,
    pub pages: u64,
    pub memfd: Memfd,
    pub uffd: Uffd,
    pub mode: FaultMode,
    pub states: Box<[PageWord]>,
    far_hashes: Box<[AtomicU64]>,
    pub shared: Arc<Shared>,
    pub prefetcher: Mutex<Box<dyn Prefetcher>>,
    pub advice: RwLock<Vec<(u64, u64, Advice)>>,
    pub hook: RwLock<Option<Arc<PrefetchHook>>>,
    /// One past the highest page ever touched: sweeps and fork stop here, so that a
    /// huge sparse region costs only what was used.
    high: std::sync::atomic::AtomicU64,
    /// The handler threads' stop eventfd and count (thread mode), for a forked child.
    stop_fd: std::sync::atomic::AtomicI32,
    handler_count: AtomicUsize,
    /// Dropped last: the mapping must outlive every use of `base`.
    _map: Mapping,
}

impl std::fmt::Debug for RegionInner {
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

/// The hash of an all-zero page.
pub(crate) fn zero_hash() -> u128 {
    static ZERO: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| page_hash(&[0u8; PAGE_SIZE]))
}

impl RegionInner {
    #[inline]
    pub fn page_addr(&self, page: u64) -> usize {
        self.base + page as usize * PAGE_SIZE
    }

    #[inline]
    pub fn key(&self, page: u64) -> PageKey {
        PageKey::new(self.id, page)
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

    /// In a forked child: copies the resident pages into a memfd of the child's own, maps
    /// it in place of the parent's (which fork left out), and registers it with a new
    /// userfaultfd. Descriptor numbers stay the same (`dup3` over the inherited ones), so
    /// nothing else changes.
    pub fn take_over_after_fork(&self) -> std::io::Result<()> {
        let old = self.memfd.raw();
        let new = Memfd::new(c"farmem-region", self.len)?;
        let end = self.page_addr(self.high_water()) - self.base;
        let mut off: i64 = 0;
        while (off as usize) < end {
            // SAFETY: lseek on our own descriptor.
            let data = unsafe { libc::lseek(old, off, libc::SEEK_DATA) };
            if data < 0 {
                break; // ENXIO: no data past `off`
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(old, data, libc::SEEK_HOLE) };
            let hole = if hole < 0 { self.len as i64 } else { hole };
            let (mut src, mut dst) = (data, data);
            while src < hole {
                // SAFETY: copying between two memfds of ours, with our own offsets.
                let n = unsafe {
                    libc::copy_file_range(
                        old,
                        &mut src,
                        new.raw(),
                        &mut dst,
                        (hole - src) as usize,
                        0,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    break;
                }
            }
            off = hole;
        }
        // SAFETY: replacing our own descriptor number with the new file; the old file stays
        // open in the parent.
        if unsafe { libc::dup3(new.raw(), old, libc::O_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(new);
        // SAFETY: MAP_FIXED over the range fork left unmapped in the child (MADV_DONTFORK);
        // it is this region's own address range.
        let p = unsafe {
            crate::sys::raw::mmap(
                self.base as *mut libc::c_void,
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                old,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the mapping just made.
        if unsafe { crate::sys::raw::madvise(p, self.len, libc::MADV_DONTFORK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let uffd = Uffd::new(self.uffd.features(), self.mode == FaultMode::Thread)?;
        // SAFETY: as above, our own descriptor numbers.
        if unsafe { libc::dup3(uffd.raw(), self.uffd.raw(), libc::O_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(uffd);
        self.uffd.register(
            self.base,
            self.len,
            uffd::REGISTER_MODE_MISSING | uffd::REGISTER_MODE_MINOR,
        )
    }

    /// In a forked child: starts handler threads again (thread mode).
    pub fn restart_handlers_after_fork(self: &Arc<Self>) {
        let stop = self.stop_fd.load(Relaxed);
        for i in 0..self.handler_count.load(Relaxed) {
            let r = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("farmem-uffd-{}-{i}", r.id))
                .spawn(move || crate::fault::handler_loop(&r, stop));
            if let Err(e) = spawned {
                crate::fatal::die_io("after fork: could not start a fault handler thread", &e);
            }
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
}

/// A far region: `len` bytes of ordinary memory, of which only what the engine's budget
/// allows stays local. Use it from any thread through [`Region::as_ptr`], or through the
/// copy accessors [`Region::read`] and [`Region::write`].
///
/// In the in-thread fault mode (`sigbus`), the kernel itself cannot fault far pages in: a
/// system call given a pointer into the region (`read(2)` into it, say) fails with EFAULT
/// if the page is not resident. Use [`FaultMode::Thread`] for regions that the kernel
/// touches, or copy through a local buffer.
#[derive(Debug)]
pub struct Region {
    inner: Arc<RegionInner>,
    handlers: Vec<std::thread::JoinHandle<()>>,
    stop: Option<std::os::fd::OwnedFd>,
    /// The process that created it: a forked child must not join the parent's threads.
    pid: libc::pid_t,
}

impl Region {
    pub(crate) fn new(shared: Arc<Shared>, len: usize) -> Result<Region, Error> {
        let _pass = crate::fork::enter();
        if len == 0 {
            return Err(Error::InvalidArgument(
                "a region needs at least one byte".into(),
            ));
        }
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let pages = (len / PAGE_SIZE) as u64;
        if pages > PageKey::MAX_PAGE {
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
        let memfd = Memfd::new(c"farmem-region", len)
            .map_err(|e| Error::os("create the region's memfd", e))?;
        let map = memfd.map(len).map_err(|e| Error::os("map the region", e))?;
        // A forked child must not inherit the mapping: without the userfaultfd
        // registration, its touches would put zero pages into the parent's page cache.
        // The child gets no mapping at all (SIGSEGV if it touches the region).
        map.dont_fork()
            .map_err(|e| Error::os("exclude the region from fork (MADV_DONTFORK)", e))?;
        let mut features = uffd::feature::MISSING_SHMEM | uffd::feature::MINOR_SHMEM;
        if mode == FaultMode::Sigbus {
            features |= uffd::feature::SIGBUS;
        }
        let uffd = Uffd::new(features, mode == FaultMode::Thread).map_err(Error::userfaultfd)?;
        uffd.register(
            map.ptr() as usize,
            len,
            uffd::REGISTER_MODE_MISSING | uffd::REGISTER_MODE_MINOR,
        )
        .map_err(|e| Error::os("register the region with userfaultfd", e))?;
        let prefetcher: Box<dyn Prefetcher> =
            match (&shared.config.custom_prefetcher, shared.config.prefetch) {
                (Some(f), _) => f.make(),
                (None, PrefetchKind::None) => Box::new(NoPrefetch),
                (None, PrefetchKind::Readahead) => Box::<Readahead>::default(),
                (None, PrefetchKind::Majority) => Box::<Majority>::default(),
            };
        let mut regions = shared.regions.write().unwrap_or_else(|e| e.into_inner());
        let id = match regions.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                regions.push(None);
                regions.len() - 1
            }
        };
        if id >= 1 << 24 {
            return Err(Error::InvalidArgument(
                "too many regions in one engine (16 million)".into(),
            ));
        }
        let inner = Arc::new(RegionInner {
            id: id as u32,
            base: map.ptr() as usize,
            len,
            pages,
            memfd,
            uffd,
            mode,
            states,
            far_hashes,
            shared: shared.clone(),
            prefetcher: Mutex::new(prefetcher),
            advice: RwLock::new(Vec::new()),
            hook: RwLock::new(None),
            high: std::sync::atomic::AtomicU64::new(0),
            stop_fd: std::sync::atomic::AtomicI32::new(-1),
            handler_count: AtomicUsize::new(0),
            _map: map,
        });
        regions[id] = Some(inner.clone());
        drop(regions);
        shared.policy_reserve(shared.budget.load(Relaxed));
        let mut region = Region {
            inner: inner.clone(),
            handlers: Vec::new(),
            stop: None,
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
        };
        crate::fork::track_region(&inner);
        match mode {
            FaultMode::Sigbus => {
                crate::sys::signal::install(crate::fault::on_sigbus)
                    .map_err(|e| Error::os("install the SIGBUS handler", e))?;
                registry_add(&inner)?;
            }
            _ => region.start_handlers(shared.config.handler_threads)?,
        }
        Ok(region)
    }

    fn start_handlers(&mut self, n: usize) -> Result<(), Error> {
        // SAFETY: eventfd with plain flags; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::os(
                "create an eventfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a descriptor the kernel just gave us.
        let efd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
        for i in 0..n {
            let r = self.inner.clone();
            let stop = std::os::fd::AsRawFd::as_raw_fd(&efd);
            let h = std::thread::Builder::new()
                .name(format!("farmem-uffd-{}-{i}", r.id))
                .spawn(move || crate::fault::handler_loop(&r, stop))
                .map_err(|e| Error::os("spawn a fault handler thread", e))?;
            self.handlers.push(h);
        }
        self.inner
            .stop_fd
            .store(std::os::fd::AsRawFd::as_raw_fd(&efd), Relaxed);
        self.inner.handler_count.store(n, Relaxed);
        self.stop = Some(efd);
        Ok(())
    }

    /// First byte of the region.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.base as *mut u8
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether the region is empty (never: regions hold at least one page).
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.inner.pages
    }

    /// How this region's faults are resolved.
    pub fn fault_mode(&self) -> FaultMode {
        self.inner.mode
    }

    fn check(&self, offset: usize, len: usize) -> Result<(u64, u64), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.inner.len => {
                Ok(((offset / PAGE_SIZE) as u64, end.div_ceil(PAGE_SIZE) as u64))
            }
            _ => Err(Error::InvalidArgument(format!(
                "range {offset}+{len} is outside the region of {} bytes",
                self.inner.len
            ))),
        }
    }

    /// Copies `buf.len()` bytes at `offset` out of the region (faulting pages in as needed).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        self.check(offset, buf.len())?;
        // SAFETY: the range is inside the mapping, which lives as long as `self`; far
        // pages fault in transparently. Copying through raw pointers never forms a
        // reference to memory the pager may change.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        // SAFETY: as in `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Brings the pages of `[offset, offset+len)` into local memory now (as far as the
    /// budget allows without evicting more than it would anyway). They arrive unmapped and
    /// unreferenced: if they are not used, they are the first to go.
    pub fn prefetch(&self, offset: usize, len: usize) -> Result<(), Error> {
        let _pass = crate::fork::enter();
        let (first, end) = self.check(offset, len)?;
        crate::fault::prefetch_range(&self.inner, first, end);
        Ok(())
    }

    /// Tells the engine how `[offset, offset+len)` will be used:
    /// `Sequential` prefetches ahead on every fault there, `Random` turns prefetching off
    /// there, `WillNeed` prefetches the range now, `DontNeed` evicts it now (the data is
    /// kept in the far tier: this is not `MADV_DONTNEED`'s discard; see [`Region::discard`]).
    /// `Normal` removes earlier advice for the range.
    pub fn advise(&self, offset: usize, len: usize, advice: Advice) -> Result<(), Error> {
        let _pass = crate::fork::enter();
        let (first, end) = self.check(offset, len)?;
        match advice {
            Advice::WillNeed => crate::fault::prefetch_range(&self.inner, first, end),
            Advice::DontNeed => crate::fault::evict_range(&self.inner, first, end),
            Advice::Sequential | Advice::Random | Advice::Normal => {
                let mut a = self.inner.advice.write().unwrap_or_else(|e| e.into_inner());
                a.retain(|(s, e, _)| *e <= first || *s >= end);
                if advice != Advice::Normal {
                    a.push((first, end, advice));
                }
            }
        }
        Ok(())
    }

    /// Throws away the content of `[offset, offset+len)` (whole pages inside it): they
    /// read as zeros afterwards and cost nothing, locally or far.
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), Error> {
        let _pass = crate::fork::enter();
        let first = offset.div_ceil(PAGE_SIZE) as u64;
        let end = (offset.saturating_add(len) / PAGE_SIZE) as u64;
        self.check(offset, len)?;
        crate::fault::discard_range(&self.inner, first, end);
        Ok(())
    }

    /// Throws away the far copies of the whole pages inside `[offset, offset+len)` that
    /// are not in local memory: they read as zeros afterwards, and their next touch costs
    /// a zero-fill instead of a fetch. Pages in local memory keep their content and stay
    /// mapped. Cheaper than [`Region::discard`] (no unmapping) for memory that is free
    /// but likely to be reused soon, such as a freed heap block.
    pub fn forget_far(&self, offset: usize, len: usize) -> Result<(), Error> {
        let _pass = crate::fork::enter();
        let first = offset.div_ceil(PAGE_SIZE) as u64;
        let end = (offset.saturating_add(len) / PAGE_SIZE) as u64;
        self.check(offset, len)?;
        crate::fault::forget_far_range(&self.inner, first, end);
        Ok(())
    }

    /// Registers the prefetch upcall: on every major fault in this region, and on the first
    /// touch of every prefetched page, it is called with the faulting address and asks for
    /// ranges to bring in with it. It runs on the
    /// fault path (in signal context in the in-thread mode): it must not touch far memory,
    /// block or allocate.
    pub fn set_prefetch_hook(
        &self,
        hook: impl Fn(usize, &mut PrefetchRequest) + Send + Sync + 'static,
    ) {
        *self.inner.hook.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// Removes the prefetch upcall.
    pub fn clear_prefetch_hook(&self) {
        *self.inner.hook.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Pages of this region resident now (mapped or not).
    pub fn resident_pages(&self) -> u64 {
        self.inner
            .states
            .iter()
            .filter(|w| w.load().is_resident())
            .count() as u64
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _pass = crate::fork::enter();
        if self.inner.mode == FaultMode::Sigbus {
            registry_remove(&self.inner);
        }
        if let Some(stop) = self.stop.take() {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes to our own eventfd.
            unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&stop),
                    (&one as *const u64).cast(),
                    8,
                )
            };
            // SAFETY: getpid has no preconditions.
            let same_process = unsafe { libc::getpid() } == self.pid;
            for h in self.handlers.drain(..) {
                if same_process {
                    let _ = h.join();
                }
            }
        }
        let shared = self.inner.shared.clone();
        {
            let mut regions = shared.regions.write().unwrap_or_else(|e| e.into_inner());
            regions[self.inner.id as usize] = None;
        }
        // Lock every page (waiting for in-flight faults and evictions), then give back
        // its frame and its far copy.
        let mut resident = 0;
        let mut far = Vec::new();
        let high = self.inner.high_water() as usize;
        for (i, w) in self.inner.states[..high].iter().enumerate() {
            let s = w.lock_any();
            if s.is_resident() {
                resident += 1;
            }
            if s.has_far() {
                far.push(self.inner.key(i as u64));
            }
        }
        shared.release_frames(resident);
        for chunk in far.chunks(1024) {
            shared.backend.discard(chunk);
        }
        let _ = self.inner.uffd.unregister(self.inner.base, self.inner.len);
    }
}

// ---- The registry the SIGBUS handler searches -------------------------------------------

const MAX_SIGBUS_REGIONS: usize = 1024;

struct Slot {
    base: AtomicUsize,
    end: AtomicUsize,
    region: AtomicPtr<RegionInner>,
    users: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    base: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    region: AtomicPtr::new(std::ptr::null_mut()),
    users: AtomicUsize::new(0),
};
static SLOTS: [Slot; MAX_SIGBUS_REGIONS] = [EMPTY_SLOT; MAX_SIGBUS_REGIONS];
/// Slots in use are all below this index.
static SLOTS_HIGH: AtomicUsize = AtomicUsize::new(0);
static SLOTS_LOCK: Mutex<()> = Mutex::new(());

fn registry_add(r: &Arc<RegionInner>) -> Result<(), Error> {
    let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = SLOTS
        .iter()
        .position(|s| s.region.load(SeqCst).is_null() && s.users.load(SeqCst) == 0)
    else {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_SIGBUS_REGIONS} regions may use the in-thread fault mode at once"
        )));
    };
    let s = &SLOTS[i];
    s.base.store(r.base, SeqCst);
    s.end.store(r.base + r.len, SeqCst);
    s.region.store(Arc::as_ptr(r) as *mut RegionInner, SeqCst);
    SLOTS_HIGH.fetch_max(i + 1, SeqCst);
    Ok(())
}

fn registry_remove(r: &Arc<RegionInner>) {
    let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for s in &SLOTS[..SLOTS_HIGH.load(SeqCst)] {
        if std::ptr::eq(s.region.load(SeqCst), Arc::as_ptr(r)) {
            s.region.store(std::ptr::null_mut(), SeqCst);
            s.base.store(0, SeqCst);
            s.end.store(0, SeqCst);
            while s.users.load(SeqCst) != 0 {
                std::hint::spin_loop();
            }
        }
    }
}

/// Runs `f` on the region containing `addr`, if any; the region stays alive meanwhile.
#[inline]
pub(crate) fn with_region_at<T>(addr: usize, f: impl FnOnce(&RegionInner) -> T) -> Option<T> {
    for s in &SLOTS[..SLOTS_HIGH.load(Acquire)] {
        if addr < s.base.load(Relaxed) || addr >= s.end.load(Relaxed) {
            continue;
        }
        s.users.fetch_add(1, SeqCst);
        let p = s.region.load(SeqCst);
        // SAFETY: a non-null pointer in a slot stays valid while `users` is non-zero:
        // registry_remove nulls it and then waits for users to drain before the region
        // can be freed.
        let r = (!p.is_null())
            .then(|| unsafe { &*p })
            .filter(|r| addr >= r.base && addr < r.base + r.len);
        if let Some(r) = r {
            let out = f(r);
            s.users.fetch_sub(1, SeqCst);
            return Some(out);
        }
        s.users.fetch_sub(1, SeqCst);
    }
    None
}

/// Generation of the next residency of a page.
#[inline]
pub(crate) fn next_gen(s: State) -> u32 {
    s.generation().wrapping_add(1)
}
