//! Scheduling: the reclaimer's priority, and which CPUs threads run on.

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

/// The CPUs this thread may run on (its affinity mask, as set by `taskset` or a cgroup's
/// cpuset), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size given; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set for CPU numbers below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Runs the calling thread on `cpu` only.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes the set's bit for `cpu`, which the caller keeps below
    // CPU_SETSIZE (an out-of-range cpu is ignored by the macro's bounds check).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
