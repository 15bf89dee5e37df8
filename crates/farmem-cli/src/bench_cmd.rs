//! `farmem bench-cmd`: any command, run under farmem (`farmem run`), under Linux swap (a
//! memory cgroup capped at the same budget, swapping to zram) and all-local, interleaved in
//! one invocation, with the medians and farmem's speed-up over the other two.
//!
//! Each run of each system records the wall time, how the program ended, and the metric:
//! the number that `--metric REGEX`'s one capture group finds in the program's output (its
//! stdout and stderr, read from one pipe), or the wall time without `--metric`. Every run
//! is a child in its own process group (a timeout kills the group); `wait4` gives its
//! rusage (maximum RSS, major faults, CPU time).

use crate::opts;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use farmem_bench::System;
use farmem_bench::linux_swap::{self, SwapBaseline, SwapConfig};
use farmem_bench::median;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Options of `farmem bench-cmd`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "The speed-up is how many times better farmem's median metric is than the other system's, in the metric's own direction: above 1, farmem did better.\n\nA run that exits non-zero, or whose output --metric does not match, is a failed run: its error and the end of its output are shown, the other runs go on, and the command exits with status 1. A Linux-swap run stopped by the kernel's OOM killer is reported as OOM-killed, and a run stopped by --timeout as timed out; neither counts in the medians.\n\nMajor faults: farmem's own (from `farmem run --stats`; prefetched pages are not faults), the memory cgroup's for Linux swap (swap-ins), the kernel's for all-local. Max RSS is the kernel's peak resident set size of the program: under farmem it includes the far tier when that is process memory (mem:, compressed:), under Linux swap it leaves out what zram holds.\n\nExamples:\n  farmem bench-cmd --local-mem 256M --metric 'sort ([0-9.]+) s' -- ./quicksort --size 1G\n  farmem bench-cmd --local-mem 256M --metric '([0-9.]+) updates/s' --higher-is-better -- ./skewed\n  farmem bench-cmd --local-mem 64M --systems farmem,all-local --runs 1 -- python3 job.py"
)]
pub struct BenchCmdArgs {
    /// The local memory budget (K/M/G suffixes): farmem's `--local-mem` and the Linux-swap
    /// memory cgroup's limit. all-local runs without a limit.
    #[arg(long, value_name = "SIZE", value_parser = opts::size)]
    pub local_mem: u64,
    /// farmem's far tier, passed to `farmem run --backend`.
    #[arg(long, value_name = "URI", default_value = "compressed:")]
    pub backend: String,
    /// More options for `farmem run`, one per use (e.g. --run-arg=--fault-mode=thread).
    #[arg(long = "run-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub run_args: Vec<String>,
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
    /// against the program's output (stdout and stderr); the last match counts. Without
    /// it, the metric is the wall time in seconds.
    #[arg(long, value_name = "REGEX")]
    pub metric: Option<String>,
    /// The --metric grows as the program does better (a rate); by default lower is better
    /// (a time).
    #[arg(long, requires = "metric")]
    pub higher_is_better: bool,
    /// What to call the metric in the report (default: "metric", or "wall s").
    #[arg(long, value_name = "NAME")]
    pub metric_name: Option<String>,
    /// Kill a run (its whole process group) still going after SECS seconds and report it
    /// as timed out. Default: no limit.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Capacity of the zram swap device of the Linux-swap system (uncompressed; zram only
    /// uses memory for what is swapped out). Default: half the machine's memory.
    #[arg(long, value_name = "SIZE", value_parser = opts::size)]
    pub zram_size: Option<u64>,
    /// One JSON object per line per system run on stdout (progress goes to stderr); read
    /// them back with `farmem summarize`.
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
    /// Exited non-zero, died of a signal, or its output had no metric.
    Failed,
    /// Linux swap: the kernel's OOM killer stopped it in its memory cgroup.
    OomKilled,
    /// Killed by `--timeout`.
    TimedOut,
}

/// One run of one system, serialised as one JSON line, in the conventions of
/// [`farmem_bench::BenchRecord`]: figures a run could not measure are `null`, anything else
/// goes in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmdRecord {
    /// The system measured.
    pub system: System,
    /// The program and its arguments, as given.
    pub command: Vec<String>,
    /// The local budget, bytes: farmem's `--local-mem` and the Linux-swap cgroup's limit;
    /// for all-local, what the others got.
    pub local_bytes: u64,
    /// Which run (1-based).
    pub run: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time from spawn to exit, seconds.
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
    /// The exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Maximum resident set size (rusage), bytes.
    pub max_rss_bytes: Option<u64>,
    /// Why a failed run failed.
    pub error: Option<String>,
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

/// What is measured and which way is better.
#[derive(Debug)]
struct Metric {
    re: Option<Regex>,
    name: String,
    higher_is_better: bool,
}

impl Metric {
    fn new(a: &BenchCmdArgs) -> Result<Self> {
        let re = match &a.metric {
            None => None,
            Some(src) => {
                let re = Regex::new(src).map_err(|e| {
                    // The parser's message spans lines (the expression, a caret, the error).
                    let msg = e.to_string();
                    let last = msg.lines().last().unwrap_or("").trim();
                    let why = last.strip_prefix("error: ").unwrap_or(last).to_owned();
                    anyhow!("--metric {src:?} is not a regular expression: {why}")
                })?;
                let groups = re.captures_len() - 1;
                if groups != 1 {
                    bail!(
                        "--metric needs exactly one capture group around the number, e.g. 'sort ([0-9.]+) s'; {src:?} has {groups}"
                    );
                }
                Some(re)
            }
        };
        let name = a.metric_name.clone().unwrap_or_else(|| {
            if re.is_some() {
                "metric".into()
            } else {
                "wall s".into()
            }
        });
        Ok(Self {
            re,
            name,
            higher_is_better: a.higher_is_better,
        })
    }

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

/// Lines of output the tail of a failed run shows.
const TAIL_LINES: usize = 12;
/// How often a running child's time limit and zram's usage are checked.
const POLL: Duration = Duration::from_millis(10);

pub fn run(a: BenchCmdArgs) -> Result<()> {
    validate(&a)?;
    let metric = Metric::new(&a)?;
    let program = resolve_program(&a.program[0])?;
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
    if systems.contains(&System::Farmem) {
        preflight_farmem(&a)?;
    }
    if systems.contains(&System::LinuxSwap)
        && let Err(e) = linux_swap::check(&swap_config(&a))
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
    let mut header = format!(
        "bench-cmd: `{}` with {} local, {} run(s) of {}; metric: {}",
        shell_join(&a.program),
        opts::human(a.local_mem),
        a.runs,
        systems
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        metric.name,
    );
    if let Some(re) = &metric.re {
        header += &format!(" from {}", shell_join(&[re.as_str().to_owned()]));
    }
    header += if metric.higher_is_better {
        " (higher is better)"
    } else {
        " (lower is better)"
    };
    if systems.contains(&System::Farmem) {
        header += &format!("; farmem backend {}", a.backend);
        for r in &a.run_args {
            header += &format!(" {r}");
        }
    }
    if a.json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    let mut all: Vec<CmdRecord> = Vec::new();
    for run in 1..=a.runs {
        for &sys in &systems {
            let rec = measure(&a, &metric, &program, sys, run)
                .with_context(|| format!("{sys} run {run}"))?;
            emit(&a, &rec);
            all.push(rec);
        }
    }
    if !a.json {
        summary(&all);
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
    if a.local_mem < farmem::MIN_BUDGET_PAGES as u64 * 4096 {
        bail!(
            "--local-mem must be at least {} KiB",
            farmem::MIN_BUDGET_PAGES * 4
        );
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
fn farmem_wrapper(a: &BenchCmdArgs) -> Result<Vec<String>> {
    let exe = match &a.farmem {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("find the farmem executable")?,
    };
    let mut w = vec![
        exe.to_string_lossy().into_owned(),
        "run".into(),
        "--local-mem".into(),
        a.local_mem.to_string(),
        "--backend".into(),
        a.backend.clone(),
        "--stats".into(),
    ];
    w.extend(a.run_args.iter().cloned());
    w.push("--".into());
    Ok(w)
}

/// The farmem system needs `farmem run`: try it once on `true`, so that a missing preload
/// library, a bad --backend or no userfaultfd is one clear error before any run.
fn preflight_farmem(a: &BenchCmdArgs) -> Result<()> {
    let wrapper = farmem_wrapper(a)?;
    let shown = shell_join(&wrapper) + " true";
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg("true")
        .stdin(Stdio::null())
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

fn swap_config(a: &BenchCmdArgs) -> SwapConfig {
    let zram = a.zram_size.unwrap_or_else(default_zram_size);
    let mut c = SwapConfig::new(a.local_mem, zram);
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

/// What one child did.
#[derive(Debug)]
struct Exec {
    status: ExitStatus,
    wall: Duration,
    output: String,
    timed_out: bool,
    max_rss_bytes: u64,
    major_faults: u64,
    user_s: f64,
    sys_s: f64,
}

/// Runs `cmd` (spawned by `spawn`) in its own process group, stdin from /dev/null and
/// stdout and stderr into one pipe, until it exits; kills the group after `timeout`.
/// `tick` is called every POLL while it runs.
fn execute(
    mut cmd: Command,
    spawn: impl FnOnce(&mut Command) -> Result<Child>,
    timeout: Option<Duration>,
    mut tick: impl FnMut(),
) -> Result<Exec> {
    let (reader, writer) = std::io::pipe().context("create a pipe for the program's output")?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicate the output pipe")?)
        .stderr(writer)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // The child has its own process group, so a Ctrl-C at the terminal does not
            // reach it: have the kernel kill it if this process dies first.
            // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let child = spawn(&mut cmd)?;
    // The Command holds the pipe's write ends: close them, or the reader never sees EOF.
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    let drain = std::thread::spawn(move || {
        let mut r = reader;
        let mut buf = Vec::new();
        // A read error only truncates the output.
        let _ = r.read_to_end(&mut buf);
        buf
    });
    let (tx, rx) = mpsc::channel();
    // The child is reaped here with wait4 (for its rusage), never through `child`.
    std::thread::spawn(move || {
        let _ = tx.send(wait4(pid).map(|w| (w, Instant::now())));
    });
    let mut timed_out = false;
    let ((raw, ru), end) = loop {
        match rx.recv_timeout(POLL) {
            Ok(r) => break r.with_context(|| format!("wait for process {pid}"))?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tick();
                if let Some(t) = timeout
                    && !timed_out
                    && start.elapsed() >= t
                {
                    kill_group(pid);
                    timed_out = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost the waiter of {pid}"),
        }
    };
    drop(child);
    // Whatever the program left running in its group would hold the pipe open (and
    // disturb the next run).
    kill_group(pid);
    let output = drain.join().unwrap_or_default();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(Exec {
        status: ExitStatus::from_raw(raw),
        wall: end - start,
        output: String::from_utf8_lossy(&output).into_owned(),
        timed_out,
        max_rss_bytes: (ru.ru_maxrss as u64) * 1024,
        major_faults: ru.ru_majflt as u64,
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
    })
}

/// Reaps `pid`, returning its raw wait status and resource usage.
fn wait4(pid: libc::pid_t) -> std::io::Result<(i32, libc::rusage)> {
    loop {
        let mut status = 0;
        // SAFETY: rusage is a plain C struct of integers, for which all zeros is valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to our own locals, live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// SIGKILL to the process group `pgid` leads (its leader is our child, started with
/// `process_group(0)`); no-op if the group is gone.
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) touches no memory of ours; a negative pid names the process group.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// One system, one run.
fn measure(
    a: &BenchCmdArgs,
    metric: &Metric,
    program: &Path,
    sys: System,
    run: usize,
) -> Result<CmdRecord> {
    let timeout = a.timeout.map(Duration::from_secs_f64);
    let mut rec = CmdRecord {
        system: sys,
        command: a.program.clone(),
        local_bytes: a.local_mem,
        run,
        outcome: Outcome::Ok,
        wall_s: 0.0,
        metric: None,
        metric_name: metric.name.clone(),
        metric_regex: metric.re.as_ref().map(|r| r.as_str().to_owned()),
        higher_is_better: metric.higher_is_better,
        faults: None,
        exit_code: None,
        signal: None,
        max_rss_bytes: None,
        error: None,
        extra: Map::new(),
    };
    let plain = || {
        let mut c = Command::new(program);
        c.args(&a.program[1..]);
        c
    };
    let spawn_plain = |c: &mut Command| {
        let name = c.get_program().to_string_lossy().into_owned();
        c.spawn().with_context(|| format!("cannot run {name}"))
    };
    let (exec, oom_kills) = match sys {
        System::AllLocal => {
            let e = execute(plain(), spawn_plain, timeout, || {})?;
            rec.faults = Some(e.major_faults);
            (e, 0)
        }
        System::Farmem => {
            rec.set_extra("backend", &a.backend);
            let w = farmem_wrapper(a)?;
            let mut c = Command::new(&w[0]);
            c.args(&w[1..]).arg(program).args(&a.program[1..]);
            let e = execute(c, spawn_plain, timeout, || {})?;
            let stats = farmem_stats(&e.output);
            rec.faults = stats.get("major_faults").and_then(Value::as_u64);
            rec.extra.extend(stats);
            (e, 0)
        }
        System::LinuxSwap => {
            let baseline =
                SwapBaseline::setup(swap_config(a)).context("set up the Linux-swap baseline")?;
            let res = measure_in_swap(&baseline, plain(), timeout, &mut rec);
            baseline
                .teardown()
                .context("tear down the Linux-swap baseline")?;
            res?
        }
    };
    rec.wall_s = exec.wall.as_secs_f64();
    rec.exit_code = exec.status.code();
    rec.signal = exec.status.signal();
    rec.max_rss_bytes = Some(exec.max_rss_bytes);
    rec.set_extra("user_s", exec.user_s);
    rec.set_extra("sys_s", exec.sys_s);
    rec.set_extra("rusage_major_faults", exec.major_faults);
    let program_output = strip_farmem_stats(&exec.output);
    if exec.timed_out {
        rec.outcome = Outcome::TimedOut;
    } else if !exec.status.success() && oom_kills > 0 {
        // Linux could not run the program in this budget: a result, not an error.
        rec.outcome = Outcome::OomKilled;
    } else if !exec.status.success() {
        rec.outcome = Outcome::Failed;
        rec.error = Some(format!(
            "{} {}",
            program_name(&a.program[0]),
            describe_status(exec.status)
        ));
    } else {
        match metric.extract(&program_output, rec.wall_s) {
            Ok(v) => rec.metric = Some(v),
            Err(e) => {
                rec.outcome = Outcome::Failed;
                rec.error = Some(e);
            }
        }
    }
    if rec.outcome == Outcome::Failed {
        rec.set_extra("output_tail", tail(&exec.output, TAIL_LINES));
    }
    Ok(rec)
}

/// The Linux-swap run inside `baseline`'s cgroup, with the cgroup's and zram's figures.
fn measure_in_swap(
    baseline: &SwapBaseline,
    cmd: Command,
    timeout: Option<Duration>,
    rec: &mut CmdRecord,
) -> Result<(Exec, u64)> {
    let cg = baseline.cgroup_path().to_path_buf();
    for f in [
        "memory.max_usage_in_bytes",
        "memory.memsw.max_usage_in_bytes",
    ] {
        let p = cg.join(f);
        if p.exists() {
            std::fs::write(&p, "0").with_context(|| format!("reset {}", p.display()))?;
        }
    }
    let stat0 = baseline.memory_stat()?;
    let oom0 = opts::oom_kills(&cg);
    let vm0 = vmstat();
    let (mut peak_orig, mut peak_compr) = (0u64, 0u64);
    let exec = execute(
        cmd,
        |c| Ok(baseline.spawn(c)?),
        timeout,
        || {
            if let Some((orig, compr)) = baseline.zram_usage()
                && orig > peak_orig
            {
                (peak_orig, peak_compr) = (orig, compr);
            }
        },
    )?;
    let stat1 = baseline.memory_stat()?;
    let oom = opts::oom_kills(&cg).saturating_sub(oom0);
    let vm1 = vmstat();
    let delta = |m0: &BTreeMap<String, u64>, m1: &BTreeMap<String, u64>, k: &str| {
        m1.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(m0.get(k).copied().unwrap_or(0))
    };
    rec.faults = Some(delta(&stat0, &stat1, "pgmajfault"));
    rec.set_extra("pswpin", delta(&vm0, &vm1, "pswpin"));
    rec.set_extra("pswpout", delta(&vm0, &vm1, "pswpout"));
    rec.set_extra("cgroup_max_usage_bytes", baseline.max_usage_bytes()?);
    rec.set_extra("zram_bytes", baseline.config().zram_bytes);
    if peak_compr > 0 {
        rec.set_extra("zram_peak_bytes", peak_orig);
        rec.set_extra("zram_ratio", peak_orig as f64 / peak_compr as f64);
    }
    let zram = baseline.config().zram_bytes;
    if peak_orig.saturating_mul(100) >= zram.saturating_mul(95) {
        // Swap ran out rather than the budget: the kernel had nowhere to put pages.
        rec.set_extra("zram_full", true);
    }
    if oom > 0 {
        rec.set_extra("oom_kills", oom);
    }
    Ok((exec, oom))
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

/// The header line of the summary `farmem run --stats` prints at exit; the summary's
/// lines follow it, each starting with [`STATS_LINE`].
const STATS_HEAD: &str = "farmem: stats at exit";
const STATS_LINE: &str = "farmem:   ";

/// The output without farmem's summary, so that --metric only sees the program's lines.
fn strip_farmem_stats(output: &str) -> String {
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
fn farmem_stats(output: &str) -> Map<String, Value> {
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

fn program_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn describe_status(s: ExitStatus) -> String {
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

/// Arguments joined for display, quoted where a shell would need it.
fn shell_join(args: &[String]) -> String {
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
fn num(v: f64) -> String {
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

fn thousands(v: i64) -> String {
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

fn emit(a: &BenchCmdArgs, r: &CmdRecord) {
    let line = run_line(r);
    if a.json {
        println!("{}", r.to_json_line());
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn run_line(r: &CmdRecord) -> String {
    let head = format!("  run {:>2}  {:<10}", r.run, r.system.as_str());
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
        Outcome::Failed => {
            let tail = r
                .extra
                .get("output_tail")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut s = format!(
                "{head}  FAILED after {:.2} s: {}",
                r.wall_s,
                r.error.as_deref().unwrap_or("failed")
            );
            if tail.trim().is_empty() {
                s += "; it printed nothing";
            } else {
                s += "; its output ends with:";
                for l in tail.lines() {
                    s += &format!("\n      | {l}");
                }
            }
            return s;
        }
        Outcome::Ok => {}
    }
    let mut s = format!(
        "{head}  {} {:>10}",
        r.metric_name,
        r.metric.map(num).unwrap_or_else(|| "-".into()),
    );
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
    s
}

/// Medians per system (per command and budget, in the order met) and farmem's speed-ups.
pub fn summary(all: &[CmdRecord]) {
    let mut groups: Vec<(Vec<String>, u64)> = Vec::new();
    for r in all {
        let key = (r.command.clone(), r.local_bytes);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (command, local) in groups {
        let at: Vec<&CmdRecord> = all
            .iter()
            .filter(|r| r.command == command && r.local_bytes == local)
            .collect();
        let first = at[0];
        let higher = first.higher_is_better;
        let mname = &first.metric_name;
        let tried = |sys: System| at.iter().any(|r| r.system == sys);
        let better = if higher {
            format!("higher {mname} is better")
        } else {
            format!("lower {mname} is better")
        };
        println!(
            "medians: `{}` with {} local ({better}{})",
            shell_join(&command),
            opts::human(local),
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

    fn args(metric: Option<&str>, higher: bool) -> BenchCmdArgs {
        BenchCmdArgs {
            local_mem: 8 << 20,
            backend: "mem:".into(),
            run_args: Vec::new(),
            systems: None,
            runs: 1,
            metric: metric.map(Into::into),
            higher_is_better: higher,
            metric_name: None,
            timeout: None,
            zram_size: None,
            json: false,
            farmem: None,
            cgroup_root: linux_swap::DEFAULT_CGROUP_ROOT.into(),
            program: vec!["true".into()],
        }
    }

    #[test]
    fn metric_takes_the_last_match() {
        let m = Metric::new(&args(Some(r"sort ([0-9.]+) s"), false)).unwrap();
        assert_eq!(m.name, "metric");
        let out = "quicksort: 32 MiB\nquicksort: sort 1.500 s (fill 0.1 s)\nquicksort: sort 2.250 s\nquicksort: ok\n";
        assert_eq!(m.extract(out, 9.0), Ok(2.25));
        let e = m.extract("nothing here\n", 9.0).unwrap_err();
        assert!(e.contains("matched nothing"), "{e}");
        let m = Metric::new(&args(Some(r"sort (\S+) s"), false)).unwrap();
        let e = m.extract("sort fast s\n", 1.0).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let wall = Metric::new(&args(None, false)).unwrap();
        assert_eq!(wall.name, "wall s");
        assert_eq!(wall.extract("anything", 3.5), Ok(3.5));
    }

    #[test]
    fn metric_needs_one_group() {
        for bad in [r"sort [0-9.]+ s", r"(a)(b)"] {
            let e = Metric::new(&args(Some(bad), false)).unwrap_err();
            assert!(e.to_string().contains("exactly one capture group"), "{e}");
        }
        let e = Metric::new(&args(Some("(unclosed"), false)).unwrap_err();
        assert!(e.to_string().contains("not a regular expression"), "{e}");
        // A non-capturing group does not count.
        assert!(Metric::new(&args(Some(r"(?:x|y) ([0-9]+)"), false)).is_ok());
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

    #[test]
    fn farmem_stats_are_parsed_and_stripped() {
        let out = "skewed: 123 updates/s\n\
farmem: stats at exit (sigbus fault mode, compressed:lz4 tier)\n\
farmem:   faults: 1234 major, 56 minor, 78 zero-fill, 0 spurious\n\
farmem:   major fault latency: mean 5.1 us, p50 4.2 us, p99 13.6 us, p99.9 40.0 us\n\
farmem:   fetched 2000 pages; prefetched 766 (accuracy 90%, coverage 38%)\n\
farmem:   evicted 3000 pages: 1000 written back, 1900 clean dropped, 100 zero; 42 demoted; 1 direct reclaims\n\
farmem:   resident 7.9 MiB (peak 8.0) of 8.0 MiB budget; far tier 6000 pages in 11.2 MiB (ratio 2.13)\n";
        let m = farmem_stats(out);
        assert_eq!(m["major_faults"], 1234);
        assert_eq!(m["zero_faults"], 78);
        assert_eq!(m["fault_p99_us"], 13.6);
        assert_eq!(m["prefetched_pages"], 766);
        assert_eq!(m["direct_reclaims"], 1);
        assert_eq!(m["peak_resident_mib"], 8.0);
        assert_eq!(m["far_ratio"], 2.13);
        assert_eq!(strip_farmem_stats(out), "skewed: 123 updates/s\n");
        assert!(farmem_stats("no stats\n").is_empty());
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
            extra: Map::new(),
        };
        r.set_extra("oom_kills", 1);
        let line = r.to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["system"], "linux-swap");
        assert_eq!(v["outcome"], "oom-killed");
        assert_eq!(v["metric"], Value::Null);
        assert_eq!(v["extra"]["oom_kills"], 1);
        assert_eq!(CmdRecord::from_json_line(&line).unwrap(), r);
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(949214.4), "949,214");
        assert_eq!(
            shell_join(&["sh".into(), "-c".into(), "exit 3".into(), "it's".into()]),
            r"sh -c 'exit 3' 'it'\''s'"
        );
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "");
    }
}
