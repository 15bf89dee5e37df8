//! Leap's majority-trend prefetcher. (Placeholder.)
use super::{Candidates, FaultInfo, Prefetcher};

/// Majority-trend prefetcher.
#[derive(Debug, Default)]
pub struct Majority;

impl Prefetcher for Majority {
    fn name(&self) -> &'static str {
        "majority"
    }
    fn on_fault(&mut self, _fault: &FaultInfo, _out: &mut Candidates) {}
}
