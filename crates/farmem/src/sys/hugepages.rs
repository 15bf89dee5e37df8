//! The kernel's 2 MiB huge pages for an engine with 2 MiB pages.
//!
//! The pages come from the kernel's surplus pool (`/proc/sys/vm/nr_overcommit_hugepages`):
//! allocated when a page is filled and returned to the kernel when it is freed (evicted,
//! or the process ends), so a process that ends without dropping its engine (`_exit`,
//! `exec`, a signal) leaves no memory behind. An engine makes sure the pool may grow by
//! its budget (raising the limit by what is missing, which needs root; the limit goes
//! back down when the engine is dropped), and that the memory is there now
//! (`MemAvailable`). Pages already in the persistent pool (`nr_hugepages`, e.g. reserved
//! at boot) are used first. Changes to the limit are made under an exclusive `flock`
//! that other farmem processes take too.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const OVERCOMMIT: &str = "/proc/sys/vm/nr_overcommit_hugepages";
const DIR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const LOCK: &str = "/run/lock/farmem-hugepages.lock";
const HUGE: u64 = 2 << 20;

/// Serialises this process's own changes (the flock covers other processes).
static IN_PROCESS: Mutex<()> = Mutex::new(());
/// Huge pages the engines of this process hold reservations for.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

fn read_count(path: &str) -> Result<usize, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {path}: {e} (no 2 MiB huge pages on this system?)"))?
        .trim()
        .parse()
        .map_err(|_| format!("{path} does not hold a number"))
}

fn hp(name: &str) -> Result<usize, String> {
    read_count(&format!("{DIR}/{name}"))
}

/// Bytes the kernel says it can give without swapping (`MemAvailable`).
fn mem_available() -> Result<u64, String> {
    let m = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    m.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "/proc/meminfo has no MemAvailable".into())
}

/// Huge pages an engine may use: the surplus limit is lowered by `added` on drop.
#[derive(Debug)]
pub struct Reservation {
    pages: usize,
    added: usize,
}

impl Reservation {
    /// Makes room for `pages` huge pages for this engine; the error says what was
    /// missing.
    pub fn take(pages: usize) -> Result<Reservation, String> {
        let _g = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let added = add(pages)?;
        Ok(Reservation { pages, added })
    }

    /// `take` in a forked child, which runs alone: a thread of the parent that held this
    /// process's lock at the fork does not exist here, so the lock is not waited for.
    pub fn take_in_child(pages: usize) -> Result<Reservation, String> {
        let _g = IN_PROCESS.try_lock();
        let added = add(pages)?;
        Ok(Reservation { pages, added })
    }

    /// Makes this reservation stand for `pages` (more than now: a larger budget).
    pub fn grow(&mut self, pages: usize) -> Result<(), String> {
        let _g = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        if pages > self.pages {
            self.added += add(pages - self.pages)?;
            self.pages = pages;
        }
        Ok(())
    }

    /// In a forked child: lets go of the parent's reservation without lowering the limit
    /// (that is the parent's to do).
    pub fn forget_in_child(self) {
        CLAIMED.fetch_sub(self.pages, Relaxed);
        std::mem::forget(self);
    }

    /// Huge pages this reservation stands for.
    pub fn pages(&self) -> usize {
        self.pages
    }
}

/// Makes room for `pages` more huge pages; returns how much it raised the surplus limit.
/// The caller holds `IN_PROCESS`.
fn add(pages: usize) -> Result<usize, String> {
    let _lock = FileLock::new().map_err(|e| format!("cannot lock {LOCK}: {e}"))?;
    let claimed = CLAIMED.load(Relaxed);
    let free = hp("free_hugepages")?.saturating_sub(hp("resv_hugepages")?);
    let limit = read_count(OVERCOMMIT)?;
    let surplus_room = limit.saturating_sub(hp("surplus_hugepages")?);
    let room = (free + surplus_room).saturating_sub(claimed);
    let short = pages.saturating_sub(room);
    let avail = mem_available()?;
    // Pages the persistent pool has free are there already; the rest must come from
    // memory the kernel has now.
    let from_memory = pages.saturating_sub(free.saturating_sub(claimed)) as u64 * HUGE;
    if from_memory > avail {
        return Err(format!(
            "not enough huge pages: the budget needs {pages} 2 MiB pages, {} MiB of memory, and the kernel has {} MiB available; give a smaller budget or free memory",
            from_memory >> 20,
            avail >> 20
        ));
    }
    if short > 0
        && let Err(e) = std::fs::write(OVERCOMMIT, (limit + short).to_string())
    {
        return Err(format!(
            "not enough huge pages: the budget needs {pages} 2 MiB pages and the kernel allows {room} more ({e} raising {OVERCOMMIT} to {}: root can, or reserve them at boot with hugepages={pages})",
            limit + short
        ));
    }
    CLAIMED.fetch_add(pages, Relaxed);
    Ok(short)
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The claim and the limit go down together, under the locks `add` takes, so that
        // no other engine counts room that is about to go.
        let _g = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let lock = FileLock::new();
        CLAIMED.fetch_sub(self.pages, Relaxed);
        if self.added == 0 || lock.is_err() {
            return;
        }
        if let Ok(limit) = read_count(OVERCOMMIT) {
            let _ = std::fs::write(OVERCOMMIT, limit.saturating_sub(self.added).to_string());
        }
    }
}

/// An exclusive `flock` on the pool's lock file, held until dropped.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn new() -> io::Result<FileLock> {
        let open = |p: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p)
        };
        let f = open(LOCK).or_else(|_| open("/tmp/farmem-hugepages.lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileLock { _file: f })
    }
}
