//! Deadlines per stage, and the `[testing]` aids that slow a stage or stall inference on purpose.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::capture::sleep_while_running;
use crate::clock::monotonic_ns;
use crate::stats::{Stage, STAGE_COUNT};

/// Per-stage deadlines in ns, indexed by [`Stage::index`]; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadlines {
    pub stage_ns: [u64; STAGE_COUNT],
}

impl Deadlines {
    /// Sets the deadline of `stage` (`None`: no deadline).
    pub fn with(mut self, stage: Stage, deadline: Option<Duration>) -> Self {
        self.stage_ns[stage.index()] = deadline
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self
    }

    /// The overrun of `stage` taking `ns`, if it missed its deadline.
    pub fn overrun(&self, stage: Stage, ns: u64) -> Option<u64> {
        let limit = self.stage_ns[stage.index()];
        (limit > 0 && ns > limit).then(|| ns - limit)
    }
}

/// Test aids (`[testing]` in the config): an artificially slow stage and a stalled inference thread, to
/// exercise deadlines, drops and the service watchdog. Off by default; not for production configurations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    /// Sleep this long inside this stage of every frame (the sleep counts as the stage's time). `Dequeue`
    /// delays the inference thread before it takes the frame; `Score` and `EndToEnd` are not delayable.
    pub delay: Option<(Stage, Duration)>,
    /// The delay starts once this many frames were published (the frames before it are on time): a deadline
    /// miss with on-time frames before it, as the flight recorder's test needs.
    pub delay_after_frames: Option<u64>,
    /// After this many published frames the inference thread stops taking frames, as a hung model would,
    /// until the pipeline is stopped; capture goes on and its frames are dropped.
    pub stall_after_frames: Option<u64>,
}

impl TestHooks {
    /// Whether any test aid is on.
    pub fn is_active(&self) -> bool {
        self.delay.is_some() || self.stall_after_frames.is_some()
    }
}

/// The `[testing]` delay: when `stage` is the delayed one (and `published` frames are past
/// `delay_after_frames`), sleeps for the delay (waking early when the pipeline stops) and returns the ns
/// slept; otherwise returns 0 at once.
pub(super) fn test_delay(
    hooks: &TestHooks,
    stage: Stage,
    running: &AtomicBool,
    published: u64,
) -> u64 {
    if hooks.delay_after_frames.is_some_and(|n| published < n) {
        return 0;
    }
    match hooks.delay {
        Some((s, d)) if s == stage => {
            let t0 = monotonic_ns();
            sleep_while_running(running, d);
            monotonic_ns().saturating_sub(t0)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_report_overruns() {
        let d = Deadlines::default()
            .with(Stage::Encoder, Some(Duration::from_millis(10)))
            .with(Stage::Prepare, None);
        assert_eq!(d.overrun(Stage::Encoder, 9_000_000), None);
        assert_eq!(d.overrun(Stage::Encoder, 10_000_000), None);
        assert_eq!(d.overrun(Stage::Encoder, 12_500_000), Some(2_500_000));
        assert_eq!(d.overrun(Stage::Prepare, u64::MAX), None);
    }
}
