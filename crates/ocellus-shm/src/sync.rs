//! The atomics the shared-memory protocol is written against.
//!
//! `seqlock.rs` names its atomics through this module only, so `tests/shm_loom.rs` can compile the same file
//! against loom's atomics (it includes `seqlock.rs` with `#[path]` next to a loom-backed `sync` module) without
//! rebuilding the whole dependency tree under `--cfg loom`.

pub use std::sync::atomic::{fence, AtomicU64, Ordering};

/// What a reader does between two attempts: a CPU spin hint (loom's model yields instead).
#[inline]
pub fn spin_loop() {
    std::hint::spin_loop();
}
