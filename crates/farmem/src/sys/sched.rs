//! Scheduling: the reclaimer's priority.

use std::io;

/// How the reclaimer thread is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_IDLE`: runs only on a CPU nothing else wants. The kernel also counts a CPU
    /// that runs only such threads as idle when it places a woken thread, so a program's
    /// client is not queued behind the reclaimer on the program's CPU.
    Background,
    /// `SCHED_OTHER` at nice `n` (lower runs first; below 0 needs CAP_SYS_NICE, and
    /// without it the thread stays at nice 0).
    Urgent(i32),
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Schedules thread `tid` of this process at `p`. Linux applies both calls to the one
/// thread.
pub fn set_thread_priority(tid: i32, p: Priority) -> io::Result<()> {
    let (policy, nice) = match p {
        Priority::Background => (libc::SCHED_IDLE, None),
        Priority::Urgent(n) => (libc::SCHED_OTHER, Some(n)),
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call; `tid` is a thread id, and a
    // wrong one only fails the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(n) = nice {
        // SAFETY: setpriority with integer arguments; a wrong id only fails the call.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, n) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
