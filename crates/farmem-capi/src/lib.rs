//! libfarmem.so: the no-op versions of the calls in `include/farmem.h`.
//!
//! A C program that uses farmem's hints links against this library (`pkg-config --libs
//! farmem`) and runs the same without farmem: [`farmem_active`] returns 0, the hints do
//! nothing and [`farmem_stats`] fails with `ENOSYS`. Under `farmem run`, the preloaded
//! `libfarmem_preload.so` defines the same symbols; the dynamic linker binds the program to
//! the preloaded ones first, so the real calls replace these without relinking.
//!
//! Every function here keeps the header's contract exactly, because a program tested
//! without farmem must see the same return values and errno a farmem run would give it
//! for the same arguments (for instance `EINVAL` for an unknown advice).
#![warn(missing_docs)]

use std::ffi::{c_int, c_void};

/// The header's `FARMEM_API_VERSION`.
pub const FARMEM_API_VERSION: c_int = 1;

/// `enum farmem_advice`: the largest advice value the header defines
/// (`FARMEM_ADVICE_DONTNEED`); values from 0 up to it are valid.
pub const FARMEM_ADVICE_MAX: c_int = 4;

/// `struct farmem_range`: a range of memory, filled in by a prefetch hook.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FarmemRange {
    /// Start of the range.
    pub addr: *mut c_void,
    /// Length in bytes.
    pub len: usize,
}

/// `farmem_prefetch_hook`: the prefetch upcall (`NULL` clears it).
pub type FarmemPrefetchHook = Option<
    unsafe extern "C" fn(fault_addr: *mut c_void, out: *mut FarmemRange, max: usize) -> usize,
>;

/// `struct farmem_stats`: counters since the program started.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FarmemStats {
    /// Faults of every kind.
    pub faults: u64,
    /// Faults that fetched from the far tier.
    pub major_faults: u64,
    /// Pages fetched from the far tier (prefetched included).
    pub fetched: u64,
    /// Pages brought in ahead of a fault: guesses, and the rest of the objects faults
    /// landed in.
    pub prefetched: u64,
    /// Pages evicted from local memory.
    pub evicted: u64,
    /// Evicted pages that were dirty and written to the far tier.
    pub written_back: u64,
    /// Local memory in use now.
    pub resident_bytes: u64,
    /// The most local memory in use at once.
    pub peak_resident_bytes: u64,
    /// The local budget.
    pub budget_bytes: u64,
    /// Bytes the far tier holds.
    pub far_bytes: u64,
    /// Major fault latency, median.
    pub fault_p50_ns: u64,
    /// Major fault latency, 99th percentile.
    pub fault_p99_ns: u64,
    /// Guessed pages that were used, 0..1 (0 when none; the rest of an object is mapped
    /// at once and its use is not tracked).
    pub prefetch_accuracy: f64,
}

// The header's layout on every 64-bit Linux target: twelve u64 and one double.
const _: () = assert!(std::mem::size_of::<FarmemStats>() == 13 * 8);
const _: () = assert!(std::mem::size_of::<FarmemRange>() == 2 * std::mem::size_of::<usize>());

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno, valid for the thread's
    // lifetime; writing an int to it is what every libc function does.
    unsafe { *libc::__errno_location() = e };
}

/// `int farmem_active(void)`: 1 under `farmem run`, so 0 here.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_active() -> c_int {
    0
}

/// `int farmem_prefetch(const void *addr, size_t len)`: nothing to bring in; returns 0.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_prefetch(_addr: *const c_void, _len: usize) -> c_int {
    0
}

/// `int farmem_advise(const void *addr, size_t len, int advice)`: returns 0 for every
/// advice the header defines, and -1 with errno `EINVAL` for any other value, as under
/// farmem.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_advise(_addr: *const c_void, _len: usize, advice: c_int) -> c_int {
    if (0..=FARMEM_ADVICE_MAX).contains(&advice) {
        0
    } else {
        set_errno(libc::EINVAL);
        -1
    }
}

/// `int farmem_set_prefetch_hook(farmem_prefetch_hook fn)`: there are no faults to call
/// it on; returns 0.
#[unsafe(no_mangle)]
pub extern "C" fn farmem_set_prefetch_hook(_hook: FarmemPrefetchHook) -> c_int {
    0
}

/// `int farmem_stats(struct farmem_stats *out)`: zeroes `*out` and returns -1 with errno
/// `ENOSYS`, since there is no farmem to count. A null `out` is left alone.
///
/// # Safety
///
/// `out` is null or points to memory writable for one `struct farmem_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn farmem_stats(out: *mut FarmemStats) -> c_int {
    if !out.is_null() {
        // SAFETY: the caller promises `out` is writable for one FarmemStats; all-zero
        // bytes are a valid FarmemStats (integers and a 0.0 double). write_bytes needs no
        // alignment beyond what a C `struct farmem_stats *` already has.
        unsafe { std::ptr::write_bytes(out, 0, 1) };
    }
    set_errno(libc::ENOSYS);
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno() -> c_int {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }

    #[test]
    fn inactive_and_hints_succeed() {
        assert_eq!(farmem_active(), 0);
        let buf = [0u8; 64];
        assert_eq!(farmem_prefetch(buf.as_ptr().cast(), buf.len()), 0);
        for advice in 0..=FARMEM_ADVICE_MAX {
            assert_eq!(farmem_advise(buf.as_ptr().cast(), buf.len(), advice), 0);
        }
        assert_eq!(farmem_set_prefetch_hook(None), 0);
    }

    #[test]
    fn unknown_advice_is_einval() {
        for advice in [-1, FARMEM_ADVICE_MAX + 1, c_int::MAX] {
            set_errno(0);
            assert_eq!(farmem_advise(std::ptr::null(), 0, advice), -1);
            assert_eq!(errno(), libc::EINVAL);
        }
    }

    #[test]
    fn stats_zeroes_and_fails_with_enosys() {
        let mut s = FarmemStats {
            faults: 7,
            prefetch_accuracy: 0.5,
            ..Default::default()
        };
        set_errno(0);
        // SAFETY: `s` is a live, writable FarmemStats.
        assert_eq!(unsafe { farmem_stats(&mut s) }, -1);
        assert_eq!(errno(), libc::ENOSYS);
        assert_eq!(s, FarmemStats::default());
        set_errno(0);
        // SAFETY: null is allowed.
        assert_eq!(unsafe { farmem_stats(std::ptr::null_mut()) }, -1);
        assert_eq!(errno(), libc::ENOSYS);
    }

    /// Every call the header declares is defined here, and the stats struct has the
    /// header's fields in the header's order.
    #[test]
    fn matches_the_header() {
        let header = include_str!("../../../include/farmem.h");
        let source = include_str!("lib.rs");
        let declared: Vec<&str> = header
            .lines()
            .filter(|l| l.starts_with("int farmem_"))
            .map(|l| l["int ".len()..l.find('(').unwrap()].trim())
            .collect();
        assert_eq!(declared.len(), 5, "{declared:?}");
        for name in declared {
            assert!(
                source.contains(&format!("extern \"C\" fn {name}(")),
                "{name} is declared in farmem.h but not defined in libfarmem"
            );
        }
        assert!(header.contains(&format!("#define FARMEM_API_VERSION {FARMEM_API_VERSION}")));
        let start = header.find("struct farmem_stats {").unwrap();
        let body = &header[start..start + header[start..].find("};").unwrap()];
        let fields: Vec<&str> = body
            .lines()
            .skip(1)
            .filter_map(|l| l.split(';').next()?.split_whitespace().last())
            .collect();
        assert_eq!(
            fields,
            [
                "faults",
                "major_faults",
                "fetched",
                "prefetched",
                "evicted",
                "written_back",
                "resident_bytes",
                "peak_resident_bytes",
                "budget_bytes",
                "far_bytes",
                "fault_p50_ns",
                "fault_p99_ns",
                "prefetch_accuracy",
            ]
        );
    }
}
