//! Many threads faulting the same pages under a budget of 1-5% of the region while the
//! reclaimer evicts them: every byte must come back as written.

mod fake_node;

use farmem::backend::{Backend, Memory, Remote, RemoteConfig};
use farmem::policy::PolicyKind;
use farmem::{Engine, FaultMode, PrefetchKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const PAGE: usize = 4096;

/// Each of `threads` threads owns word `t` of every page and writes a counter there, while
/// all of them read the read-only words 16.. of random pages. Pages are shared by all
/// threads, so faults on one page race each other and the reclaimer.
#[allow(clippy::too_many_arguments)] // a test matrix: every knob is a dimension
fn hammer(
    mode: FaultMode,
    policy: PolicyKind,
    prefetch: PrefetchKind,
    backend: Arc<dyn Backend>,
    pages: usize,
    budget_pages: usize,
    threads: usize,
    rounds: usize,
) {
    hammer_with(
        mode,
        policy,
        prefetch,
        backend,
        pages,
        budget_pages,
        threads,
        rounds,
        true,
        0,
    )
}

#[allow(clippy::too_many_arguments)]
fn hammer_with(
    mode: FaultMode,
    policy: PolicyKind,
    prefetch: PrefetchKind,
    backend: Arc<dyn Backend>,
    pages: usize,
    budget_pages: usize,
    threads: usize,
    rounds: usize,
    accessed_bits: bool,
    object_pages: usize,
) {
    let engine = Engine::builder()
        .local_budget(budget_pages * PAGE)
        .accessed_bits(accessed_bits)
        .fault_mode(mode)
        .policy(policy)
        .prefetch(prefetch)
        .backend(backend)
        .handler_threads(2)
        .build()
        .unwrap();
    let region = engine.map(pages * PAGE).unwrap();
    let base = region.as_ptr() as usize;
    if object_pages > 0 {
        // Objects of `object_pages` pages: a major fault fetches and maps the rest of its
        // object, a minor fault maps the object's local pages after it, both while other
        // threads fault on the same pages and the reclaimer evicts them.
        let len = object_pages * PAGE;
        region.set_prefetch_hook(move |addr, req| {
            let end = base + ((addr - base) / len + 1) * len;
            let from = (addr | (PAGE - 1)) + 1;
            req.object(from, end - from);
            req.enough();
        });
    }
    // Read-only words: a function of (page, word).
    let ro =
        |p: usize, w: usize| ((p as u64) << 20) ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for p in 0..pages {
        for w in 16..PAGE / 8 {
            // SAFETY: inside the region.
            unsafe {
                ((base + p * PAGE) as *mut u64)
                    .add(w)
                    .write_volatile(ro(p, w))
            };
        }
    }
    let failed = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        for t in 0..threads {
            let failed = failed.clone();
            s.spawn(move || {
                let mut x = 0x1234_5678_9abc_def0u64 ^ (t as u64 + 1);
                for round in 1..=rounds {
                    for p in 0..pages {
                        // Own word: write then read back.
                        let own = (base + p * PAGE) as *mut u64;
                        // SAFETY: inside the region; word t belongs to this thread alone.
                        unsafe { own.add(t).write_volatile(round as u64) };
                        // A random read-only word of a random page.
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let q = (x as usize) % pages;
                        let w = 16 + (x >> 32) as usize % (PAGE / 8 - 16);
                        // SAFETY: inside the region.
                        let got =
                            unsafe { ((base + q * PAGE) as *const u64).add(w).read_volatile() };
                        if got != ro(q, w) {
                            failed.store(true, Ordering::SeqCst);
                            panic!(
                                "thread {t}: page {q} word {w} read {got:#x}, expected {:#x}",
                                ro(q, w)
                            );
                        }
                    }
                    for p in 0..pages {
                        // SAFETY: inside the region.
                        let got =
                            unsafe { ((base + p * PAGE) as *const u64).add(t).read_volatile() };
                        if got != round as u64 {
                            failed.store(true, Ordering::SeqCst);
                            panic!("thread {t}: own word of page {p} read {got}, expected {round}");
                        }
                    }
                }
            });
        }
    });
    assert!(!failed.load(Ordering::SeqCst));
    let st = engine.stats();
    eprintln!(
        "{mode:?} {policy:?} {prefetch:?} {}: {st}",
        engine.backend_name()
    );
    assert!(
        st.peak_resident_pages as usize <= budget_pages,
        "peak {} over budget {budget_pages}",
        st.peak_resident_pages
    );
    assert!(
        st.evicted_pages > pages as u64,
        "the reclaimer must have been busy"
    );
    assert!(st.major_faults > 0);
    if object_pages > 0 {
        assert!(st.object_pages > 0, "no object was fetched whole: {st}");
    }
}

#[test]
fn sigbus_eight_threads_two_percent_budget() {
    hammer(
        FaultMode::Sigbus,
        PolicyKind::Clock,
        PrefetchKind::Readahead,
        Arc::new(Memory::new()),
        2048,
        40,
        8,
        3,
    );
}

/// The same with the hot set learnt by unmapping alone (no accessed bits).
#[test]
fn sigbus_six_threads_three_percent_budget_unmap_test_only() {
    hammer_with(
        FaultMode::Sigbus,
        PolicyKind::Clock,
        PrefetchKind::Readahead,
        Arc::new(Memory::new()),
        2048,
        60,
        6,
        2,
        false,
        0,
    );
}

#[test]
fn sigbus_fifo_majority_one_percent_budget() {
    hammer(
        FaultMode::Sigbus,
        PolicyKind::Fifo,
        PrefetchKind::Majority,
        Arc::new(Memory::new()),
        2048,
        20,
        6,
        3,
    );
}

#[test]
fn sigbus_six_threads_two_percent_budget_objects_mapped_whole() {
    hammer_with(
        FaultMode::Sigbus,
        PolicyKind::Clock,
        PrefetchKind::Readahead,
        Arc::new(Memory::new()),
        2048,
        41,
        6,
        3,
        true,
        8,
    );
}

#[test]
fn thread_mode_six_threads_five_percent_budget() {
    hammer(
        FaultMode::Thread,
        PolicyKind::Clock,
        PrefetchKind::None,
        Arc::new(Memory::new()),
        1024,
        51,
        6,
        2,
    );
}

/// The remote tier (a fake node on loopback): faults race each other and write-back
/// over several connections.
#[test]
fn sigbus_remote_tier_six_threads_two_percent_budget() {
    let node = fake_node::FakeNode::start(b"");
    let tier = Remote::connect(RemoteConfig::new(node.addr.to_string())).unwrap();
    hammer(
        FaultMode::Sigbus,
        PolicyKind::Clock,
        PrefetchKind::Readahead,
        Arc::new(tier),
        1024,
        20,
        6,
        2,
    );
}

#[test]
fn budget_changes_while_threads_fault() {
    let engine = Arc::new(Engine::builder().local_budget(64 * PAGE).build().unwrap());
    let region = engine.map(1024 * PAGE).unwrap();
    let base = region.as_ptr() as usize;
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        for t in 0..4usize {
            let stop = stop.clone();
            s.spawn(move || {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    for p in (t..1024).step_by(4) {
                        let w = (base + p * PAGE) as *mut u64;
                        // SAFETY: inside the region; page p belongs to thread t.
                        unsafe {
                            w.write_volatile(round);
                            assert_eq!(w.read_volatile(), round);
                        }
                    }
                }
                for p in (t..1024).step_by(4) {
                    // SAFETY: inside the region.
                    let got = unsafe { ((base + p * PAGE) as *const u64).read_volatile() };
                    assert_eq!(got, round);
                }
            });
        }
        for b in [16usize, 200, 32, 500, 20, 64] {
            std::thread::sleep(std::time::Duration::from_millis(40));
            engine.set_budget(b * PAGE).unwrap();
            assert!(engine.stats().resident_pages as usize <= b);
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// First touches from many threads at once, interleaved page by page, so that the
/// zero-fill runs one thread maps run over pages others are faulting on, while a 3%
/// budget keeps the reclaimer evicting them (all-zero pages are freed without a far
/// copy, touched ones written back). Every page ends with exactly what its thread wrote.
#[test]
fn first_touches_race_zero_fill_runs_and_the_reclaimer() {
    // Runs need spare frames, which the background reclaimer keeps only when it gets CPU
    // time: on a machine loaded by other tests a round can go without one run. Every
    // round must be right; one of a few must have mapped runs.
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let st = zero_fill_race_round();
        if st.zero_ahead_pages > 0 {
            return;
        }
        rounds.push(st.to_string());
    }
    panic!("no round mapped a zero-fill run: {rounds:#?}");
}

/// One round of `first_touches_race_zero_fill_runs_and_the_reclaimer`: checks every page
/// and returns the engine's figures.
fn zero_fill_race_round() -> farmem::Stats {
    const PAGES: usize = 4096;
    const THREADS: usize = 6;
    let engine = Engine::builder()
        .local_budget(128 * PAGE)
        .backend(Arc::new(Memory::new()))
        .build()
        .unwrap();
    let region = engine.map(PAGES * PAGE).unwrap();
    let base = region.as_ptr() as usize;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                // Thread t writes pages t, t + THREADS, ... front to back, one word each,
                // and checks that the rest of the page still reads zero.
                for p in (t..PAGES).step_by(THREADS) {
                    let page = (base + p * PAGE) as *mut u64;
                    // SAFETY: inside the region; page p belongs to thread t alone.
                    unsafe { page.add(p % 512).write_volatile(p as u64 + 1) };
                    // SAFETY: as above.
                    let other = unsafe { page.add((p + 1) % 512).read_volatile() };
                    assert_eq!(other, 0, "page {p}: a word nobody wrote");
                }
            });
        }
    });
    for p in 0..PAGES {
        let page = (base + p * PAGE) as *const u64;
        for w in 0..PAGE / 8 {
            // SAFETY: inside the region.
            let v = unsafe { page.add(w).read_volatile() };
            let want = if w == p % 512 { p as u64 + 1 } else { 0 };
            assert_eq!(v, want, "page {p} word {w}");
        }
    }
    let st = engine.stats();
    assert!(st.peak_resident_pages <= 128, "{st}");
    st
}
