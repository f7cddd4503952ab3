//! The runtime's one clock: CLOCK_MONOTONIC in nanoseconds.
//!
//! V4L2 stamps buffers on it, so synthetic, replay and camera frames are timed alike, and the shared-memory
//! segment's capture, publish and heartbeat times use it too: it is the `ocellus-shm` crate's clock, re-exported.

pub use ocellus_shm::clock::{monotonic_ns, realtime_ns};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
        assert!(realtime_ns() > 1_600_000_000_000_000_000, "after 2020");
    }
}
