//! Everything that talks to the kernel: userfaultfd, memfd and mappings, signals, sockets.
//!
//! The rest of the engine uses the small safe-ish interface here and never calls libc
//! itself (wasmtime's `sys/` habit).

pub mod event;
pub mod hugepages;
pub mod mem;
pub mod net;
pub mod raw;
pub mod sched;
pub mod signal;
pub mod smaps;
pub mod sud;
pub mod uffd;
