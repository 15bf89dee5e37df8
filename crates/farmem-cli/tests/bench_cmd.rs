//! `farmem bench-cmd` end to end: tests/c/quicksort.c under farmem and all-local (and under
//! Linux swap where the machine allows it), failing programs, time limits and bad input.
//!
//! quicksort is compiled with gcc as in tests/c_programs.rs; without gcc the tests that
//! need it say so and pass, except under CI (`CI=true`), where gcc is required. The farmem
//! system needs `libfarmem_preload.so` built beside the `farmem` binary (`cargo build
//! --workspace`, which scripts/test.sh does first).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SORT_METRIC: &str = r"sort ([0-9.]+) s";

fn farmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn describe(out: &Output) -> String {
    let (o, e) = text(out);
    format!("status: {}\n--- stdout\n{o}--- stderr\n{e}", out.status)
}

/// tests/c/quicksort.c compiled with gcc -O2, or None (and why) without gcc.
fn quicksort() -> Option<&'static str> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        if let Err(e) = Command::new("gcc").arg("--version").output() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI must have gcc: {e}");
            }
            eprintln!("skipping: gcc is not available ({e})");
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("bench_cmd")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let exe: PathBuf = dir.join("quicksort");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/c/quicksort.c");
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"])
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gcc failed on quicksort.c:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(exe.to_string_lossy().into_owned())
    });
    built.as_deref()
}

/// The row of `system` in the medians table, split into words.
fn median_row(stdout: &str, system: &str) -> Vec<String> {
    let after = format!("\n{stdout}");
    let after = after
        .split_once("\nmedians:")
        .unwrap_or_else(|| panic!("no medians table in:\n{stdout}"))
        .1;
    after
        .lines()
        .find(|l| l.split_whitespace().next() == Some(system))
        .unwrap_or_else(|| panic!("no {system} row in the medians:\n{stdout}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The task's own example: quicksort under farmem and all-local, one run, the medians.
#[test]
fn quicksort_farmem_and_all_local() {
    let Some(qs) = quicksort() else { return };
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "farmem,all-local",
        "--local-mem",
        "8M",
        "--metric",
        SORT_METRIC,
        "--metric-name",
        "sort-s",
        "--",
        qs,
        "--size",
        "32M",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    // Each system's run line: the metric, the wall time, farmem's own counters.
    let run_line = |sys: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("  run  1") && l.contains(sys))
            .unwrap_or_else(|| panic!("no run line for {sys}:\n{stdout}"))
    };
    let f = run_line("farmem");
    assert!(f.contains("sort-s") && f.contains("wall"), "{f}");
    assert!(f.contains("peak resident") && f.contains("evicted"), "{f}");
    assert!(run_line("all-local").contains("sort-s"), "{stdout}");
    // The medians: header, one row per system, farmem's ratio to all-local.
    assert!(stdout.contains("vs all-local"), "{stdout}");
    assert!(!stdout.contains("vs linux-swap"), "{stdout}");
    let far = median_row(&stdout, "farmem");
    let local = median_row(&stdout, "all-local");
    let sort_s = |row: &[String]| -> f64 { row[1].parse().unwrap() };
    assert!(sort_s(&far) > 0.0 && sort_s(&local) > 0.0, "{stdout}");
    // The array is 4x the budget, so farmem evicted and fetched; all-local did not.
    let faults: u64 = far[3].replace(',', "").parse().unwrap();
    assert!(faults > 0, "{stdout}");
    let ratio = far
        .iter()
        .find(|w| w.ends_with('x'))
        .unwrap_or_else(|| panic!("no ratio in {far:?}"));
    let expect = sort_s(&local) / sort_s(&far);
    let got: f64 = ratio.trim_end_matches('x').parse().unwrap();
    assert!(
        (got - expect).abs() < 0.02 + expect * 0.02,
        "{got} vs {expect}"
    );
    assert_eq!(far.last().map(String::as_str), Some("1/1"), "{stdout}");
    assert_eq!(local.last().map(String::as_str), Some("1/1"), "{stdout}");
}

/// --json: one line per system run, systems interleaved run by run, farmem's stats in the
/// record, and `farmem summarize` reads them back.
#[test]
fn json_records_and_summarize() {
    let Some(qs) = quicksort() else { return };
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "2",
        "--systems",
        "all-local,farmem",
        "--local-mem",
        "8M",
        "--backend",
        "mem:",
        "--json",
        "--",
        qs,
        "--size",
        "16M",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains("bench-cmd:"),
        "progress goes to stderr: {stderr}"
    );
    let recs = json_lines(&stdout);
    let order: Vec<(&str, u64)> = recs
        .iter()
        .map(|v| (v["system"].as_str().unwrap(), v["run"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("all-local", 1),
            ("farmem", 1),
            ("all-local", 2),
            ("farmem", 2)
        ]
    );
    for v in &recs {
        assert_eq!(v["outcome"], "ok", "{v}");
        assert_eq!(v["exit_code"], 0, "{v}");
        assert_eq!(v["local_bytes"], 8 * MIB, "{v}");
        assert_eq!(v["metric_name"], "wall s", "{v}");
        assert_eq!(v["metric_regex"], serde_json::Value::Null, "{v}");
        // Without --metric the metric is the wall time.
        assert_eq!(v["metric"], v["wall_s"], "{v}");
        assert!(v["wall_s"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["command"][0], qs, "{v}");
        assert!(v["max_rss_bytes"].as_u64().unwrap() > MIB, "{v}");
    }
    for v in recs.iter().filter(|v| v["system"] == "farmem") {
        let x = &v["extra"];
        assert_eq!(x["backend"], "mem:", "{v}");
        assert!(x["evicted_pages"].as_u64().unwrap() > 0, "{v}");
        assert!(x["peak_resident_mib"].as_f64().unwrap() <= 8.0, "{v}");
        assert!(x["budget_mib"].as_f64().unwrap() == 8.0, "{v}");
        assert!(v["faults"].as_u64().is_some(), "{v}");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .arg("summarize")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdout.as_bytes())
        .unwrap();
    let sum = child.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&sum.stdout);
    assert!(sum.status.success(), "{s}");
    assert_eq!(
        median_row(&s, "farmem").last().map(String::as_str),
        Some("2/2"),
        "{s}"
    );
    assert_eq!(
        median_row(&s, "all-local").last().map(String::as_str),
        Some("2/2"),
        "{s}"
    );
}

/// A program that exits non-zero: every run is a failed run, shown with the end of its
/// output, and the command fails with one line saying how many and why.
#[test]
fn failing_program_is_a_clear_error() {
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "2",
        "--systems",
        "all-local,farmem",
        "--local-mem",
        "8M",
        "--",
        "sh",
        "-c",
        "echo starting; echo something broke >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stdout.matches("FAILED").count(),
        4,
        "every run failed: {stdout}"
    );
    assert!(stdout.contains("sh exited with status 3"), "{stdout}");
    assert!(stdout.contains("| something broke"), "{stdout}");
    assert!(stdout.contains("| starting"), "{stdout}");
    assert_eq!(
        median_row(&stdout, "farmem").last().map(String::as_str),
        Some("failed)"),
        "{stdout}"
    );
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert_eq!(
        last,
        "farmem: error: 4 of 4 run(s) failed (first: all-local run 1: sh exited with status 3)",
        "{stderr}"
    );
}

/// A program that succeeds but never prints what --metric looks for fails the same way.
#[test]
fn metric_not_found_is_a_failed_run() {
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "farmem",
        "--local-mem",
        "8M",
        "--metric",
        SORT_METRIC,
        "--",
        "echo",
        "hello",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("matched nothing in the output"), "{stdout}");
    assert!(stdout.contains("| hello"), "{stdout}");
    assert!(stderr.contains("1 of 1 run(s) failed"), "{stderr}");

    // farmem's own summary at exit is in the output, but --metric never sees it.
    let Some(qs) = quicksort() else { return };
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "farmem",
        "--local-mem",
        "8M",
        "--metric",
        "faults: ([0-9]+) major",
        "--",
        qs,
        "--size",
        "16M",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, _) = text(&out);
    assert!(stdout.contains("matched nothing in the output"), "{stdout}");
    assert!(stdout.contains("| farmem:   faults: "), "{stdout}");
}

/// --timeout kills the whole process group (a background child too, which holds the output
/// pipe open) and reports the run as timed out, not as a failure; a finished program's
/// leftover background children are killed too, so the run ends when the program does.
#[test]
fn timeout_kills_the_process_group() {
    let t = Instant::now();
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--timeout",
        "0.5",
        "--",
        "sh",
        "-c",
        "sleep 60 & exec sleep 60",
    ]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    assert!(stdout.contains("timed out: killed after 0.5 s"), "{stdout}");
    assert_eq!(
        median_row(&stdout, "all-local").last().map(String::as_str),
        Some("out)"),
        "{stdout}"
    );

    let t = Instant::now();
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--metric",
        "n=([0-9]+)",
        "--higher-is-better",
        "--",
        "sh",
        "-c",
        "(sleep 60 &); echo n=42",
    ]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    assert_eq!(median_row(&stdout, "all-local")[1], "42.00", "{stdout}");
    assert!(stdout.contains("higher metric is better"), "{stdout}");
}

/// Linux swap for real, when the machine allows it (root, cgroup v1, zram): the run either
/// measures within the budget or is reported as OOM-killed, never an error.
#[test]
fn quicksort_under_linux_swap() {
    let Some(qs) = quicksort() else { return };
    let cfg = farmem_bench::linux_swap::SwapConfig::new(24 * MIB, 256 * MIB);
    if let Err(e) = farmem_bench::linux_swap::check(&cfg) {
        eprintln!("skipping: the Linux-swap baseline is not possible here: {e}");
        return;
    }
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "linux-swap,all-local",
        "--local-mem",
        "24M",
        "--zram-size",
        "256M",
        "--metric",
        SORT_METRIC,
        "--json",
        "--",
        qs,
        "--size",
        "32M",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let recs = json_lines(&stdout);
    assert_eq!(recs.len(), 2, "{stdout}");
    let v = &recs[0];
    assert_eq!(v["system"], "linux-swap");
    assert_eq!(v["local_bytes"], 24 * MIB);
    assert_eq!(v["extra"]["zram_bytes"], 256 * MIB);
    let peak = v["extra"]["cgroup_max_usage_bytes"].as_u64().unwrap();
    assert!(peak <= 24 * MIB, "{v}");
    if v["outcome"] == "oom-killed" {
        assert_eq!(v["signal"], 9, "{v}");
        assert!(v["extra"]["oom_kills"].as_u64().unwrap() >= 1, "{v}");
    } else {
        assert_eq!(v["outcome"], "ok", "{v}");
        assert!(v["metric"].as_f64().unwrap() > 0.0, "{v}");
        // 32 MiB of numbers in 24 MiB: the kernel swapped, and faulted pages back in.
        assert!(v["faults"].as_u64().unwrap() > 0, "{v}");
        assert!(v["extra"]["pswpout"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(recs[1]["system"], "all-local");
    assert_eq!(recs[1]["outcome"], "ok");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--metric",
                "sort [0-9]+",
                "--",
                "true",
            ],
            "exactly one capture group",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--metric",
                "(x",
                "--",
                "true",
            ],
            "not a regular expression",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--systems",
                "zswap",
                "--",
                "true",
            ],
            "unknown system",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--runs",
                "0",
                "--",
                "true",
            ],
            "--runs must be at least 1",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--timeout",
                "-1",
                "--",
                "true",
            ],
            "--timeout must be a positive",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--higher-is-better",
                "--",
                "true",
            ],
            "--metric <REGEX>",
        ),
        (&["bench-cmd", "--", "true"], "--local-mem <SIZE>"),
        (&["bench-cmd", "--local-mem", "8M"], "<PROGRAM>"),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--",
                "no-such-program-farmem",
            ],
            "cannot find no-such-program-farmem in PATH",
        ),
        (
            &["bench-cmd", "--local-mem", "8M", "--", "/nonexistent/prog"],
            "cannot run /nonexistent/prog: not an executable file",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--systems",
                "farmem",
                "--backend",
                "tape:",
                "--",
                "true",
            ],
            "the farmem system runs the program under `farmem run`",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--systems",
                "linux-swap",
                "--cgroup-root",
                "/nonexistent/cgroup",
                "--",
                "true",
            ],
            "the linux-swap system is not possible here",
        ),
    ];
    for (args, expect) in cases {
        let out = farmem(args);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(expect),
            "{args:?}: wanted {expect:?} in:\n{stderr}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.iter().filter(|l| l.contains("error")).count() == 1,
            "{args:?}: more than one error line:\n{stderr}"
        );
    }
    // Named explicitly, linux-swap that cannot run says what to do.
    let out = farmem(&[
        "bench-cmd",
        "--local-mem",
        "8M",
        "--systems",
        "linux-swap",
        "--cgroup-root",
        "/nonexistent/cgroup",
        "--",
        "true",
    ]);
    let (_, stderr) = text(&out);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let what = if root {
        "mount -t cgroup -o memory"
    } else {
        "needs root"
    };
    assert!(stderr.contains(what), "{stderr}");
    // By default it is left out with a warning instead, and the rest runs.
    let out = farmem(&[
        "bench-cmd",
        "--local-mem",
        "8M",
        "--runs",
        "1",
        "--cgroup-root",
        "/nonexistent/cgroup",
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains("the Linux-swap baseline is not possible here, running without it"),
        "{stderr}"
    );
    assert!(!stdout.contains("linux-swap"), "{stdout}");
    assert_eq!(
        median_row(&stdout, "farmem").last().map(String::as_str),
        Some("1/1"),
        "{stdout}"
    );
    assert_eq!(
        median_row(&stdout, "all-local").last().map(String::as_str),
        Some("1/1"),
        "{stdout}"
    );
}
