//! Scheduling: the reclaimer's priority.

use std::io;

/// Gives the calling thread the nice value `nice` (lower runs first; below 0 needs
/// CAP_SYS_NICE). Linux applies `setpriority(PRIO_PROCESS, tid)` to the one thread.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    // SAFETY: setpriority with integer arguments on our own thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
