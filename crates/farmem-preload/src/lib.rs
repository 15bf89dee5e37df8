//! The LD_PRELOAD library behind `farmem run`: a program's heap becomes far memory.
//!
//! Loaded into an unmodified program, it replaces every entry point of the malloc family
//! and large anonymous private mmaps with allocations from one far region (one of
//! farmem's allocators, `farmem::heap`, over a sparse far region of `FARMEM_HEAP_MAX`
//! bytes), all under one local budget. The rest of the program is untouched.
//!
//! ```text
//!  program ── malloc/free/... ──► heap (farslab | mimalloc | tlsf) ──► far region ──► engine
//!          ── mmap(anon, big) ──►
//!          ── read/write/recv/... on heap buffers ──► io: pin + touch, then the call
//!          ── fork ──► atfork: heap lock, engine snapshot for the child
//!  libc's own allocations (stdio buffers, ...) ──► glibc's malloc (local memory)
//! ```
//!
//! Configuration comes from the environment `farmem run` sets (FARMEM_LOCAL_MEM, ...);
//! see `rt`. farmem's own Rust code allocates through glibc's malloc (`__libc_malloc`),
//! never through the heap it provides.

mod capi;
mod entry;
mod extent;
mod heap;
mod io;
mod plugin;
mod rt;
mod sud;

/// farmem's own allocations (the engine's tables, its threads, the tier's storage) go to
/// glibc's allocator under its internal names, which no preload can interpose.
struct LibcAlloc;

unsafe extern "C" {
    fn __libc_malloc(size: usize) -> *mut libc::c_void;
    fn __libc_free(p: *mut libc::c_void);
    fn __libc_calloc(n: usize, size: usize) -> *mut libc::c_void;
    fn __libc_realloc(p: *mut libc::c_void, size: usize) -> *mut libc::c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut libc::c_void;
}

// SAFETY: glibc's allocator satisfies GlobalAlloc's contract for the layouts passed
// (alignment above 16 goes through memalign).
unsafe impl std::alloc::GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: plain calls into glibc's allocator.
        unsafe {
            if l.align() <= 16 {
                __libc_malloc(l.size()).cast()
            } else {
                __libc_memalign(l.align(), l.size()).cast()
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            if l.align() <= 16 {
                __libc_calloc(1, l.size()).cast()
            } else {
                let p = __libc_memalign(l.align(), l.size());
                if !p.is_null() {
                    std::ptr::write_bytes(p.cast::<u8>(), 0, l.size());
                }
                p.cast()
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: std::alloc::Layout) {
        // SAFETY: `p` came from this allocator.
        unsafe { __libc_free(p.cast()) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe {
            if l.align() <= 16 {
                __libc_realloc(p.cast(), new).cast()
            } else {
                let q = self.alloc(std::alloc::Layout::from_size_align_unchecked(
                    new,
                    l.align(),
                ));
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                    self.dealloc(p, l);
                }
                q
            }
        }
    }
}

#[global_allocator]
static GLOBAL: LibcAlloc = LibcAlloc;

pub(crate) use self::__libc_realloc as libc_realloc;
pub(crate) use self::{__libc_calloc as libc_calloc, __libc_free as libc_free};
pub(crate) use self::{__libc_malloc as libc_malloc, __libc_memalign as libc_memalign};
