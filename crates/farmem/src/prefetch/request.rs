//! What a prefetch upcall (the application's own prefetcher) sees and asks for.

use super::Candidates;
use crate::backend::PAGE_SIZE;

/// A user prefetch upcall: called on the fault path with the faulting address; pushes the
/// ranges to bring in. Runs in signal context in the in-thread mode: it must not touch far
/// memory, block or allocate.
pub type PrefetchHook = dyn Fn(usize, &mut PrefetchRequest) + Send + Sync;

/// What a prefetch upcall asks for: address ranges of the faulting region, of two kinds.
///
/// - [`range`](Self::range) and [`page`](Self::page) are guesses: the pages come in like
///   the prefetcher's, the far end of each run unmapped as its marker, so that their use is
///   counted and the upcall runs again when the program reaches it.
/// - [`object`](Self::object) is the rest of the object the fault landed in, which the
///   program is about to read to its end: mapped at once, with no marker (no `pwrite`, no
///   minor fault at its end) and no tracking of its use.
#[derive(Debug)]
pub struct PrefetchRequest<'a> {
    base: usize,
    pages: u64,
    objects: &'a mut Candidates,
    guesses: &'a mut Candidates,
    enough: bool,
    hit: bool,
    local: bool,
    regs: &'a [u64],
    block: Option<(usize, usize)>,
    write: bool,
}

impl<'a> PrefetchRequest<'a> {
    pub(crate) fn new(
        base: usize,
        pages: u64,
        objects: &'a mut Candidates,
        guesses: &'a mut Candidates,
        hit: bool,
        local: bool,
    ) -> PrefetchRequest<'a> {
        PrefetchRequest {
            base,
            pages,
            objects,
            guesses,
            enough: false,
            hit,
            local,
            regs: &[],
            block: None,
            write: false,
        }
    }

    pub(crate) fn set_context(
        &mut self,
        regs: &'a [u64],
        block: Option<(usize, usize)>,
        write: bool,
    ) {
        self.regs = regs;
        self.block = block;
        self.write = write;
    }

    /// Whether the faulting access was a write (x86-64; reads elsewhere).
    pub fn is_write(&self) -> bool {
        self.write
    }

    /// The faulting thread's general-purpose registers at the fault (x86-64: rax, rbx,
    /// rcx, rdx, rsi, rdi, rbp, r8 to r15, and rsp last), what the program was working
    /// with: a list node, an iterator. Empty where the fault is resolved on another
    /// thread (the thread fault mode).
    pub fn registers(&self) -> &[u64] {
        self.regs
    }

    /// The heap block the fault lies in, `(start, end)`, from the region's block table
    /// ([`Region::set_block_table`](crate::Region::set_block_table); farmem's heap sets
    /// one), or None.
    pub fn block(&self) -> Option<(usize, usize)> {
        self.block
    }

    /// Whether the upcall runs for the touch of a page that is local but was unmapped (the
    /// reclaimer tests whether pages are still in use by unmapping them) rather than for a
    /// fetch. Only [`object`](Self::object) ranges are used then, starting at the page
    /// after the touched one: their local pages are mapped with it. Guesses are ignored,
    /// and an upcall may return at once.
    pub fn is_local_touch(&self) -> bool {
        self.local
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

    /// Asks for the pages covering `[addr, addr+len)` as a guess; parts outside the
    /// region are ignored.
    pub fn range(&mut self, addr: usize, len: usize) {
        push_range(self.guesses, self.base, self.pages, addr, len);
    }

    /// Asks for the page containing `addr`, as a guess.
    pub fn page(&mut self, addr: usize) {
        self.range(addr, 1);
    }

    /// Asks for `[addr, addr+len)` as the rest of the object the fault landed in: the
    /// program reads it to its end, so it is mapped at once. Parts outside the region are
    /// ignored.
    pub fn object(&mut self, addr: usize, len: usize) {
        push_range(self.objects, self.base, self.pages, addr, len);
    }
}

/// Pushes the pages of a region (at `base`, `pages` long) covering `[addr, addr+len)`.
fn push_range(out: &mut Candidates, base: usize, pages: u64, addr: usize, len: usize) {
    if len == 0 {
        return;
    }
    let end = addr.saturating_add(len);
    let first = addr.max(base).saturating_sub(base) / PAGE_SIZE;
    let last = (end.saturating_sub(base))
        .div_ceil(PAGE_SIZE)
        .min(pages as usize);
    for p in first..last {
        if !out.push(p as u64) {
            break;
        }
    }
}
