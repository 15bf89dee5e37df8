//! `farmem summarize`: medians of any bench's `--json` records, and with `--table` one
//! markdown table of bench-cmd and bench-redis records together (what
//! scripts/bench-apps.sh prints): a row per workload and budget, with farmem, Linux swap
//! and all-local side by side, farmem's ratios, and the fault rates that explain them.

use crate::bench_cmd::{CmdRecord, Outcome, num, shell_join, speedup, thousands};
use crate::opts;
use anyhow::{Context, Result, bail};
use clap::Args;
use farmem_bench::redis::RedisRecord;
use farmem_bench::{System, median};
use serde_json::Value;
use std::path::PathBuf;

/// Options of `farmem summarize`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  farmem bench-cmd --json ... > run.jsonl; farmem summarize < run.jsonl\n  farmem summarize --table bench-results/apps-*.jsonl\n\nThe table's local % is the budget as a share of the workload's footprint, all-local's maximum RSS (in the first run with bench-cmd --local-frac and bench-redis --local-of footprint; the median over the records with a fixed --local-mem), or, for bench-redis --local-of dataset, of the dataset's values. Fault rates are medians over the runs that finished, each run's count divided by the seconds it covers: farmem's own minor and major faults (`farmem run --stats`), and the Linux-swap memory cgroup's major faults (swap-ins)."
)]
pub struct SummarizeArgs {
    /// One markdown table of every row (bench-cmd and bench-redis records, mixed).
    #[arg(long)]
    pub table: bool,
    /// Files of JSON lines to read (default: stdin).
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

pub fn summarize(a: SummarizeArgs) -> Result<()> {
    let mut lines: Vec<(String, usize, String)> = Vec::new();
    if a.files.is_empty() {
        for (i, l) in std::io::stdin().lines().enumerate() {
            lines.push(("stdin".into(), i + 1, l.context("read stdin")?));
        }
    } else {
        for f in &a.files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let name = f.display().to_string();
            for (i, l) in text.lines().enumerate() {
                lines.push((name.clone(), i + 1, l.to_owned()));
            }
        }
    }
    if !a.table {
        let plain: Vec<String> = lines.into_iter().map(|l| l.2).collect();
        return crate::bench::summarize_lines(&plain);
    }
    let obs = observations(&lines)?;
    print!("{}", render(&obs));
    println!("\n{NOTE}");
    Ok(())
}

/// What the table's columns mean, printed under it.
const NOTE: &str = "Medians of the runs that finished. farmem/Linux and farmem/all-local are farmem's speed-ups: above 1, farmem did better, for times and rates alike. Fault rates are per second of the program's run (of a server's life): farmem's own minor and major faults (`farmem run --stats`), and the Linux-swap memory cgroup's major faults (swap-ins).";

/// Which budget a row is at.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Budget {
    /// A fraction of the footprint (bench-cmd --local-frac, bench-redis --local-of
    /// footprint).
    Frac(f64),
    /// all-local under a fraction mode: it belongs to every fraction's row.
    Footprint,
    /// A fixed budget, bytes (bench-cmd --local-mem).
    Bytes(u64),
    /// A fraction of bench-redis's dataset.
    Dataset(f64),
}

impl Budget {
    fn order(&self) -> (u8, f64) {
        match *self {
            Budget::Frac(f) => (0, f),
            Budget::Dataset(f) => (1, f),
            Budget::Bytes(b) => (2, b as f64),
            Budget::Footprint => (3, 0.0),
        }
    }
}

/// How a run ended, as the table counts it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Ok,
    OomKilled,
    Failed,
    TimedOut,
}

/// One record, reduced to what the table shows.
#[derive(Clone, Debug)]
struct Obs {
    workload: String,
    budget: Budget,
    local_bytes: u64,
    system: System,
    state: State,
    metric: Option<f64>,
    higher: bool,
    max_rss: Option<u64>,
    farmem_minor_ps: Option<f64>,
    farmem_major_ps: Option<f64>,
    linux_major_ps: Option<f64>,
    /// bench-redis: replies that differed from what was stored.
    wrong: u64,
}

fn rate(count: Option<u64>, secs: Option<f64>) -> Option<f64> {
    match (count, secs) {
        (Some(c), Some(s)) if s > 0.0 => Some(c as f64 / s),
        _ => None,
    }
}

fn from_cmd(r: &CmdRecord) -> Obs {
    let base = r.label.clone().unwrap_or_else(|| match r.command.first() {
        Some(p) => {
            let name = p.rsplit('/').next().unwrap_or(p);
            shell_join(&[name.to_owned()])
        }
        None => "?".into(),
    });
    let budget = match (r.local_frac, r.footprint_bytes) {
        (Some(f), _) => Budget::Frac(f),
        (None, Some(_)) => Budget::Footprint,
        (None, None) => Budget::Bytes(r.local_bytes),
    };
    Obs {
        workload: format!("{base}: {}", r.metric_name),
        budget,
        local_bytes: r.local_bytes,
        system: r.system,
        state: match r.outcome {
            Outcome::Ok => State::Ok,
            Outcome::Failed => State::Failed,
            Outcome::OomKilled => State::OomKilled,
            Outcome::TimedOut => State::TimedOut,
        },
        metric: r.metric,
        higher: r.higher_is_better,
        max_rss: r.max_rss_bytes,
        farmem_minor_ps: rate(r.farmem_minor_faults, r.fault_seconds),
        farmem_major_ps: rate(r.farmem_major_faults, r.fault_seconds),
        linux_major_ps: rate(r.linux_major_faults, r.fault_seconds),
        wrong: 0,
    }
}

fn from_redis(r: &RedisRecord) -> Obs {
    let x = |k: &str| r.extra.get(k).and_then(Value::as_u64);
    let secs = r.extra.get("fault_seconds").and_then(Value::as_f64);
    let budget = match (r.footprint_frac, r.footprint_bytes) {
        (Some(f), _) => Budget::Frac(f),
        (None, Some(_)) => Budget::Footprint,
        (None, None) => Budget::Dataset(r.local_fraction),
    };
    Obs {
        workload: format!(
            "redis {} ({} of values): ops/s",
            r.workload,
            opts::human(r.dataset_bytes)
        ),
        budget,
        local_bytes: r.local_bytes,
        system: r.system,
        state: if r.oom_killed {
            State::OomKilled
        } else {
            State::Ok
        },
        metric: (!r.oom_killed).then_some(r.ops_per_sec),
        higher: true,
        max_rss: r.extra.get("peak_rss_bytes").and_then(Value::as_u64),
        farmem_minor_ps: rate(x("farmem_minor_faults"), secs),
        farmem_major_ps: rate(x("farmem_major_faults"), secs),
        linux_major_ps: rate(x("linux_major_faults"), secs),
        wrong: r.wrong,
    }
}

/// Every record of `lines` (source, line number, text), bench-cmd and bench-redis alike.
fn observations(lines: &[(String, usize, String)]) -> Result<Vec<Obs>> {
    let mut out = Vec::new();
    for (src, n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{src} line {n}");
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{} is not JSON", where_()))?;
        if v.get("workload").is_some() {
            let r: RedisRecord = serde_json::from_value(v)
                .with_context(|| format!("{} is not a bench-redis record", where_()))?;
            out.push(from_redis(&r));
        } else if v.get("command").is_some() {
            let r: CmdRecord = serde_json::from_value(v)
                .with_context(|| format!("{} is not a bench-cmd record", where_()))?;
            out.push(from_cmd(&r));
        } else {
            bail!(
                "{} is neither a bench-cmd nor a bench-redis record: --table reads their --json output",
                where_()
            );
        }
    }
    if out.is_empty() {
        bail!(
            "no records to tabulate: give files of `farmem bench-cmd --json` or `farmem bench-redis --json` lines"
        );
    }
    Ok(out)
}

/// The rows: (workload, budget) in the order workloads were met, budgets ascending within
/// each; all-local's runs under a fraction mode join every row of their workload.
fn rows(obs: &[Obs]) -> Vec<(String, Budget, Vec<&Obs>)> {
    let mut workloads: Vec<&str> = Vec::new();
    for o in obs {
        if !workloads.contains(&o.workload.as_str()) {
            workloads.push(&o.workload);
        }
    }
    let mut out = Vec::new();
    for w in workloads {
        let mine: Vec<&Obs> = obs.iter().filter(|o| o.workload == w).collect();
        let mut budgets: Vec<Budget> = Vec::new();
        for o in &mine {
            if o.budget != Budget::Footprint && !budgets.contains(&o.budget) {
                budgets.push(o.budget);
            }
        }
        if budgets.is_empty() {
            budgets.push(Budget::Footprint);
        }
        budgets.sort_by(|a, b| {
            let (x, y) = (a.order(), b.order());
            x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
        });
        for b in budgets {
            let at: Vec<&Obs> = mine
                .iter()
                .copied()
                .filter(|o| {
                    o.budget == b || (o.budget == Budget::Footprint && matches!(b, Budget::Frac(_)))
                })
                .collect();
            out.push((w.to_owned(), b, at));
        }
    }
    out
}

fn sys_name(s: System) -> &'static str {
    match s {
        System::Farmem => "farmem",
        System::LinuxSwap => "Linux",
        System::AllLocal => "all-local",
    }
}

/// The markdown table.
fn render(obs: &[Obs]) -> String {
    let mut t = String::from(
        "| workload | local % | farmem | Linux swap | all-local | farmem/Linux | farmem/all-local | farmem minor faults/s | farmem major faults/s | Linux major faults/s | notes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let dash = || "-".to_string();
    for (w, b, at) in rows(obs) {
        let ok = |s: System| -> Vec<&Obs> {
            at.iter()
                .copied()
                .filter(|o| o.system == s && o.state == State::Ok)
                .collect()
        };
        let med = |s: System, g: &dyn Fn(&Obs) -> Option<f64>| {
            let v: Vec<f64> = ok(s).iter().filter_map(|o| g(o)).collect();
            median(&v)
        };
        let metric = |s: System| med(s, &|o| o.metric);
        let higher = at.first().is_some_and(|o| o.higher);
        let (f, l, a) = (
            metric(System::Farmem),
            metric(System::LinuxSwap),
            metric(System::AllLocal),
        );
        let ratio = |other: Option<f64>| match (f, other) {
            (Some(x), Some(y)) => speedup(x, y, higher)
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(dash),
            _ => dash(),
        };
        let footprint = med(System::AllLocal, &|o| o.max_rss.map(|m| m as f64));
        let budget_bytes = at
            .iter()
            .find(|o| o.system != System::AllLocal)
            .map(|o| o.local_bytes);
        let local = match b {
            Budget::Frac(x) => format!(
                "{} ({})",
                crate::bench_cmd::pct(x),
                opts::human(budget_bytes.unwrap_or(0))
            ),
            Budget::Footprint => "all-local only".into(),
            Budget::Bytes(bytes) => match footprint {
                Some(fp) if fp > 0.0 => format!(
                    "{} ({})",
                    crate::bench_cmd::pct((bytes as f64 / fp * 100.0).round() / 100.0),
                    opts::human(bytes)
                ),
                _ => opts::human(bytes),
            },
            Budget::Dataset(x) => format!(
                "{} of values ({})",
                crate::bench_cmd::pct(x),
                opts::human(budget_bytes.unwrap_or(0))
            ),
        };
        let per_s = |v: Option<f64>| v.map(|x| thousands(x.round() as i64)).unwrap_or_else(dash);
        let mut notes: Vec<String> = Vec::new();
        for s in [System::Farmem, System::LinuxSwap, System::AllLocal] {
            let runs: Vec<&&Obs> = at.iter().filter(|o| o.system == s).collect();
            for (state, what) in [
                (State::OomKilled, "OOM-killed"),
                (State::Failed, "failed"),
                (State::TimedOut, "timed out"),
            ] {
                let n = runs.iter().filter(|o| o.state == state).count();
                if n > 0 {
                    notes.push(format!("{} {what} {n} of {}", sys_name(s), runs.len()));
                }
            }
            let wrong: u64 = runs.iter().map(|o| o.wrong).sum();
            if wrong > 0 {
                notes.push(format!("{}: {wrong} WRONG replies", sys_name(s)));
            }
        }
        let fmt = |v: Option<f64>| v.map(num).unwrap_or_else(dash);
        t += &format!(
            "| {w} | {local} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            fmt(f),
            fmt(l),
            fmt(a),
            ratio(l),
            ratio(a),
            per_s(med(System::Farmem, &|o| o.farmem_minor_ps)),
            per_s(med(System::Farmem, &|o| o.farmem_major_ps)),
            per_s(med(System::LinuxSwap, &|o| o.linux_major_ps)),
            notes.join("; "),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(sys: System, budget: Budget, state: State, metric: f64) -> Obs {
        Obs {
            workload: "w: req/s".into(),
            budget,
            local_bytes: 100 << 20,
            system: sys,
            state,
            metric: (state == State::Ok).then_some(metric),
            higher: true,
            max_rss: Some(400 << 20),
            farmem_minor_ps: Some(10.0),
            farmem_major_ps: Some(1000.4),
            linux_major_ps: Some(2000.0),
            wrong: 0,
        }
    }

    #[test]
    fn a_row_per_fraction_with_all_local_in_each() {
        let o = vec![
            obs(System::AllLocal, Budget::Footprint, State::Ok, 100.0),
            obs(System::Farmem, Budget::Frac(1.0), State::Ok, 90.0),
            obs(System::LinuxSwap, Budget::Frac(1.0), State::Ok, 75.0),
            obs(System::Farmem, Budget::Frac(0.25), State::Ok, 50.0),
            obs(System::LinuxSwap, Budget::Frac(0.25), State::OomKilled, 0.0),
            obs(System::LinuxSwap, Budget::Frac(0.25), State::Ok, 25.0),
        ];
        let t = render(&o);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("| workload | local % | farmem | Linux swap"));
        // Fractions ascending; all-local in both rows; ratios in the metric's direction.
        assert_eq!(
            lines[2],
            "| w: req/s | 25% (100 MiB) | 50.00 | 25.00 | 100.0 | 2.00x | 0.50x | 10 | 1,000 | 2,000 | Linux OOM-killed 1 of 2 |"
        );
        assert!(
            lines[3].starts_with(
                "| w: req/s | 100% (100 MiB) | 90.00 | 75.00 | 100.0 | 1.20x | 0.90x |"
            ),
            "{t}"
        );
    }

    #[test]
    fn mixed_records_and_bad_lines() {
        let cmd = r#"{"system":"farmem","command":["./qs"],"local_bytes":1048576,"run":1,"outcome":"ok","wall_s":2.0,"metric":2.0,"metric_name":"sort s","metric_regex":"sort ([0-9.]+) s","higher_is_better":false,"faults":5,"exit_code":0,"signal":null,"max_rss_bytes":4194304,"error":null,"farmem_minor_faults":10,"farmem_major_faults":5,"farmem_zero_faults":1,"linux_minor_faults":3,"linux_major_faults":0,"fault_seconds":2.0}"#;
        let redis = r#"{"system":"linux-swap","workload":"get-mix","dataset_bytes":1073741824,"local_bytes":268435456,"local_fraction":0.25,"clients":4,"pipeline":1,"run":1,"ops_per_sec":1000.0,"p50_us":null,"p99_us":null,"wrong":0,"errors":0,"oom_killed":true}"#;
        let lines = vec![
            ("a".to_string(), 1, cmd.to_string()),
            ("b".to_string(), 1, redis.to_string()),
            ("b".to_string(), 2, String::new()),
        ];
        let o = observations(&lines).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].workload, "qs: sort s");
        assert_eq!(o[0].farmem_minor_ps, Some(5.0));
        assert_eq!(o[1].state, State::OomKilled);
        assert_eq!(o[1].budget, Budget::Dataset(0.25));
        let t = render(&o);
        assert!(t.contains("| redis get-mix (1.00 GiB of values): ops/s | 25% of values (256 MiB) | - | - | - | - | - | - | - | - | Linux OOM-killed 1 of 1 |"), "{t}");
        let e = observations(&[("f".into(), 3, r#"{"pattern":"seq"}"#.into())]).unwrap_err();
        assert!(e.to_string().contains("f line 3 is neither"), "{e}");
        let e = observations(&[("f".into(), 1, "not json".into())]).unwrap_err();
        assert!(e.to_string().contains("f line 1 is not JSON"), "{e}");
        assert!(observations(&[]).is_err());
    }
}
