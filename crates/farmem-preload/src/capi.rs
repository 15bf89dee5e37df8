//! The calls of include/farmem.h: the real versions (the stub library has no-ops).

use std::sync::atomic::Ordering::Release;

use libc::{c_int, c_void, size_t};

use crate::rt;

/// `struct farmem_range`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FarmemRange {
    pub(crate) addr: *mut c_void,
    pub(crate) len: size_t,
}

/// `struct farmem_stats`.
#[repr(C)]
pub struct FarmemStats {
    faults: u64,
    major_faults: u64,
    fetched: u64,
    prefetched: u64,
    evicted: u64,
    written_back: u64,
    resident_bytes: u64,
    peak_resident_bytes: u64,
    budget_bytes: u64,
    far_bytes: u64,
    fault_p50_ns: u64,
    fault_p99_ns: u64,
    prefetch_accuracy: f64,
}

pub(crate) type Hook = unsafe extern "C" fn(*mut c_void, *mut FarmemRange, size_t) -> size_t;

/// Clips `[addr, addr+len)` to the heap region: (offset, len) or None.
fn clip(addr: *const c_void, len: size_t) -> Option<(usize, usize)> {
    let rt = rt::rt()?;
    let base = rt.region.as_ptr() as usize;
    let end = base + rt.region.len();
    let (s, e) = (
        (addr as usize).max(base),
        (addr as usize).saturating_add(len).min(end),
    );
    (s < e).then(|| (s - base, e - s))
}

/// `farmem_active`.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_active() -> c_int {
    let _sud = farmem::sys::sud::allow();
    rt::ready() as c_int
}

/// `farmem_prefetch`.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_prefetch(addr: *const c_void, len: size_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    if let (Some(rt), Some((off, len))) = (rt::rt(), clip(addr, len)) {
        let _ = rt.region.prefetch(off, len);
    }
    0
}

/// `farmem_advise`.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_advise(addr: *const c_void, len: size_t, advice: c_int) -> c_int {
    let _sud = farmem::sys::sud::allow();
    use farmem::Advice::*;
    let a = match advice {
        0 => Normal,
        1 => Sequential,
        2 => Random,
        3 => WillNeed,
        4 => DontNeed,
        _ => {
            // SAFETY: this thread's errno slot.
            unsafe { *libc::__errno_location() = libc::EINVAL };
            return -1;
        }
    };
    if let (Some(rt), Some((off, len))) = (rt::rt(), clip(addr, len)) {
        let _ = rt.region.advise(off, len, a);
    }
    0
}

/// `farmem_set_prefetch_hook`: the program's upcall runs after the heap's own (which
/// brings in the rest of a mid-sized block; see `extent`).
#[unsafe(no_mangle)]
pub extern "C" fn farmem_set_prefetch_hook(hook: Option<Hook>) -> c_int {
    let _sud = farmem::sys::sud::allow();
    if rt::rt().is_none() {
        return 0;
    }
    rt::APP_HOOK.store(hook.map_or(0, |h| h as usize), Release);
    0
}

/// Calls the program's upcall `h` for a fault at `addr` and passes its ranges on.
pub(crate) fn call_hook(h: Hook, addr: usize, req: &mut farmem::PrefetchRequest) {
    let mut out = [FarmemRange {
        addr: std::ptr::null_mut(),
        len: 0,
    }; 16];
    // SAFETY: the program's hook, called as farmem.h documents, with room for 16.
    let n = unsafe { h(addr as *mut c_void, out.as_mut_ptr(), out.len()) }.min(out.len());
    for r in &out[..n] {
        req.range(r.addr as usize, r.len);
    }
}

/// `farmem_read` (farmem_plugin.h): copies local far-heap memory without a fault.
///
/// # Safety
/// `out` is valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn farmem_read(addr: *const c_void, out: *mut c_void, len: size_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let Some(rt) = rt::rt() else { return -1 };
    if out.is_null() || len == 0 {
        return -1;
    }
    // SAFETY: the caller's buffer of `len` bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(out.cast::<u8>(), len) };
    if rt.region.read_local(addr as usize, buf) {
        0
    } else {
        -1
    }
}

/// `farmem_stats`.
///
/// # Safety
/// `out` points to a `struct farmem_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn farmem_stats(out: *mut FarmemStats) -> c_int {
    let _sud = farmem::sys::sud::allow();
    if out.is_null() {
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    }
    let Some(rt) = rt::rt() else {
        // SAFETY: the caller's struct; zeroed, as farmem.h says.
        unsafe { std::ptr::write_bytes(out, 0, 1) };
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    };
    let s = rt.engine.stats();
    let v = FarmemStats {
        faults: s.faults(),
        major_faults: s.major_faults,
        fetched: s.fetched_pages,
        prefetched: s.prefetched_pages + s.object_pages,
        evicted: s.evicted_pages,
        written_back: s.written_back_pages,
        resident_bytes: s.resident_pages * s.page_bytes,
        peak_resident_bytes: s.peak_resident_pages * s.page_bytes,
        budget_bytes: s.budget_pages * s.page_bytes,
        far_bytes: s.far_bytes,
        fault_p50_ns: (s.major_latency.p50_us * 1000.0) as u64,
        fault_p99_ns: (s.major_latency.p99_us * 1000.0) as u64,
        prefetch_accuracy: s.prefetch_accuracy(),
    };
    // SAFETY: the caller's struct.
    unsafe { out.write(v) };
    0
}
