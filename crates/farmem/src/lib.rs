//! farmem: far memory for unmodified Linux, in userspace, on userfaultfd.
#![warn(missing_docs)]

pub mod backend;
pub mod prefetch;
pub mod sys;
