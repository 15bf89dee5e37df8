//! `mem`: pages kept uncompressed in process memory, outside the local budget.
//! (Placeholder, replaced by the full implementation.)

use super::{Backend, PAGE_SIZE, PageKey, TierError, TierStats};
use std::collections::HashMap;
use std::sync::Mutex;

/// Uncompressed in-memory tier.
#[derive(Debug, Default)]
pub struct Memory {
    pages: Mutex<HashMap<PageKey, Box<[u8]>>>,
}

impl Memory {
    /// An empty tier.
    pub fn new() -> Memory {
        Memory::default()
    }
}

impl Backend for Memory {
    fn name(&self) -> &str {
        "mem"
    }

    fn store(&self, keys: &[PageKey], data: &[u8]) -> Result<(), TierError> {
        let mut map = self.pages.lock().unwrap();
        for (k, d) in keys.iter().zip(data.chunks_exact(PAGE_SIZE)) {
            map.insert(*k, d.into());
        }
        Ok(())
    }

    fn fetch(&self, keys: &[PageKey], out: &mut [u8]) -> Result<(), TierError> {
        let map = self.pages.lock().unwrap();
        for (k, o) in keys.iter().zip(out.chunks_exact_mut(PAGE_SIZE)) {
            o.copy_from_slice(map.get(k).ok_or(TierError::Missing { key: *k })?);
        }
        Ok(())
    }

    fn discard(&self, keys: &[PageKey]) {
        let mut map = self.pages.lock().unwrap();
        for k in keys {
            map.remove(k);
        }
    }

    fn stats(&self) -> TierStats {
        let n = self.pages.lock().unwrap().len() as u64;
        TierStats {
            pages: n,
            zero_pages: 0,
            logical_bytes: n * PAGE_SIZE as u64,
            stored_bytes: n * PAGE_SIZE as u64,
        }
    }
}
