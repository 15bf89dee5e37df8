//! The pointer chase (`Builder::pointer_prefetch`, `farmem::prefetch::pointer`): a walk of
//! a far linked structure is fetched ahead of the walk, in both fault modes, with and
//! without a block table; random pointer graphs full of stale, interior and garbage
//! pointers read back exactly under a tiny budget with threads walking them while the
//! reclaimer evicts.

use farmem::heap::{Heap, HeapKind};
use farmem::{Advice, Engine, FaultMode, Region};

const PAGE: usize = 4096;

/// xorshift
fn rng(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn engine(budget: usize, mode: FaultMode, pointer: bool) -> &'static Engine {
    Box::leak(Box::new(
        Engine::builder()
            .local_budget(budget)
            .fault_mode(mode)
            .prefetch(farmem::PrefetchKind::None)
            .pointer_prefetch(pointer)
            .build()
            .unwrap(),
    ))
}

/// A list node of 1 KiB: four to a page, so a walk in shuffled order lands on a new page
/// almost every step.
#[repr(C)]
struct Node {
    next: *mut Node,
    value: u64,
    pad: [u64; 126],
}

/// Builds a list of `n` nodes from `heap` linked in a shuffled order; returns its head.
fn shuffled_list(heap: &Heap, n: usize, seed: u64) -> *mut Node {
    let mut s = seed;
    let mut nodes: Vec<*mut Node> = (0..n)
        .map(|_| {
            heap.alloc(std::mem::size_of::<Node>(), 16)
                .unwrap()
                .as_ptr()
                .cast()
        })
        .collect();
    for i in (1..n).rev() {
        nodes.swap(i, (rng(&mut s) % (i as u64 + 1)) as usize);
    }
    for (i, &p) in nodes.iter().enumerate() {
        // SAFETY: a live block of the heap, as large as a Node.
        unsafe {
            p.write(Node {
                next: nodes.get(i + 1).copied().unwrap_or(std::ptr::null_mut()),
                value: i as u64 * 7 + 1,
                pad: [i as u64; 126],
            })
        };
    }
    nodes[0]
}

/// Walks the list, checking every node; returns the major faults the walk took.
fn walk(e: &Engine, head: *mut Node, n: usize) -> u64 {
    let before = e.stats().major_faults;
    let mut p = head;
    let mut i = 0u64;
    while !p.is_null() {
        // SAFETY: a node of the list built above, live for the test.
        let node = unsafe { &*p };
        assert_eq!(node.value, i * 7 + 1, "node {i} read back wrong");
        assert_eq!(node.pad[125], i, "node {i}'s tail read back wrong");
        p = node.next;
        i += 1;
    }
    assert_eq!(i as usize, n);
    e.stats().major_faults - before
}

/// The same walk, all far at the start, with and without the chase: (majors without,
/// majors with, pages the chase prefetched).
fn list_walk(mode: FaultMode) -> (u64, u64, u64) {
    const N: usize = 4000;
    let mut out = [0u64; 3];
    for pointer in [false, true] {
        let e = engine(64 * PAGE, mode, pointer);
        let region: &'static Region = Box::leak(Box::new(e.map(64 << 20).unwrap()));
        let heap = Heap::new(region, HeapKind::Farslab).unwrap();
        let head = shuffled_list(&heap, N, 11);
        region.advise(0, region.len(), Advice::DontNeed).unwrap();
        e.reset_stats();
        let majors = walk(e, head, N);
        out[pointer as usize] = majors;
        if pointer {
            out[2] = e.stats().pointer_targets;
        }
    }
    out.into()
}

#[test]
fn a_far_linked_list_is_fetched_ahead_of_its_walk_in_the_faulting_thread() {
    let (without, with, targets) = list_walk(FaultMode::Sigbus);
    // About one fault per node without; the chase reads each fetched node's `next` and
    // fetches up to DEPTH nodes ahead, and a prefetch hit goes on from there.
    assert!(without > 2000, "without the chase: {without} major faults");
    assert!(
        with * 3 < without,
        "with the chase: {with} major faults against {without} without ({targets} blocks prefetched)"
    );
}

#[test]
fn a_far_linked_list_is_fetched_ahead_of_its_walk_on_handler_threads() {
    // No registers in this mode: only the fetched blocks' words.
    let (without, with, targets) = list_walk(FaultMode::Thread);
    assert!(without > 2000, "without the chase: {without} major faults");
    assert!(
        with * 3 < without,
        "with the chase: {with} major faults against {without} without ({targets} blocks prefetched)"
    );
}

#[test]
fn without_a_block_table_a_pointer_stands_for_the_bytes_it_points_at() {
    // A raw region (no heap): nodes at shuffled page-aligned places, linked by hand.
    const N: usize = 1500;
    let mut majors = [0u64; 2];
    for pointer in [false, true] {
        let e = engine(32 * PAGE, FaultMode::Auto, pointer);
        let region = e.map(N * PAGE).unwrap();
        let base = region.as_ptr() as usize;
        let mut order: Vec<usize> = (0..N).collect();
        let mut s = 5;
        for i in (1..N).rev() {
            order.swap(i, (rng(&mut s) % (i as u64 + 1)) as usize);
        }
        for (i, &slot) in order.iter().enumerate() {
            let next = order.get(i + 1).map_or(0, |&n| base + n * PAGE) as u64;
            // SAFETY: page `slot` of the region, written through the mapping.
            unsafe {
                let p = (base + slot * PAGE) as *mut u64;
                p.write(next);
                p.add(1).write(i as u64 ^ 0xabcd);
            }
        }
        region.advise(0, region.len(), Advice::DontNeed).unwrap();
        e.reset_stats();
        let mut p = base + order[0] * PAGE;
        let mut i = 0u64;
        while p != 0 {
            // SAFETY: a node written above.
            let (next, v) = unsafe { (*(p as *const u64), *(p as *const u64).add(1)) };
            assert_eq!(v, i ^ 0xabcd, "node {i} read back wrong");
            p = next as usize;
            i += 1;
        }
        assert_eq!(i as usize, N);
        majors[pointer as usize] = e.stats().major_faults;
    }
    assert!(
        majors[1] * 3 < majors[0],
        "with the chase {} major faults, without {}",
        majors[1],
        majors[0]
    );
}

/// A node of a random graph: four edges to random nodes, a few garbage words that look
/// like pointers (into freed blocks, into the middle of blocks, past the heap's end, at
/// the region's last byte), and a payload that says which node it is.
#[repr(C)]
struct GraphNode {
    edges: [usize; 4],
    junk: [usize; 4],
    id: u64,
    payload: [u64; 7],
}

fn payload(id: u64, k: usize) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64
}

#[test]
fn random_pointer_graphs_read_back_exactly_while_threads_walk_them_and_the_reclaimer_evicts() {
    for mode in [FaultMode::Sigbus, FaultMode::Thread] {
        let e = engine(24 * PAGE, mode, true);
        let region: &'static Region = Box::leak(Box::new(e.map(64 << 20).unwrap()));
        let heap = Heap::new(region, HeapKind::Farslab).unwrap();
        let (base, len) = (region.as_ptr() as usize, region.len());
        let mut s = 99u64;
        // Mixed sizes: 128-byte nodes (mixed units), and some padded into larger classes.
        let n = 3000;
        let nodes: Vec<usize> = (0..n)
            .map(|i| {
                let size = if i % 3 == 0 { 128 } else { 128 + 64 * (i % 40) };
                heap.alloc(size, 16).unwrap().as_ptr() as usize
            })
            .collect();
        // Freed blocks whose addresses stay in the graph as stale pointers.
        let freed: Vec<usize> = (0..200)
            .map(|_| {
                let p = heap.alloc(512, 16).unwrap();
                let a = p.as_ptr() as usize;
                // SAFETY: a block just allocated.
                unsafe { heap.free(p) };
                a
            })
            .collect();
        for (i, &p) in nodes.iter().enumerate() {
            let pick = |s: &mut u64| nodes[(rng(s) % n as u64) as usize];
            let node = GraphNode {
                edges: [pick(&mut s), pick(&mut s), pick(&mut s), pick(&mut s)],
                junk: [
                    freed[(rng(&mut s) % freed.len() as u64) as usize],
                    pick(&mut s) + 8 * (1 + (rng(&mut s) % 14) as usize),
                    base + len - 1,
                    base + len + (rng(&mut s) % 4096) as usize,
                ],
                id: i as u64,
                payload: std::array::from_fn(|k| payload(i as u64, k)),
            };
            // SAFETY: a live block of at least 128 bytes, as large as a GraphNode.
            unsafe { (p as *mut GraphNode).write(node) };
        }
        region.advise(0, len, Advice::DontNeed).unwrap();
        let index: std::collections::HashMap<usize, u64> = nodes
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, i as u64))
            .collect();
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                let index = &index;
                let nodes = &nodes;
                sc.spawn(move || {
                    let mut s = 1234 + t;
                    let mut p = nodes[(t * 7) as usize];
                    for _ in 0..4000 {
                        // SAFETY: every edge is a live node written above.
                        let node = unsafe { &*(p as *const GraphNode) };
                        let id = index[&p];
                        assert_eq!(node.id, id, "{mode}: node read back as another");
                        for (k, &v) in node.payload.iter().enumerate() {
                            assert_eq!(v, payload(id, k), "{mode}: node {id} word {k}");
                        }
                        p = node.edges[(rng(&mut s) % 4) as usize];
                    }
                });
            }
        });
        let st = e.stats();
        assert!(
            st.pointer_targets > 0,
            "{mode}: the chase never prefetched anything"
        );
        assert!(st.resident_pages <= st.budget_pages);
    }
}

#[test]
fn the_chase_can_be_turned_on_and_off_per_region() {
    const N: usize = 2000;
    let e = engine(64 * PAGE, FaultMode::Auto, true);
    let region: &'static Region = Box::leak(Box::new(e.map(64 << 20).unwrap()));
    let heap = Heap::new(region, HeapKind::Farslab).unwrap();
    let head = shuffled_list(&heap, N, 3);
    region.set_pointer_prefetch(false);
    region.advise(0, region.len(), Advice::DontNeed).unwrap();
    e.reset_stats();
    walk(e, head, N);
    assert_eq!(e.stats().pointer_targets, 0, "the chase ran while off");
    region.set_pointer_prefetch(true);
    region.advise(0, region.len(), Advice::DontNeed).unwrap();
    walk(e, head, N);
    assert!(
        e.stats().pointer_targets > 0,
        "the chase did not run when on"
    );
}
