//! A camera's capture thread: start (and reopen) its source, take a pooled buffer, have the source fill it,
//! hand it over latest-wins; count every fault.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::handoff::Handoff;
use crate::source::{FrameSource, SequenceGaps, SourceError};
use crate::stats::Stats;

pub(super) struct CaptureState {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) source: Box<dyn FrameSource>,
    pub(super) handoff: Arc<Handoff>,
    pub(super) restarted: Arc<AtomicBool>,
    /// Wait for the inference thread to take the previous frame instead of displacing it (`ocellus replay`:
    /// every frame is processed).
    pub(super) lossless: bool,
}

/// How often a capture thread retries opening a camera whose device is gone (a missing path costs one failed
/// `open`).
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// Sleeps up to `d`, waking early when the pipeline stops. Returns whether it is still running.
pub(super) fn sleep_while_running(running: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while running.load(Relaxed) {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::park_timeout(until - now);
    }
    false
}

pub(super) fn capture_loop(
    mut cap: CaptureState,
    stats: &Stats,
    running: &AtomicBool,
    waker: Option<&Thread>,
    (backoff_min, backoff_max): (Duration, Duration),
) {
    let cam = stats.camera(cap.index);
    let counters = &cam.counters;
    let mut backoff = backoff_min;
    let mut started = false;
    let mut gaps = SequenceGaps::new();
    // Set from a stall or a disconnect until the source is open again (the reopening counts as a reconnect).
    let mut reconnecting = false;
    // The device is gone: `start` is retried every RECONNECT_POLL, logged once.
    let mut waiting = false;
    while running.load(Relaxed) {
        if !started {
            match start_outside_region(cap.source.as_mut()) {
                Ok(()) => {
                    started = true;
                    waiting = false;
                    gaps.reset();
                    if std::mem::take(&mut reconnecting) {
                        counters.reconnects.fetch_add(1, Relaxed);
                        tracing::info!(camera = cap.index, name = %cap.name, source = %cap.source.describe(), "camera reopened");
                    } else {
                        tracing::info!(camera = cap.index, name = %cap.name, source = %cap.source.describe(), "camera started");
                    }
                }
                Err(e @ SourceError::Disconnected { .. }) => {
                    // Waiting for the device to (re)appear: poll its path at a short, fixed interval.
                    if std::mem::replace(&mut waiting, true) {
                        tracing::debug!(camera = cap.index, name = %cap.name, error = %e, "camera still gone");
                    } else {
                        counters.source_errors.fetch_add(1, Relaxed);
                        counters.lost.store(true, Relaxed);
                        tracing::error!(camera = cap.index, name = %cap.name, error = %e, retry_ms = RECONNECT_POLL.as_millis() as u64, "camera is not there; waiting for its device");
                    }
                    if !sleep_while_running(running, RECONNECT_POLL) {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    counters.source_errors.fetch_add(1, Relaxed);
                    counters.lost.store(true, Relaxed);
                    tracing::error!(camera = cap.index, name = %cap.name, error = %e, retry_ms = backoff.as_millis() as u64, "camera failed to start");
                    if !sleep_while_running(running, backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(backoff_max);
                    continue;
                }
            }
        }
        // With pool_size >= 3 the pool only runs dry if the inference thread holds a buffer and the slot
        // another; then the waiting frame is the oldest: drop it and reuse its buffer.
        let mut buf = match cap.handoff.pool.take().or_else(|| {
            let old = cap.handoff.slot.pop();
            if old.is_some() {
                counters.dropped.fetch_add(1, Relaxed);
            }
            old
        }) {
            Some(b) => b,
            None => {
                std::thread::park_timeout(Duration::from_millis(1));
                continue;
            }
        };
        match cap.source.next_frame(&mut buf) {
            Ok(()) => {
                buf.meta.camera = cap.index;
                counters.captured.fetch_add(1, Relaxed);
                let missing = gaps.observe(buf.meta.sequence);
                if missing > 0 {
                    counters.driver_dropped.fetch_add(missing, Relaxed);
                }
                if counters.lost.swap(false, Relaxed) | counters.stalled.swap(false, Relaxed) {
                    tracing::info!(camera = cap.index, name = %cap.name, "camera recovered");
                }
                backoff = backoff_min;
                while cap.lossless && !cap.handoff.slot.is_empty() && running.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(1));
                }
                if let Some(old) = cap.handoff.slot.force_push(buf) {
                    counters.dropped.fetch_add(1, Relaxed);
                    let _ = cap.handoff.pool.give(old);
                }
                if let Some(w) = waker {
                    w.unpark();
                }
            }
            Err(e) => {
                let _ = cap.handoff.pool.give(buf);
                match e {
                    SourceError::Timeout { .. } => continue,
                    SourceError::EndOfStream { .. } => {
                        tracing::info!(camera = cap.index, name = %cap.name, "camera reached the end of its frames");
                        break;
                    }
                    SourceError::Stalled { .. } => {
                        // Reopen at once: a stalled stream rarely recovers without STREAMOFF/STREAMON.
                        counters.stalls.fetch_add(1, Relaxed);
                        if counters.stalled.swap(true, Relaxed) {
                            tracing::debug!(camera = cap.index, name = %cap.name, error = %e, "camera still stalled; reopening it");
                        } else {
                            tracing::warn!(camera = cap.index, name = %cap.name, error = %e, "camera stalled; reopening it");
                        }
                        cap.source.stop();
                        started = false;
                        reconnecting = true;
                        counters.restarts.fetch_add(1, Relaxed);
                        cap.restarted.store(true, Relaxed);
                        continue;
                    }
                    SourceError::Disconnected { .. } => {
                        counters.disconnects.fetch_add(1, Relaxed);
                        counters.source_errors.fetch_add(1, Relaxed);
                        counters.lost.store(true, Relaxed);
                        tracing::error!(camera = cap.index, name = %cap.name, error = %e, "camera disconnected");
                        cap.source.stop();
                        started = false;
                        reconnecting = true;
                        waiting = true;
                        counters.restarts.fetch_add(1, Relaxed);
                        cap.restarted.store(true, Relaxed);
                        continue;
                    }
                    _ => {}
                }
                counters.source_errors.fetch_add(1, Relaxed);
                counters.lost.store(true, Relaxed);
                tracing::error!(camera = cap.index, name = %cap.name, error = %e, retry_ms = backoff.as_millis() as u64, "camera failed; restarting it");
                cap.source.stop();
                started = false;
                if !sleep_while_running(running, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(backoff_max);
                counters.restarts.fetch_add(1, Relaxed);
                cap.restarted.store(true, Relaxed);
            }
        }
    }
    if started {
        cap.source.stop();
    }
}

/// Starts (or reopens) `source` with this thread's allocations served by the system allocator, not the
/// frame-path region: a source allocates its buffers in `start` (the synthetic camera's render, a V4L2
/// device's bookkeeping), once per start, which is not the steady frame path the region is sized for (the
/// memory plan counts them as the camera's own part).
fn start_outside_region(source: &mut dyn FrameSource) -> Result<(), SourceError> {
    let role = crate::alloc::current_role();
    crate::alloc::unregister_thread();
    let r = source.start();
    if let Some(role) = role {
        crate::alloc::register_thread(role);
    }
    r
}
