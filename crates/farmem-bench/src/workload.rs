//! A complete benchmark workload over plain anonymous memory: map, fill, run, verify.
//!
//! This is the "all-local" system, and also what the child process runs in the Linux-swap
//! baseline: the parent serialises a [`Workload`] to JSON, runs a child inside the memory
//! cgroup (see [`crate::linux_swap`]) that calls [`Workload::run_anonymous`] and prints
//! [`WorkloadResult::to_output_line`], then reads the result back with
//! [`WorkloadResult::from_output`]. farmem runs the same [`crate::access::Target`] loop over
//! its far region instead of an anonymous mapping.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::access::{AccessError, Mismatch, PAGE_SIZE, Stop, Target};
use crate::pattern::Pattern;

/// The prefix of the line a workload child prints its result on.
pub const RESULT_PREFIX: &str = "FARMEM_BENCH_RESULT ";

/// Errors running a workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// mmap failed.
    #[error(
        "could not map {bytes} bytes of anonymous memory: {source}; lower the size or raise the memory limits (ulimit -v, overcommit)"
    )]
    Map {
        /// Bytes requested.
        bytes: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The size is not a whole number of pages, or zero, or too large.
    #[error(
        "workload size {0} bytes is not a positive multiple of {PAGE_SIZE} that fits in memory; round it to whole pages"
    )]
    Size(u64),
    /// The access loop rejected its arguments.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Data did not survive.
    #[error("verification failed: {0}")]
    Verify(#[from] Mismatch),
    /// The workload spec or result line could not be parsed.
    #[error("bad workload JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// No result line in the child's output.
    #[error(
        "the workload child printed no line starting with {RESULT_PREFIX:?}; look at its stderr for the reason"
    )]
    NoResult,
}

/// A workload: what to map and how to access it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Access pattern.
    pub pattern: Pattern,
    /// Region size in bytes (whole pages).
    pub size_bytes: u64,
    /// Threads, each with its own stream.
    pub threads: usize,
    /// Seed of the streams.
    pub seed: u64,
    /// When each thread stops.
    pub stop: Stop,
    /// Fraction of accesses that write (0..=1).
    pub write_fraction: f64,
    /// Check every page after the run.
    pub verify: bool,
    /// Allow transparent huge pages. Off by default so that the kernel pages at 4 KiB, the
    /// same granularity as farmem's default and the LRU simulator.
    #[serde(default)]
    pub thp: bool,
}

impl Workload {
    /// A single-threaded workload with 30% writes and verification on.
    pub fn new(pattern: Pattern, size_bytes: u64, stop: Stop) -> Self {
        Self {
            pattern,
            size_bytes,
            threads: 1,
            seed: 0x5EED,
            stop,
            write_fraction: 0.3,
            verify: true,
            thp: false,
        }
    }

    /// Serialised for a child's command line or environment.
    pub fn to_json(&self) -> String {
        // Cannot fail: plain data with string keys (a `Stop::Until` is the exception and
        // serialises to an error, which only a misuse can produce).
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses [`Workload::to_json`]'s output.
    pub fn from_json(s: &str) -> Result<Self, WorkloadError> {
        Ok(serde_json::from_str(s)?)
    }

    /// Maps `size_bytes` of private anonymous memory, fills it, runs the accesses and
    /// verifies (if asked). Fill time is reported separately from the access rate.
    pub fn run_anonymous(&self) -> Result<WorkloadResult, WorkloadError> {
        let bytes = usize::try_from(self.size_bytes)
            .ok()
            .filter(|&b| b > 0 && b % PAGE_SIZE == 0)
            .ok_or(WorkloadError::Size(self.size_bytes))?;
        let map = AnonMap::new(bytes, self.thp)?;
        // SAFETY: `map` owns the mapping, keeps it mapped until it drops at the end of this
        // function (after the last use of `target`), and never hands out references to it.
        let target = unsafe { Target::new(map.ptr(), map.len()) }?;
        let t0 = Instant::now();
        target.fill();
        let fill = t0.elapsed();
        let faults0 = process_faults();
        let stats = target.run_parallel(
            self.pattern,
            self.seed,
            self.threads,
            self.stop,
            self.write_fraction,
        )?;
        let faults1 = process_faults();
        let verified = if self.verify {
            target.verify()?;
            true
        } else {
            false
        };
        Ok(WorkloadResult {
            accesses: stats.accesses(),
            writes: stats.writes(),
            elapsed: stats.elapsed,
            accesses_per_sec: stats.accesses_per_sec(),
            fill,
            verified,
            checksum: stats.checksum(),
            major_faults: faults1.0.saturating_sub(faults0.0),
            minor_faults: faults1.1.saturating_sub(faults0.1),
        })
    }
}

/// What a workload did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// Accesses over all threads.
    pub accesses: u64,
    /// Writes over all threads.
    pub writes: u64,
    /// Wall time of the access phase.
    pub elapsed: Duration,
    /// Accesses per second over all threads.
    pub accesses_per_sec: f64,
    /// Time to fill the region.
    pub fill: Duration,
    /// Whether every page was verified after the run.
    pub verified: bool,
    /// Checksum of the words read.
    pub checksum: u64,
    /// Major page faults of the process during the access phase (`getrusage`): under the
    /// Linux-swap baseline, the swap-ins, i.e. Linux's "faults" figure.
    #[serde(default)]
    pub major_faults: u64,
    /// Minor page faults of the process during the access phase.
    #[serde(default)]
    pub minor_faults: u64,
}

impl WorkloadResult {
    /// The line a child prints: [`RESULT_PREFIX`] then JSON.
    pub fn to_output_line(&self) -> String {
        // Cannot fail: plain numbers and durations.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{RESULT_PREFIX}{json}")
    }

    /// Finds and parses the result in a child's stdout: the rest of the first line that
    /// contains [`RESULT_PREFIX`] (anywhere, since a test harness may print before it).
    pub fn from_output(stdout: &str) -> Result<Self, WorkloadError> {
        let line = stdout
            .lines()
            .find_map(|l| l.find(RESULT_PREFIX).map(|i| &l[i + RESULT_PREFIX.len()..]))
            .ok_or(WorkloadError::NoResult)?;
        Ok(serde_json::from_str(line)?)
    }
}

/// (major, minor) page faults of this process so far, all threads.
fn process_faults() -> (u64, u64) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF cannot fail with valid memory.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0);
    }
    (ru.ru_majflt as u64, ru.ru_minflt as u64)
}

/// A private anonymous mapping, unmapped on drop.
#[derive(Debug)]
pub struct AnonMap {
    ptr: *mut u8,
    len: usize,
}

impl AnonMap {
    /// Maps `len` bytes (rounded up to whole pages) of zeroed private anonymous memory,
    /// with transparent huge pages disabled unless `thp`.
    pub fn new(len: usize, thp: bool) -> Result<Self, WorkloadError> {
        let len = len.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; no existing
        // memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(WorkloadError::Map {
                bytes: len,
                source: std::io::Error::last_os_error(),
            });
        }
        let map = Self {
            ptr: ptr.cast(),
            len,
        };
        if !thp {
            // SAFETY: advice on the mapping we just created. Failure (a kernel without THP)
            // only means there are no huge pages to avoid, so it is ignored.
            unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        }
        Ok(map)
    }

    /// Start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; nothing refers to it any more.
        let rc = unsafe { libc::munmap(self.ptr.cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap failed: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_workload_runs_and_roundtrips_through_json() {
        let mut w = Workload::new(Pattern::Skewed, 4 << 20, Stop::Count(20_000));
        w.threads = 2;
        let back = Workload::from_json(&w.to_json()).unwrap();
        assert_eq!(back, w);
        let r = w.run_anonymous().unwrap();
        assert_eq!(r.accesses, 40_000);
        assert!(r.verified);
        let line = format!("noise\ntest x ... {}\nmore noise\n", r.to_output_line());
        assert_eq!(WorkloadResult::from_output(&line).unwrap(), r);
        assert!(matches!(
            WorkloadResult::from_output("nothing"),
            Err(WorkloadError::NoResult)
        ));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for size in [0, 4097] {
            let w = Workload::new(Pattern::Seq, size, Stop::Count(1));
            assert!(matches!(w.run_anonymous(), Err(WorkloadError::Size(_))));
        }
    }
}
