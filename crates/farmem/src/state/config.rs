//! How an engine is set up: the configuration every part of it reads.

use crate::backend::Backend;
use crate::policy::{EvictionPolicy, PolicyKind};
use crate::prefetch::Prefetcher;
use crate::{FaultMode, PageSize, PrefetchKind};
use std::sync::Arc;

/// How an engine is set up. Build one with [`crate::Engine::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Local memory, in bytes, that all regions together may keep resident.
    pub local_budget: usize,
    /// Where evicted pages go.
    pub backend: Arc<dyn Backend>,
    /// Which pages go first.
    pub policy: PolicyKind,
    /// What to fetch with a fault.
    pub prefetch: PrefetchKind,
    /// Chase pointers from a fault to the far blocks the program walks next
    /// (`prefetch::pointer`), besides `prefetch`.
    pub pointer_prefetch: bool,
    /// How faults are resolved.
    pub fault_mode: FaultMode,
    /// The unit pages are filled and evicted in.
    pub page_size: PageSize,
    /// Handler threads per region in [`FaultMode::Thread`].
    pub handler_threads: usize,
    /// CPUs the handler threads run on: handler `i` of each region on
    /// `handler_cpus[i % len]`; empty, wherever the scheduler puts them.
    pub handler_cpus: Vec<usize>,
    /// Handler threads spin on the userfaultfd instead of sleeping in poll: no wake-up
    /// on a fault, at the price of a whole CPU per handler thread.
    pub handler_busy_poll: bool,
    /// Pages evicted per batch by the reclaimer.
    pub reclaim_batch: usize,
    /// Learn which resident pages are in use from the hardware's accessed bits, counted
    /// per 2 MiB chunk (`/proc/self/smaps`), instead of only by unmapping pages and
    /// watching for the minor faults that map them again. On by default; off (or without
    /// a readable /proc) every page is tested by unmapping it.
    pub accessed_bits: bool,
    /// Your own eviction policy, used instead of `policy` when set.
    pub custom_policy: Option<Factory<dyn EvictionPolicy>>,
    /// Your own prefetcher (one per region), used instead of `prefetch` when set.
    pub custom_prefetcher: Option<Factory<dyn Prefetcher>>,
}

/// Makes a fresh policy or prefetcher: how your own plug into an engine.
pub struct Factory<T: ?Sized>(pub(crate) Arc<dyn Fn() -> Box<T> + Send + Sync>);

impl<T: ?Sized> Factory<T> {
    /// Makes one.
    pub fn make(&self) -> Box<T> {
        (self.0)()
    }
}

impl<T: ?Sized> Clone for Factory<T> {
    fn clone(&self) -> Self {
        Factory(self.0.clone())
    }
}

impl<T: ?Sized> std::fmt::Debug for Factory<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Factory(custom)")
    }
}
