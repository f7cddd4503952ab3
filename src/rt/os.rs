//! The only unsafe code of `rt`: thin wrappers over the scheduling system calls.

use std::io;

use super::MAX_CPUS;

pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid(2) takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::gettid() }
}

/// CPUs of thread `tid` (0: the calling thread).
pub(crate) fn getaffinity(tid: i32) -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: (1) `set` is a live, writable cpu_set_t and the size passed is exactly its size, so the
    // kernel writes within it; (2) `tid` is only an id: a stale one gives ESRCH, not undefined behaviour.
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..MAX_CPUS)
        // SAFETY: CPU_ISSET reads bit `c` of `set`; c < CPU_SETSIZE = MAX_CPUS is inside it.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Restricts thread `tid` (0: the calling thread) to `cpus` (each < MAX_CPUS).
pub(crate) fn setaffinity(tid: i32, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `getaffinity`, all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= MAX_CPUS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: CPU_SET writes bit `c` of `set`, and c < CPU_SETSIZE was checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size; the kernel only reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts thread `tid` (0: the calling thread) on SCHED_FIFO at `priority`.
pub(crate) fn set_fifo(tid: i32, priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `tid` is only an id (a stale one gives ESRCH); `param` is a valid sched_param the call only
    // reads. On Linux sched_setscheduler acts on the one thread `tid` (0: the caller), not the process.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// (policy, priority) of thread `tid` (0: the calling thread).
pub(crate) fn scheduler(tid: i32) -> io::Result<(i32, i32)> {
    // SAFETY: sched_getscheduler only takes an id; a stale one gives ESRCH.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live, writable sched_param; the kernel writes exactly one into it.
    if unsafe { libc::sched_getparam(tid, &mut param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SCHED_RESET_ON_FORK may be or'ed into the policy.
    Ok((policy & !libc::SCHED_RESET_ON_FORK, param.sched_priority))
}
