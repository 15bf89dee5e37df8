//! The access loop shared by every system a benchmark compares, and the fill/verify pair.
//!
//! farmem, Linux swap and all-local must do exactly the same work, so all three run
//! [`Target::run`] over memory they own. One access touches one 8-byte word of a page, at a
//! word offset fixed per page ([`word_in_page`]), through volatile loads and stores the
//! compiler may not elide or merge. A write is a read-modify-write that stores back the
//! value it read: the page is dirtied all the same (which is all a pager or the kernel can
//! observe: a dirty bit or a write-protect fault), and [`Target::verify`] still holds after
//! any number of runs, so every benchmark can end by checking that no page was lost.
//!
//! Memory is only ever reached through raw pointers (never `&`/`&mut` slices), because the
//! pager under test may evict or fill it at any moment.
//!
//! # Fill pattern
//!
//! [`expected_word`] gives the content of every word. Each 64-byte line of a page holds:
//!
//! ```text
//! word:  0        1        2        3           4  5  6  7
//!        hash     hash     hash     page index  0  0  0  0
//! ```
//!
//! The three hashes (SplitMix64 of page and word) are incompressible and unique to the page;
//! the page index and zero words repeat at a distance of 64 bytes, which LZ-family
//! compressors encode as one 40-byte match per line. That leaves about 24 literal bytes plus
//! 3-4 bytes of match overhead per 64, a ratio of roughly 2.2-2.3x with lz4 per 4 KiB page,
//! in the range of real heaps (pointers, small integers, zero padding). The Linux-swap test
//! reports the ratio zram actually achieved on it.

use std::hint::black_box;
use std::ops::Range;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pattern::{AccessStream, Pattern, PatternError, SplitMix64, mix64};

/// The page size the patterns and the fill use (x86-64 and most aarch64 kernels).
pub const PAGE_SIZE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;
const FILL_KEY: u64 = 0xFA7E_F111_0000_0000;
const OFFSET_KEY: u64 = 0x0FF5_E700_0000_0000;
/// How many accesses between two looks at the clock in a timed run.
const CLOCK_BATCH: u64 = 256;

/// Errors of the access loop.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccessError {
    /// The base pointer was null.
    #[error("the access target's base pointer is null; pass the start of a mapped region")]
    NullBase,
    /// The base pointer is not 8-byte aligned.
    #[error(
        "the access target's base {base:#x} is not 8-byte aligned; pass a page-aligned mapping"
    )]
    Misaligned {
        /// The address given.
        base: usize,
    },
    /// The region is smaller than one page.
    #[error(
        "the access target is {len} bytes, less than one {PAGE_SIZE}-byte page; map at least one page"
    )]
    TooSmall {
        /// The length given.
        len: usize,
    },
    /// The stream ranges over more pages than the target has.
    #[error(
        "the access stream covers {stream_pages} pages but the target has only {target_pages}; build the stream with the target's page count"
    )]
    StreamTooLarge {
        /// Pages of the stream.
        stream_pages: usize,
        /// Pages of the target.
        target_pages: usize,
    },
    /// The write fraction is not within 0..=1.
    #[error("write fraction {0} is not between 0 and 1; use e.g. 0.3 for 30% writes")]
    WriteFraction(f64),
    /// Zero threads were requested.
    #[error("at least one thread is needed to run accesses")]
    NoThreads,
    /// A stream could not be built.
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many accesses (per thread).
    Count(u64),
    /// After this long. The clock is read every 256 accesses.
    For(Duration),
    /// At this instant (not serializable).
    #[serde(skip)]
    Until(Instant),
}

/// What one thread's run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// Accesses made.
    pub accesses: u64,
    /// How many of them were writes.
    pub writes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Wrapping sum of the words read: printed or compared, it proves the reads happened.
    pub checksum: u64,
}

impl RunStats {
    /// Accesses per second (0 for an empty run).
    pub fn accesses_per_sec(&self) -> f64 {
        rate(self.accesses, self.elapsed)
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// What a multi-threaded run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParallelStats {
    /// One entry per thread, in thread order.
    pub threads: Vec<RunStats>,
    /// Wall time from starting the first thread to the last one finishing.
    pub elapsed: Duration,
}

impl ParallelStats {
    /// Accesses over all threads.
    pub fn accesses(&self) -> u64 {
        self.threads.iter().map(|t| t.accesses).sum()
    }

    /// Writes over all threads.
    pub fn writes(&self) -> u64 {
        self.threads.iter().map(|t| t.writes).sum()
    }

    /// Aggregate accesses per second: all accesses over the wall time.
    pub fn accesses_per_sec(&self) -> f64 {
        rate(self.accesses(), self.elapsed)
    }

    /// Wrapping sum of the threads' checksums.
    pub fn checksum(&self) -> u64 {
        self.threads
            .iter()
            .fold(0u64, |a, t| a.wrapping_add(t.checksum))
    }
}

/// A word that did not hold what [`Target::fill`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "page {page} word {word} holds {found:#018x}, expected {expected:#018x}: the memory system lost or misplaced this page's data"
)]
pub struct Mismatch {
    /// Page index.
    pub page: usize,
    /// Word index within the page (0..512).
    pub word: usize,
    /// What fill wrote.
    pub expected: u64,
    /// What was read.
    pub found: u64,
}

/// The value [`Target::fill`] stores in word `word` (0..512) of page `page`.
#[inline]
pub const fn expected_word(page: usize, word: usize) -> u64 {
    match word % 8 {
        0..=2 => mix64(((page as u64) << 9 | word as u64) ^ FILL_KEY),
        3 => page as u64,
        _ => 0,
    }
}

/// The word (0..512) of page `page` that every access to that page touches.
#[inline]
pub const fn word_in_page(page: usize) -> usize {
    (mix64(page as u64 ^ OFFSET_KEY) as usize) & (WORDS_PER_PAGE - 1)
}

/// A region of memory the access loop may read and write: a base pointer and a page
/// count. Cheap to copy and to hand to threads.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    base: NonNull<u64>,
    pages: usize,
}

// SAFETY: a Target is an address range; the contract of `Target::new` makes the range valid
// for reads and writes from any thread for the Target's lifetime, and every access goes
// through volatile word-sized raw-pointer operations, never references, so concurrent use
// from several threads is no data race the compiler can exploit (racing accesses may
// interleave, which the loop tolerates: writes store back the value they read).
unsafe impl Send for Target {}
// SAFETY: see `Send` above; shared use only performs the same raw volatile accesses.
unsafe impl Sync for Target {}

impl Target {
    /// A target over `len` bytes at `base`; a trailing partial page is ignored.
    ///
    /// # Safety
    ///
    /// `base..base+len` must stay mapped readable and writable, and not be reached through
    /// Rust references, for as long as the Target or any copy of it is used (by any thread).
    /// Its contents may be anything before [`Target::fill`].
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<Self, AccessError> {
        let base = NonNull::new(base).ok_or(AccessError::NullBase)?;
        if !(base.as_ptr() as usize).is_multiple_of(8) {
            return Err(AccessError::Misaligned {
                base: base.as_ptr() as usize,
            });
        }
        if len < PAGE_SIZE {
            return Err(AccessError::TooSmall { len });
        }
        Ok(Self {
            base: base.cast(),
            pages: len / PAGE_SIZE,
        })
    }

    /// Number of whole pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Length in bytes (whole pages).
    pub fn len_bytes(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// The base address.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr().cast()
    }

    #[inline]
    fn word_ptr(&self, page: usize, word: usize) -> *mut u64 {
        debug_assert!(page < self.pages && word < WORDS_PER_PAGE);
        // SAFETY: page < pages and word < 512, so the offset stays inside the range that
        // `Target::new`'s contract keeps mapped; no overflow as the range exists in memory.
        unsafe { self.base.as_ptr().add(page * WORDS_PER_PAGE + word) }
    }

    fn clamp(&self, pages: Range<usize>) -> Range<usize> {
        pages.start.min(self.pages)..pages.end.min(self.pages)
    }

    /// Writes the fill pattern ([`expected_word`]) into every page.
    pub fn fill(&self) {
        self.fill_pages(0..self.pages);
    }

    /// Writes the fill pattern into `pages` (clamped to the target); threads may fill
    /// disjoint ranges in parallel.
    pub fn fill_pages(&self, pages: Range<usize>) {
        for page in self.clamp(pages) {
            for word in 0..WORDS_PER_PAGE {
                // SAFETY: `word_ptr` is in bounds and aligned; the memory is writable (Target
                // contract) and only reached through raw pointers.
                unsafe {
                    self.word_ptr(page, word)
                        .write_volatile(expected_word(page, word))
                };
            }
        }
    }

    /// Checks every page against the fill pattern; the first mismatch in page order.
    pub fn verify(&self) -> Result<(), Mismatch> {
        self.verify_pages(0..self.pages)
    }

    /// Checks `pages` (clamped to the target) against the fill pattern.
    pub fn verify_pages(&self, pages: Range<usize>) -> Result<(), Mismatch> {
        for page in self.clamp(pages) {
            for word in 0..WORDS_PER_PAGE {
                // SAFETY: in bounds, aligned, readable (Target contract).
                let found = unsafe { self.word_ptr(page, word).read_volatile() };
                let expected = expected_word(page, word);
                // The one word the access loop touches may have been flipped by writes.
                let flipped = word == word_in_page(page) && found == !expected;
                if found != expected && !flipped {
                    return Err(Mismatch {
                        page,
                        word,
                        expected,
                        found,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs accesses from `stream` until `stop`; a `write_fraction` (0..=1) of them are
    /// writes, chosen by a PRNG seeded from the stream's thread seed, so the reads and
    /// writes are the same on every system.
    pub fn run(
        &self,
        stream: &mut AccessStream,
        stop: Stop,
        write_fraction: f64,
    ) -> Result<RunStats, AccessError> {
        if stream.pages() > self.pages {
            return Err(AccessError::StreamTooLarge {
                stream_pages: stream.pages(),
                target_pages: self.pages,
            });
        }
        if !(0.0..=1.0).contains(&write_fraction) {
            return Err(AccessError::WriteFraction(write_fraction));
        }
        // Writes happen when a 53-bit random number is below this.
        let write_below = (write_fraction * (1u64 << 53) as f64) as u64;
        let mut writes_rng = SplitMix64::new(stream.thread_seed());
        let start = Instant::now();
        let deadline = match stop {
            Stop::Count(_) => None,
            Stop::For(d) => Some(start + d),
            Stop::Until(t) => Some(t),
        };
        let mut stats = RunStats::default();
        loop {
            let batch = match stop {
                Stop::Count(n) => (n - stats.accesses).min(CLOCK_BATCH),
                _ => CLOCK_BATCH,
            };
            if batch == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            for _ in 0..batch {
                let page = stream.next_page();
                let p = self.word_ptr(page, word_in_page(page));
                // SAFETY: `page < stream.pages() <= self.pages` (checked above), so `p` is
                // in bounds and aligned; readable and writable by the Target contract.
                let v = unsafe { p.read_volatile() };
                stats.checksum = stats.checksum.wrapping_add(v);
                let write = match write_below {
                    0 => false,
                    w if w >= 1 << 53 => true,
                    w => (writes_rng.next_u64() >> 11) < w,
                };
                if write {
                    // SAFETY: as for the read above. The word is flipped, so the page's
                    // content really changes (a system that detects dirty pages by content
                    // must write it back, as one that uses the hardware dirty bit does);
                    // `verify` accepts a touched word in either form.
                    unsafe { p.write_volatile(!v) };
                    stats.writes += 1;
                }
            }
            stats.accesses += batch;
        }
        stats.elapsed = start.elapsed();
        stats.checksum = black_box(stats.checksum);
        Ok(stats)
    }

    /// Runs `threads` threads, thread `i` on `AccessStream::new(pattern, pages, seed, i,
    /// threads)` over the whole target, each until `stop` (a count is per thread).
    pub fn run_parallel(
        &self,
        pattern: Pattern,
        seed: u64,
        threads: usize,
        stop: Stop,
        write_fraction: f64,
    ) -> Result<ParallelStats, AccessError> {
        if threads == 0 {
            return Err(AccessError::NoThreads);
        }
        let mut streams = (0..threads)
            .map(|i| AccessStream::new(pattern, self.pages, seed, i, threads))
            .collect::<Result<Vec<_>, _>>()?;
        if threads == 1 {
            let stats = self.run(&mut streams[0], stop, write_fraction)?;
            return Ok(ParallelStats {
                elapsed: stats.elapsed,
                threads: vec![stats],
            });
        }
        let start = Instant::now();
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = streams
                .iter_mut()
                .map(|stream| s.spawn(move || self.run(stream, stop, write_fraction)))
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(ParallelStats {
            threads: results,
            elapsed: start.elapsed(),
        })
    }
}

/// [`Target::run`] on a raw region: the access loop as a free function.
///
/// # Safety
///
/// As for [`Target::new`]: `base..base+len` stays mapped readable and writable and is not
/// reached through references during the call.
pub unsafe fn run_accesses(
    base: *mut u8,
    len: usize,
    stream: &mut AccessStream,
    stop: Stop,
    write_fraction: f64,
) -> Result<RunStats, AccessError> {
    // SAFETY: forwarded from this function's contract.
    let target = unsafe { Target::new(base, len) }?;
    target.run(stream, stop, write_fraction)
}

/// [`Target::fill`] on the first `pages` pages at `base`.
///
/// # Safety
///
/// `base..base + pages * PAGE_SIZE` is mapped writable and not reached through references
/// during the call.
pub unsafe fn fill(base: *mut u8, pages: usize) -> Result<(), AccessError> {
    // SAFETY: forwarded from this function's contract.
    let target = unsafe { Target::new(base, pages * PAGE_SIZE) }?;
    target.fill();
    Ok(())
}

/// [`Target::verify`] on the first `pages` pages at `base`: `Ok(Err(mismatch))` names the
/// first word that differs from the fill pattern.
///
/// # Safety
///
/// `base..base + pages * PAGE_SIZE` is mapped readable and not reached through mutable
/// references during the call.
pub unsafe fn verify(base: *mut u8, pages: usize) -> Result<Result<(), Mismatch>, AccessError> {
    // SAFETY: forwarded from this function's contract.
    let target = unsafe { Target::new(base, pages * PAGE_SIZE) }?;
    Ok(target.verify())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap buffer reached only through its raw pointer while a Target uses it.
    struct Buf {
        mem: Vec<u64>,
    }

    impl Buf {
        fn new(pages: usize) -> Self {
            Self {
                mem: vec![0; pages * WORDS_PER_PAGE],
            }
        }

        fn target(&mut self) -> Target {
            let len = self.mem.len() * 8;
            // SAFETY: the Vec stays alive and untouched by references while the test uses
            // the Target.
            unsafe { Target::new(self.mem.as_mut_ptr().cast(), len) }.unwrap()
        }
    }

    #[test]
    fn fill_verify_roundtrip_and_detects_corruption() {
        let mut buf = Buf::new(16);
        let t = buf.target();
        assert!(t.verify().is_err());
        t.fill();
        t.verify().unwrap();
        // SAFETY: in bounds; only raw accesses to the buffer.
        unsafe { t.word_ptr(9, 100).write_volatile(0xdead) };
        let m = t.verify().unwrap_err();
        assert_eq!((m.page, m.word, m.found), (9, 100, 0xdead));
        assert_eq!(m.expected, expected_word(9, 100));
        assert!(t.verify_pages(0..9).is_ok());
    }

    #[test]
    fn swapped_pages_are_detected() {
        let mut buf = Buf::new(4);
        let t = buf.target();
        t.fill();
        for w in 0..WORDS_PER_PAGE {
            // SAFETY: in bounds; only raw accesses.
            unsafe {
                let a = t.word_ptr(1, w).read_volatile();
                t.word_ptr(1, w)
                    .write_volatile(t.word_ptr(2, w).read_volatile());
                t.word_ptr(2, w).write_volatile(a);
            }
        }
        assert_eq!(t.verify().unwrap_err().page, 1);
    }

    #[test]
    fn target_rejects_bad_regions() {
        let mut v = vec![0u64; WORDS_PER_PAGE + 1];
        let p: *mut u8 = v.as_mut_ptr().cast();
        // SAFETY: the constructor only validates here; the targets are never used.
        unsafe {
            assert_eq!(
                Target::new(std::ptr::null_mut(), 4096).unwrap_err(),
                AccessError::NullBase
            );
            assert!(matches!(
                Target::new(p.add(1), 4096),
                Err(AccessError::Misaligned { .. })
            ));
            assert!(matches!(
                Target::new(p, 4095),
                Err(AccessError::TooSmall { .. })
            ));
            assert_eq!(Target::new(p, 4096 + 8).unwrap().pages(), 1);
        }
    }

    #[test]
    fn counted_run_does_exactly_the_work_and_keeps_data() {
        let mut buf = Buf::new(32);
        let t = buf.target();
        t.fill();
        let mut s = AccessStream::new(Pattern::Random, 32, 1, 0, 1).unwrap();
        let st = t.run(&mut s, Stop::Count(1000), 0.25).unwrap();
        assert_eq!(st.accesses, 1000);
        assert!((150..350).contains(&st.writes), "{}", st.writes);
        t.verify().unwrap();
        // Deterministic: same stream over the same data, same checksum and writes.
        t.fill();
        let mut s2 = AccessStream::new(Pattern::Random, 32, 1, 0, 1).unwrap();
        let st2 = t.run(&mut s2, Stop::Count(1000), 0.25).unwrap();
        assert_eq!((st.checksum, st.writes), (st2.checksum, st2.writes));
        let mut s3 = AccessStream::new(Pattern::Seq, 32, 1, 0, 1).unwrap();
        assert_eq!(t.run(&mut s3, Stop::Count(10), 1.0).unwrap().writes, 10);
        assert_eq!(t.run(&mut s3, Stop::Count(10), 0.0).unwrap().writes, 0);
        assert_eq!(t.run(&mut s3, Stop::Count(0), 0.0).unwrap().accesses, 0);
    }

    #[test]
    fn timed_run_stops() {
        let mut buf = Buf::new(8);
        let t = buf.target();
        t.fill();
        let mut s = AccessStream::new(Pattern::Skewed, 8, 1, 0, 1).unwrap();
        let st = t
            .run(&mut s, Stop::For(Duration::from_millis(20)), 0.5)
            .unwrap();
        assert!(st.accesses > 0 && st.accesses.is_multiple_of(CLOCK_BATCH));
        assert!(st.elapsed >= Duration::from_millis(20));
        assert!(st.accesses_per_sec() > 0.0);
    }

    #[test]
    fn run_rejects_bad_arguments() {
        let mut buf = Buf::new(8);
        let t = buf.target();
        let mut big = AccessStream::new(Pattern::Seq, 9, 1, 0, 1).unwrap();
        assert!(matches!(
            t.run(&mut big, Stop::Count(1), 0.0),
            Err(AccessError::StreamTooLarge { .. })
        ));
        let mut s = AccessStream::new(Pattern::Seq, 8, 1, 0, 1).unwrap();
        assert!(matches!(
            t.run(&mut s, Stop::Count(1), 1.5),
            Err(AccessError::WriteFraction(_))
        ));
        assert_eq!(
            t.run_parallel(Pattern::Seq, 1, 0, Stop::Count(1), 0.0)
                .unwrap_err(),
            AccessError::NoThreads
        );
    }

    #[test]
    fn parallel_run_counts_per_thread_and_keeps_data() {
        let mut buf = Buf::new(64);
        let t = buf.target();
        t.fill();
        for pattern in Pattern::ALL {
            let st = t
                .run_parallel(pattern, 9, 3, Stop::Count(5000), 0.3)
                .unwrap();
            assert_eq!(st.threads.len(), 3);
            assert_eq!(st.accesses(), 15_000);
            assert!(st.accesses_per_sec() > 0.0);
        }
        t.verify().unwrap();
    }

    #[test]
    fn free_functions_match_methods() {
        let mut buf = Buf::new(4);
        let base: *mut u8 = buf.mem.as_mut_ptr().cast();
        // SAFETY: the buffer outlives the calls and is only reached through `base`.
        unsafe {
            fill(base, 4).unwrap();
            verify(base, 4).unwrap().unwrap();
            let mut s = AccessStream::new(Pattern::Random, 4, 1, 0, 1).unwrap();
            let st = run_accesses(base, 4 * PAGE_SIZE, &mut s, Stop::Count(77), 1.0).unwrap();
            assert_eq!((st.accesses, st.writes), (77, 77));
        }
    }

    #[test]
    fn fill_pattern_shape() {
        // Per 64-byte line: 3 page-unique hashes, the page index, 4 zeros.
        for page in [0usize, 1, 12345] {
            for word in 0..WORDS_PER_PAGE {
                let v = expected_word(page, word);
                match word % 8 {
                    0..=2 => assert_ne!(v, expected_word(page + 1, word)),
                    3 => assert_eq!(v, page as u64),
                    _ => assert_eq!(v, 0),
                }
            }
        }
        assert!((0..1000).all(|p| word_in_page(p) < WORDS_PER_PAGE));
        let distinct: std::collections::HashSet<_> = (0..1000).map(word_in_page).collect();
        assert!(distinct.len() > 400);
    }
}
