//! The anonymous-mmap family: large anonymous private read-write mmaps become far heap
//! blocks, and munmap, mremap and madvise on them are emulated.

use std::sync::atomic::Ordering::Relaxed;

use libc::{c_int, c_void, size_t};

use crate::heap::owns;
use crate::rt;

/// mmap(2): large anonymous private read-write mappings come from the far heap.
///
/// # Safety
/// mmap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"mmap",
        unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, libc::off_t) -> *mut c_void
    );
    if (far_candidate(addr, len, prot, flags) || reservation(addr, len, prot, flags))
        && let Some(p) = crate::heap::mmap_alloc(len)
    {
        return p as *mut c_void;
    }
    if flags & libc::MAP_FIXED != 0 && owns(addr as usize) {
        return fixed_in_heap(addr, len, prot, flags, fd);
    }
    // SAFETY: forwarded.
    unsafe { f(addr, len, prot, flags, fd, off) }
}

/// mmap64, the same as mmap on 64-bit systems.
///
/// # Safety
/// mmap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    // SAFETY: forwarded.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

fn far_candidate(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int) -> bool {
    prot == libc::PROT_READ | libc::PROT_WRITE && large_private_anonymous(addr, len, flags)
}

/// A large anonymous PROT_NONE reservation, which `farmem run --take-reserved` turns into
/// a far heap block: QEMU reserves its guest RAM so, then maps it read-write inside with
/// MAP_FIXED (see `fixed_in_heap`). The block is readable and writable from the start (a
/// far region cannot be PROT_NONE in parts), so a guard page in it does not trap.
fn reservation(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int) -> bool {
    prot == libc::PROT_NONE
        && rt::TAKE_RESERVED.load(Relaxed)
        && large_private_anonymous(addr, len, flags)
}

/// A new anonymous private mapping of at least the threshold, placed by the kernel,
/// with nothing special asked of it: what the far heap may stand in for.
fn large_private_anonymous(addr: *mut c_void, len: size_t, flags: c_int) -> bool {
    let want = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let refuse = libc::MAP_SHARED
        | libc::MAP_FIXED
        | libc::MAP_FIXED_NOREPLACE
        | libc::MAP_GROWSDOWN
        | libc::MAP_HUGETLB
        | libc::MAP_STACK;
    rt::ready()
        && addr.is_null()
        && flags & want == want
        && flags & refuse == 0
        && len >= rt::MMAP_THRESHOLD.load(Relaxed)
}

/// mmap with MAP_FIXED over part of a far heap block. A fresh anonymous private mapping
/// there is the block's pages zeroed (mapping anything else over far memory would put
/// pages the engine does not know about inside its region, and eviction would lose
/// them): they are discarded and the address returned. PROT_NONE stays readable and
/// writable. Anything else (a file, shared memory) is refused with EINVAL.
fn fixed_in_heap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
) -> *mut c_void {
    let a = addr as usize;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let inside = crate::heap::mmap_block(a).is_some_and(|(start, blen)| a + len <= start + blen);
    if flags & anon == anon
        && flags & libc::MAP_SHARED == 0
        && fd == -1
        && prot & libc::PROT_EXEC == 0
        && a.is_multiple_of(4096)
        && inside
    {
        rt::discard(a, len.next_multiple_of(4096));
        return addr;
    }
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = libc::EINVAL };
    libc::MAP_FAILED
}

/// munmap(2).
///
/// # Safety
/// munmap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"munmap",
        unsafe extern "C" fn(*mut c_void, size_t) -> c_int
    );
    if owns(addr as usize) {
        if (addr as usize).is_multiple_of(4096) && crate::heap::mmap_free(addr as usize, len) {
            return 0;
        }
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    }
    // SAFETY: forwarded.
    unsafe { f(addr, len) }
}

/// mremap(2) (variadic; the new address is in the fifth argument register either way).
///
/// # Safety
/// mremap's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"mremap",
        unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void
    );
    let a = old as usize;
    if !owns(a) {
        // SAFETY: forwarded.
        return unsafe { f(old, old_len, new_len, flags, new_addr) };
    }
    let fail = |e| {
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = e };
        libc::MAP_FAILED
    };
    let Some((start, blen)) = crate::heap::mmap_block(a) else {
        return fail(libc::EFAULT);
    };
    if flags & libc::MREMAP_FIXED != 0 || start != a {
        return fail(libc::EINVAL);
    }
    let new_len = new_len.next_multiple_of(4096);
    if new_len <= blen {
        if new_len < blen {
            crate::heap::mmap_free(a + new_len, blen - new_len);
        }
        return old;
    }
    if flags & libc::MREMAP_MAYMOVE == 0 {
        return fail(libc::ENOMEM);
    }
    let Some(q) = crate::heap::mmap_alloc(new_len) else {
        return fail(libc::ENOMEM);
    };
    // SAFETY: two distinct live blocks of the heap; copy the old contents.
    unsafe { std::ptr::copy_nonoverlapping(a as *const u8, q as *mut u8, old_len.min(blen)) };
    crate::heap::mmap_free(a, blen);
    q as *mut c_void
}

/// madvise(2): in the far heap, DONTNEED and FREE discard (the pages read as zeros, as
/// for anonymous memory) and WILLNEED prefetches; other advice is accepted and ignored.
///
/// # Safety
/// madvise's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"madvise",
        unsafe extern "C" fn(*mut c_void, size_t, c_int) -> c_int
    );
    let a = addr as usize;
    if !owns(a) {
        // SAFETY: forwarded.
        return unsafe { f(addr, len, advice) };
    }
    let Some(rt) = rt::rt() else { return 0 };
    let base = rt.region.as_ptr() as usize;
    let len = len.next_multiple_of(4096).min(base + rt.region.len() - a);
    match advice {
        libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE => rt::discard(a, len),
        libc::MADV_WILLNEED => {
            let _ = rt.region.prefetch(a - base, len);
        }
        _ => {}
    }
    0
}
