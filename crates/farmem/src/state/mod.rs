//! The bottom of the engine: the state every fault, eviction and range operation shares.
//!
//! ```text
//!   engine.rs   region.rs   fork.rs      the handles a program holds           (top)
//!        │          │          │
//!   fault.rs ──► reclaim/ ◄── range.rs   what happens to pages              (middle)
//!        │          │          │          (range.rs also uses fault.rs's fetch)
//!   state/: page words, frames (the budget), each region's tables, the engine's
//!           shared state, the fork gate, fetch buffers, the SIGBUS registry (bottom)
//!   sys/:   every kernel interface
//! ```
//!
//! Modules import only downwards: nothing here knows about faults, reclaim or the
//! handles above.

pub(crate) mod accessed;
pub(crate) mod budget;
pub(crate) mod bufs;
pub(crate) mod config;
pub(crate) mod gate;
pub mod page;
pub mod pin;
pub(crate) mod region;
pub(crate) mod registry;
pub(crate) mod shared;
