//! A huge region used sparsely costs memory only for what is used: the page tables of
//! farmem (24 bytes per page) come from lazily zeroed memory. Alone in its binary so that
//! the resident-memory reading is this test's.

use farmem::Engine;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[test]
fn a_256_gib_region_costs_only_what_is_touched() {
    let e = Engine::builder().local_budget(16 << 20).build().unwrap();
    let before = rss_bytes();
    // 64 Mi pages: 1.5 GiB of page tables if they were written out eagerly.
    let r = e.map(256 << 30).unwrap();
    let step = (r.len() / 4096) / 2000;
    for i in 0..2000usize {
        r.write(i * step * 4096, &(i as u64 + 1).to_ne_bytes())
            .unwrap();
    }
    for i in 0..2000usize {
        let mut b = [0u8; 8];
        r.read(i * step * 4096, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), i as u64 + 1);
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "mapping and touching 2000 pages grew RSS by {} MiB",
        grown >> 20
    );
    let err = e.map(1 << 62).unwrap_err().to_string();
    assert!(
        err.contains("at most") || err.contains("cannot allocate"),
        "{err}"
    );
}
