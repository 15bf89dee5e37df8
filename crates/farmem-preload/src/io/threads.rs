//! Threads: a thread the guarded program starts is guarded too (the kernel does not
//! hand syscall user dispatch on to a new thread).

struct Start {
    f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
}

extern "C" fn guarded_start(p: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `p` is the Box that `pthread_create` leaked for this thread.
    let s = unsafe { Box::from_raw(p.cast::<Start>()) };
    // The kernel does not hand syscall user dispatch on to a new thread.
    let _ = farmem::sys::sud::arm_this_thread();
    (s.f)(s.arg)
}

/// pthread_create(3): a thread the guarded program starts is guarded too (farmem's own
/// threads, started from inside farmem, are not).
///
/// # Safety
/// pthread_create's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_create(
    t: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
) -> libc::c_int {
    let program = farmem::sys::sud::blocking();
    let _sud = farmem::sys::sud::allow();
    let real = real!(
        REAL,
        c"pthread_create",
        unsafe extern "C" fn(
            *mut libc::pthread_t,
            *const libc::pthread_attr_t,
            extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
            *mut libc::c_void,
        ) -> libc::c_int
    );
    if !program {
        // SAFETY: forwarded.
        return unsafe { real(t, attr, f, arg) };
    }
    let s = Box::into_raw(Box::new(Start { f, arg }));
    // SAFETY: forwarded, with our start routine and its leaked Box.
    let rc = unsafe { real(t, attr, guarded_start, s.cast()) };
    if rc != 0 {
        // SAFETY: the thread was not created; the Box is still ours.
        drop(unsafe { Box::from_raw(s) });
    }
    rc
}
