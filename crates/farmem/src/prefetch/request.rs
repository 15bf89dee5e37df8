//! What a prefetch upcall (the application's own prefetcher) sees and asks for.

use super::Candidates;
use crate::backend::PAGE_SIZE;

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
