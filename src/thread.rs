//! The runtime's threads: what each one does ([`ThreadRole`]) and what it is called.
//!
//! One enum serves the allocator (allocations are counted per role, `alloc`) and the real-time settings
//! (affinity and priority per role, `rt`).

use std::fmt;

/// What a frame-path thread does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ThreadRole {
    /// A camera's capture thread (`ocellus-cam<N>`).
    Capture = 1,
    /// The inference thread (`ocellus-infer`): preparation, both models, scoring, publishing.
    Inference = 2,
    /// One of the inference engine's matrix-product workers (`ocellus-mm-<i>`, with `model.threads` > 1). They
    /// take the inference thread's real-time settings.
    Worker = 3,
}

impl ThreadRole {
    pub const ALL: [ThreadRole; 3] = [
        ThreadRole::Capture,
        ThreadRole::Inference,
        ThreadRole::Worker,
    ];

    /// The role's name in config keys (`realtime.<name>-cpus`), counters and messages.
    pub const fn name(self) -> &'static str {
        match self {
            ThreadRole::Capture => "capture",
            ThreadRole::Inference => "inference",
            ThreadRole::Worker => "worker",
        }
    }

    /// The role stored as `repr(u8)`, or `None` for 0 (a thread that did not register) and unknown values.
    pub const fn from_u8(v: u8) -> Option<ThreadRole> {
        match v {
            1 => Some(ThreadRole::Capture),
            2 => Some(ThreadRole::Inference),
            3 => Some(ThreadRole::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for ThreadRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of the inference thread.
pub const INFERENCE_THREAD: &str = "ocellus-infer";

/// Name prefix of the engine's matrix-product worker threads (`ocellus-mm-0`, ...). They are spawned while the
/// model loads, before the inference thread exists, so `rt` applies the inference policy to them by name.
pub const WORKER_PREFIX: &str = "ocellus-mm-";

/// Name of camera `index`'s capture thread.
pub fn capture_thread_name(index: usize) -> String {
    format!("ocellus-cam{index}")
}
