//! Heaps over far regions (`farmem::heap`): every allocator keeps every block's bytes
//! under a tiny budget with threads allocating, resizing and freeing each other's blocks;
//! bad requests get None; and farslab's promises (dense small objects, frees that never
//! fault) hold.

use farmem::Engine;
use farmem::heap::{Heap, HeapKind};
use std::ptr::NonNull;
use std::sync::Mutex;

const PAGE: usize = 4096;

fn engine(budget: usize) -> &'static Engine {
    Box::leak(Box::new(
        Engine::builder().local_budget(budget).build().unwrap(),
    ))
}

/// A heap's region lives for the rest of the process.
fn map(e: &Engine, len: usize) -> &'static farmem::Region {
    Box::leak(Box::new(e.map(len).unwrap()))
}

/// xorshift
fn rng(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn size_for(s: &mut u64) -> usize {
    match rng(s) % 100 {
        0..=59 => 1 + (rng(s) % 128) as usize,
        60..=89 => 1 + (rng(s) % 8192) as usize,
        90..=98 => 8193 + (rng(s) % (120 << 10)) as usize,
        _ => (1 << 20) + (rng(s) % (300 << 10)) as usize,
    }
}

struct Block {
    p: NonNull<u8>,
    len: usize,
    tag: u64,
}

// SAFETY: a block is plain memory of the heap, used by one thread at a time.
unsafe impl Send for Block {}

fn fill(b: &Block) {
    // SAFETY: a live block of at least `len` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(b.p.as_ptr(), b.len) };
    for (i, x) in s.iter_mut().enumerate().step_by(61) {
        *x = (b.tag as usize).wrapping_add(i) as u8;
    }
    s[b.len - 1] = b.tag as u8 ^ 0x5a;
}

fn check(b: &Block) {
    // SAFETY: as above.
    let s = unsafe { std::slice::from_raw_parts(b.p.as_ptr(), b.len) };
    for (i, x) in s.iter().enumerate().step_by(61) {
        if i != b.len - 1 {
            assert_eq!(
                *x,
                (b.tag as usize).wrapping_add(i) as u8,
                "block {} byte {i}",
                b.tag
            );
        }
    }
    assert_eq!(
        s[b.len - 1],
        b.tag as u8 ^ 0x5a,
        "block {} last byte",
        b.tag
    );
}

/// Four threads, 1% of the heap's data local: allocate, write, resize, free (a third of
/// the frees are another thread's blocks), and check every byte pattern on the way out.
fn torture(kind: HeapKind) {
    let e = engine(2 << 20);
    let r = map(e, 1 << 30);
    let heap = Heap::new(r, kind).unwrap();
    let handoff: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (heap, handoff) = (&heap, &handoff);
            s.spawn(move || {
                let mut seed = 0x9e3779b97f4a7c15 ^ (t + 1);
                let mut live: Vec<Block> = Vec::new();
                for i in 0..3000u64 {
                    let op = rng(&mut seed) % 10;
                    if op < 5 || live.is_empty() {
                        let len = size_for(&mut seed);
                        let align = if rng(&mut seed).is_multiple_of(8) {
                            64 << (rng(&mut seed) % 7)
                        } else {
                            16
                        };
                        let p = heap.alloc(len, align).expect("room");
                        assert_eq!(p.as_ptr() as usize % align, 0, "{kind} align {align}");
                        // SAFETY: a live block.
                        assert!(unsafe { heap.usable_size(p) } >= len);
                        let b = Block {
                            p,
                            len,
                            tag: (t << 32) | i,
                        };
                        fill(&b);
                        live.push(b);
                    } else if op < 7 {
                        let k = (rng(&mut seed) as usize) % live.len();
                        let mut b = live.swap_remove(k);
                        check(&b);
                        let len = size_for(&mut seed);
                        // SAFETY: a live block of this heap.
                        let q = unsafe { heap.realloc(b.p, len) }.expect("room");
                        let kept = b.len.min(len);
                        // The old contents survive up to the smaller length.
                        let old = Block {
                            p: q,
                            len: kept,
                            tag: b.tag,
                        };
                        if kept == b.len {
                            check(&old);
                        }
                        b = Block {
                            p: q,
                            len,
                            tag: b.tag ^ 0xabc,
                        };
                        fill(&b);
                        live.push(b);
                    } else {
                        let k = (rng(&mut seed) as usize) % live.len();
                        let b = live.swap_remove(k);
                        check(&b);
                        if op == 9 {
                            handoff.lock().unwrap().push(b);
                        } else {
                            // SAFETY: a live block, not used again.
                            unsafe { heap.free(b.p) };
                        }
                    }
                    if i % 64 == 0 {
                        let theirs: Vec<Block> = std::mem::take(&mut *handoff.lock().unwrap());
                        for b in theirs {
                            check(&b);
                            // SAFETY: a live block another thread gave up.
                            unsafe { heap.free(b.p) };
                        }
                    }
                }
                for b in live {
                    check(&b);
                    // SAFETY: as above.
                    unsafe { heap.free(b.p) };
                }
            });
        }
    });
    for b in handoff.into_inner().unwrap() {
        check(&b);
        // SAFETY: as above.
        unsafe { heap.free(b.p) };
    }
    let st = heap.stats();
    assert_eq!(st.live_blocks, 0, "{st}");
    assert_eq!(st.live_bytes, 0, "{st}");
    assert!(st.requested_bytes > 0 && st.handed_out_bytes >= st.requested_bytes);
    let es = e.stats();
    assert!(
        es.evicted_pages > 0,
        "the budget was tiny, pages went far: {es}"
    );
}

#[test]
fn farslab_keeps_every_byte_under_threads_and_a_tiny_budget() {
    torture(HeapKind::Farslab);
}

#[test]
fn mimalloc_keeps_every_byte_under_threads_and_a_tiny_budget() {
    torture(HeapKind::Mimalloc);
}

#[test]
fn tlsf_keeps_every_byte_under_threads_and_a_tiny_budget() {
    torture(HeapKind::Tlsf);
}

#[test]
fn allocator_names_are_checked() {
    for kind in HeapKind::ALL {
        assert_eq!(kind.name().parse::<HeapKind>(), Ok(kind));
    }
    let err = "jemalloc".parse::<HeapKind>().unwrap_err();
    assert!(err.contains("farslab, mimalloc or tlsf"), "{err}");
    let e = engine(4 << 20);
    assert!(
        Heap::new(map(e, 1 << 20), HeapKind::Farslab).is_err(),
        "region too small"
    );
}

#[test]
fn every_allocator_refuses_bad_alignment_and_overflow() {
    for kind in HeapKind::ALL {
        let e = engine(4 << 20);
        let r = map(e, 256 << 20);
        let heap = Heap::new(r, kind).unwrap();
        assert!(heap.alloc(10, 0).is_none(), "{kind}");
        assert!(heap.alloc(10, 48).is_none(), "{kind}");
        assert!(heap.alloc(usize::MAX, 16).is_none(), "{kind}");
        assert!(
            heap.alloc(usize::MAX - 10, 16).is_none(),
            "{kind}: overflow"
        );
        assert!(
            heap.alloc(1 << 30, 16).is_none(),
            "{kind}: more than the region"
        );
        let z = heap.alloc(0, 16).expect("malloc(0) is a block");
        // SAFETY: live.
        unsafe { heap.free(z) };
        let p = heap.alloc(100, 4096).unwrap();
        assert_eq!(p.as_ptr() as usize % 4096, 0);
        // SAFETY: live.
        unsafe { heap.free(p) };
    }
}

/// Small objects allocated between large values stay together: 2,000 key-sized objects
/// interleaved with 2,000 values of 4 KiB lie on a handful of pages under farslab, and
/// spread over thousands under TLSF.
#[test]
fn farslab_keeps_small_objects_dense_between_large_values() {
    let pages_of_small = |kind| {
        let e = engine(64 << 20);
        let r = map(e, 1 << 30);
        let heap = Heap::new(r, kind).unwrap();
        let mut pages = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let k = heap.alloc(24, 16).unwrap();
            let _v = heap.alloc(4100, 16).unwrap();
            pages.insert(k.as_ptr() as usize / PAGE);
        }
        pages.len()
    };
    let slab = pages_of_small(HeapKind::Farslab);
    let tlsf = pages_of_small(HeapKind::Tlsf);
    assert!(slab <= 16, "farslab: 2,000 small objects on {slab} pages");
    assert!(
        tlsf >= 1000,
        "tlsf: {tlsf} pages (the comparison the test relies on)"
    );
}

/// Small objects of different sizes allocated together share a page under farslab (a
/// key's dictionary entry, string and header): 1,000 triples of 24, 40 and 100 bytes.
#[test]
fn farslab_keeps_small_objects_allocated_together_on_one_page() {
    let e = engine(64 << 20);
    let heap = Heap::new(map(e, 1 << 30), HeapKind::Farslab).unwrap();
    let mut together = 0;
    for _ in 0..1000 {
        let pages: Vec<usize> = [24, 40, 100]
            .map(|n| heap.alloc(n, 16).unwrap().as_ptr() as usize / PAGE)
            .to_vec();
        if pages.iter().all(|&p| p == pages[0]) {
            together += 1;
        }
    }
    assert!(
        together >= 950,
        "only {together} of 1,000 triples share a page"
    );
}

/// A free never touches the freed block under farslab: freeing 16 MiB of evicted blocks
/// takes no fault at all.
#[test]
fn farslab_frees_do_not_fault_far_blocks_in() {
    let e = engine(1 << 20);
    let r = map(e, 1 << 30);
    let heap = Heap::new(r, HeapKind::Farslab).unwrap();
    let blocks: Vec<_> = (0..4000)
        .map(|i| {
            let p = heap.alloc(if i % 2 == 0 { 4000 } else { 100 }, 16).unwrap();
            // SAFETY: a live block of at least 100 bytes.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0xab, 100) };
            p
        })
        .collect();
    let before = e.stats();
    assert!(before.far_pages > 100, "most blocks are far: {before}");
    for p in blocks {
        // SAFETY: live, not used again.
        unsafe { heap.free(p) };
    }
    let after = e.stats();
    assert_eq!(
        after.faults(),
        before.faults(),
        "frees faulted: {} major, {} minor, {} zero",
        after.major_faults - before.major_faults,
        after.minor_faults - before.minor_faults,
        after.zero_faults - before.zero_faults
    );
    assert_eq!(heap.stats().live_blocks, 0);
}

/// A freed slot's whole pages are forgotten by the far tier under farslab: 6 KiB blocks
/// (6,144-byte slots: one whole page each, and one shared with a neighbour) written,
/// evicted, freed and allocated again fetch only the shared pages when the new owner
/// writes them: 1,120 pages for 1,000 blocks here, 2,989 when the dead bytes were fetched.
#[test]
fn farslab_reused_slots_do_not_fetch_dead_bytes() {
    let e = engine(1 << 20);
    let r = map(e, 1 << 30);
    let heap = Heap::new(r, HeapKind::Farslab).unwrap();
    const N: usize = 2000;
    const SIZE: usize = 6 << 10;
    let blocks: Vec<_> = (0..N)
        .map(|_| {
            let p = heap.alloc(SIZE, 16).unwrap();
            // SAFETY: a live block of SIZE bytes.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0xab, SIZE) };
            p
        })
        .collect();
    assert!(
        e.stats().far_pages > 1000,
        "most blocks are far: {}",
        e.stats()
    );
    // Every other block, so that no slab empties (an empty slab is given back whole).
    let (freed, kept): (Vec<_>, Vec<_>) = blocks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    for (_, p) in freed {
        // SAFETY: live, not used again.
        unsafe { heap.free(p) };
    }
    let before = e.stats();
    let again: Vec<_> = (0..N / 2)
        .map(|_| {
            let p = heap.alloc(SIZE, 16).unwrap();
            // SAFETY: a live block of SIZE bytes.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0xcd, SIZE) };
            p
        })
        .collect();
    let after = e.stats();
    let fetched = after.fetched_pages - before.fetched_pages;
    assert!(
        (fetched as usize) < 3 * N / 4,
        "{fetched} pages fetched for {} reused {SIZE}-byte blocks: dead bytes were fetched\n{after}",
        N / 2
    );
    for p in again.into_iter().chain(kept.into_iter().map(|(_, p)| p)) {
        // SAFETY: live, not used again.
        unsafe { heap.free(p) };
    }
}

/// The heap's observer hears of every block handed out (with the size asked for) and
/// every block about to be freed (with its usable size), a moving realloc as both; it is
/// set once.
#[test]
fn the_observer_hears_every_allocation_and_free() {
    use farmem::heap::HeapEvent;
    use std::sync::{Arc, Mutex};
    let e = engine(64 * PAGE);
    let region = map(e, 64 << 20);
    let heap = Heap::new(region, HeapKind::Farslab).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    assert!(heap.set_observer(move |ev| s2.lock().unwrap().push(ev)));
    assert!(!heap.set_observer(|_| {}), "a second observer was taken");
    let a = heap.alloc(100, 16).unwrap();
    let b = heap.alloc(20000, 16).unwrap();
    // SAFETY: live blocks of this heap.
    let c = unsafe { heap.realloc(a, 50000) }.unwrap();
    // SAFETY: as above.
    unsafe {
        heap.free(b);
        heap.free(c);
    }
    let seen = seen.lock().unwrap();
    let (ua, ub, uc) = (112, 20480, 53248);
    assert_eq!(
        *seen,
        [
            HeapEvent::Alloc {
                addr: a.as_ptr() as usize,
                size: 100
            },
            HeapEvent::Alloc {
                addr: b.as_ptr() as usize,
                size: 20000
            },
            HeapEvent::Free {
                addr: a.as_ptr() as usize,
                size: ua
            },
            HeapEvent::Alloc {
                addr: c.as_ptr() as usize,
                size: 50000
            },
            HeapEvent::Free {
                addr: b.as_ptr() as usize,
                size: ub
            },
            HeapEvent::Free {
                addr: c.as_ptr() as usize,
                size: uc
            },
        ]
    );
}
