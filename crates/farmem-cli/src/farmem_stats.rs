//! The summary `farmem run --stats` prints at exit (see `farmem::Stats`'s Display), read
//! back from a program's output by the commands that run programs under `farmem run`
//! (`bench-cmd`, `bench-redis`).

use regex::Regex;
use serde_json::{Map, Value};

/// The header line of the summary `farmem run --stats` prints at exit; the summary's
/// lines follow it, each starting with [`STATS_LINE`].
const STATS_HEAD: &str = "farmem: stats at exit";
const STATS_LINE: &str = "farmem:   ";

/// The output without farmem's summary, so that --metric only sees the program's lines.
pub fn strip(output: &str) -> String {
    let mut out = String::with_capacity(output.len());
    for line in output.lines() {
        if !(line.starts_with(STATS_HEAD) || line.starts_with(STATS_LINE)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The figures of farmem's summary at exit (see `farmem::Stats`'s Display), by name.
pub fn parse(output: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let Some(start) = output.rfind(STATS_HEAD) else {
        return m;
    };
    let block: String = output[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(STATS_LINE))
        .map(|l| format!("{}\n", &l[STATS_LINE.len()..]))
        .collect();
    let num = r"([0-9]+(?:\.[0-9]+)?)";
    let patterns: &[(&str, &[&str])] = &[
        (
            r"faults: N major, N minor, N zero-fill",
            &["major_faults", "minor_faults", "zero_faults"],
        ),
        (
            r"first touches: N pages zero-filled ahead of use",
            &["zero_ahead_pages"],
        ),
        (
            r"hot set: N chunks passed, N by accessed bits; N pages kept mapped, N found cold while mapped",
            &[
                "aged_chunks",
                "counted_chunks",
                "kept_mapped_pages",
                "cold_mapped_pages",
            ],
        ),
        (
            r"N left out by the accuracy cap",
            &["prefetch_throttled_pages"],
        ),
        (
            r"major fault latency: mean N us, p50 N us, p99 N us, p99\.9 N us",
            &[
                "fault_mean_us",
                "fault_p50_us",
                "fault_p99_us",
                "fault_p999_us",
            ],
        ),
        (
            r"fetched N pages; prefetched N \(accuracy N%, coverage N%\)",
            &[
                "fetched_pages",
                "prefetched_pages",
                "prefetch_accuracy_pct",
                "prefetch_coverage_pct",
            ],
        ),
        (
            r"evicted N pages: N written back, N clean dropped, N zero; N demoted; N direct reclaims",
            &[
                "evicted_pages",
                "written_back_pages",
                "dropped_clean_pages",
                "evicted_zero_pages",
                "demoted_pages",
                "direct_reclaims",
            ],
        ),
        (r"reclaimer raised N times", &["reclaimer_raised"]),
        (
            r"resident N MiB \(peak N\) of N MiB budget; far tier N pages in N MiB \(ratio N\)",
            &[
                "resident_mib",
                "peak_resident_mib",
                "budget_mib",
                "far_pages",
                "far_mib",
                "far_ratio",
            ],
        ),
    ];
    for (pat, keys) in patterns {
        let Ok(re) = Regex::new(&pat.replace('N', num)) else {
            continue;
        };
        let Some(c) = re.captures(&block) else {
            continue;
        };
        for (i, key) in keys.iter().enumerate() {
            let Some(text) = c.get(i + 1).map(|m| m.as_str()) else {
                continue;
            };
            let v = if let Ok(n) = text.parse::<u64>() {
                Value::from(n)
            } else if let Ok(f) = text.parse::<f64>() {
                Value::from(f)
            } else {
                continue;
            };
            m.insert((*key).into(), v);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farmem_stats_are_parsed_and_stripped() {
        let out = "skewed: 123 updates/s\n\
farmem: stats at exit (sigbus fault mode, compressed:lz4 tier)\n\
farmem:   faults: 1234 major, 56 minor, 78 zero-fill, 0 spurious\n\
farmem:   major fault latency: mean 5.1 us, p50 4.2 us, p99 13.6 us, p99.9 40.0 us\n\
farmem:   fetched 2000 pages; prefetched 766 (accuracy 90%, coverage 38%)\n\
farmem:   evicted 3000 pages: 1000 written back, 1900 clean dropped, 100 zero; 42 demoted; 1 direct reclaims; reclaimer raised 2 times\n\
farmem:   resident 7.9 MiB (peak 8.0) of 8.0 MiB budget; far tier 6000 pages in 11.2 MiB (ratio 2.13)\n";
        let m = parse(out);
        assert_eq!(m["major_faults"], 1234);
        assert_eq!(m["zero_faults"], 78);
        assert_eq!(m["fault_p99_us"], 13.6);
        assert_eq!(m["prefetched_pages"], 766);
        assert_eq!(m["direct_reclaims"], 1);
        assert_eq!(m["reclaimer_raised"], 2);
        assert_eq!(m["peak_resident_mib"], 8.0);
        assert_eq!(m["far_ratio"], 2.13);
        assert_eq!(strip(out), "skewed: 123 updates/s\n");
        assert!(parse("no stats\n").is_empty());
    }
}
