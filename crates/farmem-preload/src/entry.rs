//! The malloc family's exported entry points.
//!
//! Each one that allocates hands its caller's return address to the heap, which keeps
//! the C library's own allocations local (see `rt::is_libc_caller`). Stable Rust has no
//! `return_address()`, so on x86-64 those entry points are naked trampolines that load
//! the return address from the stack into the next argument register and jump on.

use crate::heap;
use libc::{c_int, c_void, size_t};

#[cfg(target_arch = "x86_64")]
macro_rules! trampoline {
    ($name:ident => $target:ident, $reg:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                concat!("mov ", $reg, ", [rsp]"),
                "jmp {t}",
                t = sym $target,
            )
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod tramp {
    use super::*;
    trampoline!(malloc => malloc_from, "rsi");
    trampoline!(calloc => calloc_from, "rdx");
    trampoline!(realloc => realloc_from, "rdx");
    trampoline!(reallocarray => reallocarray_from, "rcx");
    trampoline!(memalign => memalign_from, "rdx");
    trampoline!(aligned_alloc => memalign_from, "rdx");
    trampoline!(posix_memalign => posix_memalign_from, "rcx");
    trampoline!(valloc => valloc_from, "rsi");
    trampoline!(pvalloc => pvalloc_from, "rsi");
}

/// Elsewhere every caller counts as the program's.
#[cfg(not(target_arch = "x86_64"))]
mod tramp {
    use super::*;
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn malloc(n: size_t) -> *mut c_void {
        malloc_from(n, std::ptr::null())
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn calloc(n: size_t, m: size_t) -> *mut c_void {
        calloc_from(n, m, std::ptr::null())
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn realloc(p: *mut c_void, n: size_t) -> *mut c_void {
        // SAFETY: forwarded contract.
        unsafe { realloc_from(p, n, std::ptr::null()) }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, m: size_t) -> *mut c_void {
        // SAFETY: forwarded contract.
        unsafe { reallocarray_from(p, n, m, std::ptr::null()) }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memalign(a: size_t, n: size_t) -> *mut c_void {
        memalign_from(a, n, std::ptr::null())
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn aligned_alloc(a: size_t, n: size_t) -> *mut c_void {
        memalign_from(a, n, std::ptr::null())
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, a: size_t, n: size_t) -> c_int {
        // SAFETY: forwarded contract.
        unsafe { posix_memalign_from(out, a, n, std::ptr::null()) }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn valloc(n: size_t) -> *mut c_void {
        valloc_from(n, std::ptr::null())
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn pvalloc(n: size_t) -> *mut c_void {
        pvalloc_from(n, std::ptr::null())
    }
}

fn set_errno(e: c_int) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn bad_align(a: usize) -> bool {
    a == 0 || !a.is_power_of_two()
}

extern "C" fn malloc_from(n: size_t, caller: *const c_void) -> *mut c_void {
    heap::alloc(n, 16, caller as usize, false)
}

extern "C" fn calloc_from(n: size_t, m: size_t, caller: *const c_void) -> *mut c_void {
    match n.checked_mul(m) {
        Some(t) => heap::alloc(t, 16, caller as usize, true),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn realloc_from(p: *mut c_void, n: size_t, caller: *const c_void) -> *mut c_void {
    // SAFETY: `p` is null or a live allocation of the program (realloc's contract).
    unsafe { heap::realloc(p, n, caller as usize) }
}

unsafe extern "C" fn reallocarray_from(
    p: *mut c_void,
    n: size_t,
    m: size_t,
    caller: *const c_void,
) -> *mut c_void {
    match n.checked_mul(m) {
        // SAFETY: as in realloc.
        Some(t) => unsafe { heap::realloc(p, t, caller as usize) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

extern "C" fn memalign_from(a: size_t, n: size_t, caller: *const c_void) -> *mut c_void {
    if bad_align(a) {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    heap::alloc(n, a.max(16), caller as usize, false)
}

unsafe extern "C" fn posix_memalign_from(
    out: *mut *mut c_void,
    a: size_t,
    n: size_t,
    caller: *const c_void,
) -> c_int {
    if bad_align(a) || !a.is_multiple_of(std::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = heap::alloc(n, a.max(16), caller as usize, false);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is the caller's result slot (posix_memalign's contract).
    unsafe { *out = p };
    0
}

extern "C" fn valloc_from(n: size_t, caller: *const c_void) -> *mut c_void {
    heap::alloc(n, 4096, caller as usize, false)
}

extern "C" fn pvalloc_from(n: size_t, caller: *const c_void) -> *mut c_void {
    match n.checked_next_multiple_of(4096) {
        Some(r) => heap::alloc(r.max(4096), 4096, caller as usize, false),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// free(3).
///
/// # Safety
/// `p` is null or a live allocation of the program.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { heap::free(p) }
}

/// cfree(3), an old alias of free.
///
/// # Safety
/// As free.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { heap::free(p) }
}

/// malloc_usable_size(3).
///
/// # Safety
/// `p` is null or a live allocation of the program.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    // SAFETY: forwarded contract.
    unsafe { heap::usable_size(p) }
}
