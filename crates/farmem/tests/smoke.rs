use farmem::{Engine, FaultMode, PrefetchKind};

fn roundtrip(mode: FaultMode, prefetch: PrefetchKind) {
    let engine = Engine::builder()
        .local_budget(64 * 4096)
        .fault_mode(mode)
        .prefetch(prefetch)
        .build()
        .unwrap();
    let region = engine.map(1024 * 4096).unwrap();
    let p = region.as_ptr() as *mut u64;
    let words = region.len() / 8;
    for i in 0..words {
        unsafe { p.add(i).write_volatile(i as u64 * 0x9E37_79B9) };
    }
    for i in 0..words {
        assert_eq!(
            unsafe { p.add(i).read_volatile() },
            i as u64 * 0x9E37_79B9,
            "word {i}"
        );
    }
    let st = engine.stats();
    eprintln!("{st}");
    assert!(st.peak_resident_pages <= 64);
    assert!(st.evicted_pages > 0);
}

#[test]
fn sigbus_roundtrip() {
    roundtrip(FaultMode::Sigbus, PrefetchKind::None);
}

#[test]
fn thread_roundtrip() {
    roundtrip(FaultMode::Thread, PrefetchKind::None);
}
