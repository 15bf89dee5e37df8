//! Model-based test: random sequences of reads, writes, prefetches, advice, discards and
//! budget changes on a far region, checked against a plain byte array.

use farmem::backend::{Backend, Compressed, Memory};
use farmem::policy::PolicyKind;
use farmem::{Advice, Engine, FaultMode, PrefetchKind};
use proptest::prelude::*;
use std::sync::Arc;

const PAGE: usize = 4096;
const PAGES: usize = 96;

#[derive(Clone, Debug)]
enum Op {
    Write { off: usize, len: usize, seed: u8 },
    Read { off: usize, len: usize },
    Prefetch { page: usize, n: usize },
    Advise { page: usize, n: usize, advice: u8 },
    Discard { page: usize, n: usize },
    Budget { pages: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![1usize..64, 1usize..(3 * PAGE)];
    prop_oneof![
        4 => (0..PAGES * PAGE, len.clone(), any::<u8>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        4 => (0..PAGES * PAGE, len).prop_map(|(off, len)| Op::Read { off, len }),
        1 => (0..PAGES, 1usize..20).prop_map(|(page, n)| Op::Prefetch { page, n }),
        1 => (0..PAGES, 1usize..20, 0u8..5).prop_map(|(page, n, advice)| Op::Advise { page, n, advice }),
        1 => (0..PAGES, 1usize..8).prop_map(|(page, n)| Op::Discard { page, n }),
        1 => (16usize..48).prop_map(|pages| Op::Budget { pages }),
    ]
}

fn fill(seed: u8, off: usize, len: usize) -> Vec<u8> {
    // Half the bytes zero so the compressed tier compresses, some pages stay zero.
    (0..len)
        .map(|i| {
            if (off + i).is_multiple_of(2) {
                seed.wrapping_add((off + i) as u8) | 1
            } else {
                0
            }
        })
        .collect()
}

fn run(
    ops: &[Op],
    mode: FaultMode,
    policy: PolicyKind,
    prefetch: PrefetchKind,
    backend: Arc<dyn Backend>,
) {
    run_with(ops, mode, policy, prefetch, backend, true)
}

fn run_with(
    ops: &[Op],
    mode: FaultMode,
    policy: PolicyKind,
    prefetch: PrefetchKind,
    backend: Arc<dyn Backend>,
    accessed_bits: bool,
) {
    let engine = Engine::builder()
        .local_budget(24 * PAGE)
        .fault_mode(mode)
        .policy(policy)
        .prefetch(prefetch)
        .backend(backend)
        .accessed_bits(accessed_bits)
        .build()
        .unwrap();
    let region = engine.map(PAGES * PAGE).unwrap();
    let mut model = vec![0u8; PAGES * PAGE];
    let mut budget = 24;
    for op in ops {
        match *op {
            Op::Write { off, len, seed } => {
                let len = len.min(model.len() - off);
                let data = fill(seed, off, len);
                region.write(off, &data).unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
            Op::Read { off, len } => {
                let len = len.min(model.len() - off);
                let mut got = vec![0xAAu8; len];
                region.read(off, &mut got).unwrap();
                assert!(
                    got == model[off..off + len],
                    "read {off}+{len} differs from the model after {op:?}"
                );
            }
            Op::Prefetch { page, n } => {
                let n = n.min(PAGES - page);
                region.prefetch(page * PAGE, n * PAGE).unwrap();
            }
            Op::Advise { page, n, advice } => {
                let n = n.min(PAGES - page);
                let advice = [
                    Advice::Normal,
                    Advice::Sequential,
                    Advice::Random,
                    Advice::WillNeed,
                    Advice::DontNeed,
                ][advice as usize];
                region.advise(page * PAGE, n * PAGE, advice).unwrap();
            }
            Op::Discard { page, n } => {
                let n = n.min(PAGES - page);
                region.discard(page * PAGE, n * PAGE).unwrap();
                model[page * PAGE..(page + n) * PAGE].fill(0);
            }
            Op::Budget { pages } => {
                engine.set_budget(pages * PAGE).unwrap();
                budget = pages;
                let st = engine.stats();
                assert!(
                    st.resident_pages as usize <= budget,
                    "resident {} (region holds {}) over budget {budget} after a budget change",
                    st.resident_pages,
                    region.resident_pages()
                );
            }
        }
        let st = engine.stats();
        assert!(
            st.resident_pages as usize <= budget,
            "resident {} over budget {budget}",
            st.resident_pages
        );
    }
    // Everything, at the end.
    let mut all = vec![0u8; model.len()];
    region.read(0, &mut all).unwrap();
    for p in 0..PAGES {
        assert!(
            all[p * PAGE..(p + 1) * PAGE] == model[p * PAGE..(p + 1) * PAGE],
            "page {p} differs at the end"
        );
    }
    let st = engine.stats();
    assert!(st.peak_resident_pages as usize <= 48);
    assert!(st.resident_pages as usize <= budget);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sigbus_clock_mem(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops, FaultMode::Sigbus, PolicyKind::Clock, PrefetchKind::Readahead, Arc::new(Memory::new()));
    }

    #[test]
    fn sigbus_fifo_compressed_majority(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops, FaultMode::Sigbus, PolicyKind::Fifo, PrefetchKind::Majority, Arc::new(Compressed::lz4()));
    }

    /// The hot set learnt by unmapping alone (no accessed bits): the fallback path.
    #[test]
    fn sigbus_clock_mem_unmap_test_only(ops in proptest::collection::vec(op(), 1..120)) {
        run_with(&ops, FaultMode::Sigbus, PolicyKind::Clock, PrefetchKind::Readahead, Arc::new(Memory::new()), false);
    }

    #[test]
    fn thread_clock_compressed(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, FaultMode::Thread, PolicyKind::Clock, PrefetchKind::Readahead, Arc::new(Compressed::lz4()));
    }
}
