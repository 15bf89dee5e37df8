//! `farmem bench-cmd` end to end: tests/c/quicksort.c under farmem and all-local (and under
//! Linux swap where the machine allows it), failing programs, time limits and bad input;
//! server mode with a tiny server of our own (tests/support/countserver.c: it counts the
//! requests its client sends, so that the tests need no Redis or memcached), several
//! metrics per run, budgets as fractions of the footprint, and --reject.
//!
//! The C programs are compiled with gcc as in tests/c_programs.rs; without gcc the tests
//! that need it say so and pass, except under CI (`CI=true`), where gcc is required. The
//! farmem system needs `libfarmem_preload.so` built beside the `farmem` binary (`cargo
//! build --workspace`, which scripts/test.sh does first).

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

/// `src` (relative to this crate) compiled with gcc -O2 into `name`, or None (and why)
/// without gcc.
fn gcc(name: &str, src: &str) -> Option<String> {
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
    let exe: PathBuf = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe.to_string_lossy().into_owned())
}

/// tests/c/quicksort.c compiled with gcc -O2, or None (and why) without gcc.
fn quicksort() -> Option<&'static str> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    BUILT
        .get_or_init(|| gcc("quicksort", "../../tests/c/quicksort.c"))
        .as_deref()
}

/// tests/support/countserver.c compiled with gcc -O2, or None (and why) without gcc.
fn countserver() -> Option<&'static str> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    BUILT
        .get_or_init(|| gcc("countserver", "tests/support/countserver.c"))
        .as_deref()
}

/// A loopback port nothing listens on (the kernel's pick, released at once).
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench_cmd")
        .join(std::process::id().to_string())
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--local-frac",
                "0.5",
                "--",
                "true",
            ],
            "cannot be used with",
        ),
        (
            &["bench-cmd", "--local-frac", "0,1", "--", "true"],
            "--local-frac fractions must be above 0",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--port",
                "7000",
                "--",
                "true",
            ],
            "--client <CMD>",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--metric",
                "a([0-9])",
                "--metric",
                "b([0-9])",
                "--metric-name",
                "a",
                "--",
                "true",
            ],
            "give one --metric-name per --metric",
        ),
        (
            &[
                "bench-cmd",
                "--local-mem",
                "8M",
                "--reject",
                "(x",
                "--",
                "true",
            ],
            "--reject \"(x\" is not a regular expression",
        ),
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

/// Server mode: the server runs under each system, the client outside, once the port
/// accepts; the client's load reaches the server (its replies count the requests, and it
/// writes its count when SIGTERM stops it), both metrics come from the client's output,
/// one record per metric, and the figures (RSS, farmem's stats at exit) are the server's.
#[test]
fn server_mode_gets_the_clients_load_and_its_metrics() {
    let Some(cs) = countserver() else { return };
    let port = free_port();
    let dir = scratch("server_mode");
    let count = dir.join("count");
    let client = format!("{cs} --client {port} 200");
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local,farmem",
        "--local-mem",
        "8M",
        "--backend",
        "mem:",
        "--port",
        &port,
        "--client",
        &client,
        "--metric",
        r"sent ([0-9]+) requests",
        "--metric-name",
        "sent",
        "--metric",
        r"last count ([0-9]+)",
        "--metric-name",
        "count",
        "--higher-is-better",
        "--label",
        "countserver",
        "--json",
        "--",
        cs,
        &port,
        "--hold",
        "16",
        "--count-file",
        count.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let recs = json_lines(&stdout);
    let order: Vec<(&str, &str)> = recs
        .iter()
        .map(|v| {
            (
                v["system"].as_str().unwrap(),
                v["metric_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("all-local", "sent"),
            ("all-local", "count"),
            ("farmem", "sent"),
            ("farmem", "count")
        ]
    );
    for v in &recs {
        assert_eq!(v["outcome"], "ok", "{v}");
        // "sent" is what the client did; "count" is what the server counted and replied.
        assert_eq!(v["metric"], 200.0, "{v}");
        assert_eq!(v["client"], client.as_str(), "{v}");
        assert_eq!(v["label"], "countserver", "{v}");
        assert_eq!(v["exit_code"], 0, "{v}");
        let x = &v["extra"];
        assert_eq!(x["server_stopped_by"], "SIGTERM", "{v}");
        assert_eq!(x["server_exit_code"], 0, "{v}");
        // The server holds 16 MiB; the client next to nothing.
        assert!(v["max_rss_bytes"].as_u64().unwrap() >= 16 * MIB, "{v}");
        assert!(
            x["client_max_rss_bytes"].as_u64().unwrap() < 16 * MIB,
            "{v}"
        );
        assert!(v["fault_seconds"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["linux_minor_faults"].as_u64().is_some(), "{v}");
    }
    for v in recs.iter().filter(|v| v["system"] == "farmem") {
        // farmem's summary at exit came out after SIGTERM: the server left through exit().
        // Its 16 MiB were first touched page by page (zero-fill faults, each mapping a run).
        let zero = v["farmem_zero_faults"].as_u64().unwrap();
        let ahead = v["extra"]["zero_ahead_pages"].as_u64().unwrap();
        assert!(zero > 0 && zero + ahead >= 4096, "{v}");
        assert!(v["farmem_minor_faults"].as_u64().is_some(), "{v}");
        assert_eq!(v["farmem_major_faults"], v["faults"], "{v}");
        assert_eq!(v["extra"]["budget_mib"], 8.0, "{v}");
    }
    // One line per server: each was stopped by SIGTERM after serving the client's 200.
    assert_eq!(
        std::fs::read_to_string(&count).unwrap(),
        "served 200\nserved 200\n"
    );
}

/// A server that dies on its own while the client runs, or before it accepts
/// connections, makes a failed run that names it and shows the server's last words.
#[test]
fn a_dying_server_is_a_failed_run() {
    let Some(cs) = countserver() else { return };
    let port = free_port();
    let client = format!("{cs} --client {port} 200");
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local,farmem",
        "--local-mem",
        "8M",
        "--port",
        &port,
        "--client",
        &client,
        "--",
        cs,
        &port,
        "--die-after",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout.matches("FAILED").count(), 2, "{stdout}");
    assert!(
        stdout.contains("countserver exited with status 3 while the client was running"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| countserver: dying after 50 requests, as asked"),
        "{stdout}"
    );
    assert!(stderr.contains("2 of 2 run(s) failed"), "{stderr}");

    let ran = scratch("dying_server").join("client-ran");
    let touch = format!("touch {}", ran.display());
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--port",
        &port,
        "--client",
        &touch,
        "--",
        cs,
        &port,
        "--exit-now",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let want = format!(
        "countserver exited with status 4 before it accepted connections on 127.0.0.1:{port}"
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(
        stdout.contains("| countserver: exiting at once"),
        "{stdout}"
    );
    assert!(
        !ran.exists(),
        "the client ran for a server that never listened"
    );
}

/// A server that never listens is a failed run after --ready-timeout (and is stopped); a
/// port something else already listens on is refused before any server starts.
#[test]
fn a_server_that_is_not_ready_or_a_busy_port() {
    let port = free_port();
    let t = Instant::now();
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--port",
        &port,
        "--ready-timeout",
        "1",
        "--client",
        "true",
        "--",
        "sleep",
        "60",
    ]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let want = format!("sleep did not accept connections on 127.0.0.1:{port} within 1 s");
    assert!(stdout.contains(&want), "{stdout}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--port",
        &port,
        "--client",
        "true",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "127.0.0.1:{port} accepts connections before sleep has started"
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
}

/// A server that ignores SIGTERM is killed after --stop-grace; the run still counts.
#[test]
fn a_server_that_ignores_sigterm_is_killed() {
    let Some(cs) = countserver() else { return };
    let port = free_port();
    let dir = scratch("ignore_term");
    let count = dir.join("count");
    let client = format!("{cs} --client {port} 10");
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--port",
        &port,
        "--client",
        &client,
        "--stop-grace",
        "0.5",
        "--json",
        "--",
        cs,
        &port,
        "--ignore-term",
        "--count-file",
        count.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let recs = json_lines(&stdout);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["outcome"], "ok");
    assert_eq!(recs[0]["extra"]["server_stopped_by"], "SIGKILL");
    assert_eq!(recs[0]["extra"]["server_signal"], 9);
    assert!(
        !count.exists(),
        "SIGTERM was ignored, so nothing was written"
    );
}

/// --local-frac: all-local goes first in each run, once; its first run's maximum RSS (the
/// server's, which holds 32 MiB) is the footprint, and farmem runs at each fraction of it.
/// `farmem summarize` and `--table` read the records back, a row per fraction.
#[test]
fn local_frac_takes_budgets_from_all_locals_rss() {
    let Some(cs) = countserver() else { return };
    let port = free_port();
    let dir = scratch("local_frac");
    let client = format!("{cs} --client {port} 100");
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "2",
        "--systems",
        "farmem,all-local",
        "--local-frac",
        "0.5,2",
        "--backend",
        "mem:",
        "--port",
        &port,
        "--client",
        &client,
        "--metric",
        r"last count ([0-9]+)",
        "--metric-name",
        "count",
        "--higher-is-better",
        "--json",
        "--",
        cs,
        &port,
        "--hold",
        "32",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (stdout, _) = text(&out);
    let recs = json_lines(&stdout);
    let order: Vec<(&str, u64, Option<f64>)> = recs
        .iter()
        .map(|v| {
            (
                v["system"].as_str().unwrap(),
                v["run"].as_u64().unwrap(),
                v["local_frac"].as_f64(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("all-local", 1, None),
            ("farmem", 1, Some(0.5)),
            ("farmem", 1, Some(2.0)),
            ("all-local", 2, None),
            ("farmem", 2, Some(0.5)),
            ("farmem", 2, Some(2.0)),
        ]
    );
    let footprint = recs[0]["max_rss_bytes"].as_u64().unwrap();
    assert!(
        footprint >= 32 * MIB,
        "the server's RSS, not the client's: {footprint}"
    );
    for v in &recs {
        assert_eq!(v["outcome"], "ok", "{v}");
        assert_eq!(v["footprint_bytes"], footprint, "{v}");
        match v["local_frac"].as_f64() {
            None => assert_eq!(v["local_bytes"], footprint, "{v}"),
            Some(f) => {
                let want = (f * footprint as f64 / 4096.0).round() as u64 * 4096;
                assert_eq!(v["local_bytes"], want, "{v}");
                // farmem's own summary (one decimal) says it ran with that budget.
                let mib = v["extra"]["budget_mib"].as_f64().unwrap();
                assert!((mib - want as f64 / MIB as f64).abs() < 0.06, "{v}");
            }
        }
    }
    let file = dir.join("frac.jsonl");
    std::fs::write(&file, &stdout).unwrap();
    let sum = farmem(&["summarize", file.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&sum.stdout);
    assert!(sum.status.success(), "{}", describe(&sum));
    assert_eq!(s.matches("medians:").count(), 2, "{s}");
    assert!(s.contains("with 50% of its footprint local"), "{s}");
    // all-local's two runs stand beside each fraction.
    assert_eq!(
        median_row(&s, "all-local").last().map(String::as_str),
        Some("2/2"),
        "{s}"
    );
    let tab = farmem(&["summarize", "--table", file.to_str().unwrap()]);
    let t = String::from_utf8_lossy(&tab.stdout);
    assert!(tab.status.success(), "{}", describe(&tab));
    let rows: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("| countserver"))
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert!(rows[0].starts_with("| countserver: count | 50% ("), "{t}");
    assert!(rows[1].starts_with("| countserver: count | 200% ("), "{t}");
    for r in rows {
        let cells: Vec<&str> = r.split('|').map(str::trim).collect();
        // farmem, Linux swap (not run), all-local: the client's count of 100 each.
        assert_eq!(&cells[3..6], ["100.0", "-", "100.0"], "{r}");
        assert_eq!(cells[7], "1.00x", "{r}");
    }

    let out = farmem(&[
        "bench-cmd",
        "--systems",
        "farmem",
        "--local-frac",
        "0.5",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out).1.contains("keep all-local in --systems"),
        "{}",
        describe(&out)
    );
}

/// --reject fails a run whose output matches it (the client's, in server mode); a metric
/// the output lacks fails that metric's record only.
#[test]
fn reject_and_a_missing_metric_fail_runs() {
    let run = |script: &str, extra: &[&str]| {
        let mut args = vec![
            "bench-cmd",
            "--runs",
            "1",
            "--systems",
            "all-local",
            "--local-mem",
            "8M",
            "--reject",
            "verify_failed: [1-9]",
            "--metric",
            "n=([0-9]+)",
            "--metric-name",
            "n",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        farmem(&args)
    };
    let out = run("echo verify_failed: 3; echo n=5", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains(r#"--reject "verify_failed: [1-9]" matched "verify_failed: 3""#),
        "{stdout}"
    );
    assert!(stderr.contains("1 of 1 run(s) failed"), "{stderr}");
    let out = run("echo verify_failed: 0; echo n=5", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(median_row(&text(&out).0, "all-local")[1], "5.00");

    // Two metrics, the output has one: that record fails, the other stands.
    let out = run(
        "echo n=5",
        &["--metric", "m=([0-9]+)", "--metric-name", "m", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let recs = json_lines(&text(&out).0);
    assert_eq!(recs.len(), 2);
    assert_eq!(
        (&recs[0]["outcome"], &recs[0]["metric"]),
        (&"ok".into(), &5.0.into())
    );
    assert_eq!(recs[1]["outcome"], "failed");
    assert!(
        recs[1]["error"]
            .as_str()
            .unwrap()
            .contains("matched nothing"),
        "{}",
        recs[1]
    );

    // Server mode: the client's output is what --reject reads.
    let Some(cs) = countserver() else { return };
    let port = free_port();
    let client = format!("{cs} --client {port} 10; echo verify_failed: 2");
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "all-local",
        "--local-mem",
        "8M",
        "--port",
        &port,
        "--client",
        &client,
        "--reject",
        "verify_failed: [1-9]",
        "--",
        cs,
        &port,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, _) = text(&out);
    assert!(stdout.contains(r#"matched "verify_failed: 2""#), "{stdout}");
    assert!(stdout.contains("| client: last count 10"), "{stdout}");
}

/// Linux swap in server mode, when the machine allows it: the server in the memory cgroup
/// (the client outside it), the cgroup's fault counts in the record.
#[test]
fn server_under_linux_swap() {
    let Some(cs) = countserver() else { return };
    let cfg = farmem_bench::linux_swap::SwapConfig::new(16 * MIB, 256 * MIB);
    if let Err(e) = farmem_bench::linux_swap::check(&cfg) {
        eprintln!("skipping: the Linux-swap baseline is not possible here: {e}");
        return;
    }
    let port = free_port();
    let client = format!("{cs} --client {port} 100");
    let out = farmem(&[
        "bench-cmd",
        "--runs",
        "1",
        "--systems",
        "linux-swap",
        "--local-mem",
        "16M",
        "--zram-size",
        "256M",
        "--port",
        &port,
        "--client",
        &client,
        "--metric",
        r"last count ([0-9]+)",
        "--json",
        "--",
        cs,
        &port,
        "--hold",
        "32",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let recs = json_lines(&text(&out).0);
    assert_eq!(recs.len(), 1);
    let v = &recs[0];
    assert_eq!(v["system"], "linux-swap");
    let peak = v["extra"]["cgroup_max_usage_bytes"].as_u64().unwrap();
    assert!(peak <= 16 * MIB, "{v}");
    if v["outcome"] == "oom-killed" {
        assert!(v["extra"]["oom_kills"].as_u64().unwrap() >= 1, "{v}");
    } else {
        assert_eq!(v["outcome"], "ok", "{v}");
        assert_eq!(v["metric"], 100.0, "{v}");
        // 32 MiB held in 16 MiB: the kernel swapped some of it out.
        assert!(v["extra"]["pswpout"].as_u64().unwrap() > 0, "{v}");
        assert!(v["linux_minor_faults"].as_u64().is_some(), "{v}");
        assert!(v["linux_major_faults"].as_u64().is_some(), "{v}");
        assert_eq!(v["faults"], v["linux_major_faults"], "{v}");
    }
}
