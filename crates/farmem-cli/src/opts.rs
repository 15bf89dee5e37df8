//! Parsing of the options shared by several commands.

use anyhow::{Result, bail};
use farmem::backend::Backend;
use std::sync::Arc;

pub use farmem_bench::linux_swap::oom_kills;

/// A size with K/M/G/T suffixes (binary).
pub fn size(s: &str) -> Result<u64, String> {
    farmem_bench::parse_size(s).map_err(|e| e.to_string())
}

/// A far tier by URI (see [`farmem::backend::from_uri`]).
pub fn backend(name: &str) -> Result<Arc<dyn Backend>> {
    Ok(farmem::backend::from_uri(name)?)
}

/// Human-readable size.
pub fn human(bytes: u64) -> String {
    farmem_bench::size::format_size_approx(bytes)
}

/// Whether the budget is usable for `size`; a clear message otherwise.
pub fn check_budget(size: u64, local: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(4096) {
        bail!("--size must be a positive multiple of 4 KiB (got {size} bytes)");
    }
    if local < farmem::MIN_BUDGET_PAGES as u64 * 4096 {
        bail!(
            "--local-mem must be at least {} KiB",
            farmem::MIN_BUDGET_PAGES * 4
        );
    }
    Ok(())
}
