//! fread and fwrite: for large items the C library reads into and writes from the
//! caller's buffer directly, so a far buffer is pinned and touched, in pieces when it is
//! large. Not one system call each (the C library may make none, or several), so they
//! describe their one buffer themselves.

use libc::{c_void, size_t};

use super::{chunk, in_heap, pin_and_touch};

/// fread(3): for large reads the C library reads straight into the caller's buffer.
///
/// # Safety
/// fread's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fread(
    buf: *mut c_void,
    size: size_t,
    n: size_t,
    fp: *mut libc::FILE,
) -> size_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"fread",
        unsafe extern "C" fn(*mut c_void, size_t, size_t, *mut libc::FILE) -> size_t
    );
    let total = size.saturating_mul(n);
    let b = buf as usize;
    if !in_heap(b, total) {
        // SAFETY: forwarded.
        return unsafe { f(buf, size, n, fp) };
    }
    if total <= chunk() {
        let _pins = pin_and_touch(&[(b, total)]);
        // SAFETY: forwarded, with the caller's buffer pinned.
        return unsafe { f(buf, size, n, fp) };
    }
    // SAFETY: pieces of the caller's buffer.
    by_items(b, size, n, |p, k| unsafe {
        f(p as *mut c_void, size, k, fp)
    })
}

/// Runs a stdio call in pieces of whole items (of `size` bytes, `n` in all, from `b`),
/// each piece pinned and touched; stops at the first short piece. Returns the items done.
fn by_items(b: usize, size: usize, n: usize, mut call: impl FnMut(usize, usize) -> usize) -> usize {
    let per = (chunk() / size).max(1);
    let mut done = 0;
    while done < n {
        let k = per.min(n - done);
        let p = b + done * size;
        let _pins = pin_and_touch(&[(p, k * size)]);
        let r = call(p, k);
        done += r;
        if r < k {
            break;
        }
    }
    done
}

/// fwrite(3): for large writes the C library writes straight from the caller's buffer.
///
/// # Safety
/// fwrite's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fwrite(
    buf: *const c_void,
    size: size_t,
    n: size_t,
    fp: *mut libc::FILE,
) -> size_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"fwrite",
        unsafe extern "C" fn(*const c_void, size_t, size_t, *mut libc::FILE) -> size_t
    );
    let total = size.saturating_mul(n);
    let b = buf as usize;
    if !in_heap(b, total) || size == 0 {
        // SAFETY: forwarded.
        return unsafe { f(buf, size, n, fp) };
    }
    // SAFETY: pieces of the caller's buffer.
    by_items(b, size, n, |p, k| unsafe {
        f(p as *const c_void, size, k, fp)
    })
}
