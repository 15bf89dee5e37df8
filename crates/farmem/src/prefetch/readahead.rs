//! Linux-style readahead. (Placeholder.)
use super::{Candidates, FaultInfo, Prefetcher};

/// Readahead prefetcher.
#[derive(Debug, Default)]
pub struct Readahead;

impl Prefetcher for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
    }
    fn on_fault(&mut self, _fault: &FaultInfo, _out: &mut Candidates) {}
}
