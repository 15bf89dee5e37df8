//! Policy plug-ins (`farmem run --plugin PATH.so`, FARMEM_PLUGIN): a shared object with the
//! ABI of include/farmem_plugin.h, loaded before the program starts and called on the far
//! heap's faults, allocations and frees.
//!
//! A plug-in is checked when it is loaded (its `farmem_plugin` symbol, its ABI version,
//! its fault callback): what is wrong is one line and an exit before the program runs.
//! What it asks for at run time is a hint: ranges outside the far heap, more ranges than
//! it had room for, or a zero length are ignored and reported once on stderr, never
//! followed. It reads the program's memory only through `farmem_read`, which never faults.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::capi::FarmemRange;

/// The ABI this farmem speaks (FARMEM_PLUGIN_ABI).
pub(crate) const ABI: u32 = 1;

/// `struct farmem_fault`.
#[repr(C)]
struct Fault {
    addr: *mut c_void,
    block: *mut c_void,
    block_len: usize,
    flags: u32,
    nregs: u32,
    regs: *const u64,
    nstack: u32,
    stack: *const u64,
}

/// Words of the faulting thread's stack copied for the plug-in (FARMEM_PLUGIN_STACK_WORDS).
const STACK_WORDS: usize = 64;

/// Copies up to `out.len()` words of this process's memory at `sp` into `out` without a
/// chance of faulting (process_vm_readv stops at the first unmapped byte); returns the
/// words copied.
fn copy_stack(sp: usize, out: &mut [u64]) -> usize {
    if sp == 0 || !sp.is_multiple_of(8) {
        return 0;
    }
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len() * 8,
    };
    // The first page only, then the next: a read across the stack's top end stops there.
    let first = (4096 - sp % 4096).min(out.len() * 8);
    let remote = [
        libc::iovec {
            iov_base: sp as *mut c_void,
            iov_len: first,
        },
        libc::iovec {
            iov_base: (sp + first) as *mut c_void,
            iov_len: out.len() * 8 - first,
        },
    ];
    let n_remote = if first < out.len() * 8 { 2 } else { 1 };
    // SAFETY: reads our own memory into `out` (valid for its length); the kernel checks
    // the remote ranges and returns what it could read.
    let n =
        unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, remote.as_ptr(), n_remote, 0) };
    if n < 0 { 0 } else { n as usize / 8 }
}

const FAULT_WRITE: u32 = 1;
const FAULT_HIT: u32 = 2;
const ENOUGH: usize = 1 << (usize::BITS - 1);
const WHOLE: usize = 1 << (usize::BITS - 2);

/// `struct farmem_plugin`.
#[repr(C)]
struct Desc {
    abi: u32,
    name: *const c_char,
    fault: Option<unsafe extern "C" fn(*const Fault, *mut FarmemRange, usize) -> usize>,
    alloc: Option<unsafe extern "C" fn(*mut c_void, usize)>,
    free: Option<unsafe extern "C" fn(*mut c_void, usize)>,
    priority: Option<unsafe extern "C" fn(*mut c_void, usize) -> c_int>,
}

/// A loaded plug-in.
pub(crate) struct Plugin {
    name: String,
    fault: unsafe extern "C" fn(*const Fault, *mut FarmemRange, usize) -> usize,
    alloc: Option<unsafe extern "C" fn(*mut c_void, usize)>,
    free: Option<unsafe extern "C" fn(*mut c_void, usize)>,
    priority: Option<unsafe extern "C" fn(*mut c_void, usize) -> c_int>,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// The loaded plug-in, if any.
#[inline]
pub(crate) fn get() -> Option<&'static Plugin> {
    PLUGIN.get()
}

/// Ranges a fault may ask for.
const MAX_RANGES: usize = 16;

thread_local! {
    /// This thread is inside one of the plug-in's callbacks.
    static IN_PLUGIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The signals a crashing plug-in raises, reported as its crash.
const CRASHES: [c_int; 4] = [libc::SIGSEGV, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

/// Runs `f` as the plug-in: its crashes are reported as such (one line, then the
/// process stops). Inside a fault every signal is blocked, and a synchronous SIGSEGV
/// while blocked kills the process with no handler run, so there the four are unblocked
/// for the call (raw system calls: two per call, only inside a fault).
fn as_plugin<T>(f: impl FnOnce() -> T) -> T {
    let masked = farmem::sys::signal::in_handler();
    let old = masked.then(|| farmem::sys::signal::unblock_raw(&CRASHES));
    let was = IN_PLUGIN.with(|c| c.replace(true));
    let r = f();
    IN_PLUGIN.with(|c| c.set(was));
    if let Some(old) = old {
        farmem::sys::signal::set_mask_raw(old);
    }
    r
}

extern "C" fn on_crash(sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    let _sud = farmem::sys::sud::allow();
    if IN_PLUGIN.try_with(|c| c.get()).unwrap_or(false) {
        let name = get().map_or("?", |p| p.name.as_str());
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as u64;
        let mut a = [0u8; 20];
        let what: &[u8] = match sig {
            libc::SIGSEGV => b"SIGSEGV at address ",
            libc::SIGILL => b"SIGILL at address ",
            libc::SIGFPE => b"SIGFPE at address ",
            _ => b"SIGABRT: it aborted, or panicked",
        };
        let at = if sig == libc::SIGABRT {
            &[][..]
        } else {
            farmem::sys::signal::fmt_u64(addr, &mut a)
        };
        // fatal() ends with abort(): its SIGABRT must take the default action, not come
        // back here.
        farmem::sys::signal::default_action_raw(libc::SIGABRT);
        farmem::sys::signal::fatal(&[
            b"farmem: fatal: plug-in ",
            name.as_bytes(),
            b" crashed (",
            what,
            at,
            b"); the program is stopped. Fix the plug-in or run without --plugin\n",
        ]);
    }
    // Not the plug-in's: the default action, as if this handler were not there;
    // returning re-runs the faulting instruction under it (a raised signal is raised
    // again).
    farmem::sys::signal::default_action_raw(sig);
    if sig == libc::SIGABRT {
        // SAFETY: raise(3) on our own thread; async-signal-safe.
        unsafe { libc::raise(sig) };
    }
}

/// Installs the crash report for the signals a plug-in's bug raises (before the
/// program's own handlers, which replace it).
fn install_crash_report() -> Result<(), String> {
    for s in CRASHES {
        // SAFETY: a zeroed sigaction with our SA_SIGINFO handler and an empty mask.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_crash as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err("cannot install the plug-in's crash report (sigaction)".into());
        }
    }
    Ok(())
}

/// Loads the plug-in at `path` (before the heap starts). The error is the line to print.
pub(crate) fn load(path: &str) -> Result<(), String> {
    let what = format!("plug-in {path}");
    let c = CString::new(path).map_err(|_| format!("{what}: the path has a NUL byte"))?;
    // SAFETY: dlopen with a NUL-terminated path; its constructors run now, as they would
    // for any library the program loads.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message or NULL.
        let e = unsafe { libc::dlerror() };
        let why = if e.is_null() {
            "cannot be loaded".to_string()
        } else {
            // SAFETY: as above.
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        };
        return Err(format!("{what}: {why}"));
    }
    // SAFETY: dlsym on a live handle with a NUL-terminated name.
    let sym = unsafe { libc::dlsym(h, c"farmem_plugin".as_ptr()) };
    if sym.is_null() {
        return Err(format!(
            "{what} exports no `farmem_plugin` (a plug-in defines `const struct farmem_plugin *farmem_plugin(void)`, with C linkage; see farmem_plugin.h)"
        ));
    }
    // SAFETY: the symbol farmem_plugin.h declares, of that type.
    let entry: unsafe extern "C" fn() -> *const Desc = unsafe { std::mem::transmute(sym) };
    // SAFETY: the plug-in's entry point, called once, as the header says.
    let d = unsafe { entry() };
    if d.is_null() {
        return Err(format!("{what}: farmem_plugin() returned NULL"));
    }
    // SAFETY: a description the plug-in keeps for the life of the process (the header's
    // contract); its ABI field is read first, before any field a later ABI may change.
    let abi = unsafe { std::ptr::addr_of!((*d).abi).read() };
    if abi != ABI {
        return Err(format!(
            "{what} was built for plug-in ABI {abi}, and this farmem speaks ABI {ABI}: rebuild it against this farmem's farmem_plugin.h"
        ));
    }
    // SAFETY: the ABI matches, so the layout is this one.
    let d = unsafe { &*d };
    let name = if d.name.is_null() {
        path.to_string()
    } else {
        // SAFETY: a NUL-terminated name the plug-in keeps.
        unsafe { CStr::from_ptr(d.name) }
            .to_string_lossy()
            .into_owned()
    };
    let Some(fault) = d.fault else {
        return Err(format!(
            "{what} ({name}) has no fault callback (struct farmem_plugin.fault)"
        ));
    };
    install_crash_report()?;
    PLUGIN
        .set(Plugin {
            name,
            fault,
            alloc: d.alloc,
            free: d.free,
            priority: d.priority,
        })
        .map_err(|_| "two plug-ins loaded".to_string())
}

/// One line on stderr, the first time `flag` is raised.
fn warn_once(flag: &AtomicBool, parts: &[&[u8]]) {
    if flag.swap(true, Relaxed) {
        return;
    }
    for p in parts {
        // SAFETY: our own bytes to fd 2.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
}

/// Calls of the fault callback, ranges taken from it, ranges ignored.
static CALLS: AtomicU64 = AtomicU64::new(0);
static TAKEN: AtomicU64 = AtomicU64::new(0);
static IGNORED: AtomicU64 = AtomicU64::new(0);

static WARNED_RANGE: AtomicBool = AtomicBool::new(false);
static WARNED_COUNT: AtomicBool = AtomicBool::new(false);

impl Plugin {
    /// Asks the plug-in what to bring in with a fault at `addr`, and passes the ranges
    /// that are inside the far heap on.
    pub(crate) fn fault(&self, addr: usize, req: &mut farmem::PrefetchRequest) {
        let regs = req.registers();
        let (block, block_len) = req.block().map_or((0, 0), |(s, e)| (s, e - s));
        let mut stack = [0u64; STACK_WORDS];
        let nstack = match regs.last() {
            Some(&sp) if regs.len() == farmem::sys::signal::TRAP_REGS => {
                copy_stack(sp as usize, &mut stack)
            }
            _ => 0,
        };
        let f = Fault {
            addr: addr as *mut c_void,
            block: block as *mut c_void,
            block_len,
            flags: if req.is_write() { FAULT_WRITE } else { 0 }
                | if req.is_prefetch_hit() { FAULT_HIT } else { 0 },
            nregs: regs.len() as u32,
            regs: regs.as_ptr(),
            nstack: nstack as u32,
            stack: stack.as_ptr(),
        };
        let mut out = [FarmemRange {
            addr: std::ptr::null_mut(),
            len: 0,
        }; MAX_RANGES];
        // SAFETY: the plug-in's fault callback, called as farmem_plugin.h documents: a
        // valid fault description and room for MAX_RANGES ranges, both on our stack.
        let ret = as_plugin(|| unsafe { (self.fault)(&f, out.as_mut_ptr(), MAX_RANGES) });
        CALLS.fetch_add(1, Relaxed);
        let n = ret & !(ENOUGH | WHOLE);
        if n > MAX_RANGES {
            warn_once(
                &WARNED_COUNT,
                &[
                    b"farmem: plug-in ",
                    self.name.as_bytes(),
                    b" returned more ranges than it was given room for; only the first ones are used (reported once)\n",
                ],
            );
        }
        let (base, len) = crate::rt::heap_range_relaxed();
        for r in &out[..n.min(MAX_RANGES)] {
            let a = r.addr as usize;
            let inside = r.len > 0
                && a.wrapping_sub(base) < len
                && a.checked_add(r.len).is_some_and(|e| e <= base + len);
            if inside {
                TAKEN.fetch_add(1, Relaxed);
                if ret & WHOLE != 0 {
                    req.object(a, r.len);
                } else {
                    req.range(a, r.len);
                }
            } else {
                IGNORED.fetch_add(1, Relaxed);
                warn_once(
                    &WARNED_RANGE,
                    &[
                        b"farmem: plug-in ",
                        self.name.as_bytes(),
                        b" asked for a range that is empty or not inside the far heap; such ranges are ignored (reported once)\n",
                    ],
                );
            }
        }
        if ret & ENOUGH != 0 {
            req.enough();
        }
    }

    /// One line for the statistics at exit.
    pub(crate) fn summary(&self) -> String {
        format!(
            "plug-in {}: {} fault calls, {} ranges taken, {} ignored",
            self.name,
            CALLS.load(Relaxed),
            TAKEN.load(Relaxed),
            IGNORED.load(Relaxed)
        )
    }

    /// The plug-in's eviction hint for a page of `unit` bytes at `addr`, if it has one.
    pub(crate) fn hint(
        &self,
        unit: usize,
    ) -> Option<impl Fn(usize) -> farmem::Priority + Send + Sync + 'static> {
        let f = self.priority?;
        Some(move |addr: usize| {
            // SAFETY: the plug-in's optional callback, with a resident page of the far
            // heap, as farmem_plugin.h documents.
            match as_plugin(|| unsafe { f(addr as *mut c_void, unit) }) {
                0 => farmem::Priority::Keep,
                2 => farmem::Priority::EvictFirst,
                _ => farmem::Priority::Normal,
            }
        })
    }

    /// A block of the far heap was allocated.
    #[inline]
    pub(crate) fn allocated(&self, addr: usize, size: usize) {
        if let Some(f) = self.alloc {
            // SAFETY: the plug-in's optional callback, with a block of the far heap.
            as_plugin(|| unsafe { f(addr as *mut c_void, size) });
        }
    }

    /// A block of the far heap is about to be freed.
    #[inline]
    pub(crate) fn freeing(&self, addr: usize, size: usize) {
        if let Some(f) = self.free {
            // SAFETY: as above.
            as_plugin(|| unsafe { f(addr as *mut c_void, size) });
        }
    }
}
