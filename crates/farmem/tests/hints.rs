//! Eviction hints (`Region::set_evict_hint`, a plug-in's `priority`): pages hinted Keep
//! stay local while others can go, pages hinted EvictFirst go before pages in use, and a
//! hint that would keep everything never stops reclaim.

use farmem::{Engine, PrefetchKind, Priority, Region};

const PAGE: usize = 4096;

fn engine(budget_pages: usize) -> Engine {
    Engine::builder()
        .local_budget(budget_pages * PAGE)
        .prefetch(PrefetchKind::None)
        .build()
        .unwrap()
}

fn touch(r: &Region, page: usize, v: u64) {
    r.write(page * PAGE, &v.to_ne_bytes()).unwrap();
}

fn read(r: &Region, page: usize) -> u64 {
    let mut b = [0u8; 8];
    r.read(page * PAGE, &mut b).unwrap();
    u64::from_ne_bytes(b)
}

/// Major faults taken re-reading pages `0..16` after 400 other pages were streamed
/// through a 64-page budget, with or without a Keep hint on them; every value checked.
fn faults_on_kept_pages(hint: bool) -> u64 {
    let e = engine(64);
    let r = e.map(512 * PAGE).unwrap();
    let base = r.as_ptr() as usize;
    if hint {
        r.set_evict_hint(move |a| {
            if a - base < 16 * PAGE {
                Priority::Keep
            } else {
                Priority::Normal
            }
        });
    }
    for p in 0..512 {
        touch(&r, p, p as u64 * 3 + 1);
    }
    for _ in 0..3 {
        for p in 0..16 {
            assert_eq!(read(&r, p), p as u64 * 3 + 1);
        }
        for p in 16..512 {
            assert_eq!(read(&r, p), p as u64 * 3 + 1);
        }
    }
    e.reset_stats();
    for p in 0..16 {
        assert_eq!(read(&r, p), p as u64 * 3 + 1);
    }
    let st = e.stats();
    if hint {
        assert!(
            st.kept_by_hint == 0,
            "reset_stats clears the hint counter too"
        );
    }
    st.major_faults
}

#[test]
fn pages_hinted_keep_stay_local_while_others_stream_through() {
    let without = faults_on_kept_pages(false);
    let with = faults_on_kept_pages(true);
    assert!(
        without >= 8,
        "without a hint the pages were evicted: {without} faults"
    );
    assert!(
        with <= 2,
        "kept pages faulted {with} times (without the hint: {without})"
    );
}

#[test]
fn a_hint_that_keeps_everything_does_not_stop_reclaim() {
    let e = engine(32);
    let r = e.map(256 * PAGE).unwrap();
    r.set_evict_hint(|_| Priority::Keep);
    for round in 0..3u64 {
        for p in 0..256 {
            touch(&r, p, p as u64 ^ round);
        }
        for p in 0..256 {
            assert_eq!(read(&r, p), p as u64 ^ round);
        }
    }
    let st = e.stats();
    assert!(st.resident_pages <= st.budget_pages, "{st}");
    assert!(st.evicted_pages > 256, "{st}");
}

/// Major faults on pages `0..8` while they and pages `8..16` are touched between every
/// step of a stream through 624 other pages (so both sets are the hottest pages there
/// are), with or without an EvictFirst hint on `0..8`; every value checked.
fn faults_on_hot_pages(hint: bool) -> (u64, u64) {
    let e = engine(64);
    let r = e.map(640 * PAGE).unwrap();
    let base = r.as_ptr() as usize;
    if hint {
        r.set_evict_hint(move |a| {
            if a - base < 8 * PAGE {
                Priority::EvictFirst
            } else {
                Priority::Normal
            }
        });
    }
    for p in 0..640 {
        touch(&r, p, p as u64 + 7);
    }
    let (mut hinted, mut other) = (0, 0);
    let majors = |e: &Engine| e.stats().major_faults;
    for p in 16..640 {
        for (set, n) in [(0..8, &mut hinted), (8..16, &mut other)] {
            let before = majors(&e);
            for q in set {
                assert_eq!(read(&r, q), q as u64 + 7);
            }
            *n += majors(&e) - before;
        }
        assert_eq!(read(&r, p), p as u64 + 7);
    }
    (hinted, other)
}

#[test]
fn pages_hinted_evict_first_go_before_pages_in_use() {
    let (plain, _) = faults_on_hot_pages(false);
    let (hinted, other) = faults_on_hot_pages(true);
    assert!(
        hinted > plain + 50 && hinted > other + 50,
        "pages hinted out faulted {hinted} times, the same pages without the hint {plain}, the other hot pages {other}"
    );
}
