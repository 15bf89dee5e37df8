//! The node's counters: relaxed atomics, bumped once per request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Seconds of history kept for the request rate.
pub(crate) const RATE_WINDOW: u64 = 10;
const BUCKETS: usize = 16;

/// Requests per second over the last [`RATE_WINDOW`] seconds: a ring of per-second
/// counts, each word holding its second (high 32 bits) and its count (low 32), so that a
/// bucket is taken over for a new second with one compare-and-swap.
#[derive(Debug)]
pub(crate) struct Rate {
    buckets: [AtomicU64; BUCKETS],
}

impl Rate {
    pub fn new() -> Rate {
        Rate {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one event in second `sec` (since the start).
    pub fn hit(&self, sec: u64) {
        let b = &self.buckets[sec as usize % BUCKETS];
        let mut cur = b.load(Relaxed);
        loop {
            let next = if cur >> 32 == sec {
                // A count of 2^32 in one second would carry into the second: saturate.
                if cur & 0xffff_ffff == 0xffff_ffff {
                    return;
                }
                cur + 1
            } else {
                (sec << 32) | 1
            };
            match b.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// Events per second since `max(0, now - RATE_WINDOW + 1)` whole seconds, with
    /// `elapsed` seconds since the start; returns the rate and the window in seconds.
    pub fn per_sec(&self, elapsed: f64) -> (f64, f64) {
        let now = elapsed as u64;
        let from = now.saturating_sub(RATE_WINDOW - 1);
        let sum: u64 = self
            .buckets
            .iter()
            .map(|b| b.load(Relaxed))
            .filter(|v| (from..=now).contains(&(v >> 32)))
            .map(|v| v & 0xffff_ffff)
            .sum();
        let window = elapsed - from as f64;
        if window <= 0.0 {
            return (0.0, 0.0);
        }
        (sum as f64 / window, window)
    }
}

/// Everything the node counts.
#[derive(Debug)]
pub(crate) struct Counters {
    pub started: Instant,
    /// Connections open now.
    pub clients: AtomicU64,
    /// Connections ever accepted.
    pub served: AtomicU64,
    pub requests: AtomicU64,
    pub stores: AtomicU64,
    pub fetches: AtomicU64,
    pub discards: AtomicU64,
    pub pages_in: AtomicU64,
    pub pages_out: AtomicU64,
    /// Requests refused: full node, missing pages.
    pub refused: AtomicU64,
    /// Connections dropped for a bad frame, a wrong version or a wrong token.
    pub dropped: AtomicU64,
    pub rate: Rate,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            started: Instant::now(),
            clients: AtomicU64::new(0),
            served: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            discards: AtomicU64::new(0),
            pages_in: AtomicU64::new(0),
            pages_out: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rate: Rate::new(),
        }
    }

    /// Counts one request.
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.rate.hit(self.started.elapsed().as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_the_recent_window_only() {
        let r = Rate::new();
        for _ in 0..50 {
            r.hit(0);
        }
        for _ in 0..20 {
            r.hit(3);
        }
        let (rate, window) = r.per_sec(4.0);
        assert_eq!(window, 4.0);
        assert!((rate - 70.0 / 4.0).abs() < 1e-9);
        // Second 0 and 3 fall out of the window; a reused bucket starts over.
        r.hit(16);
        let (rate, window) = r.per_sec(20.5);
        assert_eq!(window, 9.5, "seconds 11 to 20.5");
        assert!((rate - 1.0 / 9.5).abs() < 1e-9, "{rate}");
        assert_eq!(r.per_sec(0.0), (0.0, 0.0));
    }
}
