//! Counters and latency histograms, recorded from the fault path without locks or
//! allocation (relaxed atomics only), read as a [`Stats`] snapshot at any time.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A lock-free log-linear histogram of nanosecond values: 16 sub-buckets per power of two
/// (about 6% relative error), values up to about 18 minutes. Recording is one relaxed
/// `fetch_add`, safe in a signal handler.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB; // values below this get their own bucket
const MAX_EXP: u32 = 40;
const NBUCKETS: usize = (LINEAR + (MAX_EXP as u64 - SUB_BITS as u64) * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..NBUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let e = e.min(MAX_EXP - 1);
    let mant = (v >> (e - SUB_BITS)) & (SUB - 1);
    (LINEAR + (e - SUB_BITS - 1) as u64 * SUB + mant) as usize
}

/// The midpoint of a bucket's range.
fn value_of(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let e = (b - LINEAR) / SUB + SUB_BITS as u64 + 1;
    let mant = (b - LINEAR) % SUB;
    let lo = (SUB + mant) << (e - SUB_BITS as u64);
    let width = 1u64 << (e - SUB_BITS as u64);
    lo + width / 2
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns).min(NBUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum.fetch_add(ns, Relaxed);
    }

    /// Mean of the values recorded (0 when empty).
    pub fn mean(&self) -> u64 {
        self.sum
            .load(Relaxed)
            .checked_div(self.count())
            .unwrap_or(0)
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The value at quantile `q` in `[0, 1]` (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i);
            }
        }
        value_of(NBUCKETS - 1)
    }

    /// Forgets everything.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
        self.sum.store(0, Relaxed);
    }
}

/// Live counters of one engine.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub zero_faults: CachePadded<AtomicU64>,
    pub minor_faults: CachePadded<AtomicU64>,
    pub major_faults: CachePadded<AtomicU64>,
    pub spurious_faults: AtomicU64,
    pub fetched: CachePadded<AtomicU64>,
    pub prefetched: AtomicU64,
    pub object_pages: AtomicU64,
    pub object_remapped: AtomicU64,
    pub pointer_reads: AtomicU64,
    pub pointer_targets: AtomicU64,
    pub kept_by_hint: AtomicU64,
    pub prefetch_hits: AtomicU64,
    pub prefetch_unused: AtomicU64,
    pub prefetch_throttled: AtomicU64,
    pub evicted: CachePadded<AtomicU64>,
    pub written_back: AtomicU64,
    pub dropped_clean: AtomicU64,
    pub evicted_zero: AtomicU64,
    pub demoted: AtomicU64,
    pub aged_chunks: AtomicU64,
    pub counted_chunks: AtomicU64,
    pub kept_mapped: AtomicU64,
    pub cold_mapped: AtomicU64,
    pub zero_ahead: AtomicU64,
    pub direct_reclaims: AtomicU64,
    pub reclaimer_raised: AtomicU64,
    pub peak_resident: AtomicU64,
    pub major_latency: Histogram,
    pub minor_latency: Histogram,
    pub zero_latency: Histogram,
}

impl Counters {
    pub fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn note_resident(&self, now: u64) {
        self.peak_resident.fetch_max(now, Relaxed);
    }
}

/// Latency quantiles of one kind of fault, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Faults of this kind.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        Latency {
            count: h.count(),
            mean_us: h.mean() as f64 / 1e3,
            p50_us: h.quantile(0.5) as f64 / 1e3,
            p99_us: h.quantile(0.99) as f64 / 1e3,
            p999_us: h.quantile(0.999) as f64 / 1e3,
        }
    }
}

/// A snapshot of an engine's behaviour since it started (or since [`crate::Engine::reset_stats`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// First touches served with zeros, no far I/O.
    pub zero_faults: u64,
    /// Touches of pages that were local but unmapped (recently demoted or prefetched).
    pub minor_faults: u64,
    /// Faults that had to wait for the far tier.
    pub major_faults: u64,
    /// Faults found already resolved by another thread.
    pub spurious_faults: u64,
    /// Pages read from the far tier (major faults and prefetches).
    pub fetched_pages: u64,
    /// Pages brought in ahead of use by the prefetcher's guess (not the pages below).
    pub prefetched_pages: u64,
    /// Pages brought in with the object a fault landed in, at the upcall's request (the
    /// rest of a heap block under `farmem run`), mapped at once.
    pub object_pages: u64,
    /// Local pages mapped again by a minor fault on their object (the rest of the object
    /// the touched page belongs to), without faults of their own.
    pub object_remapped_pages: u64,
    /// Heap blocks in local memory the pointer chase read for pointers.
    pub pointer_reads: u64,
    /// Far heap blocks the pointer chase asked for (those fetched are among
    /// `prefetched_pages`).
    pub pointer_targets: u64,
    /// Resident pages the clock hand passed by because an eviction hint said keep.
    pub kept_by_hint: u64,
    /// Prefetched pages touched before eviction.
    pub prefetch_hits: u64,
    /// Prefetched pages evicted untouched.
    pub prefetch_unused: u64,
    /// Pages the prefetcher asked for that its accuracy cap left out.
    pub prefetch_throttled: u64,
    /// Pages evicted from local memory.
    pub evicted_pages: u64,
    /// Of those, pages written to the far tier (dirty).
    pub written_back_pages: u64,
    /// Of those, pages dropped without I/O because the far copy was current.
    pub dropped_clean_pages: u64,
    /// Of those, all-zero pages, which need no far copy.
    pub evicted_zero_pages: u64,
    /// Pages unmapped by the reclaimer's sweep to sample references (CLOCK).
    pub demoted_pages: u64,
    /// Chunks the CLOCK hand passed.
    pub aged_chunks: u64,
    /// Of those, chunks whose accessed bits were counted.
    pub counted_chunks: u64,
    /// Pages the hand left mapped because their chunk's accessed bits showed them in use
    /// (each a minor fault saved).
    pub kept_mapped_pages: u64,
    /// Mapped pages whose chunk's accessed bits showed them unused for a whole lap:
    /// evicted without first being unmapped to test them.
    pub cold_mapped_pages: u64,
    /// Pages zero-filled ahead of a first touch, in runs after the faulting page.
    pub zero_ahead_pages: u64,
    /// Times a faulting thread had to reclaim because no free frame was left.
    pub direct_reclaims: u64,
    /// Times the reclaimer, which runs in the background (in idle CPU time), was raised
    /// to a normal, higher priority because the free reserve ran low.
    pub reclaimer_raised: u64,
    /// Bytes in one of the engine's pages (4096, or 2 MiB with huge pages): the unit of
    /// every `*_pages` figure here but `far_pages`, and of the fault counts.
    pub page_bytes: u64,
    /// Pages resident now.
    pub resident_pages: u64,
    /// Most pages resident at once.
    pub peak_resident_pages: u64,
    /// The budget, in pages.
    pub budget_pages: u64,
    /// 4 KiB pages held by the far tier.
    pub far_pages: u64,
    /// Bytes of memory the far tier uses.
    pub far_bytes: u64,
    /// `logical / stored` bytes of the far tier.
    pub far_ratio: f64,
    /// Major-fault latency: time spent in farmem's fault handler, from the handler's
    /// entry to the page being mapped. The kernel's trap and signal delivery (about 1 us
    /// here) come on top; `farmem floor` measures the whole round trip.
    pub major_latency: Latency,
    /// Minor-fault latency.
    pub minor_latency: Latency,
    /// Zero-fill latency.
    pub zero_latency: Latency,
}

impl Stats {
    /// Faults of every kind that trapped.
    pub fn faults(&self) -> u64 {
        self.zero_faults + self.minor_faults + self.major_faults + self.spurious_faults
    }

    /// Prefetched pages used before eviction, over prefetched pages (0 when none).
    pub fn prefetch_accuracy(&self) -> f64 {
        if self.prefetched_pages == 0 {
            0.0
        } else {
            self.prefetch_hits as f64 / self.prefetched_pages as f64
        }
    }

    /// Share of would-be major faults that a prefetch avoided: hits / (hits + major faults).
    pub fn prefetch_coverage(&self) -> f64 {
        let d = self.prefetch_hits + self.major_faults;
        if d == 0 {
            0.0
        } else {
            self.prefetch_hits as f64 / d as f64
        }
    }

    pub(crate) fn from_counters(c: &Counters) -> Stats {
        let l = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            zero_faults: l(&c.zero_faults),
            minor_faults: l(&c.minor_faults),
            major_faults: l(&c.major_faults),
            spurious_faults: l(&c.spurious_faults),
            fetched_pages: l(&c.fetched),
            prefetched_pages: l(&c.prefetched),
            object_pages: l(&c.object_pages),
            object_remapped_pages: l(&c.object_remapped),
            pointer_reads: l(&c.pointer_reads),
            pointer_targets: l(&c.pointer_targets),
            kept_by_hint: l(&c.kept_by_hint),
            prefetch_hits: l(&c.prefetch_hits),
            prefetch_unused: l(&c.prefetch_unused),
            prefetch_throttled: l(&c.prefetch_throttled),
            evicted_pages: l(&c.evicted),
            written_back_pages: l(&c.written_back),
            dropped_clean_pages: l(&c.dropped_clean),
            evicted_zero_pages: l(&c.evicted_zero),
            demoted_pages: l(&c.demoted),
            aged_chunks: l(&c.aged_chunks),
            counted_chunks: l(&c.counted_chunks),
            kept_mapped_pages: l(&c.kept_mapped),
            cold_mapped_pages: l(&c.cold_mapped),
            zero_ahead_pages: l(&c.zero_ahead),
            direct_reclaims: l(&c.direct_reclaims),
            reclaimer_raised: l(&c.reclaimer_raised),
            peak_resident_pages: l(&c.peak_resident),
            major_latency: Latency::of(&c.major_latency),
            minor_latency: Latency::of(&c.minor_latency),
            zero_latency: Latency::of(&c.zero_latency),
            ..Stats::default()
        }
    }
}

/// Whether a [`Metric`] only grows (a count of events) or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Counts events since the start (or the last reset).
    Counter,
    /// A level now.
    Gauge,
}

/// One figure of a [`Stats`] snapshot, named once for every export format
/// ([`Stats::to_json`], [`Stats::to_prometheus`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric {
    /// snake_case name, the JSON key (Prometheus: `farmem_` before it, `_total` after a
    /// counter's).
    pub name: &'static str,
    /// One line on what it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The value.
    pub value: f64,
}

impl Stats {
    /// Every figure of the snapshot, with its name and meaning.
    pub fn metrics(&self) -> Vec<Metric> {
        use MetricKind::*;
        let m = |name, help, kind, value: f64| Metric {
            name,
            help,
            kind,
            value,
        };
        let mut v = vec![
            m(
                "major_faults",
                "Faults that waited for the far tier.",
                Counter,
                self.major_faults as f64,
            ),
            m(
                "minor_faults",
                "Faults on pages that were local but unmapped.",
                Counter,
                self.minor_faults as f64,
            ),
            m(
                "zero_faults",
                "First touches served with zeros.",
                Counter,
                self.zero_faults as f64,
            ),
            m(
                "spurious_faults",
                "Faults another thread had already resolved.",
                Counter,
                self.spurious_faults as f64,
            ),
            m(
                "fetched_pages",
                "Pages read from the far tier.",
                Counter,
                self.fetched_pages as f64,
            ),
            m(
                "prefetched_pages",
                "Pages brought in ahead of use by the prefetcher.",
                Counter,
                self.prefetched_pages as f64,
            ),
            m(
                "prefetch_hits",
                "Prefetched pages touched before eviction.",
                Counter,
                self.prefetch_hits as f64,
            ),
            m(
                "prefetch_unused",
                "Prefetched pages evicted untouched.",
                Counter,
                self.prefetch_unused as f64,
            ),
            m(
                "object_pages",
                "Pages brought in with the object a fault landed in.",
                Counter,
                self.object_pages as f64,
            ),
            m(
                "pointer_reads",
                "Local heap blocks the pointer chase read.",
                Counter,
                self.pointer_reads as f64,
            ),
            m(
                "pointer_targets",
                "Far heap blocks the pointer chase prefetched.",
                Counter,
                self.pointer_targets as f64,
            ),
            m(
                "evicted_pages",
                "Pages evicted from local memory.",
                Counter,
                self.evicted_pages as f64,
            ),
            m(
                "written_back_pages",
                "Evicted pages written to the far tier.",
                Counter,
                self.written_back_pages as f64,
            ),
            m(
                "dropped_clean_pages",
                "Evicted pages dropped because the far copy was current.",
                Counter,
                self.dropped_clean_pages as f64,
            ),
            m(
                "evicted_zero_pages",
                "Evicted pages that were all zeros.",
                Counter,
                self.evicted_zero_pages as f64,
            ),
            m(
                "direct_reclaims",
                "Times a faulting thread had to reclaim for itself.",
                Counter,
                self.direct_reclaims as f64,
            ),
            m(
                "reclaimer_raised",
                "Times the background reclaimer was raised to a higher priority.",
                Counter,
                self.reclaimer_raised as f64,
            ),
            m(
                "resident_pages",
                "Pages resident now.",
                Gauge,
                self.resident_pages as f64,
            ),
            m(
                "peak_resident_pages",
                "Most pages resident at once.",
                Gauge,
                self.peak_resident_pages as f64,
            ),
            m(
                "budget_pages",
                "The local budget, in pages of page_bytes.",
                Gauge,
                self.budget_pages as f64,
            ),
            m(
                "page_bytes",
                "Bytes in one of the engine's pages (4096, or 2 MiB with huge pages).",
                Gauge,
                self.page_bytes as f64,
            ),
            m(
                "far_pages",
                "4 KiB pages held by the far tier.",
                Gauge,
                self.far_pages as f64,
            ),
            m(
                "far_bytes",
                "Bytes of memory the far tier uses.",
                Gauge,
                self.far_bytes as f64,
            ),
        ];
        let help =
            "Fault latency in farmem's handler, microseconds (50th, 99th, 99.9th percentiles).";
        for (names, l) in [
            (
                [
                    "major_latency_p50_us",
                    "major_latency_p99_us",
                    "major_latency_p999_us",
                ],
                &self.major_latency,
            ),
            (
                [
                    "minor_latency_p50_us",
                    "minor_latency_p99_us",
                    "minor_latency_p999_us",
                ],
                &self.minor_latency,
            ),
            (
                [
                    "zero_latency_p50_us",
                    "zero_latency_p99_us",
                    "zero_latency_p999_us",
                ],
                &self.zero_latency,
            ),
        ] {
            v.push(m(names[0], help, Gauge, l.p50_us));
            v.push(m(names[1], help, Gauge, l.p99_us));
            v.push(m(names[2], help, Gauge, l.p999_us));
        }
        v
    }

    /// The snapshot as one JSON object, a key per [`Metric`].
    pub fn to_json(&self) -> String {
        let fields: Vec<String> = self
            .metrics()
            .iter()
            .map(|m| {
                let v = if m.value.is_finite() { m.value } else { 0.0 };
                match m.kind {
                    MetricKind::Counter => format!("\"{}\":{}", m.name, v as u64),
                    MetricKind::Gauge if v.fract() == 0.0 => format!("\"{}\":{}", m.name, v as u64),
                    MetricKind::Gauge => format!("\"{}\":{v}", m.name),
                }
            })
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// The snapshot in Prometheus's text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for m in self.metrics() {
            let (name, kind) = match m.kind {
                MetricKind::Counter => (format!("farmem_{}_total", m.name), "counter"),
                MetricKind::Gauge => (format!("farmem_{}", m.name), "gauge"),
            };
            let v = if m.value.is_finite() { m.value } else { 0.0 };
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {kind}\n{name} {v}\n",
                m.help
            ));
        }
        out
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let page = if self.page_bytes == 0 {
            4096
        } else {
            self.page_bytes
        };
        let mib = |pages: u64| pages as f64 * page as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "faults: {} major, {} minor, {} zero-fill, {} spurious; {} more pages mapped by minor faults with their objects",
            self.major_faults,
            self.minor_faults,
            self.zero_faults,
            self.spurious_faults,
            self.object_remapped_pages
        )?;
        writeln!(
            f,
            "first touches: {} pages zero-filled ahead of use by {} zero-fill faults",
            self.zero_ahead_pages, self.zero_faults
        )?;
        writeln!(
            f,
            "major fault latency: mean {:.1} us, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
            self.major_latency.mean_us,
            self.major_latency.p50_us,
            self.major_latency.p99_us,
            self.major_latency.p999_us
        )?;
        writeln!(
            f,
            "fetched {} pages; prefetched {} (accuracy {:.0}%, coverage {:.0}%); {} left out by the accuracy cap; {} with their objects (mapped at once, use not tracked)",
            self.fetched_pages,
            self.prefetched_pages,
            self.prefetch_accuracy() * 100.0,
            self.prefetch_coverage() * 100.0,
            self.prefetch_throttled,
            self.object_pages
        )?;
        if self.pointer_reads + self.pointer_targets > 0 {
            writeln!(
                f,
                "pointer chase: {} local blocks read, {} far blocks prefetched",
                self.pointer_reads, self.pointer_targets
            )?;
        }
        writeln!(
            f,
            "evicted {} pages: {} written back, {} clean dropped, {} zero; {} demoted; {} direct reclaims; reclaimer raised {} times",
            self.evicted_pages,
            self.written_back_pages,
            self.dropped_clean_pages,
            self.evicted_zero_pages,
            self.demoted_pages,
            self.direct_reclaims,
            self.reclaimer_raised
        )?;
        writeln!(
            f,
            "hot set: {} chunks passed, {} by accessed bits; {} pages kept mapped, {} found cold while mapped; {} passed by for eviction hints",
            self.aged_chunks,
            self.counted_chunks,
            self.kept_mapped_pages,
            self.cold_mapped_pages,
            self.kept_by_hint
        )?;
        writeln!(
            f,
            "resident {:.1} MiB (peak {:.1}) of {:.1} MiB budget; far tier {} pages in {:.1} MiB (ratio {:.2})",
            mib(self.resident_pages),
            mib(self.peak_resident_pages),
            mib(self.budget_pages),
            self.far_pages,
            self.far_bytes as f64 / (1 << 20) as f64,
            self.far_ratio
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_metric_is_in_the_json_and_the_prometheus_text_once() {
        let st = Stats {
            major_faults: 7,
            resident_pages: 3,
            major_latency: Latency {
                p50_us: 12.5,
                ..Latency::default()
            },
            ..Stats::default()
        };
        let json = st.to_json();
        assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
        assert!(json.contains("\"major_faults\":7"), "{json}");
        assert!(json.contains("\"major_latency_p50_us\":12.5"), "{json}");
        let prom = st.to_prometheus();
        assert!(
            prom.contains(
                "# TYPE farmem_major_faults_total counter\nfarmem_major_faults_total 7\n"
            ),
            "{prom}"
        );
        assert!(prom.contains("farmem_resident_pages 3\n"), "{prom}");
        let mut names: Vec<&str> = st.metrics().iter().map(|m| m.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a metric name appears twice");
        assert_eq!(json.matches(':').count(), n);
        assert_eq!(prom.lines().filter(|l| !l.starts_with('#')).count(), n);
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.07, "p50 {p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.07, "p99 {p99}");
        assert_eq!(h.count(), 1000);
        h.reset();
        assert_eq!(h.quantile(0.5), 0);
    }

    proptest! {
        #[test]
        fn buckets_are_monotonic_and_close(v in 0u64..(1u64 << 39)) {
            let b = bucket_of(v);
            prop_assert!(b < NBUCKETS);
            prop_assert!(bucket_of(v + 1) >= b);
            let back = value_of(b) as f64;
            prop_assert!((back - v as f64).abs() <= (v as f64) / 16.0 + 1.0, "{v} -> {b} -> {back}");
        }
    }
}
