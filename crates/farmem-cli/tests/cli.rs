//! The farmem binary end to end: bench output shape and clear errors.

use std::process::Command;

fn farmem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bench_json_has_the_documented_fields() {
    let out = farmem(&[
        "bench",
        "--size",
        "32M",
        "--local-mem",
        "8M",
        "--pattern",
        "skewed",
        "--seconds",
        "0.5",
        "--runs",
        "1",
        "--backend",
        "compressed",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line per system run: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["system"], "farmem");
    assert_eq!(v["pattern"], "skewed");
    assert_eq!(v["size_bytes"], 32 << 20);
    assert_eq!(v["local_bytes"], 8 << 20);
    assert_eq!(v["threads"], 1);
    assert!(v["accesses_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["faults"].as_u64().unwrap() > 0);
    assert!(v["fault_p50_us"].as_f64().unwrap() > 0.0);
    assert!(v["fault_p99_us"].as_f64().unwrap() >= v["fault_p50_us"].as_f64().unwrap());
    let lru = v["faults_vs_lru"].as_f64().unwrap();
    assert!(lru > 0.5 && lru < 3.0, "faults_vs_lru {lru}");
    assert_eq!(v["extra"]["verified"], true);
}

#[test]
fn bench_runs_every_pattern_and_mode_and_verifies() {
    for (pattern, mode, evict, prefetch) in [
        ("seq", "sigbus", "clock", "readahead"),
        ("random", "thread", "fifo", "majority"),
        ("skewed", "auto", "clock", "none"),
    ] {
        let out = farmem(&[
            "bench",
            "--size",
            "16M",
            "--local-mem",
            "2M",
            "--pattern",
            pattern,
            "--fault-mode",
            mode,
            "--evict",
            evict,
            "--prefetch",
            prefetch,
            "--threads",
            "2",
            "--seconds",
            "0.3",
            "--runs",
            "1",
            "--backend",
            "mem",
        ]);
        assert!(
            out.status.success(),
            "{pattern} {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("medians:") && s.contains("farmem"), "{s}");
    }
}

#[test]
fn bad_input_gets_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--size", "12Q"], "invalid value '12Q'"),
        (&["bench", "--backend", "tape"], "unknown backend `tape`"),
        (
            &["bench", "--local-mem", "4K", "--size", "1M"],
            "--local-mem must be at least",
        ),
        (&["bench", "--pattern", "zigzag"], "zigzag"),
        (&["bench", "--fault-mode", "magic"], "unknown fault mode"),
        (&["bench", "--writes", "2"], "--writes is a fraction"),
    ];
    for (args, want) in cases {
        let out = farmem(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want),
            "{args:?}: stderr lacks `{want}`:\n{err}"
        );
    }
}

#[test]
fn floor_prints_every_probe() {
    let out = farmem(&["floor", "--pages", "1000", "--runs", "1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.lines().count(), 6, "{s}");
    for l in s.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["p50_us"].as_f64().unwrap() > 0.0, "{l}");
    }
}
