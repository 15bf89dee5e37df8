//! The JSON-lines record of one Redis measurement, in the conventions of
//! [`crate::report::BenchRecord`]: one object per (system, workload, dataset, budget, run),
//! figures a run could not measure are `null`, and anything else goes in `extra`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::dataset::WorkloadKind;
use crate::report::System;

/// One measurement, serialised as one JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedisRecord {
    /// The system measured.
    pub system: System,
    /// The workload.
    pub workload: WorkloadKind,
    /// Dataset size asked for (value bytes), bytes.
    pub dataset_bytes: u64,
    /// Local memory budget, bytes: the memory cgroup's limit for Linux swap and
    /// `--local-mem` for farmem; for all-local, what the others got at this fraction.
    pub local_bytes: u64,
    /// `local_bytes / dataset_bytes`.
    pub local_fraction: f64,
    /// Client connections.
    pub clients: usize,
    /// Requests in flight per client.
    pub pipeline: usize,
    /// Which run of the repeated measurement (1-based).
    pub run: usize,
    /// Requests per second, all clients together (0 for a killed run).
    pub ops_per_sec: f64,
    /// Median request latency, microseconds.
    pub p50_us: Option<f64>,
    /// 99th-percentile request latency, microseconds.
    pub p99_us: Option<f64>,
    /// Replies whose contents differed from what was stored (must be 0).
    pub wrong: u64,
    /// Error replies and lost connections.
    pub errors: u64,
    /// The kernel's OOM killer stopped the server (Linux swap in its memory cgroup).
    pub oom_killed: bool,
    /// With budgets taken from the footprint (`bench-redis --local-of footprint`): the
    /// footprint, all-local's peak RSS in the first run, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint_bytes: Option<u64>,
    /// With budgets taken from the footprint: `local_bytes` as a fraction of it (None for
    /// all-local, which runs once per run with no budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint_frac: Option<f64>,
    /// Anything else worth keeping (load time, Redis's memory use, swap counters, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl RedisRecord {
    /// A record with the identifying fields set and all figures zero or `None`.
    pub fn new(
        system: System,
        workload: WorkloadKind,
        dataset_bytes: u64,
        local_bytes: u64,
        clients: usize,
        pipeline: usize,
        run: usize,
    ) -> Self {
        Self {
            system,
            workload,
            dataset_bytes,
            local_bytes,
            local_fraction: if dataset_bytes == 0 {
                0.0
            } else {
                local_bytes as f64 / dataset_bytes as f64
            },
            clients,
            pipeline,
            run,
            ops_per_sec: 0.0,
            p50_us: None,
            p99_us: None,
            wrong: 0,
            errors: 0,
            oom_killed: false,
            footprint_bytes: None,
            footprint_frac: None,
            extra: Map::new(),
        }
    }

    /// Adds (or replaces) an extra field; a value JSON cannot hold is stored as its error.
    pub fn set_extra(&mut self, key: impl Into<String>, value: impl Serialize) {
        let v = serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("unserialisable: {e}")));
        self.extra.insert(key.into(), v);
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses one line written by [`RedisRecord::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// The record of the median run by `ops_per_sec` among runs that were not killed (the
/// lower middle one for an even count), so all of its figures come from one real run.
pub fn median_run<'a>(
    records: impl IntoIterator<Item = &'a RedisRecord>,
) -> Option<&'a RedisRecord> {
    let mut ok: Vec<&RedisRecord> = records.into_iter().filter(|r| !r.oom_killed).collect();
    if ok.is_empty() {
        return None;
    }
    ok.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    Some(ok[(ok.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_roundtrip() {
        let mut r = RedisRecord::new(
            System::LinuxSwap,
            WorkloadKind::GetMix,
            1 << 30,
            1 << 28,
            4,
            1,
            2,
        );
        r.ops_per_sec = 1234.5;
        r.p50_us = Some(80.0);
        r.set_extra("load_s", 2.5);
        let line = r.to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["system"], "linux-swap");
        assert_eq!(v["workload"], "get-mix");
        assert_eq!(v["local_fraction"], 0.25);
        assert_eq!(v["p99_us"], Value::Null);
        assert_eq!(v["oom_killed"], false);
        assert_eq!(v["extra"]["load_s"], 2.5);
        assert_eq!(RedisRecord::from_json_line(&line).unwrap(), r);
        let plain = RedisRecord::new(System::AllLocal, WorkloadKind::Lrange, 1, 1, 1, 1, 1);
        assert!(!plain.to_json_line().contains("extra"));
        assert!(!plain.to_json_line().contains("footprint"));
        let mut fp = plain.clone();
        fp.footprint_bytes = Some(1 << 20);
        fp.footprint_frac = Some(0.5);
        assert_eq!(RedisRecord::from_json_line(&fp.to_json_line()).unwrap(), fp);
    }

    #[test]
    fn median_skips_killed_runs() {
        let rec = |ops: f64, killed: bool| {
            let mut r = RedisRecord::new(System::LinuxSwap, WorkloadKind::GetMix, 1, 1, 1, 1, 1);
            r.ops_per_sec = ops;
            r.oom_killed = killed;
            r
        };
        let rs = [
            rec(5.0, false),
            rec(0.0, true),
            rec(1.0, false),
            rec(3.0, false),
        ];
        assert_eq!(median_run(&rs).unwrap().ops_per_sec, 3.0);
        assert!(median_run(&[rec(0.0, true)]).is_none());
        assert!(
            median_run(&[rec(2.0, false), rec(4.0, false)])
                .unwrap()
                .ops_per_sec
                == 2.0
        );
    }
}
