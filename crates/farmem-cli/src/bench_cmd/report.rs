//! What `farmem bench-cmd` prints: the header, a line per run, and the medians per
//! command, metric and budget (also `farmem summarize` for bench-cmd records).

use super::{CmdRecord, Outcome, Plan};
use crate::opts;
use anyhow::Result;
use farmem_bench::{System, median};
use serde_json::Value;

/// How many times better `farmem` is than `other`, in the metric's direction.
pub fn speedup(farmem: f64, other: f64, higher_is_better: bool) -> Option<f64> {
    if !(farmem > 0.0 && other > 0.0 && farmem.is_finite() && other.is_finite()) {
        return None;
    }
    Some(if higher_is_better {
        farmem / other
    } else {
        other / farmem
    })
}

/// A fraction as a percentage, without needless digits: 0.25 -> "25%", 0.125 -> "12.5%".
pub(crate) fn pct(f: f64) -> String {
    let p = f * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}%", p.round() as i64)
    } else {
        format!("{p:.1}%")
    }
}

pub(super) fn header(plan: &Plan) -> String {
    let a = plan.a;
    let budget = match (&a.local_frac, a.local_mem) {
        (Some(fracs), _) => format!(
            "{} of the footprint (all-local's max RSS) local",
            fracs.iter().map(|f| pct(*f)).collect::<Vec<_>>().join(", ")
        ),
        (None, Some(m)) => format!("{} local", opts::human(m)),
        (None, None) => "no budget".into(),
    };
    let vm = if a.vm { "farmem vm " } else { "" };
    let mut h = format!("bench-cmd: `{vm}{}`", shell_join(&a.program));
    if let Some(c) = &a.client {
        h += &format!(" serving `{c}`");
        if let Some(p) = a.port {
            h += &format!(" on port {p}");
        }
    }
    h += &format!(
        " with {budget}, {} run(s) of {}; ",
        a.runs,
        plan.systems
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let metrics: Vec<String> = plan
        .metrics
        .list
        .iter()
        .map(|m| match &m.re {
            Some(re) => format!("{} from {}", m.name, shell_join(&[re.as_str().to_owned()])),
            None => m.name.clone(),
        })
        .collect();
    h += &format!(
        "{}: {}",
        if metrics.len() > 1 {
            "metrics"
        } else {
            "metric"
        },
        metrics.join(", ")
    );
    h += if plan.metrics.higher_is_better {
        " (higher is better)"
    } else {
        " (lower is better)"
    };
    if plan.systems.contains(&System::Farmem) {
        h += &format!("; farmem backend {}", a.backend);
        for r in &a.run_args {
            h += &format!(" {r}");
        }
    }
    h
}

/// Arguments joined for display, quoted where a shell would need it.
pub(crate) fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A figure with sensible digits.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        thousands(v.round() as i64)
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub(crate) fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// The records of one run of one system (one per metric): JSON lines on stdout with
/// `json` and a readable line on stderr, or only the readable line on stdout.
pub(super) fn emit(json: bool, recs: &[CmdRecord]) {
    let line = run_line(recs);
    if json {
        for r in recs {
            println!("{}", r.to_json_line());
        }
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn failure_tail(r: &CmdRecord) -> String {
    let tail = r
        .extra
        .get("output_tail")
        .and_then(Value::as_str)
        .unwrap_or("");
    if tail.trim().is_empty() {
        return "; it printed nothing".into();
    }
    let mut s = "; its output ends with:".to_string();
    for l in tail.lines() {
        s += &format!("\n      | {l}");
    }
    s
}

fn run_line(recs: &[CmdRecord]) -> String {
    let Some(r) = recs.first() else {
        return String::new();
    };
    let mut head = format!("  run {:>2}  {:<10}", r.run, r.system.as_str());
    if let Some(f) = r.local_frac {
        head += &format!("  {:>5} ({})", pct(f), opts::human(r.local_bytes));
    }
    match r.outcome {
        Outcome::OomKilled => {
            let full = r.extra.get("zram_full") == Some(&Value::Bool(true));
            return format!(
                "{head}  OOM-killed by the kernel after {:.1} s{}",
                r.wall_s,
                if full {
                    " (zram was full: give a larger --zram-size)"
                } else {
                    ""
                }
            );
        }
        Outcome::TimedOut => {
            return format!("{head}  timed out: killed after {:.1} s", r.wall_s);
        }
        Outcome::Failed | Outcome::Ok => {}
    }
    // A failure of the whole run (not of one metric) is the same in every record.
    if recs
        .iter()
        .all(|x| x.outcome == Outcome::Failed && x.error == r.error)
    {
        return format!(
            "{head}  FAILED after {:.2} s: {}{}",
            r.wall_s,
            r.error.as_deref().unwrap_or("failed"),
            failure_tail(r)
        );
    }
    let mut s = head;
    for x in recs {
        s += &format!(
            "  {} {:>10}",
            x.metric_name,
            match x.outcome {
                Outcome::Ok => x.metric.map(num).unwrap_or_else(|| "-".into()),
                _ => "FAILED".into(),
            }
        );
    }
    if r.metric_regex.is_some() {
        s += &format!("  wall {:>8} s", num(r.wall_s));
    }
    if let Some(f) = r.faults {
        s += &format!("  major faults {}", thousands(f as i64));
    }
    if let Some(m) = r.max_rss_bytes {
        s += &format!("  max RSS {}", opts::human(m));
    }
    match r.system {
        System::Farmem => {
            if let Some(p) = r.f("peak_resident_mib") {
                s += &format!("  peak resident {p:.1} MiB");
            }
            if let Some(e) = r.f("evicted_pages") {
                s += &format!("  evicted {}", thousands(e as i64));
            }
            if let Some(x) = r.f("fetched_pages") {
                s += &format!("  fetched {}", thousands(x as i64));
            }
        }
        System::LinuxSwap => {
            if let Some(p) = r.f("cgroup_max_usage_bytes") {
                s += &format!("  cgroup peak {}", opts::human(p as u64));
            }
            if let Some(x) = r.f("zram_ratio") {
                s += &format!("  zram ratio {x:.2}");
            }
        }
        System::AllLocal => {}
    }
    if let Some(by) = r.extra.get("server_stopped_by").and_then(Value::as_str)
        && by != "SIGTERM"
    {
        s += &format!("  (server stopped by {by})");
    }
    for x in recs.iter().filter(|x| x.outcome == Outcome::Failed) {
        s += &format!(
            "\n      {} FAILED: {}{}",
            x.metric_name,
            x.error.as_deref().unwrap_or("failed"),
            failure_tail(x)
        );
    }
    s
}

/// Which records one medians table covers: a command (with its client and label), a
/// metric, and a budget.
#[derive(Clone, Debug, PartialEq)]
struct GroupKey {
    label: Option<String>,
    command: Vec<String>,
    client: Option<String>,
    metric_name: String,
    budget: BudgetKey,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BudgetKey {
    Bytes(u64),
    /// A fraction of the footprint (--local-frac).
    Frac(f64),
    /// all-local's runs under --local-frac: they belong to every fraction.
    Footprint,
}

fn key(r: &CmdRecord) -> GroupKey {
    let budget = match (r.local_frac, r.footprint_bytes) {
        (Some(f), _) => BudgetKey::Frac(f),
        (None, Some(_)) => BudgetKey::Footprint,
        (None, None) => BudgetKey::Bytes(r.local_bytes),
    };
    GroupKey {
        label: r.label.clone(),
        command: r.command.clone(),
        client: r.client.clone(),
        metric_name: r.metric_name.clone(),
        budget,
    }
}

/// The records grouped as the medians show them, in the order first met; all-local's
/// runs under --local-frac go into every fraction's group of the same command and metric.
fn groups(all: &[CmdRecord]) -> Vec<(GroupKey, Vec<&CmdRecord>)> {
    let mut out: Vec<(GroupKey, Vec<&CmdRecord>)> = Vec::new();
    for r in all {
        let k = key(r);
        if k.budget == BudgetKey::Footprint {
            continue;
        }
        match out.iter_mut().find(|g| g.0 == k) {
            Some(g) => g.1.push(r),
            None => out.push((k, vec![r])),
        }
    }
    for r in all {
        let k = key(r);
        if k.budget != BudgetKey::Footprint {
            continue;
        }
        let same = |g: &GroupKey| {
            g.label == k.label
                && g.command == k.command
                && g.client == k.client
                && g.metric_name == k.metric_name
                && matches!(g.budget, BudgetKey::Frac(_))
        };
        let mut placed = false;
        for g in out.iter_mut().filter(|g| same(&g.0)) {
            g.1.push(r);
            placed = true;
        }
        if !placed {
            match out.iter_mut().find(|g| g.0 == k) {
                Some(g) => g.1.push(r),
                None => out.push((k, vec![r])),
            }
        }
    }
    out
}

/// Medians per system (per command, metric and budget, in the order met) and farmem's
/// speed-ups.
pub fn summary(all: &[CmdRecord]) {
    for (k, at) in groups(all) {
        let first = at[0];
        let higher = first.higher_is_better;
        let mname = &k.metric_name;
        let tried = |sys: System| at.iter().any(|r| r.system == sys);
        let better = if higher {
            format!("higher {mname} is better")
        } else {
            format!("lower {mname} is better")
        };
        let budget = match k.budget {
            BudgetKey::Bytes(b) => format!("{} local", opts::human(b)),
            BudgetKey::Frac(f) => {
                let b = at
                    .iter()
                    .find(|r| r.local_frac.is_some())
                    .map_or(0, |r| r.local_bytes);
                let fp = first.footprint_bytes.unwrap_or(0);
                format!(
                    "{} of its footprint local ({} of {})",
                    pct(f),
                    opts::human(b),
                    opts::human(fp)
                )
            }
            BudgetKey::Footprint => format!(
                "its footprint of {}",
                opts::human(first.footprint_bytes.unwrap_or(0))
            ),
        };
        let mut what = format!("`{}`", shell_join(&k.command));
        if let Some(c) = &k.client {
            what += &format!(" serving `{c}`");
        }
        println!(
            "medians: {what} with {budget} ({better}{})",
            if tried(System::Farmem) && at.iter().any(|r| r.system != System::Farmem) {
                "; speed-up above 1: farmem did better"
            } else {
                ""
            }
        );
        let ok = |sys: System| -> Vec<&CmdRecord> {
            at.iter()
                .copied()
                .filter(|r| r.system == sys && r.outcome == Outcome::Ok)
                .collect()
        };
        let med = |rs: &[&CmdRecord], g: &dyn Fn(&CmdRecord) -> Option<f64>| {
            let v: Vec<f64> = rs.iter().filter_map(|r| g(r)).collect();
            median(&v)
        };
        let metric_of = |sys: System| med(&ok(sys), &|r| r.metric);
        let farmem = metric_of(System::Farmem);
        let ratio = |other: Option<f64>| match (farmem, other) {
            (Some(f), Some(o)) => speedup(f, o, higher)
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            _ => "-".into(),
        };
        let wall_col = first.metric_regex.is_some();
        let vs_swap_col = tried(System::Farmem) && tried(System::LinuxSwap);
        let vs_local_col = tried(System::Farmem) && tried(System::AllLocal);
        // Columns: right-aligned figures, then the runs (left-aligned, last).
        let mut head = vec![mname.clone()];
        if wall_col {
            head.push("wall s".into());
        }
        head.extend(["major faults".into(), "max RSS".into()]);
        if vs_swap_col {
            head.push("vs linux-swap".into());
        }
        if vs_local_col {
            head.push("vs all-local".into());
        }
        let mut rows: Vec<(System, Vec<String>, String)> = Vec::new();
        for sys in [System::Farmem, System::LinuxSwap, System::AllLocal] {
            let runs: Vec<&CmdRecord> = at.iter().copied().filter(|r| r.system == sys).collect();
            if runs.is_empty() {
                continue;
            }
            let good = ok(sys);
            let mut notes = Vec::new();
            for (o, what) in [
                (Outcome::OomKilled, "OOM-killed"),
                (Outcome::TimedOut, "timed out"),
                (Outcome::Failed, "failed"),
            ] {
                let n = runs.iter().filter(|r| r.outcome == o).count();
                if n > 0 {
                    notes.push(format!("{n} {what}"));
                }
            }
            let runs_col = if notes.is_empty() {
                format!("{}/{}", good.len(), runs.len())
            } else {
                format!("{}/{} ({})", good.len(), runs.len(), notes.join(", "))
            };
            let dash = || "-".to_string();
            let mut cells = vec![metric_of(sys).map(num).unwrap_or_else(dash)];
            if wall_col {
                cells.push(
                    med(&good, &|r| Some(r.wall_s))
                        .map(num)
                        .unwrap_or_else(dash),
                );
            }
            cells.push(
                med(&good, &|r| r.faults.map(|f| f as f64))
                    .map(|f| thousands(f.round() as i64))
                    .unwrap_or_else(dash),
            );
            cells.push(
                med(&good, &|r| r.max_rss_bytes.map(|b| b as f64))
                    .map(|b| opts::human(b as u64))
                    .unwrap_or_else(dash),
            );
            let mine = sys == System::Farmem;
            if vs_swap_col {
                cells.push(if mine {
                    ratio(metric_of(System::LinuxSwap))
                } else {
                    String::new()
                });
            }
            if vs_local_col {
                cells.push(if mine {
                    ratio(metric_of(System::AllLocal))
                } else {
                    String::new()
                });
            }
            rows.push((sys, cells, runs_col));
        }
        let widths: Vec<usize> = head
            .iter()
            .enumerate()
            .map(|(i, h)| {
                rows.iter()
                    .map(|r| r.1[i].len())
                    .chain([h.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |name: &str, cells: &[String], last: &str| {
            let mut l = format!("  {name:<10}");
            for (c, w) in cells.iter().zip(&widths) {
                l += &format!("  {c:>w$}");
            }
            format!("{l}  {last}")
        };
        println!("{}", line("system", &head, "runs"));
        for (sys, cells, runs_col) in &rows {
            println!("{}", line(sys.as_str(), cells, runs_col).trim_end());
        }
        if farmem.is_some() && tried(System::LinuxSwap) && metric_of(System::LinuxSwap).is_none() {
            println!("  (Linux swap finished no run here: farmem finished, Linux did not)");
        }
    }
}

/// `farmem summarize` for bench-cmd records.
pub fn summarize_lines(lines: &[String]) -> Result<()> {
    let all = crate::bench::parse_records(lines, "bench-cmd", CmdRecord::from_json_line)?;
    summary(&all);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn formatting_helpers() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(949214.4), "949,214");
        assert_eq!(pct(0.25), "25%");
        assert_eq!(pct(2.0), "200%");
        assert_eq!(pct(0.125), "12.5%");
        assert_eq!(
            shell_join(&["sh".into(), "-c".into(), "exit 3".into(), "it's".into()]),
            r"sh -c 'exit 3' 'it'\''s'"
        );
    }

    #[test]
    fn speedup_follows_the_direction() {
        // Times: farmem 2 s against 4 s is twice as good.
        assert_eq!(speedup(2.0, 4.0, false), Some(2.0));
        // Rates: farmem 100/s against 400/s is a quarter as good.
        assert_eq!(speedup(100.0, 400.0, true), Some(0.25));
        assert_eq!(speedup(0.0, 4.0, false), None);
        assert_eq!(speedup(1.0, f64::NAN, true), None);
    }

    fn rec(sys: System, metric: &str, frac: Option<f64>, footprint: Option<u64>) -> CmdRecord {
        CmdRecord {
            system: sys,
            command: vec!["prog".into()],
            local_bytes: 1 << 20,
            run: 1,
            outcome: Outcome::Ok,
            wall_s: 1.0,
            metric: Some(1.0),
            metric_name: metric.into(),
            metric_regex: None,
            higher_is_better: false,
            faults: None,
            exit_code: Some(0),
            signal: None,
            max_rss_bytes: None,
            error: None,
            label: None,
            client: None,
            local_frac: frac,
            footprint_bytes: footprint,
            farmem_minor_faults: None,
            farmem_major_faults: None,
            farmem_zero_faults: None,
            linux_minor_faults: None,
            linux_major_faults: None,
            fault_seconds: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn all_local_joins_every_fraction() {
        let fp = Some(8 << 20);
        let all = vec![
            rec(System::AllLocal, "a", None, fp),
            rec(System::AllLocal, "b", None, fp),
            rec(System::Farmem, "a", Some(0.25), fp),
            rec(System::Farmem, "b", Some(0.25), fp),
            rec(System::Farmem, "a", Some(1.0), fp),
            rec(System::Farmem, "b", Some(1.0), fp),
        ];
        let g = groups(&all);
        let shape: Vec<(String, BudgetKey, usize)> = g
            .iter()
            .map(|(k, rs)| (k.metric_name.clone(), k.budget, rs.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("a".into(), BudgetKey::Frac(0.25), 2),
                ("b".into(), BudgetKey::Frac(0.25), 2),
                ("a".into(), BudgetKey::Frac(1.0), 2),
                ("b".into(), BudgetKey::Frac(1.0), 2),
            ]
        );
        // all-local alone still makes a table.
        let g = groups(&all[..1]);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].0.budget, BudgetKey::Footprint);
        // Fixed budgets group by bytes, as before.
        let fixed = [
            rec(System::Farmem, "a", None, None),
            rec(System::AllLocal, "a", None, None),
        ];
        let g = groups(&fixed);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].1.len(), 2);
    }
}
