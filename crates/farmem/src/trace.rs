//! Fault and allocation traces: what a run did, for replaying policies offline
//! (`farmem trace -- PROGRAM`, `farmem replay TRACE`).
//!
//! A trace is a file: a header of [`HEADER`] bytes, then fixed 16-byte [`Event`]s. The
//! file is sized up front for at most `capacity` events and mapped shared; the fault
//! path appends with one atomic add and two stores, no system call and no lock (so also
//! in the SIGBUS handler). The header's `count` is the same atomic, so a trace of a
//! program that was killed is complete up to its last event; events past the capacity
//! are counted in `dropped` and lost (bounded, as a trace of a long run must be).
//!
//! Every event names a page of a region (the far heap under `farmem run`) or, for an
//! allocation, a byte offset and a size:
//!
//! | kind | what | a | b |
//! |---|---|---|---|
//! | MAJOR | a fault fetched the page from the far tier | page | ns since start |
//! | HIT | the first touch of a prefetched page | page | ns |
//! | MINOR | a touch of a local page the reclaimer had unmapped to test it | page | ns |
//! | ZERO | a first touch (zero-filled) | page | ns |
//! | PREFETCH | a page brought in ahead of use ([`OBJECT`] set: the rest of the object a fault landed in, mapped at once) | page | ns |
//! | EVICT | a page left local memory | page | ns |
//! | USED | a page prefetched and mapped ahead, found used (its run's marker was reached) | page | ns |
//! | ALLOC | a heap block was allocated | byte offset | size |
//! | FREE | a heap block is being freed | byte offset | size |
//!
//! The header also keeps the budget and, written at exit, the live run's counters, so
//! that a replay can say how far it sits from what really happened.

use std::io;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicPtr, AtomicU64};
use std::time::Instant;

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"FARMTRC1";
/// Bytes before the first event.
pub const HEADER: usize = 4096;
/// Bytes per event.
pub const EVENT: usize = 16;
/// In a PREFETCH event's page: the page is the rest of an object (mapped at once, its
/// use not tracked), not a guess.
pub const OBJECT: u64 = 1 << 55;

/// What an event records (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A fault that fetched the page.
    Major = 1,
    /// The first touch of a prefetched page.
    Hit = 2,
    /// A touch of a local page the reclaimer unmapped.
    Minor = 3,
    /// A first touch, zero-filled.
    Zero = 4,
    /// A page brought in ahead of use.
    Prefetch = 5,
    /// A page evicted.
    Evict = 6,
    /// A block allocated.
    Alloc = 7,
    /// A block about to be freed.
    Free = 8,
    /// A page prefetched and mapped ahead, found used when the program reached its run's
    /// marker (its touch took no fault of its own).
    Used = 9,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Major,
            2 => Kind::Hit,
            3 => Kind::Minor,
            4 => Kind::Zero,
            5 => Kind::Prefetch,
            6 => Kind::Evict,
            7 => Kind::Alloc,
            8 => Kind::Free,
            9 => Kind::Used,
            _ => return None,
        })
    }
}

/// One event: its kind, a page or byte offset (`a`, 56 bits), and a time or size (`b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// The page (faults, prefetches, evictions) or byte offset (allocations).
    pub a: u64,
    /// Nanoseconds since the trace began (page events) or the block's size.
    pub b: u64,
}

/// Header fields, as u64 slots after the magic.
mod slot {
    pub const COUNT: usize = 1;
    pub const CAPACITY: usize = 2;
    pub const BUDGET_PAGES: usize = 3;
    pub const HEAP_BASE: usize = 4;
    /// Live counters at exit: major faults, prefetched pages, prefetch hits, minor faults.
    pub const LIVE_MAJOR: usize = 5;
    pub const LIVE_PREFETCHED: usize = 6;
    pub const LIVE_HITS: usize = 7;
    pub const LIVE_MINOR: usize = 8;
    pub const LIVE_DONE: usize = 9;
}

/// A trace being written: the process's one recorder (see [`start`]).
struct Recorder {
    base: *mut AtomicU64,
    capacity: u64,
    t0: Instant,
}

// SAFETY: the mapping is shared memory written only through atomics.
unsafe impl Send for Recorder {}
// SAFETY: as above.
unsafe impl Sync for Recorder {}

static RECORDER: AtomicPtr<Recorder> = AtomicPtr::new(std::ptr::null_mut());

impl Recorder {
    fn slot(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the header holds HEADER / 8 slots, all inside the mapping.
        unsafe { &*self.base.add(i) }
    }

    fn push(&self, kind: Kind, a: u64, b: u64) {
        // Past the capacity the count goes on: the reader takes the excess as dropped.
        let i = self.slot(slot::COUNT).fetch_add(1, Relaxed);
        if i >= self.capacity {
            return;
        }
        let at = HEADER / 8 + 2 * i as usize;
        // SAFETY: event `i` < capacity lies inside the mapping (sized for capacity).
        unsafe {
            (*self.base.add(at)).store((kind as u64) << 56 | (a & ((1 << 56) - 1)), Relaxed);
            (*self.base.add(at + 1)).store(b, Release);
        }
    }
}

/// Starts recording into a new file at `path`, for at most `capacity` events, of a run
/// with `budget_pages` local pages whose heap starts at `heap_base`. Once per process.
pub fn start(
    path: &std::path::Path,
    capacity: u64,
    budget_pages: u64,
    heap_base: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let len = usize::try_from(capacity)
        .ok()
        .and_then(|c| c.checked_mul(EVENT))
        .and_then(|b| b.checked_add(HEADER))
        .filter(|&l| l <= 1 << 44)
        .ok_or_else(|| {
            io::Error::other(format!("{capacity} events is more than a trace can hold"))
        })?;
    f.set_len(len as u64)?;
    // SAFETY: a fresh shared mapping of the whole file, checked below; it stays for the
    // rest of the process (the recorder is never freed: the fault path may use it).
    let p = unsafe {
        crate::sys::raw::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let r = Box::new(Recorder {
        base: p.cast(),
        capacity,
        t0: Instant::now(),
    });
    // SAFETY: the first 8 bytes of the mapping, ours.
    unsafe { std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), p.cast::<u8>(), 8) };
    r.slot(slot::CAPACITY).store(capacity, Relaxed);
    r.slot(slot::BUDGET_PAGES).store(budget_pages, Relaxed);
    r.slot(slot::HEAP_BASE).store(heap_base, Relaxed);
    let r = Box::into_raw(r);
    if RECORDER
        .compare_exchange(std::ptr::null_mut(), r, Release, Relaxed)
        .is_err()
    {
        // SAFETY: `r` was never published.
        drop(unsafe { Box::from_raw(r) });
        return Err(io::Error::other("a trace is already being recorded"));
    }
    Ok(())
}

/// Records an event, if a trace is being recorded (one atomic load otherwise).
#[inline]
pub fn record(kind: Kind, a: u64) {
    let r = RECORDER.load(Acquire);
    if r.is_null() {
        return;
    }
    // SAFETY: a published recorder is never freed.
    let r = unsafe { &*r };
    let b = match kind {
        Kind::Alloc | Kind::Free => 0,
        _ => r.t0.elapsed().as_nanos() as u64,
    };
    r.push(kind, a, b);
}

/// Records an allocation or free of `size` bytes at byte offset `off` of the heap.
#[inline]
pub fn record_block(kind: Kind, off: u64, size: u64) {
    let r = RECORDER.load(Acquire);
    if r.is_null() {
        return;
    }
    // SAFETY: as above.
    unsafe { &*r }.push(kind, off, size);
}

/// Stops recording in a forked child: the trace is the parent's.
pub fn forget_in_child() {
    RECORDER.store(std::ptr::null_mut(), Release);
}

/// Whether a trace is being recorded.
#[inline]
pub fn active() -> bool {
    !RECORDER.load(Relaxed).is_null()
}

/// Writes the live run's counters into the header (at exit); returns the events
/// recorded and dropped, or None if no trace is being recorded.
pub fn finish(s: &crate::Stats) -> Option<(u64, u64)> {
    let r = RECORDER.load(Acquire);
    if r.is_null() {
        return None;
    }
    // SAFETY: as above.
    let r = unsafe { &*r };
    r.slot(slot::LIVE_MAJOR).store(s.major_faults, Relaxed);
    r.slot(slot::LIVE_PREFETCHED)
        .store(s.prefetched_pages, Relaxed);
    r.slot(slot::LIVE_HITS).store(s.prefetch_hits, Relaxed);
    r.slot(slot::LIVE_MINOR).store(s.minor_faults, Relaxed);
    r.slot(slot::LIVE_DONE).store(1, Release);
    let n = r.slot(slot::COUNT).load(Relaxed);
    Some((n.min(r.capacity), n.saturating_sub(r.capacity)))
}

/// A trace read back.
#[derive(Debug)]
pub struct Trace {
    /// The events, in the order they were recorded.
    pub events: Vec<Event>,
    /// Events lost because the trace was full.
    pub dropped: u64,
    /// The live run's budget, in pages.
    pub budget_pages: u64,
    /// The live run's counters at exit, if it exited normally: major faults, prefetched
    /// pages, prefetch hits, minor faults.
    pub live: Option<[u64; 4]>,
}

impl Trace {
    /// Reads a trace file; a clear error if it is not one.
    pub fn read(path: &std::path::Path) -> io::Result<Trace> {
        let bytes = std::fs::read(path)?;
        if bytes.len() < HEADER || bytes[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a farmem trace (make one with `farmem trace -- PROGRAM`)",
                    path.display()
                ),
            ));
        }
        let word =
            |i: usize| u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let recorded = word(slot::COUNT);
        let count = recorded.min(word(slot::CAPACITY));
        let count = match usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(EVENT))
        {
            Some(b) if b <= bytes.len() - HEADER => b / EVENT,
            _ => usize::MAX,
        };
        if count == usize::MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is cut short: it says {count} events", path.display()),
            ));
        }
        let mut events = Vec::with_capacity(count);
        for i in 0..count {
            let at = (HEADER + i * EVENT) / 8;
            let (w, b) = (word(at), word(at + 1));
            // A writer stopped before its first store leaves kind 0 (skipped); one stopped
            // between the two leaves a time or size of 0.
            if let Some(kind) = Kind::from_u8((w >> 56) as u8) {
                events.push(Event {
                    kind,
                    a: w & ((1 << 56) - 1),
                    b,
                });
            }
        }
        Ok(Trace {
            events,
            dropped: recorded.saturating_sub(count as u64),
            budget_pages: word(slot::BUDGET_PAGES),
            live: (word(slot::LIVE_DONE) == 1).then(|| {
                [
                    word(slot::LIVE_MAJOR),
                    word(slot::LIVE_PREFETCHED),
                    word(slot::LIVE_HITS),
                    word(slot::LIVE_MINOR),
                ]
            }),
        })
    }
}
