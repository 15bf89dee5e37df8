//! Per-thread caches: a stack of free objects per class, so the common malloc and free take
//! no lock. A thread keeps about 32 KiB of each class; a full stack gives its older half
//! back to the class in one locked step, an empty one takes half a stack.

use std::cell::RefCell;
use std::sync::Arc;

use super::Shared;
use super::classes::{self, MIXED, N};

/// Most objects a thread keeps of one class.
pub(super) const CAP_MAX: usize = 64;

struct Bin {
    n: usize,
    /// Offsets from the slab area's base; the top of the stack is the most recently freed.
    slots: [usize; CAP_MAX],
}

pub(super) struct ThreadCache {
    owner: Arc<Shared>,
    bins: [Bin; N],
    /// This thread's mixed unit: (next, end) offsets. What is left of it when the thread
    /// exits is not used again.
    bump: (usize, usize),
}

impl ThreadCache {
    fn new(owner: Arc<Shared>) -> ThreadCache {
        ThreadCache {
            owner,
            bins: std::array::from_fn(|_| Bin {
                n: 0,
                slots: [0; CAP_MAX],
            }),
            bump: (0, 0),
        }
    }

    /// An object of class `c` (an offset in the slab area), refilling from the class.
    #[inline]
    pub fn pop(&mut self, c: usize) -> Option<usize> {
        let b = &mut self.bins[c];
        if b.n == 0 && c < MIXED {
            // Objects freed by this thread come first (below); then those freed by any
            // (the class's list); then fresh ones, carved in allocation order whatever
            // their class.
            let want = classes::cache_cap(c) / 2;
            b.n = self.owner.take_mixed(c, &mut b.slots[..want]);
            if b.n == 0 {
                return self.owner.carve(&mut self.bump, c);
            }
        }
        if b.n == 0 {
            let want = classes::cache_cap(c) / 2;
            let got = self.owner.take(c, &mut b.slots[..want]);
            // Lowest address on top: the class hands out its lowest slabs first.
            b.slots[..got].reverse();
            b.n = got;
            if got == 0 {
                return None;
            }
        }
        b.n -= 1;
        Some(b.slots[b.n])
    }

    /// Keeps a freed object of class `c`; a full stack gives its older half back.
    #[inline]
    pub fn push(&mut self, c: usize, off: usize) {
        let cap = classes::cache_cap(c);
        let b = &mut self.bins[c];
        if b.n == cap {
            let half = cap / 2;
            self.owner.put(c, &b.slots[..half]);
            b.slots.copy_within(half..cap, 0);
            b.n -= half;
        }
        b.slots[b.n] = off;
        b.n += 1;
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        for (c, b) in self.bins.iter().enumerate() {
            if b.n > 0 {
                self.owner.put(c, &b.slots[..b.n]);
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<Option<Box<ThreadCache>>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's cache for `owner` (made, or switched from another heap's,
/// on first use). None when the thread has no cache to offer: it is exiting, or the cache
/// is in use further up the stack (a signal handler that allocates).
#[inline]
pub(super) fn with<R>(owner: &Arc<Shared>, f: impl FnOnce(&mut ThreadCache) -> R) -> Option<R> {
    CACHE
        .try_with(|cell| {
            let mut g = cell.try_borrow_mut().ok()?;
            if !g.as_ref().is_some_and(|tc| Arc::ptr_eq(&tc.owner, owner)) {
                // The old cache (another heap's) gives its objects back as it drops.
                *g = Some(Box::new(ThreadCache::new(owner.clone())));
            }
            g.as_mut().map(|tc| f(tc))
        })
        .ok()
        .flatten()
}
