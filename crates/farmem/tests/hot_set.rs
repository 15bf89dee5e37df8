//! The hot set: pages in use stay mapped while cold pages stream through a small budget.
//!
//! With the hardware's accessed bits (counted per 2 MiB chunk from /proc/self/smaps), a
//! hot page pays two minor faults to enter the hot set and none afterwards. Learnt by
//! unmapping alone, it pays one every lap of the clock hand: the fault storm.

use farmem::backend::Memory;
use farmem::{Engine, PrefetchKind};
use std::sync::Arc;

const PAGE: usize = 4096;
/// A chunk: the unit the accessed bits are counted in.
const CHUNK: usize = 512;
const HOT: usize = 64;
const BUDGET: usize = 512;
const REGION: usize = 4 * CHUNK;

fn read(r: &farmem::Region, page: usize) -> u64 {
    let mut b = [0u8; 8];
    r.read(page * PAGE, &mut b).unwrap();
    u64::from_ne_bytes(b)
}

/// Rounds of: touch every hot page (in chunk 0), then 64 pages of a cold stream cycling
/// through chunks 1-3. Returns the minor faults of the measured rounds and the stats.
fn hot_and_cold(accessed_bits: bool) -> (u64, farmem::Stats) {
    let engine = Engine::builder()
        .local_budget(BUDGET * PAGE)
        .backend(Arc::new(Memory::new()))
        .prefetch(PrefetchKind::None)
        .accessed_bits(accessed_bits)
        .build()
        .unwrap();
    let r = engine.map(REGION * PAGE).unwrap();
    for p in 0..REGION {
        r.write(p * PAGE, &(p as u64 * 7 + 1).to_ne_bytes())
            .unwrap();
    }
    let cold: Vec<usize> = (CHUNK..REGION).collect();
    let mut next = 0;
    let mut round = |engine: &Engine| {
        for p in 0..HOT {
            assert_eq!(read(&r, p), p as u64 * 7 + 1, "hot page {p}");
        }
        for _ in 0..64 {
            let p = cold[next % cold.len()];
            next += 1;
            assert_eq!(read(&r, p), p as u64 * 7 + 1, "cold page {p}");
        }
        let st = engine.stats();
        assert!(st.resident_pages as usize <= BUDGET, "over budget: {st}");
    };
    // Warm up: a few laps of the hand (a lap is about eight rounds here).
    for _ in 0..60 {
        round(&engine);
    }
    let before = engine.stats();
    for _ in 0..200 {
        round(&engine);
    }
    let after = engine.stats();
    assert!(
        after.evicted_pages - before.evicted_pages > 5_000,
        "the cold stream must keep the reclaimer busy: {after}"
    );
    (after.minor_faults - before.minor_faults, after)
}

#[test]
fn a_hot_set_learnt_from_accessed_bits_stays_mapped() {
    let (minor, st) = hot_and_cold(true);
    eprintln!("with accessed bits: {minor} minor faults\n{st}");
    assert!(
        st.counted_chunks > 0 && st.kept_mapped_pages > 0,
        "the accessed bits were read: {st}"
    );
    // About 25 laps of the hand: the hot pages must not pay a minor fault per lap.
    assert!(
        minor < HOT as u64 * 3,
        "{minor} minor faults for {HOT} hot pages over about 25 laps: {st}"
    );
}

#[test]
fn without_accessed_bits_every_lap_tests_the_hot_set_again() {
    let (minor, st) = hot_and_cold(false);
    eprintln!("without: {minor} minor faults\n{st}");
    assert_eq!(st.counted_chunks, 0, "{st}");
    assert_eq!(st.kept_mapped_pages, 0, "{st}");
    assert!(
        minor > HOT as u64 * 10,
        "{minor} minor faults: the unmapping test should cost a fault per hot page per lap: {st}"
    );
}
