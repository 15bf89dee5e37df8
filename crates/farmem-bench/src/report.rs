//! The JSON-lines record every benchmark run emits, and the median of repeated runs.
//!
//! One [`BenchRecord`] per (system, pattern, size, budget, threads) measurement, printed
//! with [`BenchRecord::to_json_line`]. Figures a system cannot measure are `null`: Linux
//! swap has no per-fault latency, so its `fault_p50_us`/`fault_p99_us` are `None` and its
//! `faults` are the child's major faults (swap-ins).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pattern::Pattern;

/// Which system a record measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum System {
    /// farmem: a far region with a local budget.
    #[serde(rename = "farmem")]
    Farmem,
    /// The kernel baseline: a memory cgroup capped at the budget, swapping to zram.
    #[serde(rename = "linux-swap")]
    LinuxSwap,
    /// Plain memory, no budget: the ceiling.
    #[serde(rename = "all-local")]
    AllLocal,
}

impl System {
    /// The name used in reports and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            System::Farmem => "farmem",
            System::LinuxSwap => "linux-swap",
            System::AllLocal => "all-local",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown system name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown system {0:?}: use one of farmem, linux-swap, all-local")]
pub struct UnknownSystem(pub String);

impl FromStr for System {
    type Err = UnknownSystem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "farmem" => Ok(System::Farmem),
            "linux-swap" | "linux_swap" | "swap" | "linux" => Ok(System::LinuxSwap),
            "all-local" | "all_local" | "local" => Ok(System::AllLocal),
            _ => Err(UnknownSystem(s.to_owned())),
        }
    }
}

/// One measurement, serialised as one JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// The system measured.
    pub system: System,
    /// The access pattern.
    pub pattern: Pattern,
    /// Size of the region accessed, bytes.
    pub size_bytes: u64,
    /// Local memory budget, bytes (equal to `size_bytes` for all-local).
    pub local_bytes: u64,
    /// Threads accessing.
    pub threads: usize,
    /// Accesses per second, all threads together.
    pub accesses_per_sec: f64,
    /// Page faults that fetched from the far tier (for Linux swap: major faults).
    pub faults: u64,
    /// Median fault latency, microseconds, when measured.
    pub fault_p50_us: Option<f64>,
    /// 99th-percentile fault latency, microseconds, when measured.
    pub fault_p99_us: Option<f64>,
    /// Faults divided by the misses of an exact LRU with the same budget, when simulated.
    pub faults_vs_lru: Option<f64>,
    /// Anything else worth keeping (LRU stats, zram ratio, fill time, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl BenchRecord {
    /// A record with the identifying fields set and all figures zero or `None`.
    pub fn new(
        system: System,
        pattern: Pattern,
        size_bytes: u64,
        local_bytes: u64,
        threads: usize,
    ) -> Self {
        Self {
            system,
            pattern,
            size_bytes,
            local_bytes,
            threads,
            accesses_per_sec: 0.0,
            faults: 0,
            fault_p50_us: None,
            fault_p99_us: None,
            faults_vs_lru: None,
            extra: Map::new(),
        }
    }

    /// Adds (or replaces) an extra field. A value that cannot be represented in JSON is
    /// stored as its error message rather than dropped silently.
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.set_extra(key, value);
        self
    }

    /// As [`BenchRecord::with_extra`], in place.
    pub fn set_extra(&mut self, key: impl Into<String>, value: impl Serialize) {
        let v = serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("unserialisable: {e}")));
        self.extra.insert(key.into(), v);
    }

    /// `faults / lru_misses`, or `None` when the LRU took no misses.
    pub fn set_faults_vs_lru(&mut self, lru_misses: u64) {
        self.faults_vs_lru = (lru_misses > 0).then(|| self.faults as f64 / lru_misses as f64);
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Cannot fail: string keys and plain values; serde_json writes non-finite floats
        // as null rather than failing.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses one line written by [`BenchRecord::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// The median of `values` (mean of the middle two for an even count); `None` if empty.
/// NaNs sort last, as in [`f64::total_cmp`].
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The record of the median run by `accesses_per_sec` (the lower middle one for an even
/// count), so that all of a repeated measurement's figures come from one real run.
pub fn median_record(records: &[BenchRecord]) -> Option<&BenchRecord> {
    if records.is_empty() {
        return None;
    }
    let mut refs: Vec<&BenchRecord> = records.iter().collect();
    refs.sort_by(|a, b| a.accesses_per_sec.total_cmp(&b.accesses_per_sec));
    Some(refs[(refs.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_json_shape() {
        let mut r = BenchRecord::new(System::LinuxSwap, Pattern::Skewed, 1 << 30, 1 << 28, 2)
            .with_extra("zram_ratio", 2.3);
        r.accesses_per_sec = 1.5e6;
        r.faults = 10;
        r.set_faults_vs_lru(4);
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["system"], "linux-swap");
        assert_eq!(v["pattern"], "skewed");
        assert_eq!(v["size_bytes"], 1u64 << 30);
        assert_eq!(v["fault_p50_us"], Value::Null);
        assert_eq!(v["faults_vs_lru"], 2.5);
        assert_eq!(v["extra"]["zram_ratio"], 2.3);
        assert_eq!(BenchRecord::from_json_line(&line).unwrap(), r);
        let plain = BenchRecord::new(System::AllLocal, Pattern::Seq, 1, 1, 1).to_json_line();
        assert!(!plain.contains("extra"));
        assert!(plain.contains("\"all-local\""));
        let mut none = BenchRecord::new(System::Farmem, Pattern::Seq, 1, 1, 1);
        none.set_faults_vs_lru(0);
        assert_eq!(none.faults_vs_lru, None);
    }

    #[test]
    fn system_names() {
        for s in [System::Farmem, System::LinuxSwap, System::AllLocal] {
            assert_eq!(s.to_string().parse::<System>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!(
            "zswap"
                .parse::<System>()
                .unwrap_err()
                .to_string()
                .contains("linux-swap")
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let recs: Vec<_> = [5.0, 1.0, 3.0, 4.0]
            .iter()
            .map(|&r| {
                let mut b = BenchRecord::new(System::Farmem, Pattern::Random, 1, 1, 1);
                b.accesses_per_sec = r;
                b
            })
            .collect();
        assert_eq!(median_record(&recs).unwrap().accesses_per_sec, 3.0);
        assert!(median_record(&[]).is_none());
    }

    proptest! {
        #[test]
        fn median_splits_the_values(v in prop::collection::vec(-1e9f64..1e9, 1..50)) {
            let m = median(&v).unwrap();
            let below = v.iter().filter(|&&x| x < m).count();
            let above = v.iter().filter(|&&x| x > m).count();
            prop_assert!(below <= v.len() / 2 && above <= v.len() / 2);
        }
    }
}
