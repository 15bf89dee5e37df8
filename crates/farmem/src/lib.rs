//! farmem: far memory for stock Linux, in userspace, on userfaultfd.
//!
//! A program maps a far region of N bytes and uses it as ordinary memory from any number
//! of threads. Only a bounded number of its pages stay resident (the local budget, shared
//! by every region of an [`Engine`]); the rest live in a far tier ([`backend`]). First
//! touches read zeros without a trip to the far tier.
//!
//! ```no_run
//! use farmem::{Engine, backend::Compressed};
//! use std::sync::Arc;
//!
//! let engine = Engine::builder()
//!     .local_budget(64 << 20)
//!     .backend(Arc::new(Compressed::lz4()))
//!     .build()?;
//! let region = engine.map(1 << 30)?;
//! // SAFETY: the region is 1 GiB of ordinary read-write memory.
//! let words = unsafe { std::slice::from_raw_parts_mut(region.as_ptr() as *mut u64, 1 << 27) };
//! words[12345] = 42;
//! println!("{}", engine.stats());
//! # Ok::<(), farmem::Error>(())
//! ```
//!
//! How it works is in DESIGN.md at the top of the repository: a memfd per region, one
//! page-state word per page, faults resolved in the faulting thread (SIGBUS) or on handler
//! threads, a reclaimer that keeps free frames between watermarks, CLOCK over real
//! reference bits, prefetchers, and end-to-end checksums on every far page.
#![warn(missing_docs)]

// Leaves: kernel interfaces, far tiers, policies, prefetchers, counters.
pub mod backend;
mod fatal;
pub mod policy;
pub mod prefetch;
pub mod probe;
pub mod stats;
pub mod sys;
pub mod trace;
// The engine, bottom to top (state/mod.rs draws the stack).
mod engine;
// On top of the engine: live control over a socket.
pub mod control;
mod fault;
pub mod fork;
pub mod heap;
mod range;
mod reclaim;
mod region;
mod state;

pub use engine::{Builder, Engine};
pub use prefetch::{PrefetchHook, PrefetchRequest};
pub use region::Region;
pub use state::budget::MIN_BUDGET_PAGES;
pub use state::config::{Config, Factory};
pub use state::{page, pin};
pub use stats::{Latency, Metric, MetricKind, Stats};

/// The unit an engine fills and evicts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PageSize {
    /// 4 KiB pages of a shared-memory memfd.
    #[default]
    Small,
    /// 2 MiB huge pages of a hugetlbfs memfd: one fault brings in 2 MiB, eviction writes
    /// out 2 MiB. The pages come from the kernel's surplus pool, which the engine makes
    /// room in for its budget (`sys::hugepages`). Thread fault mode only; no prefetcher
    /// beyond the page itself, no accessed bits (the hand tests pages by unmapping them);
    /// the budget is at least four pages.
    Huge,
}

impl PageSize {
    /// Bytes in one page.
    pub fn bytes(self) -> usize {
        match self {
            PageSize::Small => 4096,
            PageSize::Huge => 2 << 20,
        }
    }

    /// `4K` or `2M`.
    pub fn name(self) -> &'static str {
        match self {
            PageSize::Small => "4K",
            PageSize::Huge => "2M",
        }
    }
}

impl std::str::FromStr for PageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "4K" | "4k" | "4096" => Ok(PageSize::Small),
            "2M" | "2m" => Ok(PageSize::Huge),
            _ => Err(format!("unknown page size `{s}`: use 4K or 2M")),
        }
    }
}

impl std::fmt::Display for PageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How faults are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// `sigbus` where the kernel offers it, else `thread`.
    #[default]
    Auto,
    /// In the faulting thread (UFFD_FEATURE_SIGBUS): no other thread wakes; the fast path.
    /// The kernel cannot fault far pages in for system calls (they fail with EFAULT).
    Sigbus,
    /// On handler threads reading the userfaultfd: slower (a wake-up across CPUs per
    /// fault) but correct when the kernel itself touches far memory.
    Thread,
}

impl std::str::FromStr for FaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FaultMode::Auto),
            "sigbus" => Ok(FaultMode::Sigbus),
            "thread" => Ok(FaultMode::Thread),
            _ => Err(format!(
                "unknown fault mode `{s}`: use auto, sigbus or thread"
            )),
        }
    }
}

impl std::fmt::Display for FaultMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultMode::Auto => "auto",
            FaultMode::Sigbus => "sigbus",
            FaultMode::Thread => "thread",
        })
    }
}

/// Which prefetcher each region gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrefetchKind {
    /// None.
    None,
    /// Linux-style readahead: the window grows with sequential hits, up to 8 pages
    /// (32 in the thread fault mode, where faults cost more: `prefetch::THREAD_MODE_WINDOW`).
    #[default]
    Readahead,
    /// Leap's majority trend over recent fault deltas.
    Majority,
}

impl PrefetchKind {
    /// The name `from_str` takes.
    pub fn name(self) -> &'static str {
        match self {
            PrefetchKind::None => "none",
            PrefetchKind::Readahead => "readahead",
            PrefetchKind::Majority => "majority",
        }
    }
}

impl std::str::FromStr for PrefetchKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(PrefetchKind::None),
            "readahead" => Ok(PrefetchKind::Readahead),
            "majority" => Ok(PrefetchKind::Majority),
            _ => Err(format!(
                "unknown prefetcher `{s}`: use none, readahead or majority"
            )),
        }
    }
}

/// What a `--prefetch` list names (`farmem run --prefetch readahead,pointer`,
/// FARMEM_PREFETCH): one prefetcher (none, readahead or majority) and whether faults
/// chase pointers ([`Builder::pointer_prefetch`]). `pointer` alone chases pointers with
/// no prefetcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchSpec {
    /// The prefetcher.
    pub kind: PrefetchKind,
    /// Whether faults chase pointers.
    pub pointer: bool,
}

impl std::str::FromStr for PrefetchSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut kind = None;
        let mut pointer = false;
        for item in s.split(',').map(str::trim) {
            if item == "pointer" {
                pointer = true;
                continue;
            }
            let k: PrefetchKind = item.parse().map_err(|_| {
                format!(
                    "unknown prefetcher `{item}` in `{s}`: use none, readahead or majority, and `pointer` to chase pointers (readahead,pointer)"
                )
            })?;
            if kind.replace(k).is_some_and(|old| old != k) {
                return Err(format!(
                    "`{s}` names two prefetchers: pick one of none, readahead and majority (pointer combines with either)"
                ));
            }
        }
        Ok(PrefetchSpec {
            kind: kind.unwrap_or(if pointer {
                PrefetchKind::None
            } else {
                PrefetchKind::default()
            }),
            pointer,
        })
    }
}

impl std::fmt::Display for PrefetchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, self.pointer) {
            (PrefetchKind::None, true) => f.write_str("pointer"),
            (k, true) => write!(f, "{},pointer", k.name()),
            (k, false) => f.write_str(k.name()),
        }
    }
}

/// What an eviction hint says about a page ([`Region::set_evict_hint`]; a plug-in's
/// `priority` callback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// Leave it local while anything else can go: the reclaimer's hand passes it by
    /// (unless nothing else can be evicted).
    Keep,
    /// As the policy decides.
    #[default]
    Normal,
    /// Evict it at the hand's next pass, used or not.
    EvictFirst,
}

/// How a range of a region will be used ([`Region::advise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// No special treatment (clears earlier advice).
    Normal,
    /// Read front to back: prefetch ahead on every fault.
    Sequential,
    /// No locality: do not prefetch.
    Random,
    /// Bring it in now.
    WillNeed,
    /// Not needed soon: evict it now (the data is kept).
    DontNeed,
}

/// What can go wrong setting up or changing far memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel lacks something farmem needs.
    #[error("unsupported kernel: {0}")]
    Unsupported(String),
    /// userfaultfd is not allowed for this process.
    #[error(
        "userfaultfd is not permitted for this process ({0}): run as root, or allow it with `sysctl vm.unprivileged_userfaultfd=1`, or give the user read-write access to /dev/userfaultfd"
    )]
    Permission(std::io::Error),
    /// The budget is below the minimum.
    #[error(
        "local budget of {requested} bytes is too small: farmem needs at least {minimum} bytes"
    )]
    BudgetTooSmall {
        /// What was asked for.
        requested: usize,
        /// The least accepted.
        minimum: usize,
    },
    /// A bad argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The engine could not do it in time (pages stayed locked).
    #[error("{0}")]
    Busy(String),
    /// The far tier could not be set up (a memory node out of reach or refusing).
    #[error("{0}")]
    Tier(String),
    /// The kernel could not give the huge pages a budget of 2 MiB pages needs.
    #[error("{0}")]
    HugePages(String),
    /// A system call failed.
    #[error("could not {op}: {source}")]
    Os {
        /// What farmem was doing.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Error {
        Error::Os { op, source }
    }

    pub(crate) fn userfaultfd(e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Error::Permission(e),
            Some(libc::ENOSYS) => Error::Unsupported(
                "this kernel was built without userfaultfd (CONFIG_USERFAULTFD)".into(),
            ),
            _ => Error::os("open a userfaultfd", e),
        }
    }
}
