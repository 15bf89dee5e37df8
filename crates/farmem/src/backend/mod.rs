//! Far tiers: where pages live while they are not resident.
//!
//! A tier stores and fetches whole pages in batches, keyed by [`PageKey`]. The engine
//! checksums every page end to end (xxh3-128 kept beside the page-state table) and checks
//! it on every fetch, so a tier that returns the wrong bytes is caught even if the tier
//! itself cannot tell. Tiers report their own failures as [`TierError`]; the engine turns
//! any error on a fetch into a loud stop, never into wrong data.
//!
//! # Threading and lifecycle
//! A tier is shared by every thread of the process: fault paths fetch from it (in signal
//! context when faults are resolved in the faulting thread), the reclaimer and direct
//! reclaim store to it, all at once. Implementations are `Send + Sync` and take `&self`.
//! `fetch` is on the fault path: it should not block on other callers for long and should
//! not allocate in the common case. `store` is off the fast path and may allocate.
//! There is no cancellation: every call completes or fails.
//!
//! # fork
//! A tier is process memory, so a forked child inherits it (copy-on-write). A tier that
//! holds something a child must not share (the remote tier's connections and its pages
//! on the node) replaces it in [`Backend::after_fork_child`], which the fork handlers
//! ([`crate::fork`]) call in the child before any of its faults.

use std::io;

mod compressed;
mod faulty;
mod memory;
mod remote;

pub use compressed::{Codec, Compressed};
pub use faulty::{Faulty, FaultyMode};
pub use memory::Memory;
pub use remote::{DEFAULT_FETCH_CONNS, DEFAULT_POLL, DEFAULT_TIMEOUT, WRITE_CONNS};
pub use remote::{Remote, RemoteConfig, read_token_file};

/// A far tier by its URI: `mem:` (process memory), `compressed:` or `compressed:lz4`
/// (lz4-compressed process memory), `compressed:zstd` or `compressed:zstd:LEVEL`, or
/// `tcp://HOST:PORT` (a memory node, `farmem serve`; configured by the environment, see
/// [`RemoteConfig::from_env`]). The trailing colon is optional.
///
/// For `tcp://` this connects: a node that cannot be reached, refuses the token or
/// speaks another protocol version is an error here.
pub fn from_uri(uri: &str) -> Result<std::sync::Arc<dyn Backend>, crate::Error> {
    use std::sync::Arc;
    if let Some(addr) = uri.strip_prefix("tcp://") {
        let addr = addr.trim_end_matches('/');
        if addr.is_empty() || !addr.contains(':') {
            return Err(crate::Error::InvalidArgument(format!(
                "`{uri}` names no node: use tcp://HOST:PORT"
            )));
        }
        return Ok(Arc::new(Remote::connect(RemoteConfig::from_env(addr)?)?));
    }
    Ok(match uri {
        "mem" | "mem:" => Arc::new(Memory::new()),
        "compressed" | "compressed:" | "compressed:lz4" => Arc::new(Compressed::lz4()),
        "compressed:zstd" => Arc::new(Compressed::zstd(1)),
        _ => match uri.strip_prefix("compressed:zstd:") {
            Some(level) => {
                let level: i32 = level.parse().ok().filter(|l| (1..=22).contains(l)).ok_or_else(|| {
                    crate::Error::InvalidArgument(format!(
                        "zstd level `{level}` is not a number from 1 to 22 (try compressed:zstd:3)"
                    ))
                })?;
                Arc::new(Compressed::zstd(level))
            }
            None => {
                return Err(crate::Error::InvalidArgument(format!(
                    "unknown backend `{uri}`: use mem:, compressed: (lz4), compressed:zstd, compressed:zstd:LEVEL or tcp://HOST:PORT"
                )));
            }
        },
    })
}

/// Bytes in a page of every tier.
pub const PAGE_SIZE: usize = 4096;

/// Names a page in a tier: the region's id (high 24 bits) and the page index in the
/// region (low 40 bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PageKey(pub u64);

impl PageKey {
    /// Largest page index a key can carry (4 PiB regions).
    pub const MAX_PAGE: u64 = (1 << 40) - 1;

    /// The key of page `page` of region `region`.
    pub fn new(region: u32, page: u64) -> PageKey {
        debug_assert!(page <= Self::MAX_PAGE && region < (1 << 24));
        PageKey(((region as u64) << 40) | page)
    }

    /// The region id.
    pub fn region(self) -> u32 {
        (self.0 >> 40) as u32
    }

    /// The page index inside the region.
    pub fn page(self) -> u64 {
        self.0 & Self::MAX_PAGE
    }
}

/// What went wrong in a tier.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The tier has no copy of a page it was asked for.
    #[error("the far tier has no copy of page {} of region {}: it was never stored or has been lost", .key.page(), .key.region())]
    Missing {
        /// The page.
        key: PageKey,
    },
    /// The tier cannot take more pages.
    #[error(
        "the far tier is full ({used} of {capacity} bytes used): give it more capacity or the program more local memory"
    )]
    Full {
        /// Bytes in use.
        used: u64,
        /// Bytes it may use.
        capacity: u64,
    },
    /// The tier's copy of a page cannot be decoded.
    #[error("the far tier holds a corrupt copy of page {} of region {}: {detail}", .key.page(), .key.region())]
    Corrupt {
        /// The page.
        key: PageKey,
        /// What the tier noticed.
        detail: String,
    },
    /// An I/O error from the tier's medium.
    #[error("far tier I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A memory node cannot take more pages.
    #[error(
        "the memory node {node} is full ({message}): give `farmem serve` more capacity or the program more local memory"
    )]
    NodeFull {
        /// The node's address.
        node: String,
        /// What the node said.
        message: String,
    },
    /// The tier is out of reach or has lost the pages; the text says which node and
    /// what to do.
    #[error("{0}")]
    Unavailable(String),
}

/// A snapshot of a tier's use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Pages held (zero pages included).
    pub pages: u64,
    /// Of those, pages that are all zeros and cost no storage.
    pub zero_pages: u64,
    /// Bytes of page data as the program sees it (`pages * PAGE_SIZE`).
    pub logical_bytes: u64,
    /// Bytes of memory the tier uses to hold them (after compression, with overheads).
    pub stored_bytes: u64,
}

impl TierStats {
    /// `logical_bytes / stored_bytes`: how much the tier compresses (1.0 for none).
    pub fn ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            if self.logical_bytes == 0 {
                1.0
            } else {
                f64::INFINITY
            }
        } else {
            self.logical_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// A far tier. See the module docs for the threading rules.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for messages and stats (`mem`, `compressed:lz4`, ...).
    fn name(&self) -> &str;

    /// Stores `keys.len()` pages; `data` holds them back to back
    /// (`data.len() == keys.len() * PAGE_SIZE`). A key already present is overwritten.
    /// On error, no page of the batch may be assumed stored.
    fn store(&self, keys: &[PageKey], data: &[u8]) -> Result<(), TierError>;

    /// Copies the pages `keys` into `out`, back to back (`out.len() == keys.len() * PAGE_SIZE`).
    fn fetch(&self, keys: &[PageKey], out: &mut [u8]) -> Result<(), TierError>;

    /// Forgets pages whose content is no longer needed. Unknown keys are ignored.
    fn discard(&self, keys: &[PageKey]);

    /// Current use.
    fn stats(&self) -> TierStats;

    /// Called in a forked child (by the fork handlers, before the child's first fault) to
    /// give the child a tier of its own where sharing the parent's would be wrong (see
    /// the module docs). An error stops the child loudly.
    fn after_fork_child(&self) -> Result<(), TierError> {
        Ok(())
    }

    /// The process is about to exit (called from an exit hook, after the program's own
    /// exit handlers): a tier that holds pages elsewhere arranges for them to be freed
    /// once the process is gone. It must go on working until then (other threads may
    /// still fault), and must not block for long.
    fn before_exit(&self) {}
}
