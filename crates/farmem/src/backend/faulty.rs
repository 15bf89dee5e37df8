//! A tier wrapper that fails or corrupts on purpose, for tests of the engine's error paths.
//!
//! Every mode is deterministic: counters are atomic and count calls (not pages), so a
//! single-threaded test knows exactly which call misbehaves, and a multi-threaded one
//! knows exactly how many calls succeed.

use super::{Backend, PAGE_SIZE, PageKey, TierError, TierStats};
use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What the wrapper does wrong. Calls not named by the mode go straight to the inner tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultyMode {
    /// The first `n` `fetch` calls work; every later one fails with [`TierError::Io`]
    /// without touching the inner tier.
    FailFetchAfter(u64),
    /// The first `n` `fetch` calls work; every later one returns `Ok` with one byte flipped
    /// in every page it returns, which only the engine's checksum can notice.
    CorruptFetchAfter(u64),
    /// The first `n` `store` calls work; every later one fails with [`TierError::Io`] and
    /// stores nothing.
    FailStoreAfter(u64),
    /// `store` fails with [`TierError::Full`] (and stores nothing) when the wrapper would
    /// then hold more than `capacity_pages` distinct pages. Discards make room again.
    Full {
        /// Most pages the wrapper holds.
        capacity_pages: u64,
    },
}

/// Wraps a tier and misbehaves as its [`FaultyMode`] says. Named `faulty(<inner>)`.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Backend>,
    mode: FaultyMode,
    name: String,
    fetches: AtomicU64,
    stores: AtomicU64,
    /// Pages held, for [`FaultyMode::Full`] only.
    held: Mutex<HashSet<PageKey>>,
}

impl Faulty {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, mode: FaultyMode) -> Faulty {
        let name = format!("faulty({})", inner.name());
        Faulty {
            inner,
            mode,
            name,
            fetches: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            held: Mutex::new(HashSet::new()),
        }
    }

    /// The wrapped tier.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// The mode.
    pub fn mode(&self) -> FaultyMode {
        self.mode
    }

    /// `fetch` calls so far, including failed ones.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// `store` calls so far, including failed ones.
    pub fn stores(&self) -> u64 {
        self.stores.load(Ordering::Relaxed)
    }

    fn injected(&self, what: &str) -> TierError {
        TierError::Io(io::Error::other(format!(
            "{what} failed on purpose ({:?} of the test tier {}): expected in tests only",
            self.mode, self.name
        )))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<PageKey>> {
        // The set is updated only after the inner call returns, so a panic cannot leave
        // it half updated.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for Faulty {
    fn name(&self) -> &str {
        &self.name
    }

    fn store(&self, keys: &[PageKey], data: &[u8]) -> Result<(), TierError> {
        let n = self.stores.fetch_add(1, Ordering::Relaxed);
        match self.mode {
            FaultyMode::FailStoreAfter(ok) if n >= ok => Err(self.injected("store")),
            FaultyMode::Full { capacity_pages } => {
                // Held across the inner store so concurrent stores cannot both fit.
                let mut held = self.held();
                let mut new: HashSet<PageKey> = HashSet::new();
                new.extend(keys.iter().filter(|k| !held.contains(k)));
                let would_hold = held.len() as u64 + new.len() as u64;
                if would_hold > capacity_pages {
                    return Err(TierError::Full {
                        used: held.len() as u64 * PAGE_SIZE as u64,
                        capacity: capacity_pages * PAGE_SIZE as u64,
                    });
                }
                self.inner.store(keys, data)?;
                held.extend(new);
                Ok(())
            }
            _ => self.inner.store(keys, data),
        }
    }

    fn fetch(&self, keys: &[PageKey], out: &mut [u8]) -> Result<(), TierError> {
        let n = self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.mode {
            FaultyMode::FailFetchAfter(ok) if n >= ok => Err(self.injected("fetch")),
            FaultyMode::CorruptFetchAfter(ok) if n >= ok => {
                self.inner.fetch(keys, out)?;
                // A different byte each call (Knuth's multiplier), always changed.
                let at = (n.wrapping_mul(2_654_435_761) % PAGE_SIZE as u64) as usize;
                for page in out.chunks_exact_mut(PAGE_SIZE) {
                    page[at] ^= 0x5A;
                }
                Ok(())
            }
            _ => self.inner.fetch(keys, out),
        }
    }

    fn after_fork_child(&self) -> Result<(), TierError> {
        self.inner.after_fork_child()
    }

    fn before_exit(&self) {
        self.inner.before_exit()
    }

    fn discard(&self, keys: &[PageKey]) {
        if let FaultyMode::Full { .. } = self.mode {
            let mut held = self.held();
            self.inner.discard(keys);
            for k in keys {
                held.remove(k);
            }
        } else {
            self.inner.discard(keys);
        }
    }

    fn stats(&self) -> TierStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::testutil::{Kind, key, page};
    use super::super::{Compressed, Memory};
    use super::*;

    fn wrap(mode: FaultyMode) -> Faulty {
        Faulty::new(Arc::new(Memory::new()), mode)
    }

    fn store(t: &Faulty, i: u64) -> Result<(), TierError> {
        t.store(&[key(i)], &page(Kind::Half(i)))
    }

    fn fetch(t: &Faulty, i: u64) -> Result<Vec<u8>, TierError> {
        let mut out = vec![0; PAGE_SIZE];
        t.fetch(&[key(i)], &mut out).map(|()| out)
    }

    #[test]
    fn name_and_stats_come_from_inner() {
        let t = Faulty::new(Arc::new(Compressed::lz4()), FaultyMode::FailFetchAfter(0));
        assert_eq!(t.name(), "faulty(compressed:lz4)");
        assert_eq!(t.mode(), FaultyMode::FailFetchAfter(0));
        store(&t, 1).unwrap();
        assert_eq!(t.stats(), t.inner().stats());
        assert_eq!(t.stats().pages, 1);
    }

    #[test]
    fn fail_fetch_after() {
        let t = wrap(FaultyMode::FailFetchAfter(2));
        store(&t, 1).unwrap();
        assert!(fetch(&t, 1).unwrap() == page(Kind::Half(1)));
        // A Missing page is still a fetch that went through.
        assert!(matches!(fetch(&t, 9), Err(TierError::Missing { .. })));
        for _ in 0..3 {
            let e = fetch(&t, 1).unwrap_err();
            assert!(matches!(e, TierError::Io(_)), "{e}");
            assert!(e.to_string().contains("on purpose"), "{e}");
        }
        assert_eq!(t.fetches(), 5);
        // Stores still work.
        store(&t, 2).unwrap();
        assert_eq!(t.inner().stats().pages, 2);
    }

    #[test]
    fn corrupt_fetch_after() {
        let t = wrap(FaultyMode::CorruptFetchAfter(1));
        let keys = [key(1), key(2)];
        let data = [page(Kind::Half(1)), page(Kind::Zero)].concat();
        t.store(&keys, &data).unwrap();
        let mut out = vec![0; 2 * PAGE_SIZE];
        t.fetch(&keys, &mut out).unwrap();
        assert!(out == data);
        let mut flipped_at = Vec::new();
        for _ in 0..4 {
            t.fetch(&keys, &mut out).unwrap();
            for (got, want) in out
                .chunks_exact(PAGE_SIZE)
                .zip(data.chunks_exact(PAGE_SIZE))
            {
                let diff: Vec<usize> = (0..PAGE_SIZE).filter(|i| got[*i] != want[*i]).collect();
                assert_eq!(diff.len(), 1, "exactly one byte of every page differs");
                flipped_at.push(diff[0]);
            }
        }
        flipped_at.dedup();
        assert!(
            flipped_at.len() > 1,
            "the flipped byte moves: {flipped_at:?}"
        );
        // The inner copy is intact.
        t.inner().fetch(&keys, &mut out).unwrap();
        assert!(out == data);
    }

    #[test]
    fn fail_store_after() {
        let t = wrap(FaultyMode::FailStoreAfter(1));
        store(&t, 1).unwrap();
        let e = store(&t, 2).unwrap_err();
        assert!(matches!(e, TierError::Io(_)), "{e}");
        assert!(matches!(store(&t, 3), Err(TierError::Io(_))));
        assert_eq!(t.stores(), 3);
        assert_eq!(t.stats().pages, 1, "failed stores store nothing");
        assert!(fetch(&t, 1).unwrap() == page(Kind::Half(1)));
        assert!(matches!(fetch(&t, 2), Err(TierError::Missing { .. })));
    }

    #[test]
    fn full() {
        let t = wrap(FaultyMode::Full { capacity_pages: 3 });
        let keys: Vec<PageKey> = (0..3).map(key).collect();
        t.store(&keys[..2], &page(Kind::Text(1)).repeat(2)).unwrap();
        // Two new pages would make 4.
        let e = t
            .store(&[key(0), key(5), key(6)], &page(Kind::Text(2)).repeat(3))
            .unwrap_err();
        assert!(
            matches!(e, TierError::Full { used, capacity } if used == 2 * PAGE_SIZE as u64 && capacity == 3 * PAGE_SIZE as u64),
            "{e}"
        );
        assert!(e.to_string().contains("full"), "{e}");
        assert_eq!(t.stats().pages, 2, "a refused batch stores nothing");
        // Overwrites and duplicates within a batch take no extra room.
        t.store(
            &[key(0), key(1), key(2), key(2)],
            &page(Kind::Text(3)).repeat(4),
        )
        .unwrap();
        assert!(matches!(store(&t, 7), Err(TierError::Full { .. })));
        // Discard makes room.
        t.discard(&[key(1), key(99)]);
        store(&t, 7).unwrap();
        assert_eq!(t.stats().pages, 3);
        assert!(fetch(&t, 7).unwrap() == page(Kind::Half(7)));
    }

    #[test]
    fn full_holds_under_concurrency() {
        let t = Arc::new(wrap(FaultyMode::Full { capacity_pages: 50 }));
        let threads: Vec<_> = (0..4u64)
            .map(|id| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    (0..40).filter(|i| store(&t, id * 100 + i).is_ok()).count()
                })
            })
            .collect();
        let stored: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(stored, 50);
        assert_eq!(t.stats().pages, 50);
    }
}
