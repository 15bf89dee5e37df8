//! Benchmark support for farmem: access patterns, exact LRU simulation, and the Linux
//! kernel baseline (a memory cgroup swapping to zram).
#![warn(missing_docs)]
