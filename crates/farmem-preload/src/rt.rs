//! Start-up, configuration, and the process-wide far heap region.
//!
//! The library's constructor reads the configuration `farmem run` put in the environment,
//! starts the engine and maps the heap region. Allocations made before that (the dynamic
//! loader's and the C library's start-up) go to glibc's allocator and stay there.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | FARMEM_LOCAL_MEM | local budget in bytes | 256 MiB |
//! | FARMEM_BACKEND | far tier URI (`mem:`, `compressed:`, `compressed:zstd`, `tcp://HOST:PORT`) | `compressed:` |
//! | FARMEM_TOKEN_FILE, FARMEM_TOKEN | a memory node's token (file, or the token itself) | none |
//! | FARMEM_REMOTE_TIMEOUT, FARMEM_REMOTE_POLL_US, FARMEM_REMOTE_CONNS | the remote tier's deadline, busy-poll, fetch connections (`farmem::backend::RemoteConfig::from_env`) | 10 s, 50 us, 4 |
//! | FARMEM_ALLOCATOR | the heap's allocator: farslab, mimalloc, tlsf (`farmem::heap::HeapKind`) | farslab |
//! | FARMEM_PREFETCH | none, readahead or majority, and `pointer` to chase pointers (`readahead,pointer`) | readahead |
//! | FARMEM_EVICT | clock, fifo | clock |
//! | FARMEM_FAULT_MODE | auto, sigbus, thread | auto |
//! | FARMEM_PAGE_SIZE | 4K, or 2M (huge pages, thread fault mode) | 4K |
//! | FARMEM_HEAP_MAX | bytes of address space for the heap (at most 1 TiB with the object prefetch) | 128 GiB |
//! | FARMEM_OBJECT_PREFETCH | `0` turns off the object prefetch (`extent`; `farmem run --no-object-prefetch`) | on |
//! | FARMEM_ACCESSED_BITS | `0`: learn the hot set only by unmapping pages, not from the hardware's accessed bits (`farmem run --no-accessed-bits`) | on |
//! | FARMEM_SYSCALL_GUARD | `0` turns off the syscall guard (`sud`; `farmem run --no-syscall-guard`), `1` makes it required | on where the kernel has it, in sigbus mode |
//! | FARMEM_MMAP_THRESHOLD | anonymous mmaps from this size up are far | 256 KiB |
//! | FARMEM_TAKE_RESERVED | `1`: large PROT_NONE reservations are far too (`farmem run --take-reserved`) | off |
//! | FARMEM_PLUGIN | a policy plug-in to load (`farmem run --plugin`; include/farmem_plugin.h) | none |
//! | FARMEM_TRACE, FARMEM_TRACE_EVENTS | record faults and allocations into this file, at most this many events (`farmem trace`) | off, 16 Mi events |
//! | FARMEM_CONTROL | serve `farmem ctl` on this socket path (`farmem run --control`) | off |
//! | FARMEM_STATS | print a summary at exit (`1`) | off |
//! | FARMEM_STATS_INTERVAL | print a live line every SECS seconds | off |
//!
//! FARMEM_STATS and FARMEM_STATS_INTERVAL belong to the process `farmem run` started: the
//! first image to load the library records its pid in FARMEM_STATS_PID, and only an image
//! with that pid reports. A program that execs another in its place (a wrapper script,
//! pyenv's shims) hands the reporting on; the children it forks, which load the library
//! too with their own budget, stay quiet.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize};

use farmem::{Engine, FaultMode, Region, policy::PolicyKind};

const UNINIT: u8 = 0;
const READY: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static INIT_PID: AtomicI32 = AtomicI32::new(0);
static STATS_AT_EXIT: AtomicBool = AtomicBool::new(false);
/// Where the summary at exit goes: a copy of stderr taken at start, because programs may
/// close fd 2 before they exit (GNU tools' `close_stdout` does).
static STATS_FD: AtomicI32 = AtomicI32::new(2);
pub(crate) static MMAP_THRESHOLD: AtomicUsize = AtomicUsize::new(256 << 10);
/// Whether large PROT_NONE reservations become far heap blocks (`farmem run
/// --take-reserved`, FARMEM_TAKE_RESERVED=1).
pub(crate) static TAKE_RESERVED: AtomicBool = AtomicBool::new(false);

pub(crate) struct Runtime {
    pub engine: Engine,
    pub region: Region,
    /// Bytes that may be pinned at once for system calls.
    pub pin_limit: usize,
}

static RT: OnceLock<Runtime> = OnceLock::new();
/// The control socket this process serves (`farmem run --control`), removed at exit.
static CONTROL_PATH: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Text ranges of the C library, the dynamic loader and this library.
static LIBC_TEXT: [(AtomicUsize, AtomicUsize); 8] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 8];

#[inline]
pub(crate) fn ready() -> bool {
    STATE.load(Acquire) == READY
}

pub(crate) fn rt() -> Option<&'static Runtime> {
    if ready() { RT.get() } else { None }
}

/// The heap region (base, length), once ready; (0, 0) before.
#[inline]
pub(crate) fn heap_range() -> (usize, usize) {
    (BASE.load(Acquire), LEN.load(Acquire))
}

#[inline]
pub(crate) fn heap_range_relaxed() -> (usize, usize) {
    (BASE.load(Relaxed), LEN.load(Relaxed))
}

/// Whether `caller` is code of the C library or the dynamic loader.
#[inline]
pub(crate) fn is_libc_caller(caller: usize) -> bool {
    LIBC_TEXT.iter().any(|(s, e)| {
        let s = s.load(Relaxed);
        s != 0 && caller >= s && caller < e.load(Relaxed)
    })
}

/// Discards `[addr, addr+len)` of the heap (page aligned): the pages read as zeros.
pub(crate) fn discard(addr: usize, len: usize) {
    if let Some(rt) = rt() {
        let base = rt.region.as_ptr() as usize;
        if let Err(e) = rt.region.discard(addr - base, len) {
            die(&format!("could not discard freed heap pages: {e}"));
        }
    }
}

/// glibc's malloc_usable_size, for its own blocks.
pub(crate) fn libc_usable_size(p: *mut libc::c_void) -> usize {
    static F: AtomicUsize = AtomicUsize::new(0);
    let mut f = F.load(Relaxed);
    if f == 0 {
        // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is glibc's, loaded.
        unsafe {
            let h = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
            if !h.is_null() {
                f = libc::dlsym(h, c"malloc_usable_size".as_ptr()) as usize;
            }
        }
        F.store(f, Relaxed);
    }
    if f == 0 {
        return 0;
    }
    // SAFETY: glibc's malloc_usable_size, on a block of glibc's.
    let g: unsafe extern "C" fn(*mut libc::c_void) -> usize = unsafe { std::mem::transmute(f) };
    // SAFETY: as above.
    unsafe { g(p) }
}

/// One line to stderr and exit: the configuration or the machine does not allow far memory.
pub(crate) fn die(msg: &str) -> ! {
    let line = format!("farmem: {msg}\n");
    // SAFETY: writing our own bytes to fd 2, then leaving without running the program on.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(127)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_bytes(name: &str, default: usize) -> usize {
    match env(name) {
        None => default,
        Some(v) => v.trim().parse().unwrap_or_else(|_| {
            die(&format!("{name}={v} is not a number of bytes (farmem run sets it; run the program through `farmem run`)"))
        }),
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = start;

#[used]
#[unsafe(link_section = ".fini_array")]
static DESTRUCTOR: extern "C" fn() = finish;

extern "C" fn start() {
    // Start-up is farmem's own code: its system calls run natively even once the main
    // thread is guarded (at the end of `init`).
    let _sud = farmem::sys::sud::allow();
    if let Err(e) = init() {
        die(&format!("cannot start far memory: {e}"));
    }
}

fn init() -> Result<(), String> {
    let budget = env_bytes("FARMEM_LOCAL_MEM", 256 << 20);
    let backend_uri = env("FARMEM_BACKEND").unwrap_or_else(|| "compressed:".into());
    let backend = farmem::backend::from_uri(&backend_uri).map_err(|e| e.to_string())?;
    let prefetch: farmem::PrefetchSpec = env("FARMEM_PREFETCH")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    let policy: PolicyKind = env("FARMEM_EVICT")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    let mode: FaultMode = env("FARMEM_FAULT_MODE")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    let page_size: farmem::PageSize = env("FARMEM_PAGE_SIZE")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    let heap_max = env_bytes("FARMEM_HEAP_MAX", 128 << 30);
    let allocator: farmem::heap::HeapKind = env("FARMEM_ALLOCATOR")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    MMAP_THRESHOLD.store(
        env_bytes("FARMEM_MMAP_THRESHOLD", 256 << 10).max(4096),
        Relaxed,
    );
    TAKE_RESERVED.store(
        env("FARMEM_TAKE_RESERVED").is_some_and(|v| v == "1"),
        Relaxed,
    );
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let reporter = match env("FARMEM_STATS_PID") {
        None => {
            // SAFETY: start-up, before the program's main; no other thread reads the
            // environment.
            unsafe { std::env::set_var("FARMEM_STATS_PID", pid.to_string()) };
            true
        }
        Some(p) => p == pid.to_string(),
    };
    let stats = reporter && env("FARMEM_STATS").is_some_and(|v| v != "0");
    let interval: Option<f64> = if reporter {
        env("FARMEM_STATS_INTERVAL")
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("FARMEM_STATS_INTERVAL={v} is not a number of seconds"))
            })
            .transpose()?
    } else {
        None
    };
    let engine = Engine::builder()
        .local_budget(budget)
        .backend(backend)
        .policy(policy)
        .prefetch(prefetch.kind)
        .pointer_prefetch(prefetch.pointer)
        .fault_mode(mode)
        .page_size(page_size)
        .accessed_bits(env("FARMEM_ACCESSED_BITS").is_none_or(|v| v != "0"))
        .build()
        .map_err(|e| e.to_string())?;
    let region = engine
        .map(heap_max)
        .map_err(|e| format!("cannot reserve the far heap: {e}"))?;
    farmem::fork::install_handlers().map_err(|e| e.to_string())?;
    // Registered after the engine's: the prepare handlers run in reverse order, so the
    // heap is locked before the engine closes its gate (a thread inside malloc may be
    // faulting, which needs the gate open).
    // SAFETY: three extern "C" functions with no arguments.
    let rc =
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    if rc != 0 {
        return Err("cannot register fork handlers".into());
    }
    find_libc_text();
    crate::io::resolve_all();
    if let Some(path) = env("FARMEM_PLUGIN") {
        crate::plugin::load(&path)?;
    }
    if env("FARMEM_OBJECT_PREFETCH").is_none_or(|v| v != "0") {
        crate::extent::init(region.as_ptr() as usize, region.len())?;
    }
    region.set_prefetch_hook(heap_prefetch);
    if let Some(h) = crate::plugin::get().and_then(|p| p.hint(engine.page_size().bytes())) {
        region.set_evict_hint(h);
    }
    let pin_limit = (budget / 4).max(64 << 10);
    let base = region.as_ptr() as usize;
    let len = region.len();
    if RT
        .set(Runtime {
            engine,
            region,
            pin_limit,
        })
        .is_err()
    {
        return Err("started twice".into());
    }
    crate::heap::init(&RT.get().expect("just set").region, allocator)?;
    // SAFETY: getpid has no preconditions.
    INIT_PID.store(unsafe { libc::getpid() }, Relaxed);
    STATS_AT_EXIT.store(stats, Relaxed);
    if stats {
        // SAFETY: fcntl on fd 2; the copy is close-on-exec and above the low numbers.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) };
        if fd >= 0 {
            STATS_FD.store(fd, Relaxed);
        }
    }
    BASE.store(base, Release);
    LEN.store(len, Release);
    STATE.store(READY, Release);
    start_guard(&rt().expect("just set").engine)?;
    if reporter && let Some(path) = env("FARMEM_TRACE") {
        let events = env_bytes("FARMEM_TRACE_EVENTS", 16 << 20) as u64;
        farmem::trace::start(
            std::path::Path::new(&path),
            events,
            (budget / 4096) as u64,
            base as u64,
        )
        .map_err(|e| format!("cannot write the trace {path}: {e}"))?;
    }
    if reporter && let Some(path) = env("FARMEM_CONTROL") {
        let path = std::path::PathBuf::from(path);
        farmem::control::ControlServer::start(&path, &rt().expect("just set").engine)
            .map_err(|e| e.to_string())?
            .detach();
        let _ = CONTROL_PATH.set(path);
    }
    if let Some(secs) = interval.filter(|s| *s > 0.0) {
        let _ = std::thread::Builder::new()
            .name("farmem-stats".into())
            .spawn(move || stats_loop(secs));
    }
    Ok(())
}

/// Whether the syscall guard is on in this process.
pub(crate) static GUARD_ON: AtomicBool = AtomicBool::new(false);

/// Turns the syscall guard on for the main thread (see `sud`), in the sigbus fault mode.
fn start_guard(engine: &Engine) -> Result<(), String> {
    let want = env("FARMEM_SYSCALL_GUARD");
    if want.as_deref() == Some("0") || engine.fault_mode() != FaultMode::Sigbus {
        return Ok(());
    }
    match crate::sud::start() {
        Ok(()) => {
            GUARD_ON.store(true, Relaxed);
            Ok(())
        }
        Err(e) if want.as_deref() == Some("1") => Err(e),
        Err(e) => {
            let line = format!(
                "farmem: warning: {e}. System calls on far buffers outside the C library's wrapped entry points may fail with EFAULT.\n"
            );
            // SAFETY: our own bytes to fd 2.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            Ok(())
        }
    }
}

/// The program's own prefetch upcall (`farmem_set_prefetch_hook`), 0 for none.
pub(crate) static APP_HOOK: AtomicUsize = AtomicUsize::new(0);

/// The heap's prefetch upcall: a major fault inside a mid-sized block brings in the rest
/// of the block and nothing else (see `extent`); then the plug-in's (`plugin`) and the
/// program's upcall, if any.
fn heap_prefetch(addr: usize, req: &mut farmem::PrefetchRequest) {
    if let Some((_, end)) = crate::extent::block_at(addr) {
        // A major fault asks for the rest of the block to be fetched; a touch of a local
        // page the reclaimer unmapped, for the block's local pages to be mapped with it.
        if !req.is_prefetch_hit() {
            let from = (addr | 4095) + 1;
            req.object(from, end.saturating_sub(from));
        }
        // A block is mapped whole on its first fault, so a prefetch hit inside one comes
        // from a readahead window that ran into it: reading on is no reason to fetch the
        // rest (it faults for itself). Either way the readahead, which would only fetch
        // past the block's end, is not needed.
        req.enough();
    }
    if let Some(p) = crate::plugin::get()
        && !req.is_local_touch()
    {
        p.fault(addr, req);
    }
    let h = APP_HOOK.load(Acquire);
    if h != 0 && !req.is_local_touch() {
        // SAFETY: APP_HOOK only ever holds a `capi::Hook` the program registered.
        let h: crate::capi::Hook = unsafe { std::mem::transmute::<usize, crate::capi::Hook>(h) };
        crate::capi::call_hook(h, addr, req);
    }
}

static mut FORK_GUARD: Option<crate::heap::ForkGuard> = None;

extern "C" fn fork_prepare() {
    let g = crate::heap::lock_for_fork();
    // SAFETY: only the forking thread touches FORK_GUARD, between prepare and parent/child.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARD) = Some(g) };
}

extern "C" fn fork_parent() {
    // SAFETY: as above.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARD) = None };
}

extern "C" fn fork_child() {
    // SAFETY: as above; in the child this thread is the one that locked it.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARD) = None };
    // The trace is the parent's.
    farmem::trace::forget_in_child();
    // The kernel does not hand syscall user dispatch on to the child.
    farmem::sys::sud::rearm_after_fork();
}

fn find_libc_text() {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> i32 {
        // SAFETY: the loader passes a valid dl_phdr_info; `data` is our counter.
        unsafe {
            let info = &*info;
            let n = &mut *(data as *mut usize);
            if info.dlpi_name.is_null() {
                return 0;
            }
            let name = std::ffi::CStr::from_ptr(info.dlpi_name).to_bytes();
            let is_libc = name.windows(8).any(|w| w == b"libc.so.")
                || name.windows(8).any(|w| w == b"ld-linux");
            // This library too: the Rust standard library allocates some things through
            // `System` (plain malloc) rather than the global allocator.
            let me = start as *const () as usize;
            let is_me = (0..info.dlpi_phnum as usize).any(|i| {
                let ph = &*info.dlpi_phdr.add(i);
                let s = info.dlpi_addr as usize + ph.p_vaddr as usize;
                ph.p_type == libc::PT_LOAD && me >= s && me < s + ph.p_memsz as usize
            });
            if !is_libc && !is_me {
                return 0;
            }
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type == libc::PT_LOAD
                    && ph.p_flags & libc::PF_X != 0
                    && *n < LIBC_TEXT.len()
                {
                    let s = info.dlpi_addr as usize + ph.p_vaddr as usize;
                    LIBC_TEXT[*n].1.store(s + ph.p_memsz as usize, Relaxed);
                    LIBC_TEXT[*n].0.store(s, Relaxed);
                    *n += 1;
                }
            }
        }
        0
    }
    let mut n = 0usize;
    // SAFETY: a valid callback and a pointer to our counter, used only during the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut n as *mut usize).cast()) };
}

extern "C" fn finish() {
    let _sud = farmem::sys::sud::allow();
    // In every process with the engine, a forked child's too: a memory node frees this
    // process's session once the exit has closed its connections.
    if let Some(rt) = rt() {
        rt.engine.before_exit();
        if let Some((n, dropped)) = farmem::trace::finish(&rt.engine.stats()) {
            let path = env("FARMEM_TRACE").unwrap_or_default();
            let line = format!(
                "farmem: trace: {n} events in {path}{}; `farmem replay {path}` replays it\n",
                if dropped > 0 {
                    format!(" ({dropped} more dropped: the trace was full; raise --events)")
                } else {
                    String::new()
                }
            );
            // SAFETY: our own bytes to fd 2.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        }
    }
    if let Some(p) = CONTROL_PATH.get()
        // SAFETY: getpid has no preconditions.
        && unsafe { libc::getpid() } == INIT_PID.load(Relaxed)
    {
        farmem::control::remove_socket(p);
    }
    // SAFETY: getpid has no preconditions.
    if !STATS_AT_EXIT.load(Relaxed) || unsafe { libc::getpid() } != INIT_PID.load(Relaxed) {
        return;
    }
    if let Some(rt) = rt() {
        let st = rt.engine.stats();
        let mut out = format!(
            "farmem: stats at exit ({} fault mode, {} tier)\n",
            rt.engine.fault_mode(),
            rt.engine.backend_name()
        );
        for line in st.to_string().lines() {
            out.push_str("farmem:   ");
            out.push_str(line);
            out.push('\n');
        }
        if let Some(h) = crate::heap::stats() {
            out.push_str(&format!(
                "farmem:   {h}; heap pages touched {:.1} MiB ({:.1} resident, {:.1} far)\n",
                (st.resident_pages + st.far_pages) as f64 / 256.0,
                st.resident_pages as f64 / 256.0,
                st.far_pages as f64 / 256.0
            ));
        }
        if let Some(p) = crate::plugin::get() {
            out.push_str(&format!("farmem:   {}\n", p.summary()));
        }
        if GUARD_ON.load(Relaxed) {
            out.push_str(&format!(
                "farmem:   syscall guard: on, {} system calls dispatched ({} with far buffers)\n",
                crate::sud::DISPATCHED.load(Relaxed),
                crate::sud::DISPATCHED_FAR.load(Relaxed)
            ));
        } else {
            out.push_str("farmem:   syscall guard: off\n");
        }
        // SAFETY: our own bytes to our copy of stderr, or to fd 2 if the program closed
        // the copy (a daemon closing every descriptor).
        unsafe {
            let fd = STATS_FD.load(Relaxed);
            if libc::write(fd, out.as_ptr().cast(), out.len()) < 0 && fd != 2 {
                libc::write(2, out.as_ptr().cast(), out.len());
            }
        }
    }
}

fn stats_loop(secs: f64) {
    let t0 = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        let Some(rt) = rt() else { return };
        let s = rt.engine.stats();
        let mib = |p: u64| p as f64 * s.page_bytes as f64 / (1 << 20) as f64;
        let line = format!(
            "farmem: {:.0}s resident {:.1}/{:.1} MiB, faults {} ({} major), fetched {}, prefetched {}, evicted {}, far {:.1} MiB, major p50 {:.1} us p99 {:.1} us\n",
            t0.elapsed().as_secs_f64(),
            mib(s.resident_pages),
            mib(s.budget_pages),
            s.faults(),
            s.major_faults,
            s.fetched_pages,
            s.prefetched_pages,
            s.evicted_pages,
            s.far_bytes as f64 / (1 << 20) as f64,
            s.major_latency.p50_us,
            s.major_latency.p99_us,
        );
        // SAFETY: our own bytes to fd 2.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
}
