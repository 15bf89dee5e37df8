//! The farmem binary end to end: bench output shape and clear errors.

#[path = "../../farmem/tests/fake_node/mod.rs"]
mod fake_node;

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
        (
            &["run", "--allocator", "jemalloc", "--", "true"],
            "unknown allocator `jemalloc` (choose farslab, mimalloc or tlsf",
        ),
        (&["run", "--local-mem", "64M"], "needs a program to run"),
        (
            &["vm", "--guest", "doom"],
            "unknown guest \"doom\"; use one of: sort, random, kv",
        ),
        (
            &["vm", "--guest", "sort", "--cpus", "9"],
            "--cpus must be from 1 to 8",
        ),
        (
            &["vm", "--guest", "sort", "--timeout", "0"],
            "--timeout must be a positive number",
        ),
        (
            &["vm", "--guest", "sort", "--memory", "9M"],
            "--memory must be a multiple of 2 MiB",
        ),
        (
            &["vm", "--guest", "sort", "--memory", "16M", "64M"],
            "minus 4 MiB",
        ),
        (
            &["vm", "--guest", "kv", "1M", "many"],
            "guest OPS \"many\" is not a whole number",
        ),
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

/// `--allocator list` names every allocator on a line of its own; a program started
/// under the preload with a bad FARMEM_ALLOCATOR of its own stops with one line.
#[test]
fn allocators_are_listed_and_a_bad_name_stops_the_program() {
    let out = farmem(&["run", "--allocator", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<_> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["farslab", "mimalloc", "tlsf"], "{text}");
    assert!(
        text.lines().next().unwrap().ends_with("(default)"),
        "{text}"
    );
    let out = farmem(&[
        "run",
        "--local-mem",
        "16M",
        "--",
        "sh",
        "-c",
        "FARMEM_ALLOCATOR=bogus exec true",
    ]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown allocator `bogus`"), "{err}");
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

/// `farmem run --backend tcp://...` connects before the program starts: a node that is not
/// there, a wrong or unreadable token is one line, and the program never runs.
#[test]
fn run_checks_the_memory_node_before_the_program() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    let node = fake_node::FakeNode::start(b"right");
    let dir = std::env::temp_dir().join(format!("farmem-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let wrong = wrong.to_str().unwrap();
    let uri = node.uri();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--backend", &closed],
            "cannot reach the memory node at 127.0.0.1:",
        ),
        (
            &["--backend", &uri, "--token-file", wrong],
            "refused this program's token",
        ),
        (
            &["--backend", &uri, "--token-file", "/nonexistent/token"],
            "cannot read the memory node's token from /nonexistent/token",
        ),
        (
            &["--backend", "mem:", "--token-file", wrong],
            "--token-file is for a memory node",
        ),
        (&["--backend", "tcp://nowhere"], "tcp://HOST:PORT"),
    ];
    for (opts, want) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", "sh", "-c", "echo PROGRAM RAN"]);
        let out = farmem(&args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{opts:?} should fail");
        assert!(!stdout.contains("PROGRAM RAN"), "{opts:?}: the program ran");
        assert!(
            stderr.contains(want),
            "{opts:?}: stderr lacks `{want}`:\n{stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{opts:?}: not one line:\n{stderr}"
        );
    }
    for (var, value, want) in [
        (
            "FARMEM_REMOTE_TIMEOUT",
            "soon",
            "FARMEM_REMOTE_TIMEOUT=soon",
        ),
        ("FARMEM_REMOTE_POLL_US", "-1", "FARMEM_REMOTE_POLL_US=-1"),
        ("FARMEM_REMOTE_CONNS", "0", "FARMEM_REMOTE_CONNS=0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_farmem"))
            .args([
                "run",
                "--backend",
                &uri,
                "--",
                "sh",
                "-c",
                "echo PROGRAM RAN",
            ])
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{var}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `farmem bench-remote` starts its own `farmem serve`, measures against it, checks every
/// page it reads back, and stops the node again.
#[test]
fn bench_remote_measures_against_its_own_node() {
    let out = farmem(&[
        "bench-remote",
        "--pages",
        "1000",
        "--pull-pages",
        "2048",
        "--runs",
        "1",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    for k in [
        "tcp_4k_round_trip_p50_us",
        "tcp_4k_round_trip_polling_p50_us",
        "remote_fault_p50_us",
        "remote_fault_p99_us",
        "pull_pages_per_s",
    ] {
        let x = v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
        assert!(x > 0.0, "{k} = {x}");
    }
    assert!(
        v["remote_fault_p99_us"].as_f64() >= v["remote_fault_p50_us"].as_f64(),
        "{v}"
    );
}

/// `--stats` reports once, for the process `farmem run` started, whatever image it ends
/// in: a shell that execs its last command hands the report on (pyenv's shims do this),
/// the children it forks stay quiet, and a program that closes stderr before it exits
/// (GNU ls does) still gets its summary out.
#[test]
fn run_stats_come_from_the_started_process_even_through_exec() {
    let out = farmem(&[
        "run",
        "--local-mem",
        "16M",
        "--stats",
        "--",
        "sh",
        "-c",
        "ls / > /dev/null; exec ls / > /dev/null",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("farmem: stats at exit").count(),
        1,
        "one summary expected:\n{stderr}"
    );
    assert!(stderr.contains("syscall guard: "), "{stderr}");
}

/// `farmem vm` runs a guest to its exit code, with its console on stdout.
#[test]
fn a_guest_runs_under_farmem_vm_and_its_exit_code_is_farmems() {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let out = farmem(&["vm", "--guest", "list"]);
    assert!(out.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["sort", "random", "kv", "latency", "crash", "hang"]);
    let out = farmem(&[
        "vm",
        "--memory",
        "16M",
        "--local-mem",
        "2M",
        "--stats",
        "--guest",
        "sort",
        "8M",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(text.contains("sort: sorted and verified"), "{text}");
    assert!(
        err.contains("guest sort exited with 0") && err.contains("faults:"),
        "{err}"
    );
}

/// `farmem vm` says in one line, before any guest starts, that KVM is missing or
/// forbidden, and a guest that crashes is reported with its last console line.
#[test]
fn farmem_vm_without_kvm_or_with_a_crashing_guest_says_why() {
    let run = |env: Option<(&str, &str)>, pre: &[&str], args: &[&str]| {
        let mut cmd = if pre.is_empty() {
            Command::new(env!("CARGO_BIN_EXE_farmem"))
        } else {
            let mut c = Command::new(pre[0]);
            c.args(&pre[1..]).arg(env!("CARGO_BIN_EXE_farmem"));
            c
        };
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "no guest output expected");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let args = ["vm", "--memory", "16M", "--guest", "sort", "1M"];
    let err = run(Some(("FARMEM_KVM_DEVICE", "/nonexistent/kvm")), &[], &args);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("this machine has no /dev/kvm"), "{err}");
    // As an unprivileged user (root can open any device node).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && std::path::Path::new("/usr/bin/setpriv").exists() {
        let pre = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        let err = run(None, &pre, &args);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("no permission to use /dev/kvm"), "{err}");
    }
    if std::fs::metadata("/dev/kvm").is_err() {
        return;
    }
    // More huge pages than the machine has memory: one line, before the guest starts.
    let err = run(
        None,
        &[],
        &[
            "vm",
            "--memory",
            "64M",
            "--local-mem",
            "64T",
            "--page-size",
            "2M",
            "--guest",
            "sort",
            "1M",
        ],
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not enough huge pages"), "{err}");
    let out = farmem(&["vm", "--memory", "16M", "--guest", "crash"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("triple fault") && err.contains("| crash: executing"),
        "{err}"
    );
}

/// `farmem ctl` lowers and raises the budget of a running guest, and reads its statistics
/// as JSON and Prometheus text; the guest still verifies all of its memory.
#[test]
fn farmem_ctl_changes_a_running_guests_budget() {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = std::env::temp_dir().join(format!("farmem-ctl-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("vm.sock");
    let s = sock.to_str().unwrap();
    let vm = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args([
            "vm",
            "--memory",
            "40M",
            "--local-mem",
            "4M",
            "--prefetch",
            "none",
            "--control",
            s,
            "--timeout",
            "300",
            "--guest",
            "random",
            "32M",
            "300000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the control socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ctl = |args: &[&str]| ctl(s, args);
    let num = |json: &str, key: &str| -> u64 {
        let at = json
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key}: {json}"));
        json[at + key.len() + 3..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap() as u64
    };
    assert_eq!(ctl(&["budget"]).trim(), "4.00 MiB");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        ctl(&["budget", "2M"]).trim(),
        "budget 2.00 MiB (was 4.00 MiB)"
    );
    let json = ctl(&["stats", "--json"]);
    assert_eq!(num(&json, "budget_pages"), 512, "{json}");
    assert!(num(&json, "resident_pages") <= 512, "{json}");
    assert!(num(&json, "evicted_pages") > 1000, "{json}");
    let prom = ctl(&["stats", "--prometheus"]);
    assert!(
        prom.contains("# TYPE farmem_major_faults_total counter"),
        "{prom}"
    );
    assert!(prom.contains("farmem_budget_pages 512\n"), "{prom}");
    // Everything fits again: the rest of the run takes no more major faults than the
    // pages it brings back.
    ctl(&["budget", "40M"]);
    let out = vm.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("300000 updates over 4194304 words verified"),
        "{text}"
    );
    assert!(!sock.exists(), "the socket goes when the VM exits");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `farmem run --control` serves the program's engine: `farmem ctl` reads and changes its
/// budget while it runs, and the socket goes when it exits.
#[test]
fn farmem_ctl_changes_a_running_programs_budget() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("farmem-ctl-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("run.sock");
    let s = sock.to_str().unwrap();
    let mut prog = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args([
            "run",
            "--local-mem",
            "8M",
            "--control",
            s,
            "--",
            "head",
            "-n",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the control socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ctl = |args: &[&str]| ctl(s, args);
    assert_eq!(ctl(&["budget"]).trim(), "8.00 MiB");
    assert_eq!(
        ctl(&["budget", "32M"]).trim(),
        "budget 32.0 MiB (was 8.00 MiB)"
    );
    assert!(ctl(&["stats", "--json"]).contains("\"budget_pages\":8192"));
    assert_eq!(
        ctl(&["prefetch", "none"]).trim(),
        "prefetch none (was readahead)"
    );
    // A second program on the same socket is refused before it starts.
    let out = farmem(&["run", "--control", s, "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another program is serving it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    prog.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = prog.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // (A program that ends with _exit leaves the socket behind; the next --control at the
    // path finds nobody serving it and replaces it.)
    assert!(!sock.exists(), "the socket goes when the program exits");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `farmem vm --kernel` loads Debian's kernel with linux-loader into far guest RAM and
/// boots it with a serial console: on a host with hardware virtualisation it runs the
/// initramfs's quicksort to the end; on this project's test machine, whose nested
/// hypervisor emulates the guest's ring 0, the kernel decompresses itself for about 80 s,
/// then gets as far as its memory setup before KVM's emulator fails (about two minutes in
/// all). Either way the console shows the kernel reading the boot parameters this VMM
/// wrote.
#[test]
fn farmem_vm_boots_a_linux_kernel_as_far_as_the_machine_allows() {
    let kernel = installed_kernel();
    let (Some(kernel), true) = (kernel, std::path::Path::new("/dev/kvm").exists()) else {
        eprintln!(
            "skipped: no /dev/kvm or no /boot/vmlinuz-* (apt-get install linux-image-cloud-amd64)"
        );
        return;
    };
    let k = kernel.to_str().unwrap();
    // Bad input first: one line each, before any guest runs.
    for (args, says) in [
        (
            vec!["--kernel", "/etc/hostname"],
            "not a bzImage this VMM can load",
        ),
        (vec!["--kernel", k, "--cpus", "2"], "boots one vCPU"),
        (
            vec!["--kernel", "/nonexistent/vmlinuz"],
            "--kernel /nonexistent/vmlinuz",
        ),
    ] {
        let mut all = vec!["vm", "--memory", "64M"];
        all.extend(args);
        let out = farmem(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{all:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let dir = std::env::temp_dir().join(format!("farmem-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd.cpio.gz");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/vm-initramfs.sh");
    let built = Command::new(script)
        .arg(&initrd)
        .arg("16M")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut args = vec![
        "vm",
        "--memory",
        "256M",
        "--local-mem",
        "128M",
        "--timeout",
        "300",
        "--kernel",
        k,
    ];
    if built {
        args.extend(["--initrd", initrd.to_str().unwrap()]);
    }
    let out = farmem(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Linux version"),
        "no kernel output:\n{text}\n{err}"
    );
    // The e820 map this VMM put in the boot parameters: 256 MiB from 1 MiB up.
    assert!(
        text.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "{text}"
    );
    if out.status.success() {
        assert!(!built || text.contains("quicksort: ok"), "{text}");
    } else {
        assert!(
            err.contains("did not finish within 300.0 s") || err.contains("emulation failure"),
            "{err}"
        );
        assert!(err.contains("its last console output:"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Debian's QEMU (software emulation: this machine's KVM cannot run Linux) under `farmem
/// run --take-reserved`: its guest RAM becomes far memory, the guest (Debian's kernel and
/// the project's initramfs) sorts 64 MiB with 48 MiB of QEMU's memory local, and reports
/// success through QEMU's debug-exit port.
#[test]
fn qemu_runs_under_farmem_with_its_guest_ram_far() {
    let kernel = installed_kernel();
    let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
    let Some(kernel) = kernel.filter(|_| qemu.exists()) else {
        eprintln!("skipped: needs qemu-system-x86 and linux-image-cloud-amd64");
        return;
    };
    let dir = std::env::temp_dir().join(format!("farmem-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd.cpio.gz");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/vm-initramfs.sh");
    let built = Command::new(script)
        .arg(&initrd)
        .arg("64M")
        .output()
        .unwrap();
    if !built.status.success() {
        eprintln!("skipped: {}", String::from_utf8_lossy(&built.stderr));
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args([
            "run",
            "--local-mem",
            "48M",
            "--take-reserved",
            "--stats",
            "--",
        ])
        .arg(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "256M",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    // isa-debug-exit makes QEMU exit with (code << 1) | 1: 1 is the guest's 0.
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    assert!(text.contains("quicksort: ok"), "{text}");
    let far_mib: f64 = err
        .split("resident, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no heap line in the stats: {err}"));
    assert!(far_mib > 100.0, "QEMU's guest RAM was not paged: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `farmem ctl SOCKET ARGS...`, which must succeed; its stdout.
fn ctl(socket: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .arg("ctl")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ctl {args:?}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Linux bzImage installed in /boot (Debian's linux-image-cloud-amd64), if any.
fn installed_kernel() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}
