//! Real-time thread settings: CPU affinity and `SCHED_FIFO` priority per thread role (`[realtime]` in the
//! config), applied by each capture and inference thread to itself as it starts.
//!
//! The system may refuse them: a CPU that does not exist or is outside the process's cpuset, `EPERM` for
//! `SCHED_FIFO` without `CAP_SYS_NICE` or a high enough `RLIMIT_RTPRIO`. [`apply_to_current_thread`]
//! returns every refusal as an [`RtError`] that says what to change; the pipeline logs them as warnings, or
//! fails to start when `realtime.strict = true`.
//!
//! Layers: the `os` module at the bottom is the only `unsafe` code (sched_getaffinity, sched_setaffinity,
//! sched_setscheduler, sched_getscheduler, sched_getparam); everything above it is safe.

use std::io;

use crate::thread::{ThreadRole, WORKER_PREFIX};

#[allow(unsafe_code)]
mod os;

/// CPUs a CPU set can name (`CPU_SETSIZE`): CPU numbers run from 0 to `MAX_CPUS - 1`.
pub const MAX_CPUS: usize = 1024;
/// Highest `SCHED_FIFO` priority on Linux (`sched_get_priority_max(SCHED_FIFO)`); the lowest is 1.
pub const MAX_FIFO_PRIORITY: u8 = 99;

/// What one thread role asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadPolicy {
    /// CPUs the thread may run on (sorted, no duplicates); empty: inherit the process's.
    pub cpus: Vec<usize>,
    /// `SCHED_FIFO` priority (1..=99); `None`: stay on the default time-sharing policy.
    pub fifo_priority: Option<u8>,
}

impl ThreadPolicy {
    /// Whether the policy changes anything.
    pub fn is_default(&self) -> bool {
        self.cpus.is_empty() && self.fifo_priority.is_none()
    }
}

/// `[realtime]`: one policy per role, and whether a refusal is fatal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RealtimeSettings {
    pub capture: ThreadPolicy,
    pub inference: ThreadPolicy,
    /// Refuse to start when the system does not permit a setting (otherwise: a warning, and the thread runs
    /// without it).
    pub strict: bool,
}

impl RealtimeSettings {
    /// The policy of `role`; the engine's workers take the inference thread's.
    pub fn policy(&self, role: ThreadRole) -> &ThreadPolicy {
        match role {
            ThreadRole::Capture => &self.capture,
            ThreadRole::Inference | ThreadRole::Worker => &self.inference,
        }
    }
}

/// Checks a configured CPU list: not empty, every CPU below [`MAX_CPUS`], none twice. Returns it sorted.
/// Whether the CPUs exist is only known on the machine: [`apply_to_current_thread`] checks that.
pub fn check_cpus(cpus: &[usize]) -> Result<Vec<usize>, String> {
    if cpus.is_empty() {
        return Err(
            "is empty: list CPU numbers (e.g. [1]) or remove the key to keep the default".into(),
        );
    }
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    if let Some(&cpu) = sorted.iter().find(|&&c| c >= MAX_CPUS) {
        return Err(format!(
            "CPU {cpu} is out of range: CPU numbers run from 0 to {}",
            MAX_CPUS - 1
        ));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "CPU {} is listed twice: remove the duplicate",
            w[0]
        ));
    }
    Ok(sorted)
}

/// Checks a configured `SCHED_FIFO` priority (1..=99).
pub fn check_priority(priority: i64) -> Result<u8, String> {
    u8::try_from(priority)
        .ok()
        .filter(|p| (1..=MAX_FIFO_PRIORITY).contains(p))
        .ok_or_else(|| {
            format!(
                "{priority} is outside 1..={MAX_FIFO_PRIORITY} (SCHED_FIFO priorities; remove the key to run \
                 the thread on the default time-sharing policy)"
            )
        })
}

/// A setting the system refused.
#[derive(Debug, thiserror::Error)]
pub enum RtError {
    #[error(
        "realtime.{role}-cpus: CPU {cpu} does not exist or is not available to this process (available: {}): \
         change the list", cpu_list(.available)
    )]
    NoSuchCpu {
        role: ThreadRole,
        cpu: usize,
        available: Vec<usize>,
    },
    #[error("realtime.{role}-cpus: cannot pin the {role} thread to CPUs {}: {source}", cpu_list(.cpus))]
    Affinity {
        role: ThreadRole,
        cpus: Vec<usize>,
        #[source]
        source: io::Error,
    },
    #[error("realtime.{role}-priority: cannot run the {role} thread at SCHED_FIFO priority {priority}: {source}{}",
        if .source.raw_os_error() == Some(libc::EPERM) {
            " (not permitted: run as root, or give the service CAP_SYS_NICE or LimitRTPRIO=99 \
             (RLIMIT_RTPRIO); or remove the key)"
        } else {
            ""
        })]
    Priority {
        role: ThreadRole,
        priority: u8,
        #[source]
        source: io::Error,
    },
}

/// `0-3,6` style, as the kernel prints CPU lists.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}-{}", cpus[i], cpus[j]));
        } else {
            out.push_str(&cpus[i].to_string());
        }
        i = j + 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// Applies `policy` to the calling thread: first the CPU affinity, then the `SCHED_FIFO` priority. Each is
/// attempted even when the other failed; the returned list holds every refusal (empty: all applied).
pub fn apply_to_current_thread(role: ThreadRole, policy: &ThreadPolicy) -> Vec<RtError> {
    apply_to_thread(role, 0, policy)
}

/// Applies `role`'s policy to the calling thread and, for [`ThreadRole::Inference`], to the engine's worker threads
/// ([`WORKER_PREFIX`]). Returns every refusal (empty: all applied).
pub fn apply_for_role(role: ThreadRole, policy: &ThreadPolicy) -> Vec<RtError> {
    let mut errors = apply_to_current_thread(role, policy);
    if role == ThreadRole::Inference && !policy.is_default() && errors.is_empty() {
        // The same settings just succeeded on this thread; a worker can only differ by having exited.
        for tid in threads_with_prefix(WORKER_PREFIX).unwrap_or_default() {
            errors.extend(apply_to_thread(role, tid, policy));
        }
    }
    errors
}

/// Applies `policy` to thread `tid` of this process (`0`: the calling thread), as
/// [`apply_to_current_thread`] does (for worker threads a library started elsewhere).
pub fn apply_to_thread(role: ThreadRole, tid: i32, policy: &ThreadPolicy) -> Vec<RtError> {
    let mut errors = Vec::new();
    if !policy.cpus.is_empty() {
        match os::getaffinity(tid) {
            Ok(available) => {
                if let Some(&cpu) = policy.cpus.iter().find(|c| !available.contains(c)) {
                    errors.push(RtError::NoSuchCpu {
                        role,
                        cpu,
                        available,
                    });
                } else if let Err(source) = os::setaffinity(tid, &policy.cpus) {
                    errors.push(RtError::Affinity {
                        role,
                        cpus: policy.cpus.clone(),
                        source,
                    });
                }
            }
            Err(source) => errors.push(RtError::Affinity {
                role,
                cpus: policy.cpus.clone(),
                source,
            }),
        }
    }
    if let Some(priority) = policy.fifo_priority {
        if let Err(source) = os::set_fifo(tid, priority) {
            errors.push(RtError::Priority {
                role,
                priority,
                source,
            });
        }
    }
    errors
}

/// The scheduling policy of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_OTHER` (time sharing).
    Other,
    /// `SCHED_FIFO` at this priority.
    Fifo(u8),
    /// Any other policy (`SCHED_RR`, `SCHED_BATCH`, `SCHED_IDLE`, ...), by number, with its priority.
    Unknown { policy: i32, priority: i32 },
}

/// CPUs thread `tid` may run on (`0`: the calling thread).
pub fn thread_affinity(tid: i32) -> io::Result<Vec<usize>> {
    os::getaffinity(tid)
}

/// The scheduling policy of thread `tid` (`0`: the calling thread).
pub fn thread_policy(tid: i32) -> io::Result<SchedPolicy> {
    let (policy, priority) = os::scheduler(tid)?;
    Ok(match policy {
        libc::SCHED_OTHER => SchedPolicy::Other,
        libc::SCHED_FIFO => SchedPolicy::Fifo(u8::try_from(priority).unwrap_or(0)),
        policy => SchedPolicy::Unknown { policy, priority },
    })
}

/// The calling thread's kernel thread id.
pub fn current_tid() -> i32 {
    os::gettid()
}

/// The kernel thread ids of this process's threads whose name (`/proc/self/task/<tid>/comm`) is `name`.
pub fn threads_named(name: &str) -> io::Result<Vec<i32>> {
    threads_of_process_named("self", name)
}

/// The kernel thread ids of process `pid`'s threads named `name` (`pid` = "self" or a number).
pub fn threads_of_process_named(pid: &str, name: &str) -> io::Result<Vec<i32>> {
    threads_matching(pid, |comm| comm == name)
}

/// The kernel thread ids of this process's threads whose name starts with `prefix`.
pub fn threads_with_prefix(prefix: &str) -> io::Result<Vec<i32>> {
    threads_matching("self", |comm| comm.starts_with(prefix))
}

fn threads_matching(pid: &str, matches: impl Fn(&str) -> bool) -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            if matches(comm.trim_end_matches('\n')) {
                tids.push(tid);
            }
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_print_as_ranges() {
        assert_eq!(cpu_list(&[]), "none");
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    /// Runs `f` on a new thread named `name` (so nothing leaks into the test harness's threads).
    fn on_thread<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("thread panicked")
    }

    #[test]
    fn affinity_is_applied_to_the_calling_thread_only() {
        let available = thread_affinity(0).expect("sched_getaffinity");
        let last = *available.last().expect("at least one CPU");
        let (errors, mine, by_tid, name_tids, tid) = on_thread("rt-test-pin", move || {
            let policy = ThreadPolicy {
                cpus: vec![last],
                fifo_priority: None,
            };
            let errors: Vec<String> = apply_to_current_thread(ThreadRole::Inference, &policy)
                .iter()
                .map(|e| e.to_string())
                .collect();
            let tid = current_tid();
            let by_tid = thread_affinity(tid).expect("affinity by tid");
            let names = threads_named("rt-test-pin").expect("list threads");
            (
                errors,
                thread_affinity(0).expect("own affinity"),
                by_tid,
                names,
                tid,
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(mine, vec![last]);
        assert_eq!(by_tid, vec![last]);
        assert_eq!(name_tids, vec![tid]);
        // The spawning thread keeps its own.
        assert_eq!(thread_affinity(0).expect("affinity"), available);
    }

    #[test]
    fn a_cpu_that_does_not_exist_is_refused_with_the_available_list() {
        let available = thread_affinity(0).expect("sched_getaffinity");
        let errors = on_thread("rt-test-nocpu", || {
            let policy = ThreadPolicy {
                cpus: vec![MAX_CPUS - 1],
                fifo_priority: None,
            };
            let errors = apply_to_current_thread(ThreadRole::Capture, &policy);
            let after = thread_affinity(0).expect("affinity");
            (
                errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                after,
            )
        });
        let (messages, after) = errors;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].contains("realtime.capture-cpus: CPU 1023 does not exist")
                && messages[0].contains(&cpu_list(&available)),
            "{}",
            messages[0]
        );
        assert_eq!(after, available, "a refused setting changes nothing");
    }

    #[test]
    fn fifo_priority_is_applied_or_refused_with_a_hint() {
        let (result, policy) = on_thread("rt-test-fifo", || {
            let policy = ThreadPolicy {
                cpus: Vec::new(),
                fifo_priority: Some(10),
            };
            let errors = apply_to_current_thread(ThreadRole::Inference, &policy);
            (errors, thread_policy(0).expect("sched_getscheduler"))
        });
        if result.is_empty() {
            assert_eq!(policy, SchedPolicy::Fifo(10));
        } else {
            // Not permitted here (no CAP_SYS_NICE, or RT group scheduling without a budget): the message says
            // what to do and the thread stays as it was.
            let message = result[0].to_string();
            assert!(message.contains("realtime.inference-priority"), "{message}");
            assert_eq!(policy, SchedPolicy::Other);
        }
    }
}
