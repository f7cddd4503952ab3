//! The writer thread (`ocellus-rec`): writes a frozen window as a recording in the recording directory,
//! within the disk quota (oldest recordings removed first), or drains a capture's rings into its files.
//! It is not a frame-path thread: it uses the system allocator, blocks on the disk, logs; the frame path
//! never waits for it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::format::{
    encode_record, raw_file, results_file, CameraEntry, Header, ModelIdentity, PromptTable,
    RecordingKind, ResultsShape, TriggerInfo, HEADER_FILE, RECORDING_FORMAT, RECORDING_VERSION,
    RESULTS_HEADER_BYTES,
};
use super::ring::{Finished, Shared, SlotData, FINISHED_KEPT};
use super::{Trigger, TriggerKind};
use crate::frame::PixelFormat;
use crate::prompts::PromptSet;
use crate::source::replay::{RawFrameWriter, RAW_HEADER_BYTES};
use crate::stats::{Stage, Stats};

/// The name every recording directory starts with; nothing else in the directory counts against the quota
/// or is ever removed.
pub(crate) const RECORDING_PREFIX: &str = "rec-";
/// A recording being written ends in this; one left by a crash is removed before the next recording.
const PARTIAL_SUFFIX: &str = ".partial";
/// What `recording.json` is allowed in the size a recording is checked against the quota with.
const HEADER_ALLOWANCE: u64 = 64 * 1024;
/// The writer's buffers.
const BUFFER_BYTES: usize = 1 << 20;

/// One camera as the recorder sees it.
#[derive(Debug, Clone)]
pub struct RingCamera {
    pub name: String,
    /// The source kind, for the recording (synthetic, replay, v4l2).
    pub source: String,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Slots in the camera's ring.
    pub slots: usize,
}

impl RingCamera {
    /// The largest frame the camera delivers.
    pub fn frame_bytes(&self) -> usize {
        self.format.max_frame_bytes(self.width, self.height)
    }
}

/// What the writer needs besides the rings.
pub(super) struct WriterContext {
    pub(super) stats: Arc<Stats>,
    pub(super) cameras: Vec<RingCamera>,
    pub(super) shape: ResultsShape,
    pub(super) model: ModelIdentity,
}

/// Why a recording could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot {what} {}: {source} (check that recorder.dir is on a writable file system with room: recordings are written there)", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a recording of {need} bytes does not fit recorder.quota-mib ({quota} bytes): raise the quota or lower recorder.seconds / recorder.frames")]
    OverQuota { need: u64, quota: u64 },
    #[error("no frame had been recorded when the service stopped: nothing to write")]
    Empty,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// `2025-01-31T12:00:00.123Z` (UTC) of `t`.
pub(super) fn utc(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The name part of a trigger: `late-encoder`, `camera-fault-cam1`, `signal`, `command`.
fn trigger_slug(t: &Trigger) -> String {
    match (t.kind, t.stage, t.camera) {
        (TriggerKind::Late, Some(stage), _) => format!("late-{}", stage.name().replace('_', "-")),
        (TriggerKind::CameraFault, _, Some(c)) => format!("camera-fault-cam{c}"),
        (kind, _, _) => kind.name().to_owned(),
    }
}

pub(super) fn trigger_info(t: &Trigger) -> TriggerInfo {
    TriggerInfo {
        kind: t.kind.name().to_owned(),
        stage: t.stage.map(|s: Stage| s.name().to_owned()),
        camera: t.camera,
        sequence: t.sequence,
        monotonic_ns: t.at_ns,
    }
}

/// Bytes of the files in `dir` (not recursive: a recording holds files only).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The recordings in `dir`, oldest first (names start with their UTC time), with their sizes. A partial
/// recording (a crash while writing) is removed.
pub fn recordings_in(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, u64)> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with(RECORDING_PREFIX) || !path.is_dir() {
            continue;
        }
        if name.ends_with(PARTIAL_SUFFIX) {
            if std::fs::remove_dir_all(&path).is_ok() {
                tracing::warn!(path = %path.display(), "removed a partial recording (its writer stopped while writing it)");
            }
            continue;
        }
        out.push((path.clone(), dir_bytes(&path)));
    }
    out.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    out
}

/// Removes the oldest recordings in `dir` until `need` more bytes fit `quota`; returns how many it removed.
pub fn make_room(dir: &Path, need: u64, quota: u64) -> Result<u64, WriteError> {
    if need > quota {
        return Err(WriteError::OverQuota { need, quota });
    }
    let existing = recordings_in(dir);
    let mut used: u64 = existing.iter().map(|(_, b)| b).sum();
    let mut removed = 0;
    for (path, bytes) in existing {
        if used + need <= quota {
            break;
        }
        std::fs::remove_dir_all(&path).map_err(io_err("remove the old recording", &path))?;
        used -= bytes;
        removed += 1;
        tracing::info!(path = %path.display(), bytes, "removed the oldest recording to stay within recorder.quota-mib");
    }
    Ok(removed)
}

/// Bytes of a results file of `frames` records.
fn results_bytes(shape: &ResultsShape, frames: u64) -> u64 {
    RESULTS_HEADER_BYTES as u64 + frames * shape.record_bytes() as u64
}

/// The largest a window recording of `cameras` can be (full rings, largest frames): what the quota must
/// hold.
pub fn max_recording_bytes(cameras: &[RingCamera], shape: &ResultsShape) -> u64 {
    HEADER_ALLOWANCE
        + cameras
            .iter()
            .map(|c| {
                let n = c.slots as u64;
                RAW_HEADER_BYTES as u64 + n * (8 + c.frame_bytes() as u64) + results_bytes(shape, n)
            })
            .sum::<u64>()
}

/// Prompt sets seen in a recording's frames, by version.
#[derive(Default)]
struct PromptsSeen(BTreeMap<u64, Arc<PromptSet>>);

impl PromptsSeen {
    fn note(&mut self, slot: &SlotData) {
        if let Some(p) = &slot.prompts {
            self.0.entry(p.version()).or_insert_with(|| Arc::clone(p));
        }
    }

    fn tables(&self) -> Vec<PromptTable> {
        self.0
            .values()
            .map(|p| PromptTable {
                version: p.version(),
                labels: p.labels().to_vec(),
            })
            .collect()
    }
}

/// The per-camera files of a recording being written.
struct CameraFiles {
    raw: RawFrameWriter<BufWriter<File>>,
    results: BufWriter<File>,
    raw_path: PathBuf,
    results_path: PathBuf,
    frames: usize,
}

impl CameraFiles {
    fn create(
        dir: &Path,
        index: usize,
        cam: &RingCamera,
        shape: &ResultsShape,
    ) -> Result<CameraFiles, WriteError> {
        let raw_path = dir.join(raw_file(index));
        let results_path = dir.join(results_file(index));
        let file = File::create(&raw_path).map_err(io_err("create", &raw_path))?;
        let raw = RawFrameWriter::new(
            BufWriter::with_capacity(BUFFER_BYTES, file),
            cam.format,
            cam.width,
            cam.height,
        )
        .map_err(io_err("write", &raw_path))?;
        let file = File::create(&results_path).map_err(io_err("create", &results_path))?;
        let mut results = BufWriter::with_capacity(BUFFER_BYTES, file);
        results
            .write_all(&shape.header(index))
            .map_err(io_err("write", &results_path))?;
        Ok(CameraFiles {
            raw,
            results,
            raw_path,
            results_path,
            frames: 0,
        })
    }

    fn write(
        &mut self,
        shape: &ResultsShape,
        slot: &SlotData,
        record: &mut [u8],
    ) -> Result<(), WriteError> {
        let bytes = (slot.meta.frame_bytes as usize).min(slot.frame.len());
        self.raw
            .write_frame(&slot.frame[..bytes], slot.meta.label)
            .map_err(io_err("write", &self.raw_path))?;
        let k = (slot.meta.num_scores as usize).min(slot.scores.len());
        encode_record(
            shape,
            &slot.meta,
            &slot.embeds,
            &slot.latents,
            &slot.scores[..k],
            record,
        );
        self.results
            .write_all(record)
            .map_err(io_err("write", &self.results_path))?;
        self.frames += 1;
        Ok(())
    }

    /// Flushes both files to the disk.
    fn finish(self) -> Result<usize, WriteError> {
        let raw = self
            .raw
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(io_err("write", &self.raw_path))?;
        raw.sync_all().map_err(io_err("sync", &self.raw_path))?;
        let results = self
            .results
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_err("write", &self.results_path))?;
        results
            .sync_all()
            .map_err(io_err("sync", &self.results_path))?;
        Ok(self.frames)
    }
}

impl WriterContext {
    fn header(
        &self,
        kind: RecordingKind,
        trigger: Option<TriggerInfo>,
        prompts: &PromptsSeen,
        frames: &[usize],
        not_recorded: &[u64],
    ) -> Header {
        Header {
            format: RECORDING_FORMAT.into(),
            version: RECORDING_VERSION,
            kind,
            ocellus: env!("CARGO_PKG_VERSION").into(),
            created: utc(SystemTime::now()),
            trigger,
            model: self.model.clone(),
            stages: Stage::ALL.iter().map(|s| s.name().to_owned()).collect(),
            embed_dim: self.shape.embed_dim,
            num_latents: self.shape.num_latents,
            latent_dim: self.shape.latent_dim,
            max_scores: self.shape.max_scores,
            prompts: prompts.tables(),
            cameras: self
                .cameras
                .iter()
                .enumerate()
                .map(|(i, c)| CameraEntry {
                    index: i,
                    name: c.name.clone(),
                    source: c.source.clone(),
                    pixel_format: c.format.name().into(),
                    width: c.width,
                    height: c.height,
                    fps: c.fps,
                    frames: frames.get(i).copied().unwrap_or(0),
                    raw: raw_file(i),
                    results: results_file(i),
                    not_recorded: not_recorded.get(i).copied().unwrap_or(0),
                })
                .collect(),
            bytes: 0,
            write_ms: 0.0,
        }
    }
}

/// Writes `header` as `dir/recording.json`, with the final size and write time filled in.
fn write_header(dir: &Path, mut header: Header, started: Instant) -> Result<u64, WriteError> {
    let path = dir.join(HEADER_FILE);
    header.bytes = dir_bytes(dir);
    header.write_ms = started.elapsed().as_secs_f64() * 1e3;
    let text = serde_json::to_string_pretty(&header).map_err(|e| WriteError::Io {
        what: "encode",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let mut f = File::create(&path).map_err(io_err("create", &path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(io_err("write", &path))?;
    f.sync_all().map_err(io_err("sync", &path))?;
    Ok(header.bytes + text.len() as u64 + 1)
}

/// The flight recorder's writer: waits for a frozen window, writes it, unfreezes.
pub(super) fn window_loop(shared: Arc<Shared>, ctx: WriterContext, dir: PathBuf, quota: u64) {
    let mut dropped_seen = ctx.stats.recorder.dropped.load(Relaxed);
    loop {
        if shared.frozen.load(Acquire) {
            let job = shared.job.lock().map(|j| *j).unwrap_or_default();
            let started = Instant::now();
            let result = write_window(&shared, &ctx, &dir, quota, &job);
            let r = &ctx.stats.recorder;
            let result = match result {
                Ok((path, frames, bytes)) => {
                    r.made.fetch_add(1, Relaxed);
                    r.bytes.fetch_add(bytes, Relaxed);
                    tracing::info!(path = %path.display(), frames, mib = format!("{:.1}", bytes as f64 / (1 << 20) as f64), ms = format!("{:.0}", started.elapsed().as_secs_f64() * 1e3), trigger = %job.trigger.as_ref().map(trigger_slug).unwrap_or_default(), "flight recording written");
                    Ok(path)
                }
                Err(e @ WriteError::Empty) => {
                    tracing::info!(error = %e, "flight recording not written");
                    Err(e.to_string())
                }
                Err(e) => {
                    r.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, dir = %dir.display(), "flight recording not written; the frame path goes on");
                    Err(e.to_string())
                }
            };
            // Unfrozen before the result is told: whoever waited for it may trigger again at once.
            for ring in shared.rings.iter() {
                ring.base.store(ring.frozen_end.load(Relaxed), Release);
            }
            shared.frozen.store(false, Release);
            if let Ok(mut f) = shared.finished.lock() {
                if f.len() == FINISHED_KEPT {
                    f.pop_front();
                }
                f.push_back(Finished {
                    number: job.number,
                    result,
                });
            }
            let dropped = ctx.stats.recorder.dropped.load(Relaxed);
            if dropped > dropped_seen {
                tracing::warn!(dropped = dropped - dropped_seen, "triggers dropped while the recording was written (the recorder keeps one window)");
                dropped_seen = dropped;
            }
            continue;
        }
        if shared.stop.load(Acquire) {
            break;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn write_window(
    shared: &Shared,
    ctx: &WriterContext,
    dir: &Path,
    quota: u64,
    job: &super::ring::Job,
) -> Result<(PathBuf, usize, u64), WriteError> {
    let started = Instant::now();
    // The exact size of what will be written (frames of variable size included).
    let mut need = HEADER_ALLOWANCE;
    let mut total_frames = 0;
    for ring in shared.rings.iter() {
        let (end, len) = (ring.frozen_end.load(Relaxed), ring.frozen_len.load(Relaxed));
        need += RAW_HEADER_BYTES as u64 + results_bytes(&ctx.shape, len);
        for pos in end - len..end {
            if let Ok(slot) = ring.slot(pos).lock() {
                need += 8 + u64::from(slot.meta.frame_bytes);
            }
        }
        total_frames += len as usize;
    }
    if total_frames == 0 {
        return Err(WriteError::Empty);
    }
    std::fs::create_dir_all(dir).map_err(io_err("create the recording directory", dir))?;
    let removed = make_room(dir, need, quota)?;
    ctx.stats.recorder.removed.fetch_add(removed, Relaxed);
    let trigger = job.trigger.as_ref();
    let stamp = utc(SystemTime::now()
        - Duration::from_nanos(
            crate::clock::monotonic_ns().saturating_sub(trigger.map_or(0, |t| t.at_ns)),
        ))
    .replace(['-', ':'], "");
    let name = format!(
        "{RECORDING_PREFIX}{stamp}-{:04}-{}",
        job.number,
        trigger
            .map(trigger_slug)
            .unwrap_or_else(|| "trigger".into())
    );
    let mut path = dir.join(&name);
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{name}-{n}"));
    }
    let tmp = path.with_file_name(format!(
        "{}{PARTIAL_SUFFIX}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    let written = write_window_files(shared, ctx, &tmp, trigger, started);
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        WriteError::Io {
            what: "rename the finished recording to",
            path: path.clone(),
            source: e,
        }
    })?;
    Ok((path, total_frames, bytes))
}

fn write_window_files(
    shared: &Shared,
    ctx: &WriterContext,
    tmp: &Path,
    trigger: Option<&Trigger>,
    started: Instant,
) -> Result<u64, WriteError> {
    let mut record = vec![0u8; ctx.shape.record_bytes()];
    let mut prompts = PromptsSeen::default();
    let mut frames = Vec::with_capacity(shared.rings.len());
    for (index, (ring, cam)) in shared.rings.iter().zip(&ctx.cameras).enumerate() {
        let mut files = CameraFiles::create(tmp, index, cam, &ctx.shape)?;
        let (end, len) = (ring.frozen_end.load(Relaxed), ring.frozen_len.load(Relaxed));
        for pos in end - len..end {
            let Ok(slot) = ring.slot(pos).lock() else {
                continue;
            };
            prompts.note(&slot);
            files.write(&ctx.shape, &slot, &mut record)?;
        }
        frames.push(files.finish()?);
    }
    let header = ctx.header(
        RecordingKind::Triggered,
        trigger.map(trigger_info),
        &prompts,
        &frames,
        &[],
    );
    write_header(tmp, header, started)
}

/// A capture's files, opened before the pipeline starts.
pub(super) struct Capture {
    dir: PathBuf,
    files: Vec<CameraFiles>,
}

impl Capture {
    /// Creates `dir` (which must not hold a recording) and every camera's files.
    pub(super) fn create(dir: &Path, ctx: &WriterContext) -> Result<Capture, WriteError> {
        std::fs::create_dir_all(dir).map_err(io_err("create the capture directory", dir))?;
        if dir.join(HEADER_FILE).exists() {
            return Err(WriteError::Io {
                what: "record into",
                path: dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "it already holds a recording: give a new --out directory",
                ),
            });
        }
        let files = ctx
            .cameras
            .iter()
            .enumerate()
            .map(|(i, cam)| CameraFiles::create(dir, i, cam, &ctx.shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Capture {
            dir: dir.to_owned(),
            files,
        })
    }
}

/// A capture's writer: drains every full slot, in order, until stopped; then finishes the files and writes
/// `recording.json`. The first write error stops the writing (slots are still drained, so the frame path
/// keeps going) and is the capture's result.
pub(super) fn capture_loop(
    shared: Arc<Shared>,
    ctx: WriterContext,
    capture: Capture,
) -> Result<PathBuf, String> {
    let started = Instant::now();
    let Capture { dir, mut files } = capture;
    let mut record = vec![0u8; ctx.shape.record_bytes()];
    let mut prompts = PromptsSeen::default();
    let mut next = vec![0u64; shared.rings.len()];
    let mut error: Option<WriteError> = None;
    loop {
        let stopping = shared.stop.load(Acquire);
        let mut wrote = false;
        for (i, ring) in shared.rings.iter().enumerate() {
            while ring.full_flag(next[i]).load(Acquire) {
                if let Ok(slot) = ring.slot(next[i]).lock() {
                    if error.is_none() {
                        prompts.note(&slot);
                        if let Err(e) = files[i].write(&ctx.shape, &slot, &mut record) {
                            tracing::error!(error = %e, "capture stopped writing; the run goes on");
                            ctx.stats.recorder.errors.fetch_add(1, Relaxed);
                            error = Some(e);
                        }
                    }
                }
                ring.full_flag(next[i]).store(false, Release);
                next[i] += 1;
                wrote = true;
            }
        }
        if !wrote {
            if stopping {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
    if let Some(e) = error {
        return Err(e.to_string());
    }
    let frames = files
        .into_iter()
        .map(CameraFiles::finish)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let not_recorded: Vec<u64> = shared
        .rings
        .iter()
        .map(|r| r.not_recorded.load(Relaxed))
        .collect();
    let header = ctx.header(
        RecordingKind::Capture,
        None,
        &prompts,
        &frames,
        &not_recorded,
    );
    let bytes = write_header(&dir, header, started).map_err(|e| e.to_string())?;
    ctx.stats.recorder.made.fetch_add(1, Relaxed);
    ctx.stats.recorder.bytes.fetch_add(bytes, Relaxed);
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_names_sort_by_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(utc(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(utc(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn make_room_removes_the_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in [
            ("rec-2", 300usize),
            ("rec-1", 300),
            ("rec-3", 300),
            ("other", 5000),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("f"), vec![0u8; bytes]).expect("write");
        }
        std::fs::create_dir(dir.path().join("rec-0.partial")).expect("mkdir");
        assert_eq!(make_room(dir.path(), 500, 1000).expect("room"), 2);
        let left: Vec<String> = recordings_in(dir.path())
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["rec-3"]);
        assert!(
            dir.path().join("other").exists(),
            "only recordings are removed"
        );
        assert!(!dir.path().join("rec-0.partial").exists());
        assert!(matches!(
            make_room(dir.path(), 2000, 1000),
            Err(WriteError::OverQuota { .. })
        ));
    }
}
