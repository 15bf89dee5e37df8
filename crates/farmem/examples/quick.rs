//! Quick throughput probe (not a benchmark of record; `farmem bench` is).
use farmem::{Engine, FaultMode, PrefetchKind, policy::PolicyKind};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let size: usize = a.get(1).map(|s| s.parse().unwrap()).unwrap_or(1024) << 20;
    let local: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(256) << 20;
    let mode: FaultMode = a
        .get(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(FaultMode::Sigbus);
    let policy: PolicyKind = a
        .get(4)
        .map(|s| s.parse().unwrap())
        .unwrap_or(PolicyKind::Clock);
    let e = Engine::builder()
        .local_budget(local)
        .fault_mode(mode)
        .policy(policy)
        .prefetch(PrefetchKind::None)
        .build()
        .unwrap();
    let r = e.map(size).unwrap();
    let pages = size / 4096;
    let base = r.as_ptr();
    let t = Instant::now();
    for p in 0..pages {
        unsafe { (base.add(p * 4096) as *mut u64).write_volatile(p as u64) };
    }
    println!("fill: {:.2}s", t.elapsed().as_secs_f64());
    e.reset_stats();
    let mut x = 88172645463325252u64;
    let t = Instant::now();
    let n = 1_000_000;
    let mut sum = 0u64;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x % pages as u64) as usize;
        sum = sum.wrapping_add(unsafe { (base.add(p * 4096) as *const u64).read_volatile() });
    }
    let dt = t.elapsed().as_secs_f64();
    println!("random: {:.0} acc/s ({sum})", n as f64 / dt);
    println!("{}", e.stats());
}
