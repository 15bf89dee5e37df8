//! `farmem bench-cmd`: any command, run under farmem (`farmem run`), under Linux swap (a
//! memory cgroup capped at the same budget, swapping to zram) and all-local, interleaved in
//! one invocation, with the medians and farmem's speed-up over the other two.
//!
//! Each run of each system records the wall time, how the program ended, and the metrics:
//! the numbers that each `--metric REGEX`'s one capture group finds in the program's output
//! (its stdout and stderr, read from one pipe), or the wall time without `--metric`; one
//! record per metric. Every run is a child in its own process group (a timeout kills the
//! group); `wait4` gives its rusage (maximum RSS, faults, CPU time).
//!
//! With `--client CMD` the program is a server, run under each system, and CMD its load,
//! run plainly (outside the memory cgroup, without farmem):
//!
//! ```text
//!   server under the system ──> 127.0.0.1:PORT accepts? ──> sh -c CMD (the metrics) ──> exits
//!        │  dies on its own: failed run (OOM-killed under Linux swap)                     │
//!        └──── SIGTERM to its group, SIGKILL after the grace ◄────────────────────────────┘
//! ```
//!
//! The record's figures (maximum RSS, faults, farmem's stats) are then the server's, its
//! metrics and wall time the client's. With `--local-frac` the budgets are fractions of the
//! footprint, all-local's maximum RSS in the first run.

mod child;
mod report;

pub(crate) use report::{num, pct, shell_join, thousands};
pub use report::{speedup, summarize_lines};

use crate::{farmem_stats, opts};
use anyhow::{Context, Result, anyhow, bail};
use child::{Exec, Running};
use clap::{ArgGroup, Args};
use farmem_bench::System;
use farmem_bench::linux_swap::{self, SwapBaseline, SwapConfig};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// Options of `farmem bench-cmd`.
#[derive(Args, Debug, Clone)]
#[command(
    group(ArgGroup::new("budget").required(true).args(["local_mem", "local_frac"])),
    after_help = "The speed-up is how many times better farmem's median metric is than the other system's, in the metric's own direction: above 1, farmem did better.\n\n\
A run that exits non-zero, whose output --metric does not match, or whose output --reject matches, is a failed run: its error and the end of its output are shown, the other runs go on, and the command exits with status 1. A Linux-swap run stopped by the kernel's OOM killer is reported as OOM-killed, and a run stopped by --timeout as timed out; neither counts in the medians.\n\n\
Servers (--client CMD): PROGRAM is started under each system and, once 127.0.0.1:PORT accepts a connection (--port; the check opens and closes one connection), CMD runs with `sh -c`, plainly: outside the memory cgroup and without farmem. The metrics, --reject and the wall time come from CMD's output; when CMD exits, the server's process group gets SIGTERM, then SIGKILL after --stop-grace. A server that exits on its own before that (other than with status 0) is a failed run; under Linux swap, an OOM-killed one is reported as such. Max RSS, faults and farmem's stats are the server's: start the server itself, or a script that execs it, so that SIGTERM reaches it and farmem's summary at exit is printed.\n\n\
Faults: farmem's own (from `farmem run --stats`: major = waits for the far tier; minor = a resident page mapped again on touch, after CLOCK unmapped it or a prefetch brought it; zero-fill = first touches), the memory cgroup's for Linux swap (pgmajfault = swap-ins, and pgfault - pgmajfault), the kernel's rusage for all-local (and beside farmem's). The JSON records hold each count and the seconds it covers (the program's run, or the server's life). Max RSS is the kernel's peak resident set size of the program: under farmem it includes the far tier when that is process memory (mem:, compressed:), under Linux swap it leaves out what zram holds.\n\n\
Examples:\n  \
farmem bench-cmd --local-mem 256M --metric 'sort ([0-9.]+) s' -- ./quicksort --size 1G\n  \
farmem bench-cmd --local-mem 256M --metric '([0-9.]+) updates/s' --higher-is-better -- ./skewed\n  \
farmem bench-cmd --local-frac 0.25,0.5,1,2 --metric 'build ([0-9.]+) s' --metric-name build-s \\\n      \
--metric 'lookup ([0-9.]+) s' --metric-name lookup-s -- python3 scripts/apps/pydict.py\n  \
farmem bench-cmd --local-frac 0.25,1 --port 7100 --higher-is-better \\\n      \
--client 'redis-benchmark -p 7100 -t set,get -r 100000 -n 200000 -d 1024 -q' \\\n      \
--metric 'SET: ([0-9.]+) requests per second' --metric-name 'SET req/s' \\\n      \
--metric 'GET: ([0-9.]+) requests per second' --metric-name 'GET req/s' \\\n      \
-- redis-server --port 7100 --save '' --appendonly no\n  \
farmem bench-cmd --local-mem 64M --port 11300 --higher-is-better \\\n      \
--client 'memcaslap -s 127.0.0.1:11300 -x 100000 -v 1' --metric 'TPS: ([0-9]+)' \\\n      \
--reject '(verify_misses|verify_failed): [1-9]' -- memcached -u root -t 4 -m 1024 -p 11300"
)]
pub struct BenchCmdArgs {
    /// The local memory budget (K/M/G suffixes): farmem's `--local-mem` and the Linux-swap
    /// memory cgroup's limit. all-local runs without a limit.
    #[arg(long, value_name = "SIZE", value_parser = opts::size)]
    pub local_mem: Option<u64>,
    /// Budgets as fractions of the program's footprint instead of --local-mem,
    /// comma-separated (e.g. 0.25,0.5,1,2). In each run all-local goes first; the
    /// footprint is the maximum RSS of its first run (the server's, with --client), and
    /// farmem and linux-swap then run at each fraction of it (whole pages, at least 64
    /// KiB). all-local runs once per run, not once per fraction.
    #[arg(long, value_name = "FRACTIONS", value_delimiter = ',')]
    pub local_frac: Option<Vec<f64>>,
    /// farmem's far tier, passed to `farmem run --backend`.
    #[arg(long, value_name = "URI", default_value = "compressed:")]
    pub backend: String,
    /// More options for `farmem run` (for `farmem vm` with --vm), one per use (e.g.
    /// --run-arg=--fault-mode=thread).
    #[arg(long = "run-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub run_args: Vec<String>,
    /// PROGRAM is a virtual machine: the options of `farmem vm` (its --memory, --cpus,
    /// --guest and the guest's arguments). farmem runs `farmem vm --local-mem BUDGET
    /// --backend URI --stats PROGRAM`; linux-swap and all-local run `farmem vm --all-local
    /// PROGRAM`, the guest's RAM plain memory of the VMM, in the memory cgroup or not.
    #[arg(long)]
    pub vm: bool,
    /// Systems to run, comma-separated, in this order within each run: farmem, linux-swap
    /// (root, cgroup v1 memory controller and /dev/zram0 needed), all-local. By default
    /// all three, leaving linux-swap out (with a warning) where the machine cannot do it;
    /// named here, it is an error if it cannot run.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub systems: Option<Vec<System>>,
    /// Runs of each system; figures are medians. Systems take turns within each run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// A regular expression with one capture group around the number to report, matched
    /// against the program's output (stdout and stderr; the client's with --client); the
    /// last match counts. Give it several times to read several metrics from one run (each
    /// with its --metric-name, in the same order): each run then makes one record per
    /// metric. Without it, the metric is the wall time in seconds.
    #[arg(long, value_name = "REGEX")]
    pub metric: Vec<String>,
    /// Every --metric grows as the program does better (a rate); by default lower is
    /// better (a time).
    #[arg(long, requires = "metric")]
    pub higher_is_better: bool,
    /// What to call the metric in the report (default: "metric", or "wall s"); with
    /// several --metric, one name for each, in the same order.
    #[arg(long, value_name = "NAME")]
    pub metric_name: Vec<String>,
    /// A regular expression that makes a run failed when it matches the output (the
    /// client's, with --client), e.g. a client's count of wrong replies:
    /// '(verify_misses|verify_failed): [1-9]'. May be given several times.
    #[arg(long, value_name = "REGEX")]
    pub reject: Vec<String>,
    /// Server mode: PROGRAM is a server and CMD (run with `sh -c`, plainly, outside the
    /// memory cgroup and without farmem) its load; the metrics come from CMD's output.
    #[arg(long, value_name = "CMD")]
    pub client: Option<String>,
    /// With --client: start CMD once the server accepts TCP connections on
    /// 127.0.0.1:PORT. The port must be free before the server starts.
    #[arg(long, value_name = "PORT", requires = "client")]
    pub port: Option<u16>,
    /// With --port: a server that does not accept connections within SECS is a failed
    /// run.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub ready_timeout: f64,
    /// With --client: seconds between SIGTERM and SIGKILL when the server is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub stop_grace: f64,
    /// A name for this workload in the records, for `farmem summarize --table` (default:
    /// the program's name).
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Kill a run (its whole process group; with --client, the client's) still going
    /// after SECS seconds and report it as timed out. Default: no limit.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Capacity of the zram swap device of the Linux-swap system (uncompressed; zram only
    /// uses memory for what is swapped out). Default: half the machine's memory.
    #[arg(long, value_name = "SIZE", value_parser = opts::size)]
    pub zram_size: Option<u64>,
    /// One JSON object per line per system run and metric on stdout (progress goes to
    /// stderr); read them back with `farmem summarize`.
    #[arg(long)]
    pub json: bool,
    /// The farmem executable whose `run` command wraps the program (default: this one).
    #[arg(long = "farmem", value_name = "PATH")]
    pub farmem: Option<PathBuf>,
    /// Where the cgroup v1 memory controller is mounted (for tests).
    #[arg(long, hide = true, default_value = linux_swap::DEFAULT_CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub program: Vec<String>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Exited 0 and the metric was found.
    Ok,
    /// Exited non-zero, died of a signal, its output had no metric or matched --reject,
    /// or (a server) died before its client was done or never accepted connections.
    Failed,
    /// Linux swap: the kernel's OOM killer stopped it in its memory cgroup.
    OomKilled,
    /// Killed by `--timeout`.
    TimedOut,
}

/// One run of one system, for one metric, serialised as one JSON line, in the conventions
/// of [`farmem_bench::BenchRecord`]: figures a run could not measure are `null`, anything
/// else goes in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmdRecord {
    /// The system measured.
    pub system: System,
    /// The program and its arguments, as given.
    pub command: Vec<String>,
    /// The local budget, bytes: farmem's `--local-mem` and the Linux-swap cgroup's limit;
    /// for all-local, what the others got (with --local-frac: the footprint).
    pub local_bytes: u64,
    /// Which run (1-based).
    pub run: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time from spawn to exit (the client's, with --client), seconds.
    pub wall_s: f64,
    /// The metric (None when it could not be read).
    pub metric: Option<f64>,
    /// The metric's name in reports.
    pub metric_name: String,
    /// The --metric expression; None when the metric is the wall time.
    #[serde(default)]
    pub metric_regex: Option<String>,
    /// Whether a larger metric is better.
    pub higher_is_better: bool,
    /// Faults that fetched from far memory: farmem's major faults (from `--stats`), Linux
    /// swap's major faults in the cgroup (swap-ins), all-local's major faults (rusage).
    pub faults: Option<u64>,
    /// The exit code, if it exited (the client's, with --client).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did (the client's, with --client).
    pub signal: Option<i32>,
    /// Maximum resident set size (rusage; the server's, with --client), bytes.
    pub max_rss_bytes: Option<u64>,
    /// Why a failed run failed.
    pub error: Option<String>,
    /// `--label`: what to call the workload in tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `--client`: the load (run with `sh -c`); the program is then a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `--local-frac`: the budget as a fraction of the footprint (None for all-local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_frac: Option<f64>,
    /// `--local-frac`: the footprint, all-local's maximum RSS in run 1, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint_bytes: Option<u64>,
    /// farmem's minor faults (`--stats`: resident pages mapped again on touch).
    #[serde(default)]
    pub farmem_minor_faults: Option<u64>,
    /// farmem's major faults (`--stats`: waits for the far tier).
    #[serde(default)]
    pub farmem_major_faults: Option<u64>,
    /// farmem's zero-fill faults (`--stats`: first touches).
    #[serde(default)]
    pub farmem_zero_faults: Option<u64>,
    /// The kernel's minor faults: the memory cgroup's pgfault - pgmajfault for Linux swap,
    /// the program's (server's) rusage otherwise.
    #[serde(default)]
    pub linux_minor_faults: Option<u64>,
    /// The kernel's major faults: the memory cgroup's pgmajfault for Linux swap, the
    /// program's (server's) rusage otherwise.
    #[serde(default)]
    pub linux_major_faults: Option<u64>,
    /// Seconds the fault counts cover: the program's run, or the server's life.
    #[serde(default)]
    pub fault_seconds: Option<f64>,
    /// Anything else (farmem's stats, the cgroup's and zram's counters, CPU times).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl CmdRecord {
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

    /// Parses one line written by [`CmdRecord::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }

    fn f(&self, key: &str) -> Option<f64> {
        self.extra.get(key).and_then(Value::as_f64)
    }
}

/// One thing measured: a number read from the output, or the wall time.
#[derive(Debug)]
struct Metric {
    re: Option<Regex>,
    name: String,
}

/// Every metric of a run, and which way is better.
#[derive(Debug)]
struct Metrics {
    list: Vec<Metric>,
    higher_is_better: bool,
}

/// `src` compiled, or one line saying what is wrong with it as `option`.
fn regex(option: &str, src: &str) -> Result<Regex> {
    Regex::new(src).map_err(|e| {
        // The parser's message spans lines (the expression, a caret, the error).
        let msg = e.to_string();
        let last = msg.lines().last().unwrap_or("").trim();
        let why = last.strip_prefix("error: ").unwrap_or(last).to_owned();
        anyhow!("{option} {src:?} is not a regular expression: {why}")
    })
}

impl Metrics {
    fn new(a: &BenchCmdArgs) -> Result<Self> {
        let (n, names) = (a.metric.len(), a.metric_name.len());
        if n > 1 && names != n {
            bail!(
                "give one --metric-name per --metric, in the same order ({n} --metric, {names} --metric-name)"
            );
        }
        if n <= 1 && names > 1 {
            bail!("{names} --metric-name for {n} --metric: give one name per --metric");
        }
        let mut list = Vec::new();
        for (i, src) in a.metric.iter().enumerate() {
            let re = regex("--metric", src)?;
            let groups = re.captures_len() - 1;
            if groups != 1 {
                bail!(
                    "--metric needs exactly one capture group around the number, e.g. 'sort ([0-9.]+) s'; {src:?} has {groups}"
                );
            }
            let name = a
                .metric_name
                .get(i)
                .cloned()
                .unwrap_or_else(|| "metric".into());
            if list.iter().any(|m: &Metric| m.name == name) {
                bail!("--metric-name {name:?} is given twice: each metric needs its own name");
            }
            list.push(Metric { re: Some(re), name });
        }
        if list.is_empty() {
            list.push(Metric {
                re: None,
                name: a
                    .metric_name
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "wall s".into()),
            });
        }
        Ok(Self {
            list,
            higher_is_better: a.higher_is_better,
        })
    }
}

impl Metric {
    /// The metric of a run whose output (less farmem's own lines) is `output`.
    fn extract(&self, output: &str, wall_s: f64) -> Result<f64, String> {
        let Some(re) = &self.re else {
            return Ok(wall_s);
        };
        let Some(caps) = re.captures_iter(output).last() else {
            return Err(format!(
                "--metric {:?} matched nothing in the output",
                re.as_str()
            ));
        };
        let text = caps.get(1).map(|m| m.as_str()).unwrap_or("").trim();
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!(
                "--metric {:?} captured {text:?}, which is not a number",
                re.as_str()
            )),
        }
    }
}

/// Lines of output the tail of a failed run shows.
const TAIL_LINES: usize = 12;
/// How often a running child's time limit and zram's usage are checked.
const POLL: Duration = Duration::from_millis(10);
/// How often a starting server's port is tried.
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a failed client's server is given to show that it died first.
const SERVER_DEATH_WAIT: Duration = Duration::from_millis(200);
/// The smallest budget farmem takes, bytes.
const MIN_BUDGET: u64 = farmem::MIN_BUDGET_PAGES as u64 * 4096;

/// The budget of one measurement.
#[derive(Clone, Copy, Debug)]
struct Budget {
    bytes: u64,
    /// With --local-frac: the fraction of `footprint` (None for all-local).
    frac: Option<f64>,
    footprint: Option<u64>,
}

/// `frac` x `footprint`, rounded to whole pages, at least farmem's minimum budget.
fn frac_budget(frac: f64, footprint: u64) -> u64 {
    let pages = (frac * footprint as f64 / 4096.0).round() as u64;
    (pages * 4096).max(MIN_BUDGET)
}

/// Everything a measurement needs, checked once.
struct Plan<'a> {
    a: &'a BenchCmdArgs,
    metrics: Metrics,
    rejects: Vec<Regex>,
    program: PathBuf,
    systems: Vec<System>,
}

pub fn run(a: BenchCmdArgs) -> Result<()> {
    validate(&a)?;
    let metrics = Metrics::new(&a)?;
    let rejects = a
        .reject
        .iter()
        .map(|r| regex("--reject", r))
        .collect::<Result<Vec<_>>>()?;
    let program = if a.vm {
        farmem_exe(&a)?
    } else {
        resolve_program(&a.program[0])?
    };
    let explicit = a.systems.is_some();
    let mut systems: Vec<System> = Vec::new();
    for s in a
        .systems
        .clone()
        .unwrap_or_else(|| vec![System::Farmem, System::LinuxSwap, System::AllLocal])
    {
        if !systems.contains(&s) {
            systems.push(s);
        }
    }
    if a.local_frac.is_some() && !systems.contains(&System::AllLocal) {
        bail!(
            "--local-frac takes fractions of all-local's maximum RSS: keep all-local in --systems"
        );
    }
    if systems.contains(&System::Farmem) && !a.vm {
        preflight_farmem(&a)?;
    }
    if systems.contains(&System::LinuxSwap)
        && let Err(e) = linux_swap::check(&swap_config(&a, a.local_mem.unwrap_or(MIN_BUDGET)))
    {
        if explicit {
            bail!("the linux-swap system is not possible here: {e} (or leave it out of --systems)");
        }
        eprintln!("farmem: the Linux-swap baseline is not possible here, running without it: {e}");
        systems.retain(|s| *s != System::LinuxSwap);
    }
    if systems.is_empty() {
        bail!("no system left to run");
    }
    let plan = Plan {
        a: &a,
        metrics,
        rejects,
        program,
        systems,
    };
    let header = report::header(&plan);
    if a.json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    let mut all: Vec<CmdRecord> = Vec::new();
    let mut footprint: Option<u64> = None;
    for run in 1..=a.runs {
        let one = |sys: System, budget: Budget, all: &mut Vec<CmdRecord>| -> Result<()> {
            let recs = plan
                .measure(sys, run, budget)
                .with_context(|| match budget.frac {
                    Some(f) => format!("{sys} run {run} at {} of the footprint", report::pct(f)),
                    None => format!("{sys} run {run}"),
                })?;
            report::emit(a.json, &recs);
            all.extend(recs);
            Ok(())
        };
        let Some(fracs) = &a.local_frac else {
            let bytes = a.local_mem.unwrap_or(MIN_BUDGET);
            for &sys in &plan.systems {
                let budget = Budget {
                    bytes,
                    frac: None,
                    footprint: None,
                };
                one(sys, budget, &mut all)?;
            }
            continue;
        };
        // all-local first: its first run's maximum RSS is the footprint.
        let mut recs = plan
            .measure(
                System::AllLocal,
                run,
                Budget {
                    bytes: footprint.unwrap_or(0),
                    frac: None,
                    footprint,
                },
            )
            .with_context(|| format!("all-local run {run}"))?;
        if footprint.is_none() {
            let ok = recs.iter().find(|r| r.outcome == Outcome::Ok);
            match ok.and_then(|r| r.max_rss_bytes) {
                Some(rss) if rss > 0 => {
                    footprint = Some(rss);
                    for r in &mut recs {
                        r.local_bytes = rss;
                        r.footprint_bytes = Some(rss);
                    }
                }
                _ => {
                    report::emit(a.json, &recs);
                    let why = recs
                        .iter()
                        .find_map(|r| r.error.clone())
                        .unwrap_or_else(|| format!("{:?}", recs[0].outcome).to_lowercase());
                    bail!(
                        "all-local run 1 did not succeed ({why}), so there is no footprint to take the --local-frac fractions of; fix that run first"
                    );
                }
            }
        }
        report::emit(a.json, &recs);
        all.extend(recs);
        let fp = footprint.unwrap_or(MIN_BUDGET);
        for &frac in fracs {
            for &sys in plan.systems.iter().filter(|s| **s != System::AllLocal) {
                let budget = Budget {
                    bytes: frac_budget(frac, fp),
                    frac: Some(frac),
                    footprint: Some(fp),
                };
                one(sys, budget, &mut all)?;
            }
        }
    }
    if !a.json {
        report::summary(&all);
    }
    let failed: Vec<&CmdRecord> = all
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} run(s) failed (first: {} run {}: {})",
            failed.len(),
            all.len(),
            first.system,
            first.run,
            first.error.as_deref().unwrap_or("failed")
        );
    }
    Ok(())
}

fn validate(a: &BenchCmdArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Some(t) = a.timeout
        && !(t.is_finite() && t > 0.0)
    {
        bail!("--timeout must be a positive number of seconds (got {t})");
    }
    for (name, v) in [
        ("--ready-timeout", a.ready_timeout),
        ("--stop-grace", a.stop_grace),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{name} must be zero or a positive number of seconds (got {v})");
        }
    }
    if let Some(m) = a.local_mem
        && m < MIN_BUDGET
    {
        bail!("--local-mem must be at least {} KiB", MIN_BUDGET / 1024);
    }
    if let Some(fracs) = &a.local_frac {
        if fracs.is_empty() {
            bail!("--local-frac needs at least one fraction, e.g. 0.25,0.5,1,2");
        }
        for &f in fracs {
            if !(f.is_finite() && f > 0.0 && f <= 64.0) {
                bail!(
                    "--local-frac fractions must be above 0 and at most 64 (1 = the footprint), got {f}"
                );
            }
        }
    }
    if a.port == Some(0) {
        bail!("--port must be the server's port, 1-65535");
    }
    if a.client.as_deref().is_some_and(|c| c.trim().is_empty()) {
        bail!("--client needs a command, e.g. --client 'redis-benchmark -p 7100 -q'");
    }
    if a.program.first().is_none_or(|p| p.is_empty()) {
        bail!("give the program to run after `--`");
    }
    Ok(())
}

/// PROGRAM as a path every system runs the same way: as given if it has a slash, else
/// found in PATH; a clear error if it is neither.
fn resolve_program(name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        if !runnable(&p) {
            bail!("cannot run {name}: not an executable file");
        }
        return Ok(p.canonicalize().unwrap_or(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if runnable(&p) {
            return Ok(p);
        }
    }
    bail!("cannot find {name} in PATH; give its path (e.g. ./{name})")
}

/// `<farmem> run --local-mem B --backend URI --stats [--run-arg...] --`
fn farmem_wrapper(a: &BenchCmdArgs, local: u64) -> Result<Vec<String>> {
    let mut w = vec![
        farmem_exe(a)?.to_string_lossy().into_owned(),
        if a.vm { "vm" } else { "run" }.into(),
        "--local-mem".into(),
        local.to_string(),
        "--backend".into(),
        a.backend.clone(),
        "--stats".into(),
    ];
    w.extend(a.run_args.iter().cloned());
    if !a.vm {
        w.push("--".into());
    }
    Ok(w)
}

/// The farmem executable the farmem system runs (--farmem, or this one).
fn farmem_exe(a: &BenchCmdArgs) -> Result<PathBuf> {
    match &a.farmem {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("find the farmem executable"),
    }
}

/// The farmem system needs `farmem run`: try it once on `true`, so that a missing preload
/// library, a bad --backend or no userfaultfd is one clear error before any run.
fn preflight_farmem(a: &BenchCmdArgs) -> Result<()> {
    let wrapper = farmem_wrapper(a, a.local_mem.unwrap_or(MIN_BUDGET))?;
    let shown = shell_join(&wrapper) + " true";
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg("true")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("could not run `{shown}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let first = first.strip_prefix("farmem: error: ").unwrap_or(first);
        bail!(
            "the farmem system runs the program under `farmem run`, and `{shown}` failed ({}): {first}. \
             Fix that, or leave farmem out: --systems linux-swap,all-local",
            out.status
        );
    }
    Ok(())
}

fn swap_config(a: &BenchCmdArgs, budget: u64) -> SwapConfig {
    let zram = a.zram_size.unwrap_or_else(default_zram_size);
    let mut c = SwapConfig::new(budget, zram);
    c.cgroup_root = a.cgroup_root.clone();
    c
}

/// Half the machine's memory, in whole pages (8 GiB if /proc/meminfo cannot be read).
fn default_zram_size() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let kib = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
                kib.trim().parse::<u64>().ok()
            })
        })
        .map(|kib| kib * 1024)
        .unwrap_or(16 << 30);
    (total / 2) / 4096 * 4096
}

/// How a system starts the program (the server, with --client).
enum Launch<'b> {
    /// As it is (all-local).
    Plain,
    /// Under `farmem run ... --`.
    Farmem(Vec<String>),
    /// In the Linux-swap baseline's memory cgroup.
    Swap(&'b SwapBaseline),
}

impl Launch<'_> {
    /// The command line of `program` with `args` as this launch runs it; with `vm`,
    /// `args` are `farmem vm`'s options and `program` the farmem executable.
    fn command(&self, program: &Path, args: &[String], vm: bool) -> Command {
        if vm {
            let mut c = match self {
                Launch::Farmem(w) => {
                    let mut c = Command::new(&w[0]);
                    c.args(&w[1..]);
                    c
                }
                Launch::Plain | Launch::Swap(_) => {
                    let mut c = Command::new(program);
                    c.args(["vm", "--all-local"]);
                    c
                }
            };
            c.args(args);
            return c;
        }
        let mut c = match self {
            Launch::Farmem(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(program);
                c
            }
            Launch::Plain | Launch::Swap(_) => Command::new(program),
        };
        c.args(args);
        c
    }

    fn spawn(&self, c: &mut Command) -> Result<Child> {
        match self {
            Launch::Swap(b) => Ok(b.spawn(c)?),
            Launch::Plain | Launch::Farmem(_) => spawn_plain(c),
        }
    }
}

fn spawn_plain(c: &mut Command) -> Result<Child> {
    let name = c.get_program().to_string_lossy().into_owned();
    c.spawn().with_context(|| format!("cannot run {name}"))
}

/// What one measurement's processes did.
struct Trial {
    /// The program, or with --client the server.
    main: Exec,
    /// With --client: the client, if the server got as far as starting it.
    client: Option<Exec>,
    /// With --client: why the server made the run fail (it never accepted connections, or
    /// died before the client was done).
    server_problem: Option<String>,
    /// With --client: how the server was stopped (None: it exited on its own).
    stopped_by: Option<&'static str>,
}

/// Whether 127.0.0.1:`port` accepts a TCP connection (which is closed at once).
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

impl Plan<'_> {
    fn server_mode(&self) -> bool {
        self.a.client.is_some()
    }

    fn timeout(&self) -> Option<Duration> {
        self.a.timeout.map(Duration::from_secs_f64)
    }

    /// One system at one budget, one run: one record per metric.
    fn measure(&self, sys: System, run: usize, budget: Budget) -> Result<Vec<CmdRecord>> {
        let a = self.a;
        let mut base = CmdRecord {
            system: sys,
            command: a.program.clone(),
            local_bytes: budget.bytes,
            run,
            outcome: Outcome::Ok,
            wall_s: 0.0,
            metric: None,
            metric_name: String::new(),
            metric_regex: None,
            higher_is_better: self.metrics.higher_is_better,
            faults: None,
            exit_code: None,
            signal: None,
            max_rss_bytes: None,
            error: None,
            label: a.label.clone(),
            client: a.client.clone(),
            local_frac: budget.frac,
            footprint_bytes: budget.footprint,
            farmem_minor_faults: None,
            farmem_major_faults: None,
            farmem_zero_faults: None,
            linux_minor_faults: None,
            linux_major_faults: None,
            fault_seconds: None,
            extra: Map::new(),
        };
        let (trial, oom_kills) = match sys {
            System::AllLocal => (self.trial(&Launch::Plain, &mut || {})?, 0),
            System::Farmem => {
                base.set_extra("backend", &a.backend);
                let launch = Launch::Farmem(farmem_wrapper(a, budget.bytes)?);
                (self.trial(&launch, &mut || {})?, 0)
            }
            System::LinuxSwap => {
                let baseline = SwapBaseline::setup(swap_config(a, budget.bytes))
                    .context("set up the Linux-swap baseline")?;
                let res = SwapProbe::start(&baseline).and_then(|mut probe| {
                    let t = self.trial(&Launch::Swap(&baseline), &mut || probe.tick());
                    let oom = probe.finish(&mut base)?;
                    Ok((t?, oom))
                });
                baseline
                    .teardown()
                    .context("tear down the Linux-swap baseline")?;
                res?
            }
        };
        Ok(self.records(base, trial, oom_kills))
    }

    /// Runs the program (or the server and its client) as `launch` starts it.
    fn trial(&self, launch: &Launch, tick: &mut dyn FnMut()) -> Result<Trial> {
        let args = if self.a.vm {
            &self.a.program[..]
        } else {
            &self.a.program[1..]
        };
        let cmd = launch.command(&self.program, args, self.a.vm);
        if !self.server_mode() {
            let main =
                Running::start(cmd, |c| launch.spawn(c))?.wait(self.timeout(), POLL, tick)?;
            return Ok(Trial {
                main,
                client: None,
                server_problem: None,
                stopped_by: None,
            });
        }
        self.serve(cmd, launch, tick)
    }

    /// Server mode: the server, its readiness, the client, then the server's stop.
    fn serve(&self, cmd: Command, launch: &Launch, tick: &mut dyn FnMut()) -> Result<Trial> {
        let a = self.a;
        let name = program_name(a);
        if let Some(port) = a.port
            && accepts(port)
        {
            bail!(
                "127.0.0.1:{port} accepts connections before {name} has started: another process listens there; stop it, or give the server and its client a free --port"
            );
        }
        let mut server = Running::start(cmd, |c| launch.spawn(c))?;
        let mut problem: Option<String> = None;
        if let Some(port) = a.port {
            let limit = Duration::from_secs_f64(a.ready_timeout);
            loop {
                if server.exited()? {
                    problem = Some(format!(
                        "{name} {} before it accepted connections on 127.0.0.1:{port}",
                        describe_status(server.status())
                    ));
                    break;
                }
                if accepts(port) {
                    break;
                }
                if server.elapsed() >= limit {
                    problem = Some(format!(
                        "{name} did not accept connections on 127.0.0.1:{port} within {} s",
                        a.ready_timeout
                    ));
                    break;
                }
                tick();
                // Refused connections return at once: do not spin.
                std::thread::sleep(READY_POLL);
            }
        }
        let mut client_exec = None;
        if problem.is_none() {
            let mut c = Command::new("sh");
            c.arg("-c").arg(a.client.as_deref().unwrap_or_default());
            let mut client = Running::start(c, spawn_plain)?;
            let mut timed_out = false;
            let mut server_gone = false;
            while !client.wait_for(POLL)? {
                tick();
                if !server_gone && server.exited()? {
                    server_gone = true;
                    let status = server.status();
                    // A server that exits 0 was asked to (e.g. by the client's SHUTDOWN):
                    // the client's own result decides.
                    if !status.is_some_and(|s| s.success()) {
                        problem = Some(format!(
                            "{name} {} while the client was running",
                            describe_status(status)
                        ));
                        client.signal_group(libc::SIGKILL);
                    }
                }
                if let Some(t) = self.timeout()
                    && !timed_out
                    && client.elapsed() >= t
                {
                    client.signal_group(libc::SIGKILL);
                    timed_out = true;
                }
            }
            let c = client.finish(timed_out)?;
            if !c.status.success() && !server_gone {
                // A client that failed may have lost a server that died a moment earlier:
                // give its reaper time to say so, as the server is then the cause.
                server.wait_for(SERVER_DEATH_WAIT)?;
            }
            client_exec = Some(c);
        }
        let mut stopped_by = None;
        if !server.exited()? {
            server.signal_group(libc::SIGTERM);
            stopped_by = Some("SIGTERM");
            let grace = Duration::from_secs_f64(a.stop_grace);
            let asked = std::time::Instant::now();
            while !server.wait_for(POLL)? {
                tick();
                if stopped_by == Some("SIGTERM") && asked.elapsed() >= grace {
                    server.signal_group(libc::SIGKILL);
                    stopped_by = Some("SIGKILL");
                }
            }
        } else if problem.is_none() && !server.status().is_some_and(|s| s.success()) {
            // It died after the client's last poll, but before the stop.
            problem = Some(format!(
                "{name} {} while the client was running",
                describe_status(server.status())
            ));
        }
        Ok(Trial {
            main: server.finish(false)?,
            client: client_exec,
            server_problem: problem,
            stopped_by,
        })
    }

    /// The records of one trial, one per metric.
    fn records(&self, mut base: CmdRecord, trial: Trial, oom_kills: u64) -> Vec<CmdRecord> {
        let a = self.a;
        let main = &trial.main;
        // The figures are the program's (the server's); the metric, the wall time and the
        // exit status the measured process's (the client's).
        let measured = trial.client.as_ref().unwrap_or(main);
        base.wall_s = measured.wall.as_secs_f64();
        base.exit_code = measured.status.code();
        base.signal = measured.status.signal();
        base.max_rss_bytes = Some(main.max_rss_bytes);
        base.fault_seconds = Some(main.wall.as_secs_f64());
        base.set_extra("user_s", main.user_s);
        base.set_extra("sys_s", main.sys_s);
        base.set_extra("rusage_major_faults", main.major_faults);
        base.set_extra("rusage_minor_faults", main.minor_faults);
        match base.system {
            System::AllLocal => {
                base.faults = Some(main.major_faults);
                base.linux_minor_faults = Some(main.minor_faults);
                base.linux_major_faults = Some(main.major_faults);
            }
            System::Farmem => {
                let stats = farmem_stats::parse(&main.output);
                let get = |k: &str| stats.get(k).and_then(Value::as_u64);
                base.faults = get("major_faults");
                base.farmem_major_faults = get("major_faults");
                base.farmem_minor_faults = get("minor_faults");
                base.farmem_zero_faults = get("zero_faults");
                base.linux_minor_faults = Some(main.minor_faults);
                base.linux_major_faults = Some(main.major_faults);
                base.extra.extend(stats);
            }
            // Set from the memory cgroup by SwapProbe::finish.
            System::LinuxSwap => {}
        }
        if self.server_mode() {
            base.set_extra("server_wall_s", main.wall.as_secs_f64());
            base.set_extra("server_exit_code", main.status.code());
            base.set_extra("server_signal", main.status.signal());
            base.set_extra("server_stopped_by", trial.stopped_by);
            if let Some(c) = &trial.client {
                base.set_extra("client_max_rss_bytes", c.max_rss_bytes);
                base.set_extra("client_user_s", c.user_s);
                base.set_extra("client_sys_s", c.sys_s);
            }
        }
        let name = program_name(a);
        let mut tail_of = main;
        if let Some(p) = &trial.server_problem {
            if oom_kills > 0 {
                // Linux could not run the server in this budget: a result, not an error.
                base.outcome = Outcome::OomKilled;
            } else {
                base.outcome = Outcome::Failed;
                base.error = Some(p.clone());
            }
        } else if measured.timed_out {
            base.outcome = Outcome::TimedOut;
        } else if !measured.status.success() && oom_kills > 0 {
            base.outcome = Outcome::OomKilled;
        } else if !measured.status.success() {
            base.outcome = Outcome::Failed;
            base.error = Some(match &trial.client {
                Some(_) => format!("the client {}", describe_status(Some(measured.status))),
                None => format!("{name} {}", describe_status(Some(measured.status))),
            });
            tail_of = measured;
        }
        let text = farmem_stats::strip(&measured.output);
        if base.outcome == Outcome::Ok
            && let Some((re, line)) = self.rejects.iter().find_map(|re| {
                let m = re.find(&text)?;
                let start = text[..m.start()].rfind('\n').map_or(0, |i| i + 1);
                let end = text[m.end()..]
                    .find('\n')
                    .map_or(text.len(), |i| m.end() + i);
                Some((re, text[start..end].trim().to_owned()))
            })
        {
            base.outcome = Outcome::Failed;
            base.error = Some(format!("--reject {:?} matched {line:?}", re.as_str()));
            tail_of = measured;
        }
        if base.outcome == Outcome::Failed {
            base.set_extra("output_tail", tail(&tail_of.output, TAIL_LINES));
        }
        self.metrics
            .list
            .iter()
            .map(|m| {
                let mut r = base.clone();
                r.metric_name = m.name.clone();
                r.metric_regex = m.re.as_ref().map(|re| re.as_str().to_owned());
                if r.outcome == Outcome::Ok {
                    match m.extract(&text, r.wall_s) {
                        Ok(v) => r.metric = Some(v),
                        Err(e) => {
                            r.outcome = Outcome::Failed;
                            r.error = Some(e);
                            r.set_extra("output_tail", tail(&measured.output, TAIL_LINES));
                        }
                    }
                }
                r
            })
            .collect()
    }
}

/// The Linux-swap system's view of a run: the memory cgroup's counters and zram's peak.
struct SwapProbe<'b> {
    baseline: &'b SwapBaseline,
    stat0: BTreeMap<String, u64>,
    oom0: u64,
    vm0: BTreeMap<String, u64>,
    peak_orig: u64,
    peak_compr: u64,
}

impl<'b> SwapProbe<'b> {
    fn start(baseline: &'b SwapBaseline) -> Result<Self> {
        let cg = baseline.cgroup_path();
        for f in [
            "memory.max_usage_in_bytes",
            "memory.memsw.max_usage_in_bytes",
        ] {
            let p = cg.join(f);
            if p.exists() {
                std::fs::write(&p, "0").with_context(|| format!("reset {}", p.display()))?;
            }
        }
        Ok(Self {
            baseline,
            stat0: baseline.memory_stat()?,
            oom0: opts::oom_kills(cg),
            vm0: vmstat(),
            peak_orig: 0,
            peak_compr: 0,
        })
    }

    fn tick(&mut self) {
        if let Some((orig, compr)) = self.baseline.zram_usage()
            && orig > self.peak_orig
        {
            (self.peak_orig, self.peak_compr) = (orig, compr);
        }
    }

    /// Puts the cgroup's and zram's figures into `rec`; the OOM kills during the run.
    fn finish(self, rec: &mut CmdRecord) -> Result<u64> {
        let b = self.baseline;
        let stat1 = b.memory_stat()?;
        let oom = opts::oom_kills(b.cgroup_path()).saturating_sub(self.oom0);
        let vm1 = vmstat();
        let delta = |m0: &BTreeMap<String, u64>, m1: &BTreeMap<String, u64>, k: &str| {
            m1.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(m0.get(k).copied().unwrap_or(0))
        };
        let major = delta(&self.stat0, &stat1, "pgmajfault");
        let all = delta(&self.stat0, &stat1, "pgfault");
        rec.faults = Some(major);
        rec.linux_major_faults = Some(major);
        rec.linux_minor_faults = Some(all.saturating_sub(major));
        rec.set_extra("cgroup_pgfault", all);
        rec.set_extra("cgroup_pgmajfault", major);
        rec.set_extra("pswpin", delta(&self.vm0, &vm1, "pswpin"));
        rec.set_extra("pswpout", delta(&self.vm0, &vm1, "pswpout"));
        rec.set_extra("cgroup_max_usage_bytes", b.max_usage_bytes()?);
        let zram = b.config().zram_bytes;
        rec.set_extra("zram_bytes", zram);
        if self.peak_compr > 0 {
            rec.set_extra("zram_peak_bytes", self.peak_orig);
            rec.set_extra("zram_ratio", self.peak_orig as f64 / self.peak_compr as f64);
        }
        if self.peak_orig.saturating_mul(100) >= zram.saturating_mul(95) {
            // Swap ran out rather than the budget: the kernel had nowhere to put pages.
            rec.set_extra("zram_full", true);
        }
        if oom > 0 {
            rec.set_extra("oom_kills", oom);
        }
        Ok(oom)
    }
}

fn vmstat() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The program's name, for messages.
fn program_name(a: &BenchCmdArgs) -> &str {
    if a.vm {
        return "farmem vm";
    }
    base_name(&a.program[0])
}

fn base_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn describe_status(s: Option<ExitStatus>) -> String {
    let Some(s) = s else {
        return "ended".into();
    };
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        _ => format!("ended with {s}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(metrics: &[&str], names: &[&str], higher: bool) -> BenchCmdArgs {
        BenchCmdArgs {
            local_mem: Some(8 << 20),
            local_frac: None,
            backend: "mem:".into(),
            run_args: Vec::new(),
            vm: false,
            systems: None,
            runs: 1,
            metric: metrics.iter().map(|s| s.to_string()).collect(),
            higher_is_better: higher,
            metric_name: names.iter().map(|s| s.to_string()).collect(),
            reject: Vec::new(),
            client: None,
            port: None,
            ready_timeout: 60.0,
            stop_grace: 10.0,
            label: None,
            timeout: None,
            zram_size: None,
            json: false,
            farmem: None,
            cgroup_root: linux_swap::DEFAULT_CGROUP_ROOT.into(),
            program: vec!["true".into()],
        }
    }

    fn one(metric: Option<&str>) -> Metric {
        let m: Vec<&str> = metric.into_iter().collect();
        Metrics::new(&args(&m, &[], false)).unwrap().list.remove(0)
    }

    #[test]
    fn metric_takes_the_last_match() {
        let m = one(Some(r"sort ([0-9.]+) s"));
        assert_eq!(m.name, "metric");
        let out = "quicksort: 32 MiB\nquicksort: sort 1.500 s (fill 0.1 s)\nquicksort: sort 2.250 s\nquicksort: ok\n";
        assert_eq!(m.extract(out, 9.0), Ok(2.25));
        let e = m.extract("nothing here\n", 9.0).unwrap_err();
        assert!(e.contains("matched nothing"), "{e}");
        let m = one(Some(r"sort (\S+) s"));
        let e = m.extract("sort fast s\n", 1.0).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let wall = one(None);
        assert_eq!(wall.name, "wall s");
        assert_eq!(wall.extract("anything", 3.5), Ok(3.5));
    }

    #[test]
    fn metric_needs_one_group() {
        for bad in [r"sort [0-9.]+ s", r"(a)(b)"] {
            let e = Metrics::new(&args(&[bad], &[], false)).unwrap_err();
            assert!(e.to_string().contains("exactly one capture group"), "{e}");
        }
        let e = Metrics::new(&args(&["(unclosed"], &[], false)).unwrap_err();
        assert!(e.to_string().contains("not a regular expression"), "{e}");
        // A non-capturing group does not count.
        assert!(Metrics::new(&args(&[r"(?:x|y) ([0-9]+)"], &[], false)).is_ok());
    }

    #[test]
    fn several_metrics_pair_with_their_names() {
        let m = Metrics::new(&args(
            &[r"SET: ([0-9.]+)", r"GET: ([0-9.]+)"],
            &["SET req/s", "GET req/s"],
            true,
        ))
        .unwrap();
        assert!(m.higher_is_better);
        let out = "SET: 100.5 requests per second\nGET: 200 requests per second\n";
        let got: Vec<(String, f64)> = m
            .list
            .iter()
            .map(|x| (x.name.clone(), x.extract(out, 1.0).unwrap()))
            .collect();
        assert_eq!(
            got,
            [("SET req/s".into(), 100.5), ("GET req/s".into(), 200.0)]
        );
        let e = Metrics::new(&args(&["a(1)", "b(2)"], &["a"], false)).unwrap_err();
        assert!(
            e.to_string().contains("one --metric-name per --metric"),
            "{e}"
        );
        let e = Metrics::new(&args(&["a(1)", "b(2)"], &["x", "x"], false)).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        let e = Metrics::new(&args(&["a(1)"], &["x", "y"], false)).unwrap_err();
        assert!(e.to_string().contains("one name per --metric"), "{e}");
        // The wall time can be named too.
        let m = Metrics::new(&args(&[], &["total s"], false)).unwrap();
        assert_eq!(m.list[0].name, "total s");
        assert!(m.list[0].re.is_none());
    }

    #[test]
    fn fraction_budgets_are_whole_pages() {
        assert_eq!(frac_budget(0.25, 400 << 20), 100 << 20);
        assert_eq!(frac_budget(2.0, 400 << 20), 800 << 20);
        assert_eq!(frac_budget(0.3, 10_000_000) % 4096, 0);
        let b = frac_budget(0.3, 10_000_000);
        assert!(b.abs_diff(3_000_000) <= 2048, "{b}");
        assert_eq!(frac_budget(0.001, 1 << 20), MIN_BUDGET);
    }

    #[test]
    fn json_roundtrip() {
        let mut r = CmdRecord {
            system: System::LinuxSwap,
            command: vec!["./quicksort".into(), "--size".into(), "1G".into()],
            local_bytes: 256 << 20,
            run: 2,
            outcome: Outcome::OomKilled,
            wall_s: 12.5,
            metric: None,
            metric_name: "sort s".into(),
            metric_regex: Some(r"sort ([0-9.]+) s".into()),
            higher_is_better: false,
            faults: Some(7),
            exit_code: None,
            signal: Some(9),
            max_rss_bytes: Some(1 << 28),
            error: None,
            label: None,
            client: None,
            local_frac: None,
            footprint_bytes: None,
            farmem_minor_faults: None,
            farmem_major_faults: None,
            farmem_zero_faults: None,
            linux_minor_faults: Some(100),
            linux_major_faults: Some(7),
            fault_seconds: Some(12.5),
            extra: Map::new(),
        };
        r.set_extra("oom_kills", 1);
        let line = r.to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["system"], "linux-swap");
        assert_eq!(v["outcome"], "oom-killed");
        assert_eq!(v["metric"], Value::Null);
        assert_eq!(v["extra"]["oom_kills"], 1);
        assert_eq!(v["farmem_minor_faults"], Value::Null);
        assert_eq!(v["linux_minor_faults"], 100);
        // Modes not used leave no trace.
        assert!(v.get("local_frac").is_none() && v.get("client").is_none());
        assert_eq!(CmdRecord::from_json_line(&line).unwrap(), r);
        r.local_frac = Some(0.25);
        r.footprint_bytes = Some(1 << 30);
        r.client = Some("redis-benchmark -q".into());
        r.label = Some("redis 64 B".into());
        let line = r.to_json_line();
        assert_eq!(CmdRecord::from_json_line(&line).unwrap(), r);
        // Records written before the fault fields existed still read.
        let mut old: Value = serde_json::from_str(&line).unwrap();
        let o = old.as_object_mut().unwrap();
        for k in [
            "label",
            "client",
            "local_frac",
            "footprint_bytes",
            "farmem_minor_faults",
            "farmem_major_faults",
            "farmem_zero_faults",
            "linux_minor_faults",
            "linux_major_faults",
            "fault_seconds",
        ] {
            o.remove(k);
        }
        let back = CmdRecord::from_json_line(&old.to_string()).unwrap();
        assert_eq!(back.linux_minor_faults, None);
        assert_eq!(back.local_frac, None);
    }

    #[test]
    fn helpers() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "");
        assert_eq!(base_name("/usr/bin/redis-server"), "redis-server");
        assert_eq!(
            describe_status(Some(ExitStatus::from_raw(3 << 8))),
            "exited with status 3"
        );
        assert_eq!(
            describe_status(Some(ExitStatus::from_raw(libc::SIGKILL))),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
