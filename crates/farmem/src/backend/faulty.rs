//! A tier wrapper that fails or corrupts on purpose, for tests. (Placeholder.)

/// What the wrapper does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultyMode {
    /// Fetches fail with an I/O error.
    FailFetch,
}

/// Wraps a tier and misbehaves.
#[derive(Debug)]
pub struct Faulty {
    _mode: FaultyMode,
}
