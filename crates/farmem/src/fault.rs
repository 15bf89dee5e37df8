//! The fault paths: resolving a missing or unmapped page, in the faulting thread (SIGBUS)
//! or on a handler thread reading the userfaultfd, with the same code.
//!
//! ```text
//!  fault at addr ─► page word ─┬─ ACTIVE     someone else resolved it: return (or wake)
//!                              ├─ LOCKED     wait for the holder, look again
//!                              ├─ INACTIVE   lock, UFFDIO_CONTINUE (minor, ~1.6 us)
//!                              ├─ UNTOUCHED  lock, reserve a frame, UFFDIO_ZEROPAGE
//!                              └─ FAR        lock, reserve a frame, ask the prefetchers,
//!                                            lock the candidates, one batched fetch,
//!                                            verify checksums, COPY the faulting page
//!                                            with the prefetched run next to it, leave
//!                                            the run's far end unmapped as its marker
//! ```
//!
//! Nothing here sleeps on another thread in the common case: frames come from the free
//! reserve the reclaimer keeps, and only when none is left does the faulting thread evict
//! for itself (direct reclaim).

use crate::Advice;
use crate::backend::{PAGE_SIZE, PageKey};
use crate::policy::PageRef;
use crate::prefetch::pointer::{self, Chase};
use crate::prefetch::{Candidates, FaultInfo, PrefetchRequest};
use crate::reclaim::{reserve_for_prefetch, reserve_frame};
use crate::state::bufs::BATCH_PAGES;
use crate::state::page::{AHEAD, HAS_FAR, KEPT, PREFETCHED, State, Tag, WARM, YOUNG};
use crate::state::region::{RegionState, next_gen, page_hash};
use crate::stats::Counters;
use crate::sys::uffd::{self, FillError, UffdMsg};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// The SIGBUS entry point (see `sys::signal`).
pub(crate) fn on_sigbus(t: &crate::sys::signal::Trap) -> bool {
    crate::state::registry::with_region_at(t.addr, |r| resolve(r, t.addr, t.write, false, &t.regs))
        .is_some()
}

/// A handler thread: reads fault messages until `stop` becomes readable.
pub(crate) fn handler_loop(r: &RegionState, stop: i32) {
    let mut msgs = [UffdMsg::default(); 64];
    if r.shared.config.handler_busy_poll {
        return busy_loop(r, stop, &mut msgs);
    }
    let mut ready = [false; 2];
    loop {
        if let Err(e) = crate::sys::event::wait_readable(&[r.uffd.raw(), stop], &mut ready) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            crate::fatal::die_io("poll on the userfaultfd failed", &e);
        }
        if ready[1] {
            return;
        }
        serve_msgs(r, &mut msgs);
    }
}

/// Reads what fault messages the userfaultfd has (up to `msgs.len()`, without waiting)
/// and resolves them; returns how many it read.
fn serve_msgs(r: &RegionState, msgs: &mut [UffdMsg]) -> usize {
    let n = match r.uffd.read_msgs(msgs) {
        Ok(n) => n,
        Err(e) => crate::fatal::die_io("reading the userfaultfd failed", &e),
    };
    for m in &msgs[..n] {
        if m.event == uffd::EVENT_PAGEFAULT {
            resolve(
                r,
                m.address as usize,
                m.flags & uffd::PAGEFAULT_FLAG_WRITE != 0,
                true,
                &[],
            );
        }
    }
    n
}

/// A handler thread that never sleeps: reads the (non-blocking) userfaultfd in a loop,
/// and looks at `stop` every few thousand empty reads.
fn busy_loop(r: &RegionState, stop: i32, msgs: &mut [UffdMsg]) {
    let mut empty = 0u32;
    loop {
        if serve_msgs(r, msgs) == 0 {
            empty += 1;
            if empty.is_multiple_of(4096) && crate::sys::event::wait_readable_for(stop, 0) {
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// Runs a fill ioctl until it is done: EAGAIN (the address space is changing) is retried,
/// EEXIST on a page we hold locked would be a bug in the state machine, anything else is
/// fatal.
fn fill(mut op: impl FnMut() -> Result<(), FillError>, what: &str) {
    loop {
        match op() {
            Ok(()) => return,
            Err(FillError::Again) => std::thread::yield_now(),
            Err(FillError::Exists) => crate::sys::signal::fatal(&[
                b"farmem: fatal: internal error: ",
                what.as_bytes(),
                b" found the page already present. Please report this bug.\n",
            ]),
            Err(FillError::Os(e)) => crate::fatal::die_io(what, &e),
        }
    }
}

/// Resolves a fault at `addr` of region `r`. `wake`: wake blocked threads if no fill was
/// needed (handler-thread mode). `regs`: the faulting thread's registers, where known
/// (the pointer chase's roots).
pub(crate) fn resolve(r: &RegionState, addr: usize, write: bool, wake: bool, regs: &[u64]) {
    let _pass = crate::state::gate::enter();
    let page = ((addr - r.base) / r.unit) as u64;
    let page_addr = r.page_addr(page);
    let w = &r.states[page as usize];
    let c = &r.shared.counters;
    let t0 = Instant::now();
    loop {
        let s = w.wait_unlocked_or(|| r.shared.raise_reclaimer());
        match s.tag() {
            Tag::Active => {
                // Resolved by another thread, or unmapped by a range demotion while it
                // was being filled: map it if it is not (EEXIST when it is), then go on.
                if !w.try_lock(s) {
                    continue;
                }
                let mapped = matches!(r.uffd.cont(page_addr, r.unit), Err(FillError::Exists));
                w.unlock(s);
                Counters::bump(&c.spurious_faults, 1);
                if wake && mapped {
                    let _ = r.uffd.wake(page_addr, r.unit);
                }
                return;
            }
            Tag::Inactive => {
                if !w.try_lock(s) {
                    continue;
                }
                // A page the hand unmapped, touched again: the rest of its object (when
                // the upcall names one) was most likely unmapped with it and is read
                // next, so its local pages are mapped in the same call, each counted as
                // touched. A prefetched page's touch is a prefetch hit instead (below).
                let mut run = [s; MAX_LOCAL_RUN];
                let mut n = 1;
                if !s.prefetched() && !r.shared.huge() {
                    // The upcall's objects only (see `PrefetchRequest::is_local_touch`).
                    let mut objects = Candidates::new();
                    upcall(
                        r,
                        addr,
                        false,
                        true,
                        write,
                        regs,
                        &mut objects,
                        &mut Candidates::new(),
                    );
                    for &p in objects.as_slice() {
                        if n == MAX_LOCAL_RUN || p != page + n as u64 {
                            break;
                        }
                        let wp = &r.states[p as usize];
                        let q = wp.load();
                        if q.tag() != Tag::Inactive || q.prefetched() || !wp.try_lock(q) {
                            break;
                        }
                        run[n] = q;
                        n += 1;
                    }
                }
                fill(
                    || r.uffd.cont(page_addr, n * r.unit).or_else(ok_if_exists),
                    "mapping a local page (UFFDIO_CONTINUE)",
                );
                let mut ahead = 0;
                for (i, q) in run[..n].iter().enumerate() {
                    ahead += u64::from(q.ahead());
                    if q.ahead() || q.prefetched() {
                        r.pointer_feedback(page + i as u64, true);
                    }
                    r.states[page as usize + i].unlock(touched(*q));
                }
                Counters::bump(&c.minor_faults, 1);
                Counters::bump(&c.object_remapped, n as u64 - 1);
                crate::trace::record(
                    if s.prefetched() {
                        crate::trace::Kind::Hit
                    } else {
                        crate::trace::Kind::Minor
                    },
                    page,
                );
                c.minor_latency.record(t0.elapsed().as_nanos() as u64);
                if ahead > 0 {
                    // Mapped ahead, demoted before its run's marker was reached, and now
                    // touched: it was used.
                    Counters::bump(&c.prefetch_hits, ahead);
                    r.throttle.used(ahead);
                }
                if s.prefetched() {
                    let used = 1 + confirm_ahead(r, page);
                    Counters::bump(&c.prefetch_hits, used);
                    r.throttle.used(used);
                    let mut cands = Candidates::new();
                    let whole = gather(r, addr, page, write, true, regs, &mut cands);
                    let mut chase = Chase::new(r, addr);
                    if let Some(ch) = chase.as_mut() {
                        ch.own_is_local();
                        ch.registers(regs, &mut cands);
                        ch.run_local(&mut cands);
                    }
                    if !cands.is_empty() || chase.is_some() {
                        let (objects, _) = cands.as_slice().split_at(whole);
                        // With a chase, also when nothing is fetched: its reads count.
                        fetch_ahead(r, &cands, objects, page, chase);
                    }
                }
                return;
            }
            Tag::Untouched => {
                if !w.try_lock(s) {
                    continue;
                }
                zero_fill(r, page, s);
                crate::trace::record(crate::trace::Kind::Zero, page);
                Counters::bump(&c.zero_faults, 1);
                c.zero_latency.record(t0.elapsed().as_nanos() as u64);
                return;
            }
            Tag::Far => {
                if !w.try_lock(s) {
                    continue;
                }
                major(r, addr, page, s, write, t0, regs);
                return;
            }
            Tag::Locked => unreachable!("wait_unlocked returned a locked page"),
        }
    }
}

/// The state of an INACTIVE page (locked by the caller) once a touch has mapped it again.
/// Unmapped by the clock hand and touched within a lap, it passed a test; twice in a row
/// (it was WARM) puts it in the hot set, which the hand leaves mapped. A prefetched page's
/// first touch is its first use, not a test passed.
fn touched(s: State) -> State {
    let flags = s.flags() & !(PREFETCHED | AHEAD | YOUNG | KEPT | WARM);
    let heat = if s.prefetched() || s.ahead() {
        0
    } else if s.flags() & WARM != 0 {
        KEPT
    } else {
        WARM
    };
    s.with_tag(Tag::Active).with_flags(flags | heat)
}

/// The most pages a minor fault maps with the rest of their object (256 KiB, the largest
/// object the heap records).
const MAX_LOCAL_RUN: usize = 64;

/// The most pages one zero-fill fault maps (128 KiB).
const MAX_ZERO_RUN: usize = 32;
/// A first touch right above a resident page fills to the end of a block this long.
const NEIGHBOUR_BLOCK: u32 = 16;

/// A first touch of `page` (locked by the caller, which read `s`): maps zeros there and,
/// when the region is being filled front to back, on a run of untouched pages after it,
/// with one `UFFDIO_ZEROPAGE`.
///
/// A growing heap touches its new pages in address order, and each first touch would
/// otherwise be a fault of its own (a signal and an ioctl, 3-4 us here, against 1.4 us for
/// the kernel's own anonymous first touch). The run doubles, up to [`MAX_ZERO_RUN`], each
/// time a fault lands exactly where the last run ended (it was used up), reaches to the
/// end of the 64 KiB block when the page below is resident (an allocator filling several
/// pools at once touches each in order, but interleaved, so no run is sequential), and is
/// one page otherwise, so a program that touches memory sparsely gets no more than it
/// touches. The extra pages take only free frames above the low watermark (never evicting
/// for a guess, and never the reserve that the next demand fault needs), count against the
/// budget like any other, and, if never touched, are evicted as zeros: no far copy, no I/O.
fn zero_fill(r: &RegionState, page: u64, s: State) {
    let shared = &r.shared;
    let mut buf = shared.bufs.acquire();
    reserve_frame(shared, buf.bytes());
    drop(buf);
    let sequential = page == r.zero_next.load(Relaxed);
    let below = page > 0 && r.states[page as usize - 1].load().is_resident();
    let window = if shared.huge() {
        // A huge page is a run of its own.
        1
    } else if sequential {
        (r.zero_window.load(Relaxed) * 2).clamp(2, MAX_ZERO_RUN as u32)
    } else if below {
        (NEIGHBOUR_BLOCK - (page % NEIGHBOUR_BLOCK as u64) as u32).max(2)
    } else {
        1
    };
    r.zero_window.store(window, Relaxed);
    // Lock the untouched pages after it, as many as free frames allow.
    let mut states = [State(0); MAX_ZERO_RUN];
    states[0] = s;
    let mut n = 1;
    while n < window as usize && page + (n as u64) < r.pages {
        let w = &r.states[(page + n as u64) as usize];
        let q = w.load();
        if q.tag() != Tag::Untouched || !w.try_lock(q) {
            break;
        }
        states[n] = q;
        n += 1;
    }
    let extra = shared.try_reserve_spare(n - 1);
    for (i, q) in states.iter().enumerate().take(n).skip(1 + extra) {
        r.states[(page + i as u64) as usize].unlock(*q);
    }
    let n = 1 + extra;
    r.zero_next.store(page + n as u64, Relaxed);
    r.note_touched(page + n as u64 - 1);
    let filled = if r.shared.huge() {
        // hugetlbfs has no UFFDIO_ZEROPAGE: copy from zeros.
        // SAFETY: `huge_zeros` is a read-only run of zeros at least a page long, outside
        // every registered range.
        unsafe {
            r.uffd
                .copy(r.page_addr(page), huge_zeros(r.unit), n * r.unit)
        }
    } else {
        r.uffd.zeropage(r.page_addr(page), n * PAGE_SIZE)
    };
    match filled {
        Ok(()) => {}
        Err(FillError::Exists) => {
            let mut words = [0u64; MAX_ZERO_RUN];
            for (i, w) in words.iter_mut().enumerate().take(n) {
                *w = r.states[(page + i as u64) as usize].load().0;
            }
            crate::fatal::die_present(
                "zero-filling a first touch (UFFDIO_ZEROPAGE)",
                r.id,
                page,
                &words[..n],
            )
        }
        Err(FillError::Again) => unreachable!("fill ioctls retry EAGAIN themselves"),
        Err(FillError::Os(e)) => crate::fatal::die_io("zero-filling a page (UFFDIO_ZEROPAGE)", &e),
    }
    let mut refs = [PageRef {
        region: r.id,
        generation: 0,
        page: 0,
    }; MAX_ZERO_RUN];
    for (i, q) in states.iter().enumerate().take(n) {
        let generation = next_gen(*q);
        r.states[(page + i as u64) as usize].unlock(State::new(Tag::Active, 0, generation));
        refs[i] = PageRef {
            region: r.id,
            generation,
            page: page + i as u64,
        };
    }
    shared.policy_insert(&refs[..n]);
    Counters::bump(&shared.counters.zero_ahead, extra as u64);
}

/// `len` bytes of zeros to copy a huge page's first touch from (an anonymous mapping
/// nobody writes, so it costs only page tables).
fn huge_zeros(len: usize) -> *const u8 {
    static ZEROS: std::sync::OnceLock<crate::sys::mem::Mapping> = std::sync::OnceLock::new();
    let m = ZEROS.get_or_init(|| {
        crate::sys::mem::Mapping::anon(2 << 20)
            .unwrap_or_else(|e| crate::fatal::die_io("could not map zeros for huge pages", &e))
    });
    assert!(len <= m.len());
    m.ptr()
}

fn ok_if_exists(e: FillError) -> Result<(), FillError> {
    // CONTINUE on a page that is already mapped: someone else mapped it, fine.
    match e {
        FillError::Exists => Ok(()),
        e => Err(e),
    }
}

/// Asks the application's upcall (always: it is the program's own decision), then the
/// advice, then the prefetcher what to bring in. Returns how many of the candidates, at
/// the front of `out`, the upcall asked for: whole objects, mapped at once (see
/// [`install`]).
fn gather(
    r: &RegionState,
    addr: usize,
    page: u64,
    write: bool,
    hit: bool,
    regs: &[u64],
    out: &mut Candidates,
) -> usize {
    if r.shared.huge() {
        // A huge page is its own prefetch.
        return 0;
    }
    let mut guesses = Candidates::new();
    let enough = upcall(r, addr, hit, false, write, regs, out, &mut guesses);
    // The objects at the front of `out`, the upcall's guesses after them.
    let whole = out.len();
    for &p in guesses.as_slice() {
        out.push(p);
    }
    if enough {
        return whole;
    }
    match r.advice_at(page) {
        Some(Advice::Random) => return whole,
        Some(Advice::Sequential) => {
            for p in page + 1..(page + 1 + SEQUENTIAL_WINDOW).min(r.pages) {
                out.push(p);
            }
            return whole;
        }
        _ => {}
    }
    let info = FaultInfo {
        page,
        region_pages: r.pages,
        write,
        hit,
    };
    let before = out.len();
    r.prefetcher
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .on_fault(&info, out);
    // The prefetcher still sees every fault (its streams stay right), but may only have
    // as many pages as its recent accuracy earns.
    let cap = r.throttle.cap();
    if out.len() > before + cap {
        Counters::bump(
            &r.shared.counters.prefetch_throttled,
            (out.len() - before - cap) as u64,
        );
        out.truncate(before + cap);
    }
    whole
}

/// Calls the region's upcall, if it has one, for a fault at `addr` (see
/// [`PrefetchRequest`] for `hit` and `local`): objects into `objects`, guesses into
/// `guesses`. Returns whether it said `enough`.
#[allow(clippy::too_many_arguments)] // the fault's context, all on the stack
fn upcall(
    r: &RegionState,
    addr: usize,
    hit: bool,
    local: bool,
    write: bool,
    regs: &[u64],
    objects: &mut Candidates,
    guesses: &mut Candidates,
) -> bool {
    let Ok(h) = r.hook.try_read() else {
        return false;
    };
    let Some(h) = h.as_ref() else { return false };
    let block = r
        .blocks
        .try_read()
        .ok()
        .and_then(|t| t.as_ref().and_then(|t| t(addr)));
    let mut req = PrefetchRequest::new(r.base, r.pages, objects, guesses, hit, local);
    req.set_context(regs, block, write);
    h(addr, &mut req);
    req.is_enough()
}

/// Pages fetched ahead on every fault in a range advised `Sequential`.
const SEQUENTIAL_WINDOW: u64 = 16;

/// A major fault on `page`, which the caller has locked (it read `s` before).
fn major(
    r: &RegionState,
    addr: usize,
    page: u64,
    s: State,
    write: bool,
    t0: Instant,
    regs: &[u64],
) {
    let shared = &r.shared;
    let c = &shared.counters;
    // Recorded first: the pages fetched with it follow it in a trace.
    crate::trace::record(crate::trace::Kind::Major, page);
    let mut buf = shared.bufs.acquire();
    reserve_frame(shared, buf.bytes());
    let mut cands = Candidates::new();
    let whole = gather(r, addr, page, write, false, regs, &mut cands);
    // Far blocks the registers lead to come in with the faulting page.
    let mut chase = Chase::new(r, addr);
    if let Some(ch) = chase.as_mut() {
        ch.registers(regs, &mut cands);
        ch.run_local(&mut cands);
    }
    let mut next = Candidates::new();
    let mut pages = [0u64; BATCH_PAGES];
    let mut states = [State(0); BATCH_PAGES];
    pages[0] = page;
    states[0] = s;
    let locked = 1 + lock_far(r, cands.as_slice(), &mut pages[1..], &mut states[1..]);
    bring_in(
        r,
        buf.bytes(),
        &mut pages,
        &mut states,
        1,
        locked,
        Some(page),
        true,
        &cands.as_slice()[..whole],
        chase.as_mut().map(|ch| (ch, &mut next)),
    );
    drop(buf);
    Counters::bump(&c.major_faults, 1);
    c.major_latency.record(t0.elapsed().as_nanos() as u64);
    if let Some(ch) = chase {
        // What the fetched blocks point at, after the faulting page is in (in the thread
        // fault mode the faulting thread runs on meanwhile).
        fetch_ahead(r, &next, &[], page, Some(ch));
    }
}

/// Prefetches `cands` after a fault on `anchor`, then, for a pointer chase, what the
/// fetched blocks lead to, a round of fetches per hop (see `prefetch::pointer`).
fn fetch_ahead(
    r: &RegionState,
    cands: &Candidates,
    whole: &[u64],
    anchor: u64,
    mut chase: Option<Chase>,
) {
    let mut cands = cands.clone();
    let mut whole = whole;
    for _ in 0..=pointer::DEPTH {
        if cands.is_empty() {
            break;
        }
        let mut next = Candidates::new();
        prefetch_with(
            r,
            cands.as_slice(),
            whole,
            Some(anchor),
            chase.as_mut().map(|ch| (ch, &mut next)),
        );
        if chase.is_none() {
            break;
        }
        cands = next;
        whole = &[];
    }
    if let Some(ch) = chase {
        let (reads, targets) = ch.work();
        let c = &r.shared.counters;
        Counters::bump(&c.pointer_reads, reads as u64);
        Counters::bump(&c.pointer_targets, targets as u64);
    }
}

/// Locks the FAR pages among `cands` (no duplicates, none already in `out`); returns how
/// many it locked into `out_pages` / `out_states`.
fn lock_far(
    r: &RegionState,
    cands: &[u64],
    out_pages: &mut [u64],
    out_states: &mut [State],
) -> usize {
    let mut n = 0;
    for &p in cands {
        if n == out_pages.len() {
            break;
        }
        if p >= r.pages || out_pages[..n].contains(&p) {
            continue;
        }
        let w = &r.states[p as usize];
        let s = w.load();
        if s.tag() == Tag::Far && w.try_lock(s) {
            out_pages[n] = p;
            out_states[n] = s;
            n += 1;
        }
    }
    n
}

/// Fetches `pages` (all locked, all with a far copy) into `out` and checks every checksum.
fn fetch_verified(r: &RegionState, pages: &[u64], out: &mut [u8]) {
    let mut keys = [PageKey(0); KEYS];
    let mut n = 0;
    for p in pages {
        for k in r.keys(*p) {
            keys[n] = k;
            n += 1;
        }
    }
    let shared = &r.shared;
    if let Err(e) = shared.backend.fetch(&keys[..n], &mut out[..n * PAGE_SIZE]) {
        crate::fatal::die_tier("fetch pages", shared.backend.name(), &e);
    }
    let u = r.unit;
    for (i, p) in pages.iter().enumerate() {
        if page_hash(&out[i * u..(i + 1) * u]) != r.far_hash(*p) {
            crate::fatal::die_corrupt(shared.backend.name(), r.id, *p);
        }
    }
}

/// The most far-tier keys one batch holds: a batch of 4 KiB pages, or one 2 MiB page.
const KEYS: usize = if BATCH_PAGES > 512 { BATCH_PAGES } else { 512 };

/// Sorts a batch by page, keeping each page's state beside it (at most 72 entries).
fn sort_batch(pages: &mut [u64], states: &mut [State]) {
    for i in 1..pages.len() {
        let mut j = i;
        while j > 0 && pages[j - 1] > pages[j] {
            pages.swap(j - 1, j);
            states.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Installs a fetched, verified batch (`pages` sorted, all locked, `data` back to back).
///
/// `anchor` is the page the batch is for: the faulting page (`anchor_in_batch`: it is in
/// the batch and is mapped), or the page whose touch triggered this prefetch. With no
/// anchor (an explicit `prefetch` or `WillNeed`), every page is installed unmapped.
///
/// Each run of consecutive prefetched pages is mapped with one `UFFDIO_COPY`, except
/// its page farthest from the anchor: that one (the *marker*, like Linux's
/// `PG_readahead` page) stays unmapped, so a stream that reaches it takes one cheap minor
/// fault, which confirms the run as used and triggers the next window. A lone prefetched
/// page is installed unmapped, its own marker. Mapping runs eagerly matters: a minor fault
/// per prefetched page would cost about as much as the major faults saved.
///
/// Pages in `whole` (the rest of an object the upcall asked for whole) are never markers:
/// the object is read to its end, so there is nothing to confirm, and a marker would cost
/// a `pwrite` here and a minor fault at the object's end (a Redis GET of a 4 KiB value:
/// one of each per request). They are mapped like the faulting page, and their use is not
/// tracked.
#[allow(clippy::too_many_arguments)] // the batch is passed as its parts, all on the stack
fn install(
    r: &RegionState,
    pages: &[u64],
    states: &[State],
    data: &[u8],
    anchor: Option<u64>,
    anchor_in_batch: bool,
    whole: &[u64],
    refs: &mut [PageRef],
) {
    let n = pages.len();
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while anchor.is_some() && j < n && pages[j] == pages[j - 1] + 1 {
            j += 1;
        }
        // The run is pages[i..j]. Choose its marker and the part mapped now.
        let has_anchor =
            anchor_in_batch && anchor.is_some_and(|a| pages[i] <= a && a <= pages[j - 1]);
        // Huge pages are never installed unmapped: hugetlbfs cannot be written around
        // the mapping (no pwrite), and a 2 MiB page is its own prefetch.
        let can_mark = |k: usize| !r.shared.huge() && !whole.contains(&pages[k]);
        let marker = match anchor {
            _ if j - i == 1 => (!has_anchor && can_mark(i)).then_some(i),
            Some(a) if pages[j - 1].abs_diff(a) >= pages[i].abs_diff(a) => {
                can_mark(j - 1).then_some(j - 1)
            }
            _ => can_mark(i).then_some(i),
        };
        let (e0, e1) = match marker {
            Some(m) if m == j - 1 => (i, j - 1),
            Some(m) if m == i => (i + 1, j),
            _ => (i, j),
        };
        if e1 > e0 {
            let src = &data[e0 * r.unit..e1 * r.unit];
            // SAFETY: `src` is a fetch buffer of ours, outside every registered range.
            fill(
                || unsafe { r.uffd.copy(r.page_addr(pages[e0]), src.as_ptr(), src.len()) },
                "installing fetched pages (UFFDIO_COPY)",
            );
        }
        for k in i..j {
            let generation = next_gen(states[k]);
            let next = if Some(k) == marker {
                debug_assert!(!r.shared.huge(), "no markers with huge pages (no prefetch)");
                if let Err(e) = r.memfd.write_at(
                    &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE],
                    pages[k] as usize * PAGE_SIZE,
                ) {
                    crate::fatal::die_io("could not install a prefetched page (pwrite)", &e);
                }
                State::new(Tag::Inactive, HAS_FAR | PREFETCHED | YOUNG, generation)
            } else if (has_anchor && Some(pages[k]) == anchor) || !can_mark(k) {
                State::new(Tag::Active, HAS_FAR, generation)
            } else {
                State::new(Tag::Active, HAS_FAR | AHEAD, generation)
            };
            r.states[pages[k] as usize].unlock(next);
            refs[k] = PageRef {
                region: r.id,
                generation,
                page: pages[k],
            };
        }
        i = j;
    }
}

/// A stream reached the marker `page`: the pages mapped ahead next to it were used.
/// Returns how many it confirmed.
fn confirm_ahead(r: &RegionState, page: u64) -> u64 {
    let mut n = 0;
    for down in [true, false] {
        let mut p = page;
        loop {
            p = match (down, p) {
                (true, 0) => break,
                (true, p) => p - 1,
                (false, p) if p + 1 >= r.pages => break,
                (false, p) => p + 1,
            };
            let w = &r.states[p as usize];
            let s = w.load();
            if s.tag() != Tag::Active
                || !s.ahead()
                || !w.replace(s, s.with_flags(s.flags() & !AHEAD))
            {
                break;
            }
            r.pointer_feedback(p, true);
            crate::trace::record(crate::trace::Kind::Used, p);
            n += 1;
        }
    }
    n
}

/// Prefetches `cands` without a faulting page: after a prefetch hit on `anchor`, or on
/// the application's request (no anchor: installed unmapped). `whole`: the candidates that
/// are the rest of an object (see [`install`]).
pub(crate) fn prefetch_pages(
    r: &RegionState,
    cands: &[u64],
    whole: &[u64],
    anchor: Option<u64>,
) -> usize {
    prefetch_with(r, cands, whole, anchor, None)
}

/// [`prefetch_pages`], and a chase reads the batch once it is in (see [`bring_in`]).
fn prefetch_with(
    r: &RegionState,
    cands: &[u64],
    whole: &[u64],
    anchor: Option<u64>,
    chase: Option<(&mut Chase, &mut Candidates)>,
) -> usize {
    let mut buf = r.shared.bufs.acquire();
    let mut pages = [0u64; BATCH_PAGES];
    let mut states = [State(0); BATCH_PAGES];
    let cap = (buf.bytes().len() / r.unit).min(BATCH_PAGES);
    let n = lock_far(r, cands, &mut pages[..cap], &mut states[..cap]);
    if n == 0 {
        return 0;
    }
    bring_in(
        r,
        buf.bytes(),
        &mut pages,
        &mut states,
        0,
        n,
        anchor,
        false,
        whole,
        chase,
    )
}

/// The common tail of every fetch: `pages[..n]` are locked; the first `framed` already
/// have frames, the rest are prefetch candidates that get frames if they can (evicting for
/// them as readahead does) and are released otherwise. Then one batched, verified fetch
/// and the install. Returns how many pages came in. A pointer chase reads the blocks it
/// asked for from the batch and pushes the next hop's far blocks (`chase`).
#[allow(clippy::too_many_arguments)] // the batch is passed as its parts, all on the stack
fn bring_in(
    r: &RegionState,
    scratch: &mut [u8],
    pages: &mut [u64; BATCH_PAGES],
    states: &mut [State; BATCH_PAGES],
    framed: usize,
    n: usize,
    anchor: Option<u64>,
    anchor_in_batch: bool,
    whole: &[u64],
    chase: Option<(&mut Chase, &mut Candidates)>,
) -> usize {
    let shared = &r.shared;
    let got = framed + reserve_for_prefetch(shared, n - framed, scratch);
    for i in got..n {
        r.states[pages[i] as usize].unlock(states[i]);
    }
    if got == 0 {
        return 0;
    }
    sort_batch(&mut pages[..got], &mut states[..got]);
    let bytes = &mut scratch[..got * r.unit];
    fetch_verified(r, &pages[..got], bytes);
    if let Some((ch, next)) = chase {
        ch.fetched(&pages[..got], bytes, next);
    }
    let mut refs = [PageRef {
        region: r.id,
        generation: 0,
        page: 0,
    }; BATCH_PAGES];
    install(
        r,
        &pages[..got],
        &states[..got],
        bytes,
        anchor,
        anchor_in_batch,
        whole,
        &mut refs[..got],
    );
    shared.policy_insert(&refs[..got]);
    let objects = pages[..got]
        .iter()
        .filter(|&&p| whole.contains(&p) && !(anchor_in_batch && Some(p) == anchor))
        .count() as u64;
    let guessed = (got - framed) as u64 - objects;
    if crate::trace::active() {
        for &p in pages[..got]
            .iter()
            .filter(|&&p| !(anchor_in_batch && Some(p) == anchor))
        {
            let object = if whole.contains(&p) {
                crate::trace::OBJECT
            } else {
                0
            };
            crate::trace::record(crate::trace::Kind::Prefetch, p | object);
        }
    }
    let c = &shared.counters;
    Counters::bump(&c.fetched, got as u64);
    Counters::bump(&c.prefetched, guessed);
    Counters::bump(&c.object_pages, objects);
    r.throttle.issued(guessed);
    got
}
