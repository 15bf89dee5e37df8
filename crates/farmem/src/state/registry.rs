//! The table the SIGBUS handler searches: which region a fault address belongs to.
//! Fixed size and lock-free for readers, so a signal handler can use it.

use crate::Error;
use crate::state::region::RegionState;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};

const MAX_SIGBUS_REGIONS: usize = 1024;

struct Slot {
    base: AtomicUsize,
    end: AtomicUsize,
    region: AtomicPtr<RegionState>,
    users: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    base: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    region: AtomicPtr::new(std::ptr::null_mut()),
    users: AtomicUsize::new(0),
};
static SLOTS: [Slot; MAX_SIGBUS_REGIONS] = [EMPTY_SLOT; MAX_SIGBUS_REGIONS];
/// Slots in use are all below this index.
static SLOTS_HIGH: AtomicUsize = AtomicUsize::new(0);
static SLOTS_LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn add(r: &Arc<RegionState>) -> Result<(), Error> {
    let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = SLOTS
        .iter()
        .position(|s| s.region.load(SeqCst).is_null() && s.users.load(SeqCst) == 0)
    else {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_SIGBUS_REGIONS} regions may use the in-thread fault mode at once"
        )));
    };
    let s = &SLOTS[i];
    s.base.store(r.base, SeqCst);
    s.end.store(r.base + r.len, SeqCst);
    s.region.store(Arc::as_ptr(r) as *mut RegionState, SeqCst);
    SLOTS_HIGH.fetch_max(i + 1, SeqCst);
    Ok(())
}

pub(crate) fn remove(r: &Arc<RegionState>) {
    let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for s in &SLOTS[..SLOTS_HIGH.load(SeqCst)] {
        if std::ptr::eq(s.region.load(SeqCst), Arc::as_ptr(r)) {
            s.region.store(std::ptr::null_mut(), SeqCst);
            s.base.store(0, SeqCst);
            s.end.store(0, SeqCst);
            while s.users.load(SeqCst) != 0 {
                std::hint::spin_loop();
            }
        }
    }
}

/// Runs `f` on the region containing `addr`, if any; the region stays alive meanwhile.
#[inline]
pub(crate) fn with_region_at<T>(addr: usize, f: impl FnOnce(&RegionState) -> T) -> Option<T> {
    for s in &SLOTS[..SLOTS_HIGH.load(Acquire)] {
        if addr < s.base.load(Relaxed) || addr >= s.end.load(Relaxed) {
            continue;
        }
        s.users.fetch_add(1, SeqCst);
        let p = s.region.load(SeqCst);
        // SAFETY: a non-null pointer in a slot stays valid while `users` is non-zero:
        // `remove` nulls it and then waits for users to drain before the region can be
        // freed.
        let r = (!p.is_null())
            .then(|| unsafe { &*p })
            .filter(|r| addr >= r.base && addr < r.base + r.len);
        if let Some(r) = r {
            let out = f(r);
            s.users.fetch_sub(1, SeqCst);
            return Some(out);
        }
        s.users.fetch_sub(1, SeqCst);
    }
    None
}
