//! The minimal guests on far memory: each workload checks its own results inside the
//! guest and reports through its exit port; here they run under budgets a fraction of
//! what they touch, so KVM's faults on guest RAM go through the engine.

use farmem::{Engine, FaultMode, PrefetchKind};
use farmem_vm::{GuestSpec, VmError, Workload};

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
    memory: u64,
    local: usize,
    prefetch: PrefetchKind,
) -> (u8, String, farmem::Stats) {
    let e = engine(local, prefetch);
    let mut console = Vec::new();
    let out = farmem_vm::run(&e, memory, &spec, &mut console).unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&console).into_owned(),
        e.stats(),
    )
}

#[test]
fn every_guest_verifies_its_memory_with_a_quarter_of_it_local() {
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
        // The guest's RAM: its 4 MiB of code and tables plus the workload, a quarter local.
        let memory = (4 << 20) + size;
        let (code, console, st) =
            run_far(spec, memory, (memory / 4) as usize, PrefetchKind::Readahead);
        assert_eq!(code, 0, "{workload:?}: the guest said:\n{console}");
        assert!(console.contains(says), "{workload:?}: {console}");
        assert!(
            st.major_faults + st.minor_faults > 100 && st.evicted_pages > 100,
            "{workload:?}: its RAM must have been paged: {st}"
        );
        // The same guest all-local says the same.
        let mut local = Vec::new();
        let base = farmem_vm::run_all_local(memory, &spec, &mut local).unwrap();
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
    let (code, console, st) = run_far(spec, 8 << 20, 64 << 10, PrefetchKind::None);
    assert_eq!(code, 0, "{console}");
    assert!(st.major_faults > 1_000, "{st}");
    assert_eq!(st.prefetched_pages, 0);
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
    assert!(
        msg(farmem_vm::run(&e, (8 << 20) + 4096, &spec, &mut sink)).contains("multiple of 2 MiB")
    );
    assert!(msg(farmem_vm::run(&e, 8 << 20, &spec, &mut sink)).contains("minus 4 MiB"));
    let sigbus = Engine::builder()
        .local_budget(4 << 20)
        .fault_mode(FaultMode::Sigbus)
        .build();
    if let Ok(sigbus) = sigbus {
        assert!(
            msg(farmem_vm::run(&sigbus, 16 << 20, &spec, &mut sink)).contains("thread fault mode")
        );
    }
    assert!(sink.is_empty(), "no guest ran");
}
