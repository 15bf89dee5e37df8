//! Deterministic page-access patterns.
//!
//! An [`AccessStream`] yields page indices in `0..pages` forever. The same
//! `(pattern, pages, seed, thread_index, threads)` always yields the same sequence, so the
//! three systems a benchmark compares (farmem, Linux swap, all-local) do exactly the same
//! work. Each item costs a few nanoseconds and no memory traffic: the streams carry no
//! tables, which matters because in the Linux-swap run any table would be charged to the
//! memory cgroup and eat into the budget being measured.
//!
//! - [`Pattern::Seq`]: thread `i` of `n` scans its own contiguous slice
//!   `[i*pages/n, (i+1)*pages/n)`, wrapping at the end of the slice (with more threads than
//!   pages, a thread whose slice is empty touches the single page at its start).
//! - [`Pattern::Random`]: uniform over all pages, an independent PRNG per thread.
//! - [`Pattern::Skewed`]: 90% of accesses go to a hot set of 10% of the pages
//!   (`ceil(pages/10)`), the other 10% uniformly to the remaining cold pages. The hot set
//!   is a pseudo-random *scattered* subset (see [`Scatter`]), not a contiguous block, so
//!   neither a sequential prefetcher nor the page layout makes it trivially easy. It depends
//!   only on `(pages, seed)`, so all threads share one hot set.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which pages a stream visits, and in what order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Each thread scans its own contiguous slice of the pages, wrapping.
    Seq,
    /// Uniformly random pages.
    Random,
    /// 90% of accesses to a scattered hot 10% of the pages, 10% to the rest.
    Skewed,
}

impl Pattern {
    /// All patterns, in the order benchmarks usually report them.
    pub const ALL: [Pattern; 3] = [Pattern::Seq, Pattern::Random, Pattern::Skewed];

    /// The name used on the command line and in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Pattern::Seq => "seq",
            Pattern::Random => "random",
            Pattern::Skewed => "skewed",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors from parsing a pattern name or building a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The name is not one of the known patterns.
    #[error("unknown access pattern {given:?}: use one of seq, random, skewed")]
    Unknown {
        /// What was given.
        given: String,
    },
    /// A stream over zero pages was requested.
    #[error("an access stream needs at least one page; give a region of at least one page")]
    NoPages,
    /// The thread index is out of range.
    #[error("thread index {index} is out of range for {threads} threads; use 0..{threads}")]
    ThreadIndex {
        /// The index given.
        index: usize,
        /// The thread count given.
        threads: usize,
    },
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "seq" | "sequential" => Ok(Pattern::Seq),
            "random" | "rand" | "uniform" => Ok(Pattern::Random),
            "skewed" | "skew" | "hot" => Ok(Pattern::Skewed),
            _ => Err(PatternError::Unknown {
                given: s.to_owned(),
            }),
        }
    }
}

/// The SplitMix64 output function: a fast, well-mixing bijection on `u64`.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea, Flood 2014): one add and one [`mix64`] per number. Plenty for
/// choosing pages; not for cryptography.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix64(self.state)
    }

    /// A number in `0..n` (Lemire's multiply-shift; the bias is below `n / 2^64`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A keyed pseudo-random permutation of `0..n` that needs no memory.
///
/// Built from bijections on `k`-bit words (`2^k >= n`, so the domain is less than `2n`):
/// three rounds of add-key, multiply by an odd key, and xor-shift-right, all mod `2^k`.
/// Values that land in `n..2^k` are walked around the cycle again ("cycle walking"), which
/// keeps it a permutation of `0..n`; on average fewer than two rounds of walking.
/// The skewed pattern's hot set is `{ scatter.apply(r) : r < hot }`.
#[derive(Clone, Debug)]
pub struct Scatter {
    n: u64,
    mask: u64,
    shift: u32,
    add: [u64; 3],
    mul: [u64; 3],
}

impl Scatter {
    /// The permutation of `0..n` selected by `seed`. `n` must be at least 1.
    pub fn new(n: u64, seed: u64) -> Self {
        debug_assert!(n >= 1);
        let bits = u64::BITS - n.saturating_sub(1).leading_zeros();
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let mut rng = SplitMix64::new(seed ^ 0x005C_A77E_550F_u64);
        let mut add = [0; 3];
        let mut mul = [0; 3];
        for i in 0..3 {
            add[i] = rng.next_u64();
            mul[i] = rng.next_u64() | 1;
        }
        Self {
            n,
            mask,
            shift: (bits / 2).max(1),
            add,
            mul,
        }
    }

    #[inline]
    fn round_trip(&self, mut x: u64) -> u64 {
        for i in 0..3 {
            x = x.wrapping_add(self.add[i]) & self.mask;
            x = x.wrapping_mul(self.mul[i]) & self.mask;
            x ^= x >> self.shift;
        }
        x
    }

    /// The image of `x` (`x < n`).
    #[inline]
    pub fn apply(&self, x: u64) -> u64 {
        debug_assert!(x < self.n);
        let mut y = self.round_trip(x);
        // Terminates: `round_trip` permutes 0..=mask, so the cycle through `x` returns to
        // `x < n` at the latest.
        while y >= self.n {
            y = self.round_trip(y);
        }
        y
    }
}

/// The fraction of accesses that go to the hot set of [`Pattern::Skewed`]: 90%.
pub const SKEWED_HOT_ACCESS_FRACTION: f64 = 0.9;
/// 0.9 * 2^64: a random u64 below this picks the hot set.
const HOT_THRESHOLD: u64 = 16_602_069_666_338_596_454;

/// Number of hot pages in a skewed stream over `pages` pages: `ceil(pages / 10)`.
pub const fn skewed_hot_pages(pages: usize) -> usize {
    pages.div_ceil(10)
}

/// The hot pages of [`Pattern::Skewed`] over `pages` pages with `seed`, hottest-rank first.
/// Handy for tests and for reporting; the stream itself never materialises this set.
pub fn skewed_hot_set(pages: usize, seed: u64) -> impl Iterator<Item = usize> {
    let scatter = Scatter::new(pages.max(1) as u64, seed);
    (0..skewed_hot_pages(pages) as u64).map(move |r| scatter.apply(r) as usize)
}

#[derive(Clone, Debug)]
enum Kind {
    Seq {
        start: u64,
        len: u64,
        pos: u64,
    },
    Random {
        rng: SplitMix64,
        pages: u64,
    },
    Skewed {
        rng: SplitMix64,
        scatter: Scatter,
        hot: u64,
        cold: u64,
    },
}

/// An endless, deterministic stream of page indices in `0..pages`.
#[derive(Clone, Debug)]
pub struct AccessStream {
    kind: Kind,
    pattern: Pattern,
    pages: usize,
    thread_seed: u64,
}

impl AccessStream {
    /// The stream of thread `thread_index` of `threads` (use `0, 1` for a single thread).
    ///
    /// `seed` fixes everything: the random sequences and the skewed hot set. The random
    /// sequence of each thread also depends on `thread_index`; the hot set does not.
    pub fn new(
        pattern: Pattern,
        pages: usize,
        seed: u64,
        thread_index: usize,
        threads: usize,
    ) -> Result<Self, PatternError> {
        if pages == 0 {
            return Err(PatternError::NoPages);
        }
        if thread_index >= threads {
            return Err(PatternError::ThreadIndex {
                index: thread_index,
                threads,
            });
        }
        let thread_seed = mix64(seed ^ mix64(thread_index as u64 ^ 0x7468_7265_6164));
        let n = pages as u64;
        let kind = match pattern {
            Pattern::Seq => {
                let lo = (thread_index as u128 * n as u128 / threads as u128) as u64;
                let hi = ((thread_index as u128 + 1) * n as u128 / threads as u128) as u64;
                // More threads than pages leaves some slices empty: those threads share the
                // one page at their slice's start (lo < n since thread_index < threads).
                Kind::Seq {
                    start: lo,
                    len: (hi - lo).max(1),
                    pos: 0,
                }
            }
            Pattern::Random => Kind::Random {
                rng: SplitMix64::new(thread_seed),
                pages: n,
            },
            Pattern::Skewed => {
                let hot = skewed_hot_pages(pages) as u64;
                Kind::Skewed {
                    rng: SplitMix64::new(thread_seed),
                    scatter: Scatter::new(n, seed),
                    hot,
                    cold: n - hot,
                }
            }
        };
        Ok(Self {
            kind,
            pattern,
            pages,
            thread_seed,
        })
    }

    /// The pattern this stream follows.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The number of pages the stream ranges over.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// A seed derived from `(seed, thread_index)` for other per-thread decisions (the
    /// access loop uses it to pick which accesses write), independent of the page sequence.
    pub fn thread_seed(&self) -> u64 {
        mix64(self.thread_seed ^ 0x7772_6974_6573)
    }

    /// The next page index.
    #[inline]
    pub fn next_page(&mut self) -> usize {
        match &mut self.kind {
            Kind::Seq { start, len, pos } => {
                let page = *start + *pos;
                *pos += 1;
                if *pos == *len {
                    *pos = 0;
                }
                page as usize
            }
            Kind::Random { rng, pages } => rng.below(*pages) as usize,
            Kind::Skewed {
                rng,
                scatter,
                hot,
                cold,
            } => {
                let rank = if *cold == 0 || rng.next_u64() < HOT_THRESHOLD {
                    rng.below(*hot)
                } else {
                    *hot + rng.below(*cold)
                };
                scatter.apply(rank) as usize
            }
        }
    }
}

impl Iterator for AccessStream {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        Some(self.next_page())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn parse_patterns() {
        assert_eq!("seq".parse::<Pattern>(), Ok(Pattern::Seq));
        assert_eq!(" Random ".parse::<Pattern>(), Ok(Pattern::Random));
        assert_eq!("SKEWED".parse::<Pattern>(), Ok(Pattern::Skewed));
        let err = "zipf".parse::<Pattern>().unwrap_err();
        assert!(err.to_string().contains("seq, random, skewed"), "{err}");
        for p in Pattern::ALL {
            assert_eq!(p.to_string().parse::<Pattern>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
    }

    #[test]
    fn hot_threshold_is_nine_tenths() {
        let exact = SKEWED_HOT_ACCESS_FRACTION * 2f64.powi(64);
        assert!((HOT_THRESHOLD as f64 - exact).abs() / exact < 1e-12);
    }

    #[test]
    fn construction_errors() {
        assert_eq!(
            AccessStream::new(Pattern::Seq, 0, 1, 0, 1).unwrap_err(),
            PatternError::NoPages
        );
        assert!(matches!(
            AccessStream::new(Pattern::Seq, 10, 1, 2, 2),
            Err(PatternError::ThreadIndex { .. })
        ));
    }

    #[test]
    fn seq_slices_partition_pages() {
        let (pages, threads) = (103, 4);
        let mut seen = vec![0u32; pages];
        for t in 0..threads {
            let s = AccessStream::new(Pattern::Seq, pages, 0, t, threads).unwrap();
            let first: Vec<_> = s.take(pages / threads + 1).collect();
            let lo = t * pages / threads;
            let hi = (t + 1) * pages / threads;
            for (i, &p) in first.iter().enumerate() {
                assert_eq!(p, lo + i % (hi - lo), "thread {t}");
            }
            for count in &mut seen[lo..hi] {
                *count += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn seq_more_threads_than_pages() {
        // 5 threads over 3 pages: slices [0,0) [0,1) [1,1) [1,2) [2,3); empty ones get
        // the page at their start.
        let firsts: Vec<Vec<usize>> = (0..5)
            .map(|t| {
                let s = AccessStream::new(Pattern::Seq, 3, 0, t, 5).unwrap();
                s.take(3).collect()
            })
            .collect();
        assert_eq!(
            firsts,
            vec![vec![0; 3], vec![0; 3], vec![1; 3], vec![1; 3], vec![2; 3]]
        );
    }

    #[test]
    fn random_is_deterministic_and_per_thread() {
        let a: Vec<_> = AccessStream::new(Pattern::Random, 1000, 7, 0, 2)
            .unwrap()
            .take(100)
            .collect();
        let b: Vec<_> = AccessStream::new(Pattern::Random, 1000, 7, 0, 2)
            .unwrap()
            .take(100)
            .collect();
        let c: Vec<_> = AccessStream::new(Pattern::Random, 1000, 7, 1, 2)
            .unwrap()
            .take(100)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn random_covers_pages_roughly_uniformly() {
        let pages = 64;
        let mut counts = vec![0u32; pages];
        for p in AccessStream::new(Pattern::Random, pages, 3, 0, 1)
            .unwrap()
            .take(64_000)
        {
            counts[p] += 1;
        }
        // Expected 1000 each; 6 sigma is about 190.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn skewed_sends_ninety_percent_to_a_scattered_hot_tenth() {
        let pages = 10_000;
        let hot: HashSet<usize> = skewed_hot_set(pages, 11).collect();
        assert_eq!(hot.len(), 1000);
        let n = 200_000;
        let in_hot = AccessStream::new(Pattern::Skewed, pages, 11, 1, 2)
            .unwrap()
            .take(n)
            .filter(|p| hot.contains(p))
            .count();
        let frac = in_hot as f64 / n as f64;
        assert!((0.89..0.91).contains(&frac), "hot fraction {frac}");
        // Scattered, not a block: the hot pages spread over the whole range, and few are
        // adjacent to each other.
        let mut sorted: Vec<_> = hot.iter().copied().collect();
        sorted.sort_unstable();
        assert!(sorted[0] < 100 && sorted[999] > 9_900, "{:?}", &sorted[..5]);
        let adjacent = sorted.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(adjacent < 250, "{adjacent} adjacent hot pairs");
        // Same hot set from every thread; different set for another seed.
        let other: HashSet<usize> = skewed_hot_set(pages, 12).collect();
        assert!(hot.intersection(&other).count() < 250);
    }

    #[test]
    fn tiny_skewed_regions() {
        for pages in 1..25 {
            let s = AccessStream::new(Pattern::Skewed, pages, 5, 0, 1).unwrap();
            assert!(s.take(1000).all(|p| p < pages));
        }
    }

    proptest! {
        #[test]
        fn scatter_is_a_permutation(n in 1u64..3000, seed in any::<u64>()) {
            let s = Scatter::new(n, seed);
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = s.apply(x);
                prop_assert!(y < n);
                prop_assert!(!seen[y as usize]);
                seen[y as usize] = true;
            }
        }

        #[test]
        fn streams_stay_in_range(
            pattern in prop::sample::select(Pattern::ALL.to_vec()),
            pages in 1usize..5000,
            seed in any::<u64>(),
            threads in 1usize..9,
            t in 0usize..8,
        ) {
            let t = t % threads;
            let s = AccessStream::new(pattern, pages, seed, t, threads).unwrap();
            for p in s.take(500) {
                prop_assert!(p < pages);
            }
        }
    }
}
