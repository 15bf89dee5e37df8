//! Benchmark support for farmem: access patterns, the shared access loop, exact LRU
//! simulation, the Linux kernel baseline (a memory cgroup swapping to zram), the JSON
//! report record, and size parsing.
//!
//! The `farmem bench` command runs one workload three ways, all through
//! [`access::Target`] so that they do exactly the same work:
//!
//! - `farmem`: over a far region with a local budget;
//! - `all-local`: [`workload::Workload::run_anonymous`] over plain memory;
//! - `linux-swap`: the same, in a child process that [`linux_swap::SwapBaseline`] runs
//!   inside a memory cgroup capped at the budget, with the kernel swapping to zram.
//!
//! [`lru::LruSim`] counts the misses an exact LRU would take with the same budget, and
//! [`report::BenchRecord`] is the JSON line each measurement produces.
//!
//! [`redis`] runs a real `redis-server` the same three ways for `farmem bench-redis`:
//! under `farmem run`, inside the Linux-swap baseline's cgroup, and plainly.
#![warn(missing_docs)]

pub mod access;
pub mod linux_swap;
pub mod lru;
pub mod pattern;
pub mod redis;
pub mod report;
pub mod size;
pub mod workload;

pub use access::{PAGE_SIZE, Stop, Target};
pub use lru::LruSim;
pub use pattern::{AccessStream, Pattern};
pub use report::{BenchRecord, System, median};
pub use size::{format_size, parse_size};
