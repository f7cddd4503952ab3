//! Comparing a recording's results with the results of replaying its frames (`ocellus replay`): whether
//! they are bit-identical and, when they are not, why, and how far apart: top-1 agreement, embedding
//! cosine, score differences per prompt, and the frames whose top prompt changed.
//!
//! Frames are matched by position: the replay runs every recorded frame once, in order, per camera.

use serde::Serialize;

use super::format::{FrameResults, ModelIdentity, PromptTable};
use crate::sink::argmax;

/// One side of a comparison: who produced the results, with which prompt sets, per camera.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub model: &'a ModelIdentity,
    pub prompts: &'a [PromptTable],
    pub cameras: &'a [Vec<FrameResults>],
    /// Camera names, for the report.
    pub names: &'a [String],
}

/// min / mean / max of a quantity over frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
        for &v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
        }
        Some(Spread {
            min,
            mean: sum / values.len() as f64,
            max,
        })
    }
}

/// Frames whose arrays were bit-identical on both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BitExact {
    pub embeddings: usize,
    pub latents: usize,
    /// Of `scores_compared`: frames scored against the same labels on both sides.
    pub scores: usize,
    pub scores_compared: usize,
}

/// How one prompt's score moved: replayed minus recorded, over the frames both sides scored it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptDifference {
    pub label: String,
    pub frames: usize,
    pub mean: f64,
    pub mean_abs: f64,
    pub max_abs: f64,
}

/// A frame whose top prompt changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Changed {
    pub camera: usize,
    /// Position in the camera's recording.
    pub frame: usize,
    pub sequence: u64,
    pub recorded_top: String,
    pub recorded_score: f32,
    pub replayed_top: String,
    pub replayed_score: f32,
    /// Cosine of the two embeddings.
    pub cosine: f64,
    /// The frame's ground truth (synthetic source), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<String>,
}

/// One camera's part of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraComparison {
    pub camera: usize,
    pub name: String,
    pub recorded_frames: usize,
    pub replayed_frames: usize,
    pub top1_agreement: Option<f64>,
    pub changed: usize,
    /// Per frame (in recording order): its recorded capture time (CLOCK_MONOTONIC ns), the embedding cosine
    /// and whether the top prompt changed.
    #[serde(skip)]
    pub timeline: Vec<(u64, f64, bool)>,
}

/// Top-1 against the ground truth (frames of the synthetic source carry it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub labelled: usize,
    pub recorded: f64,
    pub replayed: f64,
}

/// The comparison (`ocellus replay --json` writes it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub recorded_model: ModelIdentity,
    pub replayed_model: ModelIdentity,
    /// Model, engine, variant, threads and CPU features are the same.
    pub same_model: bool,
    /// What differs between the two models ("variant fp32 -> int8").
    pub model_differences: Vec<String>,
    /// Frames compared (all cameras).
    pub frames: usize,
    /// Every frame's embedding, latents and scores are bit-identical.
    pub identical: bool,
    pub bit_exact: BitExact,
    /// Why the results are not identical, one reason per line (empty when they are).
    pub why_not_identical: Vec<String>,
    /// Frames whose top prompt (by label) is the same on both sides, of `top1_compared`.
    pub top1_agreement: Option<f64>,
    pub top1_compared: usize,
    pub embedding_cosine: Option<Spread>,
    pub latents_cosine: Option<Spread>,
    /// Largest |replayed - recorded| over every embedding element.
    pub embedding_max_abs: f64,
    pub score_differences: Vec<PromptDifference>,
    pub accuracy: Option<Accuracy>,
    pub changed: Vec<Changed>,
    pub cameras: Vec<CameraComparison>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na.sqrt() * nb.sqrt())
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn labels(prompts: &[PromptTable], version: u64) -> Option<&[String]> {
    prompts
        .iter()
        .find(|p| p.version == version)
        .map(|p| p.labels.as_slice())
}

/// The top prompt's label (or `#index` when the labels are unknown) and score.
fn top(r: &FrameResults, prompts: &[PromptTable]) -> Option<(String, f32)> {
    let (i, s) = argmax(&r.scores)?;
    let label = labels(prompts, r.prompt_version)
        .and_then(|l| l.get(i))
        .cloned()
        .unwrap_or_else(|| format!("#{i}"));
    Some((label, s))
}

fn model_differences(a: &ModelIdentity, b: &ModelIdentity) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, x: &str, y: &str| {
        if x != y {
            out.push(format!("{name} {x} -> {y}"));
        }
    };
    field("model", &a.name, &b.name);
    field("engine", &a.engine, &b.engine);
    field("variant", &a.variant, &b.variant);
    field("threads", &a.threads.to_string(), &b.threads.to_string());
    field("CPU features", &a.cpu, &b.cpu);
    field("vision file sha256", &a.vision_sha256, &b.vision_sha256);
    field(
        "resampler file sha256",
        &a.resampler_sha256,
        &b.resampler_sha256,
    );
    out
}

/// Compares `recorded` with `replayed`, frame by frame (see the module documentation). `truth` names a
/// ground-truth label (the demo scenes' prompts).
pub fn compare(
    recorded: Side<'_>,
    replayed: Side<'_>,
    truth: Option<fn(u16) -> Option<&'static str>>,
) -> Comparison {
    let model_differences = model_differences(recorded.model, replayed.model);
    let mut bit = BitExact::default();
    let (mut cosines, mut latent_cosines) = (Vec::new(), Vec::new());
    let mut embedding_max_abs = 0.0f64;
    let (mut agree, mut compared) = (0usize, 0usize);
    let mut diffs: Vec<(String, Vec<f64>)> = Vec::new();
    let mut changed = Vec::new();
    let mut cameras = Vec::new();
    let (mut labelled, mut right_rec, mut right_rep) = (0usize, 0usize, 0usize);
    let mut frames = 0;
    let mut why = Vec::new();
    let mut other_labels = false;
    for (camera, rec_frames) in recorded.cameras.iter().enumerate() {
        let empty = Vec::new();
        let rep_frames = replayed.cameras.get(camera).unwrap_or(&empty);
        if rec_frames.len() != rep_frames.len() {
            why.push(format!(
                "camera {camera}: {} frames recorded, {} replayed",
                rec_frames.len(),
                rep_frames.len()
            ));
        }
        let (mut cam_agree, mut cam_compared, mut cam_changed) = (0usize, 0usize, 0usize);
        let mut timeline = Vec::with_capacity(rec_frames.len());
        for (i, (a, b)) in rec_frames.iter().zip(rep_frames).enumerate() {
            frames += 1;
            let cos = cosine(&a.image_embeds, &b.image_embeds);
            cosines.push(cos);
            latent_cosines.push(cosine(&a.latents, &b.latents));
            for (x, y) in a.image_embeds.iter().zip(&b.image_embeds) {
                embedding_max_abs = embedding_max_abs.max((f64::from(*y) - f64::from(*x)).abs());
            }
            bit.embeddings += usize::from(bits_equal(&a.image_embeds, &b.image_embeds));
            bit.latents += usize::from(bits_equal(&a.latents, &b.latents));
            let (la, lb) = (
                labels(recorded.prompts, a.prompt_version),
                labels(replayed.prompts, b.prompt_version),
            );
            if la.is_some() && la == lb {
                bit.scores_compared += 1;
                bit.scores += usize::from(bits_equal(&a.scores, &b.scores));
            } else {
                other_labels = true;
            }
            if let (Some(la), Some(lb)) = (la, lb) {
                for (k, label) in la.iter().enumerate() {
                    let Some(j) = lb.iter().position(|l| l == label) else {
                        continue;
                    };
                    let (Some(x), Some(y)) = (a.scores.get(k), b.scores.get(j)) else {
                        continue;
                    };
                    let d = f64::from(*y) - f64::from(*x);
                    match diffs.iter_mut().find(|(l, _)| l == label) {
                        Some((_, v)) => v.push(d),
                        None => diffs.push((label.clone(), vec![d])),
                    }
                }
            }
            let truth_label = a.label.and_then(|l| truth.and_then(|t| t(l)));
            let mut flipped = false;
            if let (Some((ta, sa)), Some((tb, sb))) =
                (top(a, recorded.prompts), top(b, replayed.prompts))
            {
                compared += 1;
                cam_compared += 1;
                if ta == tb {
                    agree += 1;
                    cam_agree += 1;
                } else {
                    flipped = true;
                    cam_changed += 1;
                    changed.push(Changed {
                        camera,
                        frame: i,
                        sequence: a.sequence,
                        recorded_top: ta.clone(),
                        recorded_score: sa,
                        replayed_top: tb.clone(),
                        replayed_score: sb,
                        cosine: cos,
                        truth: truth_label.map(str::to_owned),
                    });
                }
                if let Some(t) = truth_label {
                    labelled += 1;
                    right_rec += usize::from(ta == t);
                    right_rep += usize::from(tb == t);
                }
            }
            timeline.push((a.capture_ns, cos, flipped));
        }
        cameras.push(CameraComparison {
            camera,
            name: recorded.names.get(camera).cloned().unwrap_or_default(),
            recorded_frames: rec_frames.len(),
            replayed_frames: rep_frames.len(),
            top1_agreement: (cam_compared > 0).then(|| cam_agree as f64 / cam_compared as f64),
            changed: cam_changed,
            timeline,
        });
    }
    let identical = why.is_empty()
        && frames > 0
        && bit.embeddings == frames
        && bit.latents == frames
        && bit.scores == frames;
    if !identical {
        if !model_differences.is_empty() {
            why.push(format!(
                "a different model ran: {}",
                model_differences.join(", ")
            ));
        }
        if other_labels {
            why.push("some frames were scored against other prompt labels (compare the labels in recording.json with the config's [prompts])".into());
        }
        if model_differences.is_empty() && (bit.embeddings < frames || bit.latents < frames) {
            why.push(format!(
                "the same model, engine, variant, threads and CPU features gave other numbers for {} of {frames} frames (largest embedding difference {embedding_max_abs:e}): the engine's arithmetic is not deterministic here",
                frames - bit.embeddings.min(bit.latents)
            ));
        } else if model_differences.is_empty() && bit.scores < bit.scores_compared {
            why.push(format!(
                "embeddings and latents are identical but {} frames' scores differ: the prompt embeddings differ (another text model or tokenizer?)",
                bit.scores_compared - bit.scores
            ));
        }
        if frames == 0 {
            why.push("no frame to compare".into());
        }
    }
    let score_differences = diffs
        .into_iter()
        .map(|(label, d)| PromptDifference {
            frames: d.len(),
            mean: d.iter().sum::<f64>() / d.len() as f64,
            mean_abs: d.iter().map(|v| v.abs()).sum::<f64>() / d.len() as f64,
            max_abs: d.iter().fold(0.0, |m, v| m.max(v.abs())),
            label,
        })
        .collect();
    Comparison {
        recorded_model: recorded.model.clone(),
        replayed_model: replayed.model.clone(),
        same_model: model_differences.is_empty(),
        model_differences,
        frames,
        identical,
        bit_exact: bit,
        why_not_identical: why,
        top1_agreement: (compared > 0).then(|| agree as f64 / compared as f64),
        top1_compared: compared,
        embedding_cosine: Spread::of(&cosines),
        latents_cosine: Spread::of(&latent_cosines),
        embedding_max_abs,
        score_differences,
        accuracy: (labelled > 0).then(|| Accuracy {
            labelled,
            recorded: right_rec as f64 / labelled as f64,
            replayed: right_rep as f64 / labelled as f64,
        }),
        changed,
        cameras,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, embeds: &[f32], scores: &[f32]) -> FrameResults {
        FrameResults {
            sequence: seq,
            capture_ns: 0,
            publish_ns: 0,
            stage_ns: [0; crate::stats::STAGE_COUNT],
            flags: 0,
            prompt_version: 1,
            driver_dropped: 0,
            dropped: 0,
            label: Some(1),
            frame_bytes: 0,
            image_embeds: embeds.to_vec(),
            latents: vec![1.0, 2.0],
            scores: scores.to_vec(),
        }
    }

    #[test]
    fn identical_and_changed_frames_are_told_apart() {
        let prompts = [PromptTable {
            version: 1,
            labels: vec!["a".into(), "b".into()],
        }];
        let m = ModelIdentity {
            variant: "fp32".into(),
            ..Default::default()
        };
        let rec = vec![vec![
            frame(0, &[1.0, 0.0], &[0.9, 0.1]),
            frame(1, &[0.0, 1.0], &[0.2, 0.8]),
        ]];
        let names = ["cam0".to_string()];
        let side = |cams| Side {
            model: &m,
            prompts: &prompts,
            cameras: cams,
            names: &names,
        };
        let same = compare(side(&rec), side(&rec), None);
        assert!(
            same.identical && same.why_not_identical.is_empty(),
            "{same:?}"
        );
        assert_eq!(same.top1_agreement, Some(1.0));

        let m8 = ModelIdentity {
            variant: "int8".into(),
            ..Default::default()
        };
        let rep = vec![vec![
            frame(0, &[1.0, 0.0], &[0.9, 0.1]),
            frame(1, &[0.6, 0.8], &[0.7, 0.3]),
        ]];
        let other = Side {
            model: &m8,
            ..side(&rep)
        };
        let c = compare(
            side(&rec),
            other,
            Some(|l| ["x", "a"].get(l as usize).copied()),
        );
        assert!(!c.identical);
        assert_eq!(c.model_differences, ["variant fp32 -> int8"]);
        assert_eq!(c.top1_agreement, Some(0.5));
        assert_eq!(c.changed.len(), 1);
        assert_eq!(
            (
                c.changed[0].frame,
                c.changed[0].recorded_top.as_str(),
                c.changed[0].replayed_top.as_str()
            ),
            (1, "b", "a")
        );
        assert!((c.changed[0].cosine - 0.8).abs() < 1e-6);
        let a = c.score_differences.iter().find(|d| d.label == "a").unwrap();
        assert!((a.max_abs - 0.5).abs() < 1e-6);
        let acc = c.accuracy.unwrap();
        assert_eq!((acc.labelled, acc.recorded, acc.replayed), (2, 0.5, 1.0));
    }
}
