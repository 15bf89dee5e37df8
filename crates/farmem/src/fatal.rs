//! Loud stops. When far memory fails, the program must not go on with wrong data, and the
//! fault path (often a signal handler) cannot unwind or allocate: these functions write one
//! message to stderr with plain `write(2)` calls and abort.

use crate::backend::TierError;
use crate::sys::signal::{fatal, fmt_u64};

const PREFIX: &[u8] = b"farmem: fatal: ";

/// An operating-system call on the paging path failed.
pub(crate) fn die_io(what: &str, e: &std::io::Error) -> ! {
    let mut b = [0u8; 20];
    let code = fmt_u64(e.raw_os_error().unwrap_or(0) as u64, &mut b);
    fatal(&[
        PREFIX,
        what.as_bytes(),
        b" (errno ",
        code,
        b"). The program cannot continue safely; its far pages are lost.\n",
    ])
}

/// The far tier failed. The message names the tier and, for a fetch, the page.
pub(crate) fn die_tier(op: &str, tier: &str, e: &TierError) -> ! {
    // Formatting the error may allocate; on this path the program is about to stop and
    // the allocator is not held by the fault path, so a best-effort message is fine.
    let detail = e.to_string();
    fatal(&[
        PREFIX,
        b"the far tier `",
        tier.as_bytes(),
        b"` failed to ",
        op.as_bytes(),
        b": ",
        detail.as_bytes(),
        b". Stopping rather than running on with missing or wrong data.\n",
    ])
}

/// A fetched page did not match its checksum.
pub(crate) fn die_corrupt(tier: &str, region: u32, page: u64) -> ! {
    let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
    fatal(&[
        PREFIX,
        b"page ",
        fmt_u64(page, &mut a),
        b" of region ",
        fmt_u64(region as u64, &mut b),
        b" came back from the far tier `",
        tier.as_bytes(),
        b"` with the wrong checksum: the far copy is corrupt. Stopping rather than running on with wrong data.\n",
    ])
}
