//! The C programs in `tests/c`, compiled with gcc and run plainly and under `farmem run`.
//!
//! Each program checks itself, prints one `<name>: FAIL: ...` line and exits non-zero on
//! any mismatch, and ends with `<name>: ok`. Sizes here are small so the suite stays
//! fast; the programs' own defaults are the full-size runs (see each file's header).
//!
//! `api.c`, `objects.c` and `wrapped.c` link against the no-op `libfarmem.so`
//! (crates/farmem-capi, a dev-dependency so that `cargo test` builds it) the way an
//! installed program would: through the SONAME `libfarmem.so.0`, found by rpath.
//!
//! The `farmem run` variants need `farmem run` and `libfarmem_preload.so` built beside the
//! `farmem` binary (`cargo build --workspace`, which scripts/test.sh does first).

#[path = "../../farmem/tests/fake_node/mod.rs"]
mod fake_node;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The flags every C file in the project compiles cleanly with.
const CFLAGS: &[&str] = &["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"];

/// A hung program is killed after this long and the test fails.
const TIMEOUT: Duration = Duration::from_secs(600);

/// The local budget for the `farmem run` variants: far below every program's heap.
const LOCAL_MEM: &str = "8M";

const TORTURE_ARGS: &[&str] = &["--heap", "128M", "--threads", "4", "--seconds", "3"];
const QUICKSORT_ARGS: &[&str] = &["--size", "64M"];
const SKEWED_ARGS: &[&str] = &["--size", "64M", "--seconds", "2"];
const API_ARGS: &[&str] = &["--size", "32M"];
const OBJECTS_ARGS: &[&str] = &["--size", "64M", "--reads", "20000"];
const RAWSYS_ARGS: &[&str] = &["--size", "32M", "--rounds", "2"];
/// `farmem run` options for wrapped.c: the in-thread fault mode (where the kernel meets
/// EFAULT on an evicted page) and no prefetching, so that a page the kernel reads was
/// brought in for the call's own description, not as a neighbour of another buffer.
const WRAPPED_FARMEM: &[&str] = &[
    "--local-mem",
    LOCAL_MEM,
    "--backend",
    "mem:",
    "--fault-mode",
    "sigbus",
    "--prefetch",
    "none",
    "--no-object-prefetch",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// target/<profile>, where cargo put the farmem binary (and the workspace's cdylibs).
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_farmem"))
        .parent()
        .expect("the farmem binary is inside a directory")
        .to_path_buf()
}

/// The stub library, as built for this test run: cargo builds a dev-dependency's cdylib
/// into deps/; a `cargo build` of the workspace also copies it up a level.
fn stub_library() -> PathBuf {
    let dir = profile_dir();
    let candidates = [
        dir.join("deps/libfarmem_capi.so"),
        dir.join("libfarmem_capi.so"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| {
            panic!(
                "libfarmem_capi.so (the stub libfarmem.so) is in none of {candidates:?}; \
                 build it with `cargo build -p farmem-capi`"
            )
        })
}

/// Where the compiled programs are, or None when gcc is missing.
fn programs() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(compile_all).as_deref()
}

fn compile_all() -> Option<PathBuf> {
    if let Err(e) = Command::new("gcc").arg("--version").output() {
        eprintln!("skipping the C program tests: gcc is not available ({e})");
        return None;
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_programs");
    remove_stale_dirs(&base);
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();

    // The installed layout in miniature: libfarmem.so for the linker, libfarmem.so.0 (the
    // SONAME) for the loader.
    let stub = stub_library();
    for name in ["libfarmem.so", "libfarmem.so.0"] {
        std::os::unix::fs::symlink(&stub, lib.join(name)).unwrap();
    }

    let src = repo_root().join("tests/c");
    // sysbench is a benchmark (BENCHMARKS.md); compiled here so that it keeps compiling.
    for name in [
        "torture",
        "quicksort",
        "listwalk",
        "skewed",
        "rawsys",
        "sysbench",
        "reserve",
    ] {
        gcc(
            &dir,
            name,
            &[src.join(format!("{name}.c")).into_os_string()],
        );
    }
    let include = repo_root().join("include");
    // Plug-ins: the shipped example and the test's misbehaving ones.
    let plugin = |name: &str, src: PathBuf, defs: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "-shared".into(),
            "-fPIC".into(),
            format!("-I{}", include.display()).into(),
        ];
        args.extend(
            defs.iter()
                .map(|d| std::ffi::OsString::from(format!("-D{d}"))),
        );
        args.push(src.into_os_string());
        gcc(&dir, name, &args);
    };
    plugin("minimal.so", repo_root().join("plugins/minimal.c"), &[]);
    plugin("wild.so", src.join("plugins/wild.c"), &[]);
    plugin("crash.so", src.join("plugins/crash.c"), &[]);
    plugin("crash-abort.so", src.join("plugins/crash.c"), &["ABORT"]);
    for d in ["NO_SYMBOL", "WRONG_ABI", "NULL_PLUGIN", "NO_FAULT"] {
        plugin(
            &format!("bad-{}.so", d.to_lowercase()),
            src.join("plugins/bad.c"),
            &[d],
        );
    }
    for name in ["api", "objects", "wrapped"] {
        gcc(
            &dir,
            name,
            &[
                format!("-I{}", include.display()).into(),
                src.join(format!("{name}.c")).into_os_string(),
                format!("-L{}", lib.display()).into(),
                "-lfarmem".into(),
                format!("-Wl,-rpath,{}", lib.display()).into(),
            ],
        );
    }
    Some(dir)
}

fn gcc(dir: &Path, name: &str, args: &[std::ffi::OsString]) {
    let out = Command::new("gcc")
        .args(CFLAGS)
        .args(args)
        .arg("-o")
        .arg(dir.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc failed on {name}.c:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build directories of test processes that are gone.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let alive = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Runs `cmd` in its own process group, killing the group if it outlives TIMEOUT.
fn run(mut cmd: Command, what: &str) -> Output {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut err = Vec::new();
        let reader = std::thread::spawn(move || {
            let _ = stderr.read_to_end(&mut err);
            err
        });
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let err = reader.join().unwrap();
        let status = child.wait().unwrap();
        let _ = tx.send(Output {
            status,
            stdout: out,
            stderr: err,
        });
    });
    let start = Instant::now();
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => {
            t.join().unwrap();
            eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
            out
        }
        Err(_) => {
            // SAFETY: kill(2) with a negative pid signals the process group the child
            // leads (process_group(0) above); it touches no memory of ours.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            let out = rx.recv().unwrap();
            panic!(
                "{what}: still running after {} s, killed\n{}",
                TIMEOUT.as_secs(),
                describe(&out)
            );
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the program plainly, or under `farmem run`; asserts exit status 0 and the ok
/// line, and returns stdout.
fn run_program(name: &str, args: &[&str], under_farmem: bool) -> Option<String> {
    let farmem: &[&str] = &["--local-mem", LOCAL_MEM, "--backend", "mem:"];
    run_program_with(name, args, under_farmem.then_some(farmem))
}

/// Runs the program plainly (`farmem` None) or under `farmem run` with these options;
/// asserts exit status 0 and the ok line, and returns stdout.
fn run_program_with(name: &str, args: &[&str], farmem: Option<&[&str]>) -> Option<String> {
    let exe = programs()?.join(name);
    let (cmd, what) = if let Some(opts) = farmem {
        let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
        c.arg("run").args(opts).arg("--").arg(&exe).args(args);
        (
            c,
            format!("farmem run {} -- {name} {}", opts.join(" "), args.join(" ")),
        )
    } else {
        let mut c = Command::new(&exe);
        c.args(args);
        (c, format!("{name} {}", args.join(" ")))
    };
    let out = run(cmd, &what);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{stdout}");
    let ok_line = format!("{name}: ok");
    assert!(
        out.status.success() && stdout.lines().any(|l| l == ok_line),
        "{what} did not end with `{ok_line}` and status 0\n{}",
        describe(&out)
    );
    Some(stdout)
}

#[test]
fn torture_plain() {
    run_program("torture", TORTURE_ARGS, false);
}

#[test]
fn torture_under_farmem() {
    run_program("torture", TORTURE_ARGS, true);
}

/// The torture test under the allocators that are not the default (farslab, above).
#[test]
fn torture_under_farmem_with_mimalloc() {
    let opts = [
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        "mem:",
        "--allocator",
        "mimalloc",
    ];
    run_program_with("torture", TORTURE_ARGS, Some(&opts));
}

#[test]
fn torture_under_farmem_with_tlsf() {
    let opts = [
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        "mem:",
        "--allocator",
        "tlsf",
    ];
    run_program_with("torture", TORTURE_ARGS, Some(&opts));
}

/// The torture test with its heap on a memory node (a fake one, in this process, that
/// speaks the real protocol over loopback TCP): threads, kernel access to far buffers,
/// fork (the child gets a copy of the session), exec. `farmem run` checks the node and
/// the token before the program starts, with a session of its own that it frees.
#[test]
fn torture_under_farmem_on_a_memory_node() {
    use std::sync::atomic::Ordering::SeqCst;
    let node = fake_node::FakeNode::start(b"torture-token");
    let dir = std::env::temp_dir().join(format!("farmem-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "torture-token\n").unwrap();
    let uri = node.uri();
    let opts = [
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        &uri,
        "--token-file",
        token.to_str().unwrap(),
    ];
    let ran = run_program_with("torture", TORTURE_ARGS, Some(&opts));
    let _ = std::fs::remove_dir_all(&dir);
    if ran.is_none() {
        return;
    }
    let st = &node.state;
    eprintln!(
        "node: {} sessions created, {} clones, {} fetches, {} stores, {} byes",
        st.news.load(SeqCst),
        st.clones.load(SeqCst),
        st.fetches.load(SeqCst),
        st.stores.load(SeqCst),
        st.byes.load(SeqCst)
    );
    // farmem run's check, the program, and programs it ran (/bin/true loads the library).
    assert!(st.news.load(SeqCst) >= 2);
    assert!(
        st.clones.load(SeqCst) >= 1,
        "the forked child asked for no copy"
    );
    assert!(st.fetches.load(SeqCst) > 0 && st.stores.load(SeqCst) > 0);
    assert!(
        st.byes.load(SeqCst) >= 1,
        "the check's session was not freed"
    );
}

/// The torture test with its heap on a real memory node: `farmem serve` on loopback, as
/// a user starts it.
#[test]
fn torture_under_farmem_on_farmem_serve() {
    if programs().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("farmem-serve-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "serve-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (mut node, addr, log) = start_serve(&token);
    let uri = format!("tcp://{addr}");
    let opts = [
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        &uri,
        "--token-file",
        token.to_str().unwrap(),
    ];
    let ran = std::panic::catch_unwind(|| run_program_with("torture", TORTURE_ARGS, Some(&opts)));
    // SAFETY: kill(2) on our own child's pid; it touches no memory of ours.
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    let status = node.wait().unwrap();
    let log = log.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprint!("{log}");
    if let Err(e) = ran {
        std::panic::resume_unwind(e);
    }
    assert!(status.success(), "farmem serve: {status}\n{log}");
    assert!(
        log.contains("a copy of session"),
        "the forked child asked for no copy:\n{log}"
    );
}

#[test]
fn quicksort_plain() {
    run_program("quicksort", QUICKSORT_ARGS, false);
}

#[test]
fn quicksort_under_farmem() {
    run_program("quicksort", QUICKSORT_ARGS, true);
}

/// A shuffled list and a tree walked under 8 MiB with pointer chasing on (and the
/// registers of a real program's faults as roots), every node checked; and quicksort,
/// which has no pointers, read back exactly with the chase on.
#[test]
fn pointer_walks_under_farmem_with_pointer_prefetch() {
    let opts: &[&str] = &[
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        "compressed:",
        "--prefetch",
        "readahead,pointer",
        "--stats",
    ];
    run_program_with(
        "listwalk",
        &["--nodes", "30000", "--passes", "2", "--lookups", "30000"],
        Some(opts),
    );
    run_program_with("quicksort", QUICKSORT_ARGS, Some(opts));
}

const LISTWALK_ARGS: &[&str] = &["--nodes", "20000", "--passes", "2", "--lookups", "20000"];

/// Runs listwalk under `farmem run --plugin NAME.so` (a plug-in built above); returns
/// the output, or None without gcc.
fn under_plugin(plugin: &str) -> Option<Output> {
    let dir = programs()?;
    let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
    c.args(["run", "--local-mem", LOCAL_MEM, "--plugin"])
        .arg(dir.join(plugin))
        .arg("--")
        .arg(dir.join("listwalk"))
        .args(LISTWALK_ARGS);
    Some(run(c, &format!("farmem run --plugin {plugin} -- listwalk")))
}

/// The shipped minimal plug-in is called on faults, allocations and frees, and the
/// program's every node reads back right.
#[test]
fn the_minimal_plugin_is_called_and_the_program_runs_right() {
    let Some(out) = under_plugin("minimal.so") else {
        return;
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "listwalk: ok"),
        "{}",
        describe(&out)
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("minimal plug-in: "))
        .unwrap_or_else(|| panic!("no report from the plug-in\n{}", describe(&out)));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // faults, hits, allocations, frees, eviction hints
    assert_eq!(nums.len(), 5, "{line}");
    assert!(nums[0] > 1000, "few faults reached the plug-in: {line}");
    assert!(nums[2] >= 40000, "allocations not all seen: {line}");
    assert!(nums[3] > 0, "no frees seen: {line}");
    assert!(nums[4] > 1000, "the eviction hint was not asked: {line}");
}

/// A plug-in that asks for ranges outside the heap, unaligned, enormous and empty ones,
/// and more than it had room for: ignored, one line each, the program's data exact.
#[test]
fn a_plugin_that_asks_for_wild_ranges_changes_no_data() {
    let Some(out) = under_plugin("wild.so") else {
        return;
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "listwalk: ok"),
        "{}",
        describe(&out)
    );
    for what in [
        "asked for a range that is empty or not inside the far heap",
        "returned more ranges than it was given room for",
    ] {
        assert_eq!(
            stderr.matches(what).count(),
            1,
            "want one line saying `{what}`\n{}",
            describe(&out)
        );
    }
}

/// A plug-in that crashes in its fault callback (a null dereference, or an abort as a
/// Rust plug-in's panic is) stops the program with one line that names it, inside the
/// fault where every other signal is blocked; the program does not go on.
#[test]
fn a_plugin_that_crashes_stops_the_program_with_one_line() {
    for (name, what) in [
        ("crash.so", "SIGSEGV at address 0"),
        ("crash-abort.so", "SIGABRT"),
    ] {
        let Some(out) = under_plugin(name) else {
            return;
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{name}\n{}", describe(&out));
        assert!(
            !stdout.contains("listwalk: ok"),
            "{name}: the program went on\n{}",
            describe(&out)
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("farmem:"))
            .collect();
        assert_eq!(lines.len(), 1, "{name}: want one line\n{}", describe(&out));
        assert!(
            lines[0].starts_with("farmem: fatal: plug-in crash crashed (")
                && lines[0].contains(what),
            "{name}: {}",
            lines[0]
        );
    }
}

/// Plug-ins that cannot work are refused before the program runs, each with one line
/// that says why.
#[test]
fn broken_plugins_are_refused_with_one_line() {
    for (name, why) in [
        ("bad-no_symbol.so", "exports no `farmem_plugin`"),
        ("bad-wrong_abi.so", "built for plug-in ABI 999"),
        ("bad-null_plugin.so", "farmem_plugin() returned NULL"),
        ("bad-no_fault.so", "has no fault callback"),
    ] {
        let Some(out) = under_plugin(name) else {
            return;
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            !out.status.success(),
            "{name} was accepted\n{}",
            describe(&out)
        );
        assert!(
            stdout.is_empty(),
            "{name}: the program ran\n{}",
            describe(&out)
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: want one line\n{}", describe(&out));
        assert!(
            lines[0].starts_with("farmem: ") && lines[0].contains(why),
            "{name}: want `{why}`, got {}",
            lines[0]
        );
    }
    // No file at all: farmem run says so before starting anything.
    let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
    c.args([
        "run",
        "--local-mem",
        "8M",
        "--plugin",
        "/nonexistent/p.so",
        "--",
        "true",
    ]);
    let out = run(c, "farmem run --plugin /nonexistent/p.so");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--plugin /nonexistent/p.so: no such file"),
        "{}",
        describe(&out)
    );
}

/// `farmem trace` records a real program's faults, prefetches and allocations; `farmem
/// replay` replays them beside exact LRU and Belady (never more faults than LRU without
/// prefetch) and beside the live counters; a full trace counts what it dropped; a file
/// that is not a trace is one clear line.
#[test]
fn trace_and_replay_a_program() {
    let Some(dir) = programs() else {
        return;
    };
    let trace = dir.join("listwalk.trace");
    let walk = |events: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
        c.args(["trace", "--out"])
            .arg(&trace)
            .args(["--events", events, "--local-mem", LOCAL_MEM, "--"])
            .arg(dir.join("listwalk"))
            .args(LISTWALK_ARGS);
        run(c, "farmem trace -- listwalk")
    };
    let out = walk("4000000");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("listwalk: ok"),
        "{}",
        describe(&out)
    );
    assert!(stderr.contains("farmem: trace: "), "{}", describe(&out));
    let replay = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
        c.arg("replay").arg(&trace).args(extra);
        run(c, "farmem replay")
    };
    let out = replay(&[
        "--evict",
        "clock,lru",
        "--prefetch",
        "none,readahead,traced",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let faults = |evict: &str, prefetch: &str| -> u64 {
        text.lines()
            .map(str::split_whitespace)
            .find_map(|mut w| {
                (w.next() == Some(evict) && w.next() == Some(prefetch))
                    .then(|| w.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no `{evict} {prefetch}` line in\n{text}"))
    };
    assert!(text.contains("(0 dropped)"), "{text}");
    let (lru, opt, live) = (
        faults("lru", "none"),
        faults("belady", "none"),
        faults("live", "(traced)"),
    );
    assert!(lru > 1000 && live > 1000, "{text}");
    assert!(opt <= lru, "Belady took more faults than LRU\n{text}");
    for p in ["none", "readahead", "traced"] {
        faults("clock", p);
    }
    assert!(text.contains("replayed / live: major faults"), "{text}");
    // A trace too small for the run: bounded, and says how much it dropped.
    let out = walk("1000");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dropped: the trace was full"),
        "{}",
        describe(&out)
    );
    let out = replay(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1000 events ("),
        "{}",
        describe(&out)
    );
    assert!(!text.contains("(0 dropped)"), "{text}");
    // Not a trace.
    let mut c = Command::new(env!("CARGO_BIN_EXE_farmem"));
    c.arg("replay").arg(dir.join("listwalk"));
    let out = run(c, "farmem replay listwalk");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a farmem trace"),
        "{}",
        describe(&out)
    );
}

#[test]
fn listwalk_plain() {
    run_program("listwalk", &["--nodes", "30000", "--passes", "1"], false);
}

#[test]
fn skewed_plain() {
    run_program("skewed", SKEWED_ARGS, false);
}

#[test]
fn skewed_under_farmem() {
    run_program("skewed", SKEWED_ARGS, true);
}

/// Linked against the stub and run plainly: inactive, hints accepted, no stats.
#[test]
fn api_without_farmem() {
    let Some(out) = run_program("api", API_ARGS, false) else {
        return;
    };
    for line in [
        "api: farmem_active() = 0",
        "api: farmem_advise(99) = -1, errno EINVAL",
        "api: prefetch hook called 0 times, 0 for faults in the buffer",
        "api: farmem_stats() = -1, errno ENOSYS",
        "api: farmem_stats() zeroed *out",
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
}

/// The same binary under `farmem run`: the preloaded library's calls replace the stub's.
#[test]
fn api_under_farmem() {
    let Some(out) = run_program("api", API_ARGS, true) else {
        return;
    };
    assert!(
        out.lines().any(|l| l == "api: farmem_active() = 1"),
        "farmem_active() is not 1 under farmem run:\n{out}"
    );
    let faults: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("api: farmem_stats() = 0: faults "))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no farmem_stats line with faults in:\n{out}"));
    assert!(faults > 0, "no faults counted under farmem run:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("api: prefetch hook called") && !l.contains(" 0 for faults")),
        "the prefetch hook was not called for faults in the buffer:\n{out}"
    );
}

#[test]
fn objects_plain() {
    run_program("objects", OBJECTS_ARGS, false);
}

/// The heap in 2 MiB pages (hugetlbfs): the quicksort with a quarter of its array local,
/// and a shell whose forked subshells keep using their heap (each child gets its own copy
/// of the resident huge pages).
#[test]
fn quicksort_and_forks_under_farmem_in_2_mib_pages() {
    let huge = [
        "--local-mem",
        "16M",
        "--backend",
        "mem:",
        "--page-size",
        "2M",
    ];
    if programs().is_none() {
        return;
    }
    let mut probe = Command::new(env!("CARGO_BIN_EXE_farmem"));
    probe.args(["run"]).args(huge).args(["--", "true"]);
    let out = run(probe, "farmem run --page-size 2M -- true");
    if !out.status.success() {
        eprintln!(
            "skipped: 2 MiB pages are not available here: {}",
            describe(&out)
        );
        return;
    }
    run_program_with("quicksort", &["--size", "64M"], Some(&huge));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_farmem"));
    cmd.args(["run"]).args(huge).args(["--", "bash", "-c"]).arg(
        "x=$(for i in $(seq 1 2000); do echo $i; done | sort -n | tail -1); y=$( (echo sub; echo shell) | tr a-z A-Z ); echo \"$x $y\"",
    );
    let out = run(cmd, "farmem run --page-size 2M -- bash -c ...");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2000 SUB\nSHELL"
    );
}

#[test]
fn reserve_plain() {
    run_program("reserve", &["--size", "16M"], false);
}

/// Memory mapped as QEMU maps guest RAM (a PROT_NONE reservation, then MAP_FIXED inside
/// it): with --take-reserved it is far memory and pages under a small budget; without, it
/// stays plain memory. Either way the program's data is right.
#[test]
fn reserve_under_farmem_take_reserved_pages_reserved_memory() {
    let Some(dir) = programs() else { return };
    for (take, paged) in [(true, true), (false, false)] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_farmem"));
        cmd.args(["run", "--local-mem", "8M", "--backend", "mem:", "--stats"]);
        if take {
            cmd.arg("--take-reserved");
        }
        cmd.arg("--")
            .arg(dir.join("reserve"))
            .args(["--size", "32M"]);
        let out = run(cmd, "farmem run -- reserve");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("reserve: ok"),
            "take {take}: {}",
            describe(&out)
        );
        let evicted: u64 = stderr
            .split("evicted ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no stats: {stderr}"));
        assert_eq!(
            evicted > 4000,
            paged,
            "take {take}: evicted {evicted}\n{stderr}"
        );
    }
}

#[test]
fn rawsys_plain() {
    run_program("rawsys", RAWSYS_ARGS, false);
}

/// System calls no wrapper sees (the `syscall` instruction, the C library's internal
/// calls, a signal handler's, a new thread's, a forked child's) on evicted heap buffers:
/// the syscall guard brings the pages in, and --stats says how many calls it dispatched.
#[test]
fn rawsys_under_farmem_the_syscall_guard_brings_far_buffers_in() {
    let Some(dir) = programs() else { return };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_farmem"));
    cmd.args([
        "run",
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        "mem:",
        "--stats",
        "--",
    ])
    .arg(dir.join("rawsys"))
    .args(RAWSYS_ARGS);
    let out = run(cmd, "farmem run --stats -- rawsys");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("rawsys: ok"),
        "{}",
        describe(&out)
    );
    let far: u64 = stderr
        .lines()
        .find_map(|l| {
            let rest = l.split("syscall guard: on, ").nth(1)?;
            rest.split('(').nth(1)?.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no syscall guard line in:\n{stderr}"));
    // Per round: 6 raw calls in each of the main thread, a thread and a child, the eight
    // C library calls, and the signal handler's.
    assert!(
        far >= 20,
        "only {far} dispatched calls named far buffers\n{stderr}"
    );
}

/// The same program with the guard off meets EFAULT: what the guard is for.
#[test]
fn rawsys_without_the_syscall_guard_meets_efault() {
    let Some(dir) = programs() else { return };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_farmem"));
    cmd.args([
        "run",
        "--local-mem",
        LOCAL_MEM,
        "--backend",
        "mem:",
        "--fault-mode",
        "sigbus",
        "--no-syscall-guard",
        "--",
    ])
    .arg(dir.join("rawsys"))
    .args(["--size", "32M", "--rounds", "1"]);
    let out = run(cmd, "farmem run --no-syscall-guard -- rawsys");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    for what in [
        "raw getrandom into the heap (EFAULT)",
        "uname into the heap (EFAULT)",
    ] {
        assert!(stderr.contains(what), "no `{what}` in:\n{stderr}");
    }
}

#[test]
fn wrapped_plain() {
    run_program("wrapped", &[], false);
}

/// Every entry point the preload wraps for the kernel, on heap buffers evicted right
/// before the call, made through the C library (the wrapper) and as the syscall
/// instruction (the syscall guard). Both read one description of each system call's
/// buffers (crates/farmem-preload/src/io/describe.rs); a buffer it misses fails here.
#[test]
fn wrapped_under_farmem_the_wrappers_and_the_guard_bring_the_same_buffers_in() {
    run_program_with("wrapped", &[], Some(WRAPPED_FARMEM));
}

/// With the guard off, each wrapper alone must bring in every buffer its call hands the
/// kernel (the program first checks that a raw call on an evicted buffer meets EFAULT,
/// so the evictions are real). When each wrapper listed its own buffers, epoll_pwait's
/// left out the signal mask that the guard's table named, and failed here with EFAULT.
#[test]
fn wrapped_without_the_syscall_guard_the_wrappers_alone_bring_their_buffers_in() {
    let opts = [WRAPPED_FARMEM, &["--no-syscall-guard"]].concat();
    run_program_with("wrapped", &["--no-raw"], Some(&opts));
}

/// Whole objects read in random order: the object prefetch brings in the rest of an
/// object on its first fault and nothing past it, and maps it at once. With only
/// readahead (measured with FARMEM_OBJECT_PREFETCH=0) this run fetched 1.19 pages per page
/// the copies cover; with the object prefetch, 1.01. Other faults (minor and zero-fill)
/// per major fault in the read phase: 2.2 when the rest of an object came in like a
/// readahead window, its last page left unmapped as a marker (a minor fault per object
/// read); 1.2 with the object mapped whole; 0.34 since a minor fault on a page the
/// reclaimer unmapped maps the rest of its object too.
#[test]
fn objects_under_farmem_fetch_little_past_each_object_and_map_it_whole() {
    let Some(out) = run_program("objects", OBJECTS_ARGS, true) else {
        return;
    };
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("objects: read phase: "))
        .unwrap_or_else(|| panic!("no read-phase line in:\n{out}"));
    let field = |name: &str| -> f64 {
        line.split(", ")
            .find_map(|f| f.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in `{line}`"))
    };
    let (covered, fetched, majors, others) = (
        field("pages covered "),
        field("fetched "),
        field("major faults "),
        field("other faults "),
    );
    assert!(
        fetched <= 1.1 * covered,
        "fetched {fetched} pages for {covered} pages read: prefetching runs past objects\n{out}"
    );
    assert!(
        others <= 0.7 * majors,
        "{others} minor and zero-fill faults for {majors} major faults: objects are not mapped whole\n{out}"
    );
}

/// Starts `farmem serve` on loopback with `token`; returns it, its address and a thread
/// that collects its log until it exits.
fn start_serve(token: &Path) -> (std::process::Child, String, std::thread::JoinHandle<String>) {
    use std::io::BufRead;
    let mut node = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args(["serve", "--listen", "127.0.0.1:0", "--capacity", "1G"])
        .arg("--token-file")
        .arg(token)
        .env_remove("FARMEM_TOKEN")
        .env_remove("FARMEM_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = node.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("farmem serve: listening on ") {
                let _ = tx.send(rest.split(',').next().unwrap_or_default().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = node.kill();
        panic!("farmem serve did not start: {}", log.join().unwrap());
    };
    (node, addr, log)
}

/// The memory node is killed (SIGKILL) while a program under `farmem run` keeps faulting
/// on it: the program must stop within the tier's deadline, non-zero, with a message that
/// names the node and says its pages are lost. It must not hang, and must not go on with
/// zeros in place of its pages (skewed.c would then report wrong sums, or finish "ok").
#[test]
fn killing_farmem_serve_mid_run_stops_the_program_loudly() {
    let Some(progs) = programs() else { return };
    let dir = std::env::temp_dir().join(format!("farmem-kill-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "kill-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (mut node, addr, log) = start_serve(&token);
    let mut prog = Command::new(env!("CARGO_BIN_EXE_farmem"))
        .args(["run", "--local-mem", LOCAL_MEM, "--backend"])
        .arg(format!("tcp://{addr}"))
        .arg("--token-file")
        .arg(&token)
        .arg("--")
        .arg(progs.join("skewed"))
        .args(["--size", "64M", "--seconds", "60"])
        .env("FARMEM_REMOTE_TIMEOUT", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it fill its array (most of it on the node) and start updating.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        prog.try_wait().unwrap().is_none(),
        "the program ended before the kill"
    );
    node.kill().unwrap();
    let killed_at = Instant::now();
    node.wait().unwrap();
    let _ = log.join();
    let status = loop {
        if let Some(s) = prog.try_wait().unwrap() {
            break s;
        }
        if killed_at.elapsed() > Duration::from_secs(45) {
            let _ = prog.kill();
            panic!("the program hung after its memory node was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed_at.elapsed();
    let mut out = String::new();
    let mut err = String::new();
    prog.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    prog.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("stopped {took:?} after the kill, {status}:\n{err}");
    assert!(
        !status.success(),
        "exit {status} after the node died\n{out}{err}"
    );
    assert!(
        !out.contains("skewed: ok"),
        "it finished as if nothing happened\n{out}{err}"
    );
    assert!(
        err.contains(&format!("memory node {addr}")) && err.contains("lost"),
        "the message must name the node and say the pages are lost:\n{err}"
    );
    assert!(took < Duration::from_secs(30), "it took {took:?} to stop");
}
