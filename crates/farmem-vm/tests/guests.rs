//! The minimal guests on far memory: each workload checks its own results inside the
//! guest and reports through its exit port; here they run under budgets a fraction of
//! what they touch, so KVM's faults on guest RAM go through the engine.

use farmem::{Engine, FaultMode, PrefetchKind};
use farmem_vm::{GuestSpec, Machine, VmError, Workload};
use std::time::Duration;

fn kvm_here() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: no usable /dev/kvm on this machine");
    }
    ok
}

fn engine(local: usize, prefetch: PrefetchKind) -> Engine {
    Engine::builder()
        .local_budget(local)
        .prefetch(prefetch)
        .fault_mode(FaultMode::Thread)
        .build()
        .unwrap()
}

fn run_far(
    spec: GuestSpec,
    machine: Machine,
    local: usize,
    prefetch: PrefetchKind,
) -> (u8, String, farmem::Stats) {
    let e = Engine::builder()
        .local_budget(local)
        .prefetch(prefetch)
        .fault_mode(FaultMode::Thread)
        .handler_threads(machine.cpus as usize)
        .handler_cpus(machine.pin_cpus.clone())
        .build()
        .unwrap();
    let mut console = Vec::new();
    let out = farmem_vm::run(&e, &machine, &spec, &mut console).unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&console).into_owned(),
        e.stats(),
    )
}

#[test]
fn every_guest_verifies_its_memory_with_a_tenth_of_it_local() {
    if !kvm_here() {
        return;
    }
    let cases = [
        (Workload::Sort, 12 << 20, 0, "sorted and verified"),
        (
            Workload::Random,
            4 << 20,
            40_000,
            "updates over 524288 words verified",
        ),
        (Workload::Kv, 4 << 20, 20_000, "gets verified"),
    ];
    for (workload, size, ops, says) in cases {
        let spec = GuestSpec {
            workload,
            size,
            ops,
            seed: 7,
        };
        // The guest's RAM: its 4 MiB of code and tables plus the workload, a tenth local.
        let memory = (4 << 20) + size;
        let (code, console, st) = run_far(
            spec,
            Machine::new(memory),
            (memory / 10) as usize,
            PrefetchKind::Readahead,
        );
        assert_eq!(code, 0, "{workload:?}: the guest said:\n{console}");
        assert!(console.contains(says), "{workload:?}: {console}");
        assert!(
            st.major_faults + st.minor_faults > 100 && st.evicted_pages > 100,
            "{workload:?}: its RAM must have been paged: {st}"
        );
        // The same guest all-local says the same.
        let mut local = Vec::new();
        let base = farmem_vm::run_all_local(&Machine::new(memory), &spec, &mut local).unwrap();
        assert_eq!(base.exit_code, 0);
        assert_eq!(String::from_utf8_lossy(&local), console, "{workload:?}");
    }
}

#[test]
fn a_tiny_budget_and_no_prefetch_still_give_the_right_answer() {
    if !kvm_here() {
        return;
    }
    // 16 pages of local memory for 8 MiB of RAM (page tables and code included), every
    // page brought in by its own fault.
    let spec = GuestSpec {
        workload: Workload::Random,
        size: 4 << 20,
        ops: 5_000,
        seed: 3,
    };
    let (code, console, st) = run_far(spec, Machine::new(8 << 20), 64 << 10, PrefetchKind::None);
    assert_eq!(code, 0, "{console}");
    assert!(st.major_faults > 1_000, "{st}");
    assert_eq!(st.prefetched_pages, 0);
    // The latency probe reads back what it wrote, through the same faults.
    let spec = GuestSpec {
        workload: Workload::Latency,
        size: 2 << 20,
        ops: 2_000,
        seed: 3,
    };
    let (code, console, st) = run_far(spec, Machine::new(8 << 20), 64 << 10, PrefetchKind::None);
    assert_eq!(code, 0, "{console}");
    assert!(
        console.contains("latency: 2000 reads of random pages of 512: p50 "),
        "{console}"
    );
    assert!(st.major_faults > 500, "{st}");
}

#[test]
fn bad_sizes_and_modes_are_refused_before_the_guest_starts() {
    let spec = GuestSpec {
        workload: Workload::Sort,
        size: 8 << 20,
        ops: 0,
        seed: 1,
    };
    let msg = |r: Result<farmem_vm::Outcome, VmError>| r.unwrap_err().to_string();
    let mut sink = Vec::new();
    let e = engine(4 << 20, PrefetchKind::None);
    let m = |memory: u64, cpus: u32| Machine {
        memory,
        cpus,
        timeout: None,
        pin_cpus: Vec::new(),
    };
    assert!(
        msg(farmem_vm::run(
            &e,
            &m((8 << 20) + 4096, 1),
            &spec,
            &mut sink
        ))
        .contains("multiple of 2 MiB")
    );
    assert!(msg(farmem_vm::run(&e, &m(8 << 20, 1), &spec, &mut sink)).contains("minus 4 MiB"));
    for cpus in [0, 9] {
        assert!(
            msg(farmem_vm::run(&e, &m(16 << 20, cpus), &spec, &mut sink)).contains("--cpus"),
            "{cpus} vCPUs"
        );
    }
    let sigbus = Engine::builder()
        .local_budget(4 << 20)
        .fault_mode(FaultMode::Sigbus)
        .build();
    if let Ok(sigbus) = sigbus {
        assert!(
            msg(farmem_vm::run(&sigbus, &m(16 << 20, 1), &spec, &mut sink))
                .contains("thread fault mode")
        );
    }
    assert!(sink.is_empty(), "no guest ran");
}

#[test]
fn two_vcpus_share_pages_while_the_reclaimer_evicts_them() {
    if !kvm_here() {
        return;
    }
    // Two vCPUs compare-and-swap random words of the same 2 MiB (512 pages) with 32 pages
    // local: both fault the same pages while the reclaimer evicts them. The guest checks
    // every word it reads, and at the end that no update was lost.
    let spec = GuestSpec {
        workload: Workload::Random,
        size: 2 << 20,
        ops: 60_000,
        seed: 11,
    };
    let machine = Machine {
        memory: 8 << 20,
        cpus: 2,
        timeout: Some(Duration::from_secs(120)),
        // Each vCPU and its handler thread on one CPU, as `farmem vm` runs them.
        pin_cpus: farmem_vm::vcpu_cpus(2).unwrap(),
    };
    let (code, console, st) = run_far(spec, machine.clone(), 128 << 10, PrefetchKind::None);
    assert_eq!(code, 0, "the guest said:\n{console}");
    assert!(
        console.contains("60000 updates over 262144 words verified"),
        "{console}"
    );
    assert!(st.major_faults > 1_000 && st.evicted_pages > 1_000, "{st}");
    // Every workload splits its work across vCPUs and still checks out, with a quarter
    // of its RAM local.
    for workload in [Workload::Sort, Workload::Kv] {
        let spec = GuestSpec {
            workload,
            size: 8 << 20,
            ops: 20_000,
            seed: 5,
        };
        let machine = Machine {
            memory: 12 << 20,
            cpus: 2,
            timeout: Some(Duration::from_secs(120)),
            pin_cpus: Vec::new(),
        };
        let (code, console, _) = run_far(spec, machine, 3 << 20, PrefetchKind::Readahead);
        assert_eq!(code, 0, "{workload:?}: the guest said:\n{console}");
        assert!(console.contains("verified"), "{workload:?}: {console}");
    }
}

#[test]
fn a_crashed_or_hung_guest_is_reported_with_its_last_words() {
    if !kvm_here() {
        return;
    }
    let spec = |workload| GuestSpec {
        workload,
        size: 1 << 20,
        ops: 0,
        seed: 1,
    };
    let machine = Machine {
        memory: 8 << 20,
        cpus: 2,
        timeout: Some(Duration::from_millis(500)),
        pin_cpus: Vec::new(),
    };
    let mut console = Vec::new();
    let e = engine(2 << 20, PrefetchKind::None);
    let err = farmem_vm::run(&e, &machine, &spec(Workload::Crash), &mut console)
        .unwrap_err()
        .to_string();
    assert!(err.contains("triple fault"), "{err}");
    assert!(
        err.contains("| crash: executing an undefined instruction"),
        "{err}"
    );
    let t0 = std::time::Instant::now();
    let err = farmem_vm::run_all_local(&machine, &spec(Workload::Hang), &mut console)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not finish within 0.5 s"), "{err}");
    assert!(err.contains("| hang: looping forever"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        t0.elapsed()
    );
}

// ---- A far tier that fails while the guest runs: the VM must stop loudly, never run on
// with wrong guest memory. Each scenario runs in a child process (the engine aborts).

const CHILD_ENV: &str = "FARMEM_VM_TEST_CHILD";

#[test]
fn child_scenario() {
    // Runs only as the child of the test below.
    let Ok(which) = std::env::var(CHILD_ENV) else {
        return;
    };
    use farmem::backend::{Backend, Faulty, FaultyMode, Memory};
    let mode = match which.as_str() {
        "fail-fetch" => FaultyMode::FailFetchAfter(50),
        "corrupt" => FaultyMode::CorruptFetchAfter(50),
        _ => return,
    };
    let tier: std::sync::Arc<dyn Backend> =
        std::sync::Arc::new(Faulty::new(std::sync::Arc::new(Memory::new()), mode));
    let e = Engine::builder()
        .local_budget(1 << 20)
        .backend(tier)
        .prefetch(PrefetchKind::None)
        .fault_mode(FaultMode::Thread)
        .build()
        .unwrap();
    let spec = GuestSpec {
        workload: Workload::Random,
        size: 4 << 20,
        ops: 50_000,
        seed: 9,
    };
    let mut out = std::io::stdout();
    let r = farmem_vm::run(&e, &Machine::new(8 << 20), &spec, &mut out);
    println!("GUEST ENDED: {r:?}");
}

#[test]
fn a_failing_far_tier_stops_the_vm_loudly() {
    if !kvm_here() {
        return;
    }
    for (which, says) in [
        ("fail-fetch", "failed to fetch pages"),
        ("corrupt", "wrong checksum"),
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_scenario",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, which)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{which}: expected an abort:\n{stdout}\n{stderr}"
        );
        assert!(
            !stdout.contains("GUEST ENDED") && !stdout.contains("verified"),
            "{which}: the guest went on:\n{stdout}"
        );
        assert!(
            stderr.contains("farmem: fatal:") && stderr.contains(says),
            "{which}: {stderr}"
        );
    }
}

#[test]
fn busy_polling_handlers_serve_the_guest_too() {
    if !kvm_here() {
        return;
    }
    let e = Engine::builder()
        .local_budget(1 << 20)
        .prefetch(PrefetchKind::None)
        .fault_mode(FaultMode::Thread)
        .handler_busy_poll(true)
        .handler_cpus(farmem_vm::poller_cpus(1).unwrap())
        .build()
        .unwrap();
    let spec = GuestSpec {
        workload: Workload::Random,
        size: 4 << 20,
        ops: 20_000,
        seed: 4,
    };
    let mut console = Vec::new();
    let out = farmem_vm::run(&e, &Machine::new(8 << 20), &spec, &mut console).unwrap();
    let text = String::from_utf8_lossy(&console);
    assert_eq!(out.exit_code, 0, "{text}");
    assert!(
        text.contains("20000 updates over 524288 words verified"),
        "{text}"
    );
    assert!(e.stats().major_faults > 1_000, "{}", e.stats());
    // Dropping the region stops its spinning handler (the test would hang otherwise).
}

/// The same workloads with 2 MiB pages (hugetlbfs, filled and evicted 2 MiB at a time),
/// a tenth of the RAM local.
#[test]
fn every_guest_verifies_its_memory_in_2_mib_pages_with_a_tenth_local() {
    if !kvm_here() {
        return;
    }
    let e = Engine::builder()
        .local_budget(8 << 20)
        .page_size(farmem::PageSize::Huge)
        .fault_mode(FaultMode::Thread)
        .build();
    let e = match e {
        Ok(e) => e,
        Err(err) => {
            eprintln!("skipped: 2 MiB pages are not available here: {err}");
            return;
        }
    };
    // kv's slot table takes an eighth of its size and each insert touches a random slot:
    // at 76 MiB it alone outgrows four huge pages, and every insert would move 2 MiB
    // (162 s); at 16 MiB the table is one huge page.
    for (workload, size, ops, says) in [
        (Workload::Sort, 40 << 20, 0, "sorted and verified"),
        (Workload::Random, 40 << 20, 1_000, "1000 updates over"),
        (Workload::Kv, 16 << 20, 2_000, "gets verified"),
    ] {
        let spec = GuestSpec {
            workload,
            size,
            ops,
            seed: 13,
        };
        let mut console = Vec::new();
        let out = farmem_vm::run(&e, &Machine::new(80 << 20), &spec, &mut console).unwrap();
        let text = String::from_utf8_lossy(&console);
        assert_eq!(out.exit_code, 0, "{workload:?}: {text}");
        assert!(text.contains(says), "{workload:?}: {text}");
    }
    let st = e.stats();
    assert_eq!(st.page_bytes, 2 << 20);
    assert!(st.major_faults > 50 && st.evicted_pages > 50, "{st}");
    assert!(st.peak_resident_pages <= 4, "{st}");
}
