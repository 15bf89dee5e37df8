//! `compressed`: pages compressed in process memory. (Placeholder.)

/// Compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// lz4 (lz4_flex): fast, the default.
    #[default]
    Lz4,
    /// zstd at the given level.
    Zstd(i32),
}

/// Compressed in-memory tier.
#[derive(Debug)]
pub struct Compressed {
    _codec: Codec,
}
