//! The region handle: `len` bytes of ordinary memory a program uses from any thread,
//! backed by far memory. The state behind it is `state::region`; faults on it go to
//! `fault.rs`; the application's range calls go to `range.rs`.

use crate::backend::PAGE_SIZE;
use crate::prefetch::PrefetchRequest;
use crate::state::region::RegionState;
use crate::state::registry;
use crate::state::shared::Shared;
use crate::sys::event::EventFd;
use crate::{Advice, Error, FaultMode};
use std::sync::Arc;
use std::sync::atomic::Ordering::*;

/// Starts handler thread `i` of region `r` (thread mode), which runs until `stop` is
/// signalled.
pub(crate) fn spawn_handler(
    r: &Arc<RegionState>,
    stop: i32,
    i: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let r = r.clone();
    let cpus = &r.shared.config.handler_cpus;
    let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
    std::thread::Builder::new()
        .name(format!("farmem-uffd-{}-{i}", r.id))
        .spawn(move || {
            if let Some(c) = cpu {
                // Best effort: a CPU outside the process's set leaves the thread unpinned.
                let _ = crate::sys::sched::pin_current_thread(c);
            }
            crate::fault::handler_loop(&r, stop)
        })
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
    inner: Arc<RegionState>,
    handlers: Vec<std::thread::JoinHandle<()>>,
    stop: Option<EventFd>,
    /// The process that created it: a forked child must not join the parent's threads.
    pid: u32,
}

impl Region {
    pub(crate) fn new(shared: Arc<Shared>, len: usize) -> Result<Region, Error> {
        let _pass = crate::state::gate::enter();
        let inner = RegionState::new(&shared, len)?;
        let mut region = Region {
            inner: inner.clone(),
            handlers: Vec::new(),
            stop: None,
            pid: std::process::id(),
        };
        crate::fork::track_region(&inner);
        match inner.mode {
            FaultMode::Sigbus => {
                crate::sys::signal::install(crate::fault::on_sigbus)
                    .map_err(|e| Error::os("install the SIGBUS handler", e))?;
                registry::add(&inner)?;
            }
            _ => region.start_handlers(shared.config.handler_threads)?,
        }
        Ok(region)
    }

    fn start_handlers(&mut self, n: usize) -> Result<(), Error> {
        let stop = EventFd::new().map_err(|e| Error::os("create an eventfd", e))?;
        for i in 0..n {
            let h = spawn_handler(&self.inner, stop.raw(), i)
                .map_err(|e| Error::os("spawn a fault handler thread", e))?;
            self.handlers.push(h);
        }
        self.inner.stop_fd.store(stop.raw(), Relaxed);
        self.inner.handler_count.store(n, Relaxed);
        self.stop = Some(stop);
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

    /// Pages in the region (of the engine's page size, [`Region::page_bytes`]).
    pub fn pages(&self) -> u64 {
        self.inner.pages
    }

    /// Bytes in one of the region's pages: 4 KiB, or 2 MiB with huge pages.
    pub fn page_bytes(&self) -> usize {
        self.inner.unit
    }

    /// How this region's faults are resolved.
    pub fn fault_mode(&self) -> FaultMode {
        self.inner.mode
    }

    fn check(&self, offset: usize, len: usize) -> Result<(u64, u64), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.inner.len => {
                let u = self.inner.unit;
                Ok(((offset / u) as u64, end.div_ceil(u) as u64))
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
        let _pass = crate::state::gate::enter();
        let (first, end) = self.check(offset, len)?;
        crate::range::prefetch_range(&self.inner, first, end);
        Ok(())
    }

    /// Tells the engine how `[offset, offset+len)` will be used:
    /// `Sequential` prefetches ahead on every fault there, `Random` turns prefetching off
    /// there, `WillNeed` prefetches the range now, `DontNeed` evicts it now (the data is
    /// kept in the far tier: this is not `MADV_DONTNEED`'s discard; see [`Region::discard`]).
    /// `Normal` removes earlier advice for the range.
    pub fn advise(&self, offset: usize, len: usize, advice: Advice) -> Result<(), Error> {
        let _pass = crate::state::gate::enter();
        let (first, end) = self.check(offset, len)?;
        match advice {
            Advice::WillNeed => crate::range::prefetch_range(&self.inner, first, end),
            Advice::DontNeed => crate::range::evict_range(&self.inner, first, end),
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

    /// Throws away the content of `[offset, offset+len)` (whole 4 KiB pages inside it):
    /// they read as zeros afterwards and cost nothing, locally or far. With 2 MiB pages,
    /// the huge pages wholly inside the range are discarded, and the 4 KiB pages of the
    /// range in a huge page only partly inside it are zeroed in place (which brings that
    /// huge page in).
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), Error> {
        self.check(offset, len)?;
        let u = self.inner.unit;
        let first = offset.div_ceil(u) as u64;
        let end = (offset.saturating_add(len) / u) as u64;
        if u > PAGE_SIZE {
            let lo = offset.next_multiple_of(PAGE_SIZE);
            let hi = (offset + len) / PAGE_SIZE * PAGE_SIZE;
            let (whole_lo, whole_hi) = (
                first as usize * u,
                (end as usize * u).max(first as usize * u),
            );
            for (a, b) in [(lo, whole_lo.min(hi)), (whole_hi.max(lo), hi)] {
                if a < b {
                    // SAFETY: [a, b) is inside the region (checked above); writing zeros
                    // through the mapping faults the huge page in as any write does.
                    unsafe { std::ptr::write_bytes(self.as_ptr().add(a), 0, b - a) };
                }
            }
        }
        let _pass = crate::state::gate::enter();
        if first < end {
            crate::range::discard_range(&self.inner, first, end);
        }
        Ok(())
    }

    /// Throws away the far copies of the whole pages inside `[offset, offset+len)` that
    /// are not in local memory: they read as zeros afterwards, and their next touch costs
    /// a zero-fill instead of a fetch. Pages in local memory keep their content and stay
    /// mapped. Cheaper than [`Region::discard`] (no unmapping) for memory that is free
    /// but likely to be reused soon, such as a freed heap block.
    pub fn forget_far(&self, offset: usize, len: usize) -> Result<(), Error> {
        let _pass = crate::state::gate::enter();
        let u = self.inner.unit;
        let first = offset.div_ceil(u) as u64;
        let end = (offset.saturating_add(len) / u) as u64;
        self.check(offset, len)?;
        crate::range::forget_far_range(&self.inner, first, end);
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

    /// Tells the pointer chase where this region's heap blocks are: `table(addr)` is the
    /// live block containing `addr` as `(start, end)`, or None. It runs on the fault path
    /// (in signal context in the in-thread mode) for every word that may be a pointer: it
    /// must be cheap, and must not touch far memory, block or allocate. farmem's heap sets
    /// it ([`crate::heap::Heap::new`]).
    pub fn set_block_table(
        &self,
        table: impl Fn(usize) -> Option<(usize, usize)> + Send + Sync + 'static,
    ) {
        *self.inner.blocks.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(table));
    }

    /// Sets the eviction hint: `hint(page_addr)` says whether a resident page should be
    /// kept, evicted first, or left to the policy ([`crate::Priority`]). The reclaimer
    /// asks it for every resident page of a chunk its hand passes (on the reclaimer's
    /// thread, or a faulting thread reclaiming for itself: it must not touch far memory,
    /// block or allocate). Pages kept this way still go when nothing else can: a hint
    /// never stops reclaim.
    pub fn set_evict_hint(&self, hint: impl Fn(usize) -> crate::Priority + Send + Sync + 'static) {
        *self
            .inner
            .evict_hint
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hint));
    }

    /// Removes the eviction hint.
    pub fn clear_evict_hint(&self) {
        *self
            .inner
            .evict_hint
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Turns the pointer chase on or off for this region (the engine's
    /// [`Builder::pointer_prefetch`](crate::Builder::pointer_prefetch) sets where it
    /// starts).
    pub fn set_pointer_prefetch(&self, on: bool) {
        self.inner.set_pointer_prefetch(on);
    }

    /// Copies `out.len()` bytes at address `addr` of this region into `out` if they are
    /// all in local memory, without a fault (so also from a prefetch upcall): false if
    /// any of it is outside the region or far. What a plug-in's `farmem_read` does.
    pub fn read_local(&self, addr: usize, out: &mut [u8]) -> bool {
        self.inner.read_local(addr, out)
    }

    /// Removes the prefetch upcall.
    pub fn clear_prefetch_hook(&self) {
        *self.inner.hook.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Pages of this region resident now (mapped or not).
    pub fn resident_pages(&self) -> u64 {
        self.inner.resident_pages()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _pass = crate::state::gate::enter();
        if self.inner.mode == FaultMode::Sigbus {
            registry::remove(&self.inner);
        }
        if let Some(stop) = self.stop.take() {
            // A failed signal would leave the handlers blocked: nothing to join then.
            let signalled = stop.signal().is_ok();
            let same_process = std::process::id() == self.pid;
            for h in self.handlers.drain(..) {
                if same_process && signalled {
                    let _ = h.join();
                }
            }
        }
        let shared = self.inner.shared.clone();
        shared.remove_region(self.inner.id);
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
                far.extend(self.inner.keys(i as u64));
            }
        }
        shared.release_frames(resident);
        for chunk in far.chunks(1024) {
            shared.backend.discard(chunk);
        }
        let _ = self.inner.uffd.unregister(self.inner.base, self.inner.len);
    }
}
