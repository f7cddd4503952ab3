//! The inference thread: take the newest frame of each camera in turn, prepare, infer, score, publish, and
//! time every stage against its deadline.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::deadline::{test_delay, Deadlines, TestHooks};
use super::handoff::Handoff;
use crate::clock::monotonic_ns;
use crate::frame::{FrameBuf, PixelFormat};
use crate::infer::{InferenceEngine, VisionOutput};
use crate::manifest::Preprocess;
use crate::prepare::Preparer;
use crate::prompts::PromptSet;
use crate::recorder::{FrameRecord, RecorderTap};
use crate::sink::{
    argmax, FrameResult, Sink, FLAG_CAMERA_LOST, FLAG_CAMERA_RESTARTED, FLAG_DEGRADED,
};
use crate::stats::{Stage, Stats, STAGE_COUNT};

pub(super) struct CameraPrep {
    pub(super) preparer: Preparer,
    pub(super) format: PixelFormat,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) handoff: Arc<Handoff>,
    pub(super) restarted: Arc<AtomicBool>,
    pub(super) name: String,
    /// Corrupt frames seen; the first few are logged as warnings, then every 1000th.
    pub(super) corrupt_logged: u64,
}

pub(super) struct InferState {
    pub(super) cameras: Vec<CameraPrep>,
    pub(super) preprocess: Preprocess,
    pub(super) engine: Box<dyn InferenceEngine>,
    pub(super) input: Vec<f32>,
    pub(super) output: VisionOutput,
    pub(super) scores: Vec<f32>,
    pub(super) prompts: Arc<ArcSwap<PromptSet>>,
    pub(super) sinks: Vec<Box<dyn Sink>>,
    pub(super) deadlines: Deadlines,
    pub(super) max_frames: Option<u64>,
    pub(super) hooks: TestHooks,
    /// Names a source's ground-truth label (the prompt that should win), when sources carry them.
    pub(super) ground_truth: Option<fn(u16) -> Option<&'static str>>,
    /// The flight recorder or capture: one copy of each published frame and its results.
    pub(super) recorder: Option<RecorderTap>,
}

pub(super) fn inference_loop(
    mut st: InferState,
    stats: &Stats,
    running: &AtomicBool,
    cameras_live: &AtomicUsize,
) {
    let n = st.cameras.len();
    let mut next = 0usize;
    let mut published = 0u64;
    'run: while running.load(Relaxed) {
        if st.hooks.stall_after_frames.is_some_and(|n| published >= n) {
            tracing::warn!(
                frames = published,
                "test aid [testing] stall-after-frames: the inference thread stalls until stopped"
            );
            while running.load(Relaxed) {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            break;
        }
        let mut took = false;
        for k in 0..n {
            let cam = (next + k) % n;
            let Some(buf) = st.cameras[cam].handoff.slot.pop() else {
                continue;
            };
            took = true;
            next = cam + 1;
            let ok = st.process(cam, &buf, stats, running, published);
            // Every buffer came from this pool, which has room for all of them.
            let _ = st.cameras[cam].handoff.pool.give(buf);
            if ok {
                published += 1;
                if st.max_frames.is_some_and(|m| published >= m) {
                    break 'run;
                }
            }
            break;
        }
        if !took {
            if let Some(r) = st.recorder.as_mut() {
                r.idle();
            }
            // Every source has ended (replay without loop) and every slot is empty: the run is over.
            if cameras_live.load(Ordering::SeqCst) == 0
                && st.cameras.iter().all(|c| c.handoff.slot.is_empty())
            {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }
    running.store(false, Ordering::SeqCst);
    if let Some(r) = st.recorder.as_mut() {
        r.finish();
    }
    for sink in st.sinks.iter_mut() {
        sink.stop();
    }
}

impl InferState {
    /// Runs one frame through prepare, infer, score and publish. Returns whether it was published.
    fn process(
        &mut self,
        index: usize,
        buf: &FrameBuf,
        stats: &Stats,
        running: &AtomicBool,
        published: u64,
    ) -> bool {
        let cam_stats = stats.camera(index);
        let counters = &cam_stats.counters;
        let meta = &buf.meta;
        test_delay(&self.hooks, Stage::Dequeue, running, published);
        let t_dequeue = monotonic_ns();
        let mut stage_ns = [0u64; STAGE_COUNT];
        stage_ns[Stage::Dequeue.index()] = t_dequeue.saturating_sub(meta.capture_ns);

        let cam = &mut self.cameras[index];
        if (meta.format, meta.width, meta.height) != (cam.format, cam.width, cam.height) {
            // A source changed its format or size (a replay directory of mixed images, a renegotiated
            // camera): rebuild the preparer. This allocates, once per change.
            match Preparer::new(&self.preprocess, meta.format, meta.width, meta.height) {
                Ok(p) => {
                    tracing::info!(camera = index, name = %cam.name, format = ?meta.format, width = meta.width, height = meta.height, "frame format changed; preparer rebuilt");
                    cam.preparer = p;
                    (cam.format, cam.width, cam.height) = (meta.format, meta.width, meta.height);
                }
                Err(e) => {
                    counters.corrupt.fetch_add(1, Relaxed);
                    log_corrupt(cam, index, meta.sequence, &e);
                    return false;
                }
            }
        }
        let bytes = meta.bytes.min(buf.data.len());
        if let Err(e) = cam.preparer.prepare(&buf.data[..bytes], &mut self.input) {
            counters.corrupt.fetch_add(1, Relaxed);
            log_corrupt(cam, index, meta.sequence, &e);
            return false;
        }
        test_delay(&self.hooks, Stage::Prepare, running, published);
        let t_prepared = monotonic_ns();
        stage_ns[Stage::Prepare.index()] = t_prepared - t_dequeue;

        let times = match self.engine.run(&self.input, &mut self.output) {
            Ok(t) => t,
            Err(e) => {
                let n = counters.infer_errors.fetch_add(1, Relaxed);
                if n < 5 || n % 1000 == 0 {
                    tracing::error!(camera = index, seq = meta.sequence, error = %e, "inference failed; frame skipped");
                }
                return false;
            }
        };
        let enc_delay = test_delay(&self.hooks, Stage::Encoder, running, published);
        let res_delay = test_delay(&self.hooks, Stage::Resampler, running, published);
        let t_inferred = monotonic_ns();
        let enc = u64::try_from(times.encoder.as_nanos()).unwrap_or(u64::MAX);
        stage_ns[Stage::Encoder.index()] = enc.saturating_add(enc_delay);
        stage_ns[Stage::Resampler.index()] = u64::try_from(times.resampler.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(res_delay);

        let mut flags = 0u32;
        let prompts = self.prompts.load();
        let k = prompts.len();
        let scores: &[f32] = if k == 0 {
            // Nothing to score against (a vision-only bundle without prototypes): not a fault.
            &[]
        } else if k <= self.scores.len() {
            prompts.score(&self.output.image_embeds, &mut self.scores[..k]);
            &self.scores[..k]
        } else {
            flags |= FLAG_DEGRADED;
            &[]
        };
        let t_scored = monotonic_ns();
        stage_ns[Stage::Score.index()] = t_scored - t_inferred;

        let top = argmax(scores);
        let truth = meta
            .label
            .and_then(|l| self.ground_truth.and_then(|name| name(l)));
        if let Some(truth) = truth {
            // Judged only when the prompt set can name the truth: another set cannot be right or wrong.
            if !scores.is_empty() && prompts.labels().iter().any(|l| l == truth) {
                counters.labelled.fetch_add(1, Relaxed);
                if top
                    .and_then(|(i, _)| prompts.labels().get(i))
                    .is_some_and(|l| l == truth)
                {
                    counters.correct.fetch_add(1, Relaxed);
                }
            } else {
                counters.unjudged.fetch_add(1, Relaxed);
            }
        }

        stage_ns[Stage::EndToEnd.index()] = t_scored.saturating_sub(meta.capture_ns);
        for stage in [
            Stage::Dequeue,
            Stage::Prepare,
            Stage::Encoder,
            Stage::Resampler,
            Stage::Score,
            Stage::EndToEnd,
        ] {
            if self
                .deadlines
                .overrun(stage, stage_ns[stage.index()])
                .is_some()
            {
                flags |= stage.late_bit();
            }
        }
        if counters.lost.load(Relaxed) {
            flags |= FLAG_CAMERA_LOST;
        }
        if cam.restarted.swap(false, Relaxed) {
            flags |= FLAG_CAMERA_RESTARTED;
        }
        let result = FrameResult {
            camera: index,
            sequence: meta.sequence,
            capture_ns: meta.capture_ns,
            publish_ns: t_scored,
            stage_ns,
            flags,
            image_embeds: &self.output.image_embeds,
            latents: &self.output.latents,
            latents_shape: self.output.latents_shape,
            scores,
            labels: prompts.labels(),
            prompt_version: prompts.version(),
            ground_truth: meta.label,
            ground_truth_label: truth,
        };
        for sink in self.sinks.iter_mut() {
            if let Err(e) = sink.publish(&result) {
                let n = counters.publish_errors.fetch_add(1, Relaxed);
                if n < 5 || n % 1000 == 0 {
                    tracing::warn!(camera = index, seq = meta.sequence, error = %e, "sink failed");
                }
            }
        }
        test_delay(&self.hooks, Stage::Publish, running, published);
        let t_published = monotonic_ns();
        stage_ns[Stage::Publish.index()] = t_published - t_scored;
        stage_ns[Stage::EndToEnd.index()] = t_published.saturating_sub(meta.capture_ns);

        let (mut late_stages, mut worst) = (0u32, 0u64);
        for stage in Stage::ALL {
            let ns = stage_ns[stage.index()];
            cam_stats.record(stage, ns);
            if let Some(over) = self.deadlines.overrun(stage, ns) {
                cam_stats.count_late(stage, over);
                late_stages |= stage.late_bit();
                worst = worst.max(over);
            }
        }
        if late_stages != 0 {
            cam_stats.count_late_frame(late_stages, worst);
        }
        counters.last_sequence.store(meta.sequence, Relaxed);
        counters.processed.fetch_add(1, Relaxed);
        if let Some(recorder) = self.recorder.as_mut() {
            // After publishing: the copy delays the next frame, never this frame's result.
            recorder.record(&FrameRecord {
                camera: index,
                meta,
                data: &buf.data[..bytes],
                publish_ns: t_scored,
                stage_ns,
                flags: flags | late_stages,
                image_embeds: &self.output.image_embeds,
                latents: &self.output.latents,
                scores,
                prompts: &prompts,
            });
        }
        true
    }
}

fn log_corrupt(cam: &mut CameraPrep, index: usize, sequence: u64, e: &dyn std::fmt::Display) {
    cam.corrupt_logged += 1;
    if cam.corrupt_logged <= 5 || cam.corrupt_logged % 1000 == 0 {
        tracing::warn!(camera = index, name = %cam.name, seq = sequence, error = %e, count = cam.corrupt_logged, "corrupt frame skipped");
    }
}
