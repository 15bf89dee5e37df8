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

/// A fill found a page present that the page-state table says is not: the table and the
/// kernel disagree, a bug. Names the pages and their state words (for the report).
pub(crate) fn die_present(what: &str, region: u32, first: u64, words: &[u64]) -> ! {
    const MAX: usize = 32;
    let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
    let mut bufs = [[0u8; 20]; MAX];
    let mut parts: [&[u8]; 8 + 2 * MAX] = [b""; 8 + 2 * MAX];
    parts[0] = PREFIX;
    parts[1] = b"internal error: ";
    parts[2] = what.as_bytes();
    parts[3] = b" found a page already present (region ";
    parts[4] = fmt_u64(region as u64, &mut a);
    parts[5] = b", pages from ";
    parts[6] = fmt_u64(first, &mut b);
    parts[7] = b"; their state words:";
    let mut n = 8;
    for (w, buf) in words.iter().zip(bufs.iter_mut()) {
        parts[n] = b" ";
        parts[n + 1] = fmt_u64(*w, buf);
        n += 2;
    }
    parts[n] = b"). Please report this bug.\n";
    fatal(&parts[..n + 1])
}

/// Something that must not go on happened; `what` says what (one sentence, no newline).
pub(crate) fn die_msg(what: &str) -> ! {
    fatal(&[PREFIX, what.as_bytes(), b". Stopping.\n"])
}
