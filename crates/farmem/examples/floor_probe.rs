//! Quick mechanism probe used to choose the design (kept for the record).
use farmem::sys::{mem, signal, uffd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static FD: AtomicUsize = AtomicUsize::new(0);
static MODE: AtomicUsize = AtomicUsize::new(0);
static mut BUF: [u8; 4096] = [7u8; 4096];

fn handler(addr: usize, _w: bool) -> bool {
    let base = BASE.load(Ordering::Relaxed);
    if addr < base || addr >= base + LEN.load(Ordering::Relaxed) {
        return false;
    }
    let page = addr & !4095;
    let u = unsafe { &*(FD.load(Ordering::Relaxed) as *const uffd::Uffd) };
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let _ = unsafe { u.copy(page, std::ptr::addr_of!(BUF).cast(), 4096) };
        }
        1 => {
            let _ = u.cont(page, 4096);
        }
        _ => {
            let _ = u.zeropage(page, 4096);
        }
    }
    true
}

fn main() {
    let n = 20000usize;
    let len = n * 4096;
    signal::install(handler).unwrap();
    // anon + copy
    let feats = uffd::feature::SIGBUS | uffd::feature::MISSING_SHMEM | uffd::feature::MINOR_SHMEM;
    {
        let m = mem::Mapping::anon(len).unwrap();
        let u = uffd::Uffd::new(uffd::feature::SIGBUS, false).unwrap();
        u.register(m.ptr() as usize, len, uffd::REGISTER_MODE_MISSING)
            .unwrap();
        BASE.store(m.ptr() as usize, Ordering::SeqCst);
        LEN.store(len, Ordering::SeqCst);
        FD.store(&u as *const _ as usize, Ordering::SeqCst);
        MODE.store(0, Ordering::SeqCst);
        let t = Instant::now();
        let mut s = 0u64;
        for i in 0..n {
            s += unsafe { *m.ptr().add(i * 4096) } as u64;
        }
        println!(
            "anon sigbus+copy: {:.2} us/page (sum {s})",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let t = Instant::now();
        for i in 0..n {
            unsafe { libc::madvise(m.ptr().add(i * 4096).cast(), 4096, libc::MADV_DONTNEED) };
        }
        println!(
            "anon madvise dontneed per page: {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        BASE.store(0, Ordering::SeqCst);
    }
    {
        let fd = mem::Memfd::new(c"probe", len).unwrap();
        let m = fd.map(len).unwrap();
        let u = uffd::Uffd::new(feats, false).unwrap();
        u.register(
            m.ptr() as usize,
            len,
            uffd::REGISTER_MODE_MISSING | uffd::REGISTER_MODE_MINOR,
        )
        .unwrap();
        BASE.store(m.ptr() as usize, Ordering::SeqCst);
        LEN.store(len, Ordering::SeqCst);
        FD.store(&u as *const _ as usize, Ordering::SeqCst);
        MODE.store(0, Ordering::SeqCst);
        let t = Instant::now();
        let mut s = 0u64;
        for i in 0..n {
            s += unsafe { *m.ptr().add(i * 4096) } as u64;
        }
        println!(
            "shmem sigbus+copy: {:.2} us/page (sum {s})",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        // zap every other page in batches
        let mut z = mem::Zapper::new();
        let iov: Vec<libc::iovec> = (0..n)
            .step_by(2)
            .map(|i| libc::iovec {
                iov_base: unsafe { m.ptr().add(i * 4096) }.cast(),
                iov_len: 4096,
            })
            .collect();
        let t = Instant::now();
        z.zap(&iov).unwrap();
        println!(
            "shmem process_madvise zap: {:.3} us/page",
            t.elapsed().as_secs_f64() * 1e6 / iov.len() as f64
        );
        MODE.store(1, Ordering::SeqCst);
        let t = Instant::now();
        for i in (0..n).step_by(2) {
            s += unsafe { *m.ptr().add(i * 4096) } as u64;
        }
        println!(
            "shmem sigbus+continue: {:.2} us/page (sum {s})",
            t.elapsed().as_secs_f64() * 1e6 / iov.len() as f64
        );
        z.zap(&iov).unwrap();
        let mut b = vec![0u8; 4096];
        let t = Instant::now();
        for i in (0..n).step_by(2) {
            fd.read_at(&mut b, i * 4096).unwrap();
        }
        println!(
            "pread 4K: {:.2} us/page",
            t.elapsed().as_secs_f64() * 1e6 / iov.len() as f64
        );
        let t = Instant::now();
        for i in (0..n).step_by(2) {
            fd.punch(i * 4096, 4096).unwrap();
        }
        println!(
            "punch 4K: {:.2} us/page",
            t.elapsed().as_secs_f64() * 1e6 / iov.len() as f64
        );
        let t = Instant::now();
        let h = xxhash_rust::xxh3::xxh3_128(&b);
        for _ in 0..10000 {
            std::hint::black_box(xxhash_rust::xxh3::xxh3_128(std::hint::black_box(&b)));
        }
        println!(
            "xxh3_128 4K: {:.3} us ({h})",
            t.elapsed().as_secs_f64() * 1e6 / 10000.0
        );
        BASE.store(0, Ordering::SeqCst);
    }
}
