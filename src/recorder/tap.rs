//! The inference thread's side of the recorder: one copy of each processed frame into its camera's ring,
//! and the triggers. Nothing here allocates, blocks or logs: a slot's mutex is taken with `try_lock` (it is
//! never contended, see `ring::Ring`), counters are relaxed atomics, the writer is woken with `unpark`.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;

use super::ring::{Ring, Shared, SlotData};
use super::{External, FrameRecord, Outcome, Trigger, TriggerKind};
use crate::clock::monotonic_ns;
use crate::stats::{Stage, Stats};

/// A pending window is frozen after this long without a recorded frame (every camera stopped delivering):
/// a stalled camera's recording must not wait for frames that do not come.
const IDLE_FREEZE_NS: u64 = 1_000_000_000;

/// Encodes an [`Outcome`] into the word the trigger handle reads.
pub(super) fn encode_outcome(o: Outcome) -> u64 {
    match o {
        Outcome::Dropped => 0,
        Outcome::Accepted(n) => (n << 2) | 1,
        Outcome::Joined(n) => (n << 2) | 2,
        Outcome::Off => 3,
    }
}

pub(super) fn decode_outcome(w: u64) -> Outcome {
    match w & 3 {
        0 => Outcome::Dropped,
        1 => Outcome::Accepted(w >> 2),
        2 => Outcome::Joined(w >> 2),
        _ => Outcome::Off,
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    number: u64,
    trigger: Trigger,
    /// Frames still to record after the trigger before the window freezes.
    remaining: u64,
    /// When the last frame was recorded (or the trigger came).
    last_ns: u64,
}

/// The recorder as the inference thread holds it; see the module documentation.
pub struct RecorderTap {
    pub(super) shared: Arc<Shared>,
    pub(super) stats: Arc<Stats>,
    /// A capture records every frame for the writer to drain; otherwise a flight recorder's window.
    pub(super) capture: bool,
    pub(super) after_frames: u64,
    /// Late bits whose deadline miss triggers a recording.
    pub(super) on_late: u32,
    pub(super) on_camera_fault: bool,
    /// Each ring's expected frame: (format, width, height).
    pub(super) formats: Box<[(crate::frame::PixelFormat, u32, u32)]>,
    pub(super) pending: Option<Pending>,
    pub(super) next_number: u64,
    pub(super) request_seen: u64,
    pub(super) faults_seen: Box<[u64]>,
}

impl std::fmt::Debug for RecorderTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderTap")
            .field("capture", &self.capture)
            .field("cameras", &self.shared.rings.len())
            .finish_non_exhaustive()
    }
}

fn camera_faults(stats: &Stats, camera: usize) -> u64 {
    let c = &stats.camera(camera).counters;
    c.stalls.load(Relaxed) + c.disconnects.load(Relaxed) + c.reconnects.load(Relaxed)
}

fn fill(slot: &mut SlotData, f: &FrameRecord<'_>, driver_dropped: u64, dropped: u64) {
    let n = f.data.len().min(slot.frame.len());
    slot.frame[..n].copy_from_slice(&f.data[..n]);
    let e = f.image_embeds.len().min(slot.embeds.len());
    slot.embeds[..e].copy_from_slice(&f.image_embeds[..e]);
    let l = f.latents.len().min(slot.latents.len());
    slot.latents[..l].copy_from_slice(&f.latents[..l]);
    let k = f.scores.len().min(slot.scores.len());
    slot.scores[..k].copy_from_slice(&f.scores[..k]);
    slot.meta = super::format::RecordMeta {
        sequence: f.meta.sequence,
        capture_ns: f.meta.capture_ns,
        publish_ns: f.publish_ns,
        stage_ns: f.stage_ns,
        flags: f.flags,
        num_scores: k as u32,
        prompt_version: f.prompts.version(),
        driver_dropped,
        dropped,
        label: f.meta.label,
        frame_bytes: n as u32,
    };
    if !slot
        .prompts
        .as_ref()
        .is_some_and(|p| Arc::ptr_eq(p, f.prompts))
    {
        // A reference count, not a copy; the previous set may be freed here (on a prompt change only).
        slot.prompts = Some(Arc::clone(f.prompts));
    }
}

impl RecorderTap {
    /// Copies one processed frame and its results into its camera's ring and evaluates the triggers.
    pub fn record(&mut self, f: &FrameRecord<'_>) {
        let now = monotonic_ns();
        self.poll(now);
        let Some(ring) = self.shared.rings.get(f.camera) else {
            return;
        };
        let kept = self.store(ring, f);
        if self.capture {
            return;
        }
        let had_pending = self.pending.is_some();
        if kept {
            if let Some(p) = self.pending.as_mut() {
                p.last_ns = now;
            }
        }
        let late = f.flags & self.on_late;
        if late != 0 {
            // The first stage in frame-path order whose miss is a trigger.
            let stage = Stage::ALL
                .into_iter()
                .find(|s| late & s.late_bit() != 0)
                .unwrap_or(Stage::EndToEnd);
            self.trigger(Trigger {
                kind: TriggerKind::Late,
                stage: Some(stage),
                camera: Some(f.camera),
                sequence: Some(f.meta.sequence),
                at_ns: now,
            });
        }
        // A frame recorded after a trigger counts towards the window's after-part.
        if kept && had_pending {
            self.count_down();
        }
    }

    /// Copies `f` into `ring`; false when it was not kept (frozen, the slot still full, another format).
    fn store(&self, ring: &Ring, f: &FrameRecord<'_>) -> bool {
        if self.shared.frozen.load(Acquire) {
            return false;
        }
        let expected = self.formats.get(f.camera).copied();
        if expected != Some((f.meta.format, f.meta.width, f.meta.height)) {
            ring.not_recorded.fetch_add(1, Relaxed);
            return false;
        }
        let pos = ring.written.load(Relaxed);
        if self.capture && ring.full_flag(pos).load(Acquire) {
            ring.not_recorded.fetch_add(1, Relaxed);
            self.stats
                .recorder
                .frames_not_recorded
                .fetch_add(1, Relaxed);
            return false;
        }
        let c = &self.stats.camera(f.camera).counters;
        let (driver_dropped, dropped) = (c.driver_dropped.load(Relaxed), c.dropped.load(Relaxed));
        match ring.slot(pos).try_lock() {
            Ok(mut slot) => fill(&mut slot, f, driver_dropped, dropped),
            Err(_) => {
                ring.not_recorded.fetch_add(1, Relaxed);
                return false;
            }
        }
        if self.capture {
            ring.full_flag(pos).store(true, Release);
        }
        ring.written.store(pos + 1, Release);
        if self.capture {
            self.shared.wake_writer();
        }
        true
    }

    /// Called by the inference thread when it found no frame to take: external requests and camera faults
    /// are still seen, and a pending window freezes when no frame came for a while.
    pub fn idle(&mut self) {
        let now = monotonic_ns();
        self.poll(now);
        if self
            .pending
            .is_some_and(|p| now.saturating_sub(p.last_ns) >= IDLE_FREEZE_NS)
        {
            self.freeze();
        }
    }

    /// Called when the inference thread stops: a window still filling after its trigger is frozen as it is,
    /// so the recording is written before the recorder stops.
    pub fn finish(&mut self) {
        self.poll(monotonic_ns());
        if self.pending.is_some() {
            self.freeze_now(true);
        }
    }

    /// External requests and camera faults.
    fn poll(&mut self, now: u64) {
        let seq = self.shared.request_seq.load(Acquire);
        if seq != self.request_seen {
            self.request_seen = seq;
            let kind = match External::from_u8(self.shared.request_kind.load(Relaxed)) {
                External::Signal => TriggerKind::Signal,
                External::Command => TriggerKind::Command,
            };
            let outcome = if self.capture {
                Outcome::Off
            } else {
                self.trigger(Trigger {
                    kind,
                    stage: None,
                    camera: None,
                    sequence: None,
                    at_ns: now,
                })
            };
            self.shared
                .handled_outcome
                .store(encode_outcome(outcome), Relaxed);
            self.shared.handled_seq.store(seq, Release);
        }
        if self.capture || !self.on_camera_fault {
            return;
        }
        for camera in 0..self.faults_seen.len() {
            let n = camera_faults(&self.stats, camera);
            if n != self.faults_seen[camera] {
                self.faults_seen[camera] = n;
                self.trigger(Trigger {
                    kind: TriggerKind::CameraFault,
                    stage: None,
                    camera: Some(camera),
                    sequence: None,
                    at_ns: now,
                });
            }
        }
    }

    /// A trigger: starts a window's after-part, joins the pending one, or is dropped while the writer is busy.
    fn trigger(&mut self, trigger: Trigger) -> Outcome {
        if self.shared.frozen.load(Acquire) {
            self.stats.recorder.dropped.fetch_add(1, Relaxed);
            return Outcome::Dropped;
        }
        if let Some(p) = &self.pending {
            return Outcome::Joined(p.number);
        }
        self.next_number += 1;
        let number = self.next_number;
        self.stats.recorder.triggers.fetch_add(1, Relaxed);
        self.pending = Some(Pending {
            number,
            trigger,
            remaining: self.after_frames,
            last_ns: trigger.at_ns,
        });
        if self.after_frames == 0 {
            self.freeze();
        }
        Outcome::Accepted(number)
    }

    /// One more frame recorded after the trigger.
    fn count_down(&mut self) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining == 0 {
            self.freeze();
        }
    }

    /// Freezes every camera's window and hands it to the writer; a window without a frame yet stays pending
    /// (the trigger came before the first frame, or right after the previous recording).
    fn freeze(&mut self) {
        self.freeze_now(false);
    }

    /// [`RecorderTap::freeze`]; with `always`, an empty window is handed over too (the writer reports it).
    fn freeze_now(&mut self, always: bool) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let empty = self
            .shared
            .rings
            .iter()
            .all(|r| r.written.load(Relaxed) == r.base.load(Acquire));
        if empty && !always {
            self.pending = Some(p);
            return;
        }
        for ring in self.shared.rings.iter() {
            let end = ring.written.load(Relaxed);
            let len = end
                .saturating_sub(ring.base.load(Acquire))
                .min(ring.len() as u64);
            ring.frozen_end.store(end, Relaxed);
            ring.frozen_len.store(len, Relaxed);
        }
        // The writer touches the job only while frozen, which it is not: this never fails.
        if let Ok(mut job) = self.shared.job.try_lock() {
            job.number = p.number;
            job.trigger = Some(p.trigger);
        }
        self.shared.frozen.store(true, Release);
        self.shared.wake_writer();
    }
}
