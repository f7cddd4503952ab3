//! Text views of what a reader sees, for `ocellus read` and `ocellus top` (they read only the segment, so
//! they work against a running service).

use std::fmt::Write as _;

use super::layout::{self, STAGES, STAGE_NAMES};
use super::reader::{ReadError, SampleInfo, ShmReader, WriterInfo};
use super::{describe_flags, CameraCounters, RecorderCounts, Sample, SampleMeta};

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// One line: camera, sequence, age, heartbeat age, end-to-end latency, flags and the `top` best scores
/// (labelled from `labels` where the index has one).
pub fn format_sample(
    camera: usize,
    sample: &Sample,
    info: &SampleInfo,
    labels: &[String],
    top: usize,
) -> String {
    let mut line = format!(
        "cam {camera} seq {} age {:.1} ms hb {:.1} ms e2e {:.1} ms flags {}",
        info.sequence,
        info.age.as_secs_f64() * 1e3,
        info.heartbeat_age.as_secs_f64() * 1e3,
        ms(sample.meta.stages_ns[layout::STAGE_END_TO_END]),
        describe_flags(sample.meta.flags),
    );
    let mut order: Vec<usize> = (0..sample.scores().len()).collect();
    order.sort_by(|&a, &b| sample.scores[b].total_cmp(&sample.scores[a]));
    if !order.is_empty() && top > 0 {
        line.push_str(" top:");
        for (n, &i) in order.iter().take(top).enumerate() {
            let label = labels.get(i).map(String::as_str).unwrap_or("?");
            let sep = if n == 0 { " " } else { ", " };
            let _ = write!(line, "{sep}{label} {:.3}", sample.scores[i]);
        }
    }
    line
}

/// One camera in a [`TopSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CameraTop {
    pub counters: CameraCounters,
    /// Samples published into the camera's slot.
    pub published: u64,
    /// The latest sample's metadata, if it could be read.
    pub last: Option<SampleMeta>,
}

/// Everything `ocellus top` shows at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopSnapshot {
    /// CLOCK_MONOTONIC ns when taken.
    pub at_ns: u64,
    pub writer: WriterInfo,
    pub cameras: Vec<CameraTop>,
    pub memory_high_water: u64,
    /// The flight recorder's counters.
    pub recordings: RecorderCounts,
}

impl TopSnapshot {
    /// Reads the status block and each camera's latest sample (`sample` is scratch space).
    pub fn take(reader: &mut ShmReader, sample: &mut Sample) -> Result<TopSnapshot, ReadError> {
        let cameras = reader.layout().dims.cameras;
        let mut out = Vec::with_capacity(cameras);
        for camera in 0..cameras {
            let (last, published) = match reader.read_latest(camera, sample) {
                Ok(info) => (Some(sample.meta), info.published),
                Err(ReadError::NoSample { .. }) | Err(ReadError::RetriesExhausted { .. }) => {
                    (None, 0)
                }
                Err(e) => return Err(e),
            };
            out.push(CameraTop {
                counters: reader.counters(camera)?,
                published,
                last,
            });
        }
        Ok(TopSnapshot {
            at_ns: super::os::monotonic_ns(),
            writer: reader.writer(),
            cameras: out,
            memory_high_water: reader.memory_high_water(),
            recordings: reader.recordings(),
        })
    }
}

/// The `top` screen: writer line, then per camera fps (published since `prev`), latest stage latencies,
/// deadline misses per stage, drops and state.
pub fn format_top(prev: Option<&TopSnapshot>, cur: &TopSnapshot) -> String {
    let w = &cur.writer;
    let mut s = format!(
        "ocellus pid {} gen {:016x} model {} ({}) heartbeat {:.0} ms {} mem {:.1} MiB recordings {} made {} dropped {} failed\n",
        w.pid,
        w.generation,
        if w.model_id.is_empty() {
            "-"
        } else {
            &w.model_id
        },
        if w.model_sha256.is_empty() {
            "-"
        } else {
            &w.model_sha256
        },
        w.heartbeat_age.as_secs_f64() * 1e3,
        if w.alive {
            "alive"
        } else if w.stopped {
            "STOPPED"
        } else {
            "STALE"
        },
        cur.memory_high_water as f64 / (1024.0 * 1024.0),
        cur.recordings.made,
        cur.recordings.dropped,
        cur.recordings.errors,
    );
    let _ = write!(
        s,
        "{:>3} {:>6} {:>9} {:>7}",
        "cam", "fps", "captured", "dropped"
    );
    for name in STAGE_NAMES {
        let _ = write!(s, " {:>10}", name);
    }
    s.push_str("  flags\n");
    for (i, cam) in cur.cameras.iter().enumerate() {
        let fps = prev
            .and_then(|p| p.cameras.get(i).map(|pc| (p.at_ns, pc.published)))
            .filter(|&(at, _)| cur.at_ns > at)
            .map(|(at, published)| {
                cam.published.saturating_sub(published) as f64 / ((cur.at_ns - at) as f64 / 1e9)
            });
        let fps = fps.map_or_else(|| "-".to_string(), |f| format!("{f:.1}"));
        let _ = write!(
            s,
            "{i:>3} {fps:>6} {:>9} {:>7}",
            cam.counters.captured, cam.counters.dropped
        );
        for stage in 0..STAGES {
            let lat = cam.last.map_or_else(
                || "-".to_string(),
                |m| format!("{:.2}", ms(m.stages_ns[stage])),
            );
            let cell = format!("{lat}/{}", cam.counters.late[stage]);
            let _ = write!(s, " {cell:>10}");
        }
        let flags = cam.counters.flags | cam.last.map_or(0, |m| m.flags);
        let _ = write!(s, "  {}", describe_flags(flags));
        if cam.counters.last_overrun_ns > 0 {
            let _ = write!(
                s,
                "  last late +{:.1} ms {}",
                ms(cam.counters.last_overrun_ns),
                describe_flags(cam.counters.last_late_stages)
            );
        }
        s.push('\n');
    }
    s.push_str("(stage cells: latest ms / deadline misses; last late: the worst overrun of the last late frame)\n");
    s
}
