//! The recording format, version 1: a directory the replay source can read, plus the results.
//!
//! ```text
//! <recording>/
//!   recording.json     what the recording holds (below); written last, so a directory without it is
//!                      incomplete
//!   cam<N>.raw         camera N's frames: the replay source's raw frame file (src/source/replay.rs,
//!                      magic "OCFRAMES", version 1), oldest first
//!   cam<N>.results     camera N's results, one fixed-size record per frame of cam<N>.raw, same order
//! ```
//!
//! `recording.json` opens with `"format": "ocellus-recording"` and `"version": 1`; a reader refuses any
//! other format and any newer version. Its fields are [`Header`].
//!
//! `cam<N>.results` (little-endian):
//!
//! ```text
//! header, 64 bytes:
//!   0  magic         8 bytes  "OCRESULT"
//!   8  version       u32      1
//!  12  header-bytes  u32      64
//!  16  record-bytes  u32      the size of each record
//!  20  E             u32      embedding width
//!  24  L             u32      latent tokens
//!  28  D             u32      latent width
//!  32  K             u32      score slots per record (prompts.max when recorded)
//!  36  stages        u32      7 (dequeue, prepare, encoder, resampler, score, publish, end_to_end)
//!  40  camera        u32      N
//!  44  reserved      20 bytes 0
//! then one record per frame, record-bytes each:
//!   0  sequence        u64    the source's frame number
//!   8  capture_ns      u64    capture time, CLOCK_MONOTONIC
//!  16  publish_ns      u64    when publishing began (as in shared memory)
//!  24  stage_ns        7 x u64  stage durations (stage order above)
//!  80  flags           u32    late bits of every stage (bit s = stage s) | FLAG_CAMERA_LOST (1 << 16) |
//!                             FLAG_CAMERA_RESTARTED (1 << 17) | FLAG_DEGRADED (1 << 18)
//!  84  num_scores      u32    scores in use (<= K)
//!  88  prompt_version  u64    the prompt set that scored the frame (its labels in recording.json)
//!  96  driver_dropped  u64    the camera's driver-dropped frames so far (sequence gaps)
//! 104  dropped         u64    the camera's frames displaced in the handoff so far
//! 112  label           u16    ground-truth class (synthetic source), 0xFFFF: none
//! 114  reserved        u16    0
//! 116  frame_bytes     u32    bytes of the frame in cam<N>.raw
//! 120  embedding       E x f32
//!      latents         L x D x f32 (row-major)
//!      scores          K x f32 (the first num_scores in use, the rest 0)
//!      padding to a multiple of 8 bytes
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::PixelFormat;
use crate::source::replay::RawFrameReader;
use crate::stats::STAGE_COUNT;

/// The `format` of `recording.json`.
pub const RECORDING_FORMAT: &str = "ocellus-recording";
/// The recording format this module writes and reads.
pub const RECORDING_VERSION: u32 = 1;
/// The name of a recording's description.
pub const HEADER_FILE: &str = "recording.json";
/// Magic bytes opening a results file.
pub const RESULTS_MAGIC: [u8; 8] = *b"OCRESULT";
/// The results file version this module writes and reads.
pub const RESULTS_VERSION: u32 = 1;
/// Size of a results file's header.
pub const RESULTS_HEADER_BYTES: usize = 64;
/// Bytes of a record before its embedding.
pub const RECORD_FIXED_BYTES: usize = 120;
/// The label of a frame without ground truth.
pub const NO_LABEL: u16 = 0xFFFF;

/// The raw frame file of camera `index` in a recording.
pub fn raw_file(index: usize) -> String {
    format!("cam{index}.raw")
}

/// The results file of camera `index` in a recording.
pub fn results_file(index: usize) -> String {
    format!("cam{index}.results")
}

/// The shapes a results file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsShape {
    /// E.
    pub embed_dim: usize,
    /// L.
    pub num_latents: usize,
    /// D.
    pub latent_dim: usize,
    /// K: score slots per record.
    pub max_scores: usize,
}

impl ResultsShape {
    /// Bytes of one record.
    pub fn record_bytes(&self) -> usize {
        let floats = self.embed_dim + self.num_latents * self.latent_dim + self.max_scores;
        (RECORD_FIXED_BYTES + 4 * floats).next_multiple_of(8)
    }

    /// The 64-byte header of camera `camera`'s results file.
    pub fn header(&self, camera: usize) -> [u8; RESULTS_HEADER_BYTES] {
        let mut h = [0u8; RESULTS_HEADER_BYTES];
        h[..8].copy_from_slice(&RESULTS_MAGIC);
        let words = [
            RESULTS_VERSION,
            RESULTS_HEADER_BYTES as u32,
            self.record_bytes() as u32,
            self.embed_dim as u32,
            self.num_latents as u32,
            self.latent_dim as u32,
            self.max_scores as u32,
            STAGE_COUNT as u32,
            camera as u32,
        ];
        for (i, w) in words.iter().enumerate() {
            h[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        h
    }
}

/// One frame's results as a results file holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameResults {
    pub sequence: u64,
    pub capture_ns: u64,
    pub publish_ns: u64,
    pub stage_ns: [u64; STAGE_COUNT],
    pub flags: u32,
    pub prompt_version: u64,
    pub driver_dropped: u64,
    pub dropped: u64,
    pub label: Option<u16>,
    pub frame_bytes: u32,
    pub image_embeds: Vec<f32>,
    pub latents: Vec<f32>,
    /// The scores in use (`num_scores` of them).
    pub scores: Vec<f32>,
}

/// The fixed part of a record (everything but the arrays), for the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordMeta {
    pub sequence: u64,
    pub capture_ns: u64,
    pub publish_ns: u64,
    pub stage_ns: [u64; STAGE_COUNT],
    pub flags: u32,
    pub num_scores: u32,
    pub prompt_version: u64,
    pub driver_dropped: u64,
    pub dropped: u64,
    pub label: Option<u16>,
    pub frame_bytes: u32,
}

/// Encodes one record into `out` (exactly `shape.record_bytes()` long). `scores` may be shorter than K; the
/// rest is zero.
pub fn encode_record(
    shape: &ResultsShape,
    meta: &RecordMeta,
    embeds: &[f32],
    latents: &[f32],
    scores: &[f32],
    out: &mut [u8],
) {
    out.fill(0);
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&meta.sequence.to_le_bytes());
    put(&meta.capture_ns.to_le_bytes());
    put(&meta.publish_ns.to_le_bytes());
    for s in meta.stage_ns {
        put(&s.to_le_bytes());
    }
    put(&meta.flags.to_le_bytes());
    put(&meta.num_scores.to_le_bytes());
    put(&meta.prompt_version.to_le_bytes());
    put(&meta.driver_dropped.to_le_bytes());
    put(&meta.dropped.to_le_bytes());
    put(&meta.label.unwrap_or(NO_LABEL).to_le_bytes());
    put(&[0, 0]);
    put(&meta.frame_bytes.to_le_bytes());
    debug_assert_eq!(at, RECORD_FIXED_BYTES);
    let mut floats = |values: &[f32], n: usize| {
        for v in values.iter().take(n) {
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
            at += 4;
        }
        at += 4 * n.saturating_sub(values.len());
    };
    floats(embeds, shape.embed_dim);
    floats(latents, shape.num_latents * shape.latent_dim);
    floats(scores, shape.max_scores);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn f32s(b: &[u8], at: usize, n: usize) -> Vec<f32> {
    b[at..at + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Decodes one record.
pub fn decode_record(shape: &ResultsShape, b: &[u8]) -> FrameResults {
    let mut stage_ns = [0u64; STAGE_COUNT];
    for (s, v) in stage_ns.iter_mut().enumerate() {
        *v = u64_at(b, 24 + 8 * s);
    }
    let num_scores = (u32_at(b, 84) as usize).min(shape.max_scores);
    let label = u16::from_le_bytes([b[112], b[113]]);
    let e = shape.embed_dim;
    let ld = shape.num_latents * shape.latent_dim;
    FrameResults {
        sequence: u64_at(b, 0),
        capture_ns: u64_at(b, 8),
        publish_ns: u64_at(b, 16),
        stage_ns,
        flags: u32_at(b, 80),
        prompt_version: u64_at(b, 88),
        driver_dropped: u64_at(b, 96),
        dropped: u64_at(b, 104),
        label: (label != NO_LABEL).then_some(label),
        frame_bytes: u32_at(b, 116),
        image_embeds: f32s(b, RECORD_FIXED_BYTES, e),
        latents: f32s(b, RECORD_FIXED_BYTES + 4 * e, ld),
        scores: f32s(b, RECORD_FIXED_BYTES + 4 * (e + ld), num_scores),
    }
}

/// What a recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordingKind {
    /// The flight recorder's window, frozen by a trigger.
    Triggered,
    /// Every frame of a run (`ocellus record --duration`).
    Capture,
}

/// What froze a flight recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerInfo {
    /// `late` (a stage missed its deadline), `camera-fault` (a stall, disconnect or reconnect), `signal`
    /// (SIGUSR1), `command` (`ocellus record --trigger`), `stop` (the service stopped with a trigger's
    /// window still filling).
    pub kind: String,
    /// The stage that missed its deadline (`late`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The camera of a `late` or `camera-fault` trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<usize>,
    /// The sequence number of the frame that was late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// When the trigger came, CLOCK_MONOTONIC ns.
    pub monotonic_ns: u64,
}

/// The model that produced the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelIdentity {
    /// The bundle's name (manifest).
    pub name: String,
    pub engine: String,
    /// The variant that ran (fp32, int8, f16).
    pub variant: String,
    pub threads: usize,
    /// The CPU features the engine used.
    pub cpu: String,
    /// sha256 of the vision encoder and the resampler files that ran.
    pub vision_sha256: String,
    pub resampler_sha256: String,
}

/// A prompt set the recorded frames were scored against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTable {
    pub version: u64,
    pub labels: Vec<String>,
}

/// One camera of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraEntry {
    pub index: usize,
    pub name: String,
    /// The camera's source when recorded (synthetic, replay, v4l2).
    pub source: String,
    pub pixel_format: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames in `raw` and records in `results`.
    pub frames: usize,
    pub raw: String,
    pub results: String,
    /// Processed frames the recorder could not keep (a capture whose writer fell behind; 0 for a window).
    #[serde(default)]
    pub not_recorded: u64,
}

/// `recording.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`RECORDING_FORMAT`].
    pub format: String,
    /// [`RECORDING_VERSION`].
    pub version: u32,
    pub kind: RecordingKind,
    /// The ocellus version that wrote it.
    pub ocellus: String,
    /// When it was written, UTC (`2025-01-31T12:00:00.123Z`).
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerInfo>,
    pub model: ModelIdentity,
    /// The stage order of `stage_ns`.
    pub stages: Vec<String>,
    pub embed_dim: usize,
    pub num_latents: usize,
    pub latent_dim: usize,
    pub max_scores: usize,
    /// Every prompt set a recorded frame was scored against.
    pub prompts: Vec<PromptTable>,
    pub cameras: Vec<CameraEntry>,
    /// Bytes of the recording's frame and results files (`recording.json` aside).
    pub bytes: u64,
    /// How long writing it took, ms.
    pub write_ms: f64,
}

impl Header {
    /// The shapes of the results files.
    pub fn shape(&self) -> ResultsShape {
        ResultsShape {
            embed_dim: self.embed_dim,
            num_latents: self.num_latents,
            latent_dim: self.latent_dim,
            max_scores: self.max_scores,
        }
    }

    /// The labels of prompt set `version`, if the recording has them.
    pub fn labels(&self, version: u64) -> Option<&[String]> {
        self.prompts
            .iter()
            .find(|p| p.version == version)
            .map(|p| p.labels.as_slice())
    }
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{}: not a recording: {why}", path.display())]
    NotARecording { path: PathBuf, why: String },
    #[error("{}: the recording is incomplete (no {HEADER_FILE}): it was being written, or its writer stopped; record again", path.display())]
    Incomplete { path: PathBuf },
    #[error("{}: recording format version {found}; this ocellus reads version {RECORDING_VERSION}: read it with the ocellus that wrote it (or a newer one)", path.display())]
    NewerVersion { path: PathBuf, found: u64 },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{}: cannot read it: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A recording opened and checked: the header parsed, every file present and of the length the header
/// says (a truncated or foreign file is refused here, before anything runs).
#[derive(Debug, Clone)]
pub struct Recording {
    pub dir: PathBuf,
    pub header: Header,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordingError + '_ {
    move |source| RecordingError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Recording {
    /// Opens the recording in `dir` (or the directory of a `recording.json` given instead).
    pub fn open(dir: &Path) -> Result<Recording, RecordingError> {
        let dir = if dir.file_name().is_some_and(|n| n == HEADER_FILE) {
            dir.parent().unwrap_or(Path::new(".")).to_owned()
        } else {
            dir.to_owned()
        };
        if !dir.is_dir() {
            return Err(RecordingError::NotARecording {
                path: dir,
                why: "no such directory (give the directory that holds recording.json)".into(),
            });
        }
        let path = dir.join(HEADER_FILE);
        if !path.is_file() {
            let raw = dir.join(raw_file(0));
            return Err(if raw.is_file() {
                RecordingError::Incomplete { path: dir }
            } else {
                RecordingError::NotARecording {
                    path: dir,
                    why: format!("no {HEADER_FILE}"),
                }
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RecordingError::NotARecording {
                path: path.clone(),
                why: format!("not JSON: {e}"),
            })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(RECORDING_FORMAT) {
            return Err(RecordingError::NotARecording {
                path,
                why: format!("its \"format\" is not \"{RECORDING_FORMAT}\""),
            });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(RECORDING_VERSION) {
            return Err(RecordingError::NewerVersion {
                path,
                found: version,
            });
        }
        let header: Header =
            serde_json::from_value(value).map_err(|e| RecordingError::Corrupt {
                path: path.clone(),
                why: format!("{HEADER_FILE} does not describe a version-1 recording: {e}"),
            })?;
        let recording = Recording { dir, header };
        for cam in &recording.header.cameras {
            recording.check_camera(cam)?;
        }
        Ok(recording)
    }

    fn check_camera(&self, cam: &CameraEntry) -> Result<(), RecordingError> {
        let corrupt = |path: &Path, why: String| RecordingError::Corrupt {
            path: path.to_owned(),
            why,
        };
        let format = PixelFormat::from_name(&cam.pixel_format).ok_or_else(|| {
            corrupt(
                &self.dir.join(HEADER_FILE),
                format!(
                    "camera {} has pixel format '{}', which ocellus does not read",
                    cam.index, cam.pixel_format
                ),
            )
        })?;
        let raw = self.dir.join(&cam.raw);
        let frames = count_raw_frames(&raw)?;
        let reader = RawFrameReader::open(&raw).map_err(|e| corrupt(&raw, e.to_string()))?;
        if (reader.format(), reader.size()) != (format, (cam.width, cam.height)) {
            let (w, h) = reader.size();
            return Err(corrupt(
                &raw,
                format!(
                    "holds {} {w}x{h} frames, but {HEADER_FILE} says {} {}x{}",
                    reader.format(),
                    cam.pixel_format,
                    cam.width,
                    cam.height
                ),
            ));
        }
        if frames != cam.frames {
            return Err(corrupt(
                &raw,
                format!(
                    "holds {frames} frames but {HEADER_FILE} says {}: the file is truncated (copied while it was written?); copy the recording again",
                    cam.frames
                ),
            ));
        }
        let results = self.dir.join(&cam.results);
        let records = self.results_reader(cam.index)?.len();
        if records != cam.frames {
            return Err(corrupt(
                &results,
                format!(
                    "holds {records} records but {HEADER_FILE} says {}: the file is truncated (copied while it was written?); copy the recording again",
                    cam.frames
                ),
            ));
        }
        Ok(())
    }

    /// The camera entry of camera `index`.
    pub fn camera(&self, index: usize) -> Option<&CameraEntry> {
        self.header.cameras.get(index)
    }

    /// The pixel format of camera `index`'s frames.
    pub fn format(&self, index: usize) -> Option<PixelFormat> {
        self.camera(index)
            .and_then(|c| PixelFormat::from_name(&c.pixel_format))
    }

    /// Camera `index`'s raw frame file.
    pub fn raw_path(&self, index: usize) -> PathBuf {
        self.dir.join(
            self.camera(index)
                .map_or_else(|| raw_file(index), |c| c.raw.clone()),
        )
    }

    /// A reader of camera `index`'s results file (header checked).
    pub fn results_reader(&self, index: usize) -> Result<ResultsReader, RecordingError> {
        let path = self.dir.join(
            self.camera(index)
                .map_or_else(|| results_file(index), |c| c.results.clone()),
        );
        ResultsReader::open(&path, &self.header.shape(), index)
    }

    /// Every record of camera `index`.
    pub fn results(&self, index: usize) -> Result<Vec<FrameResults>, RecordingError> {
        let mut r = self.results_reader(index)?;
        let mut out = Vec::with_capacity(r.len());
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }
}

/// Counts the frames of a raw frame file by walking its record headers.
fn count_raw_frames(path: &Path) -> Result<usize, RecordingError> {
    let corrupt = |why: String| RecordingError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let mut reader = RawFrameReader::open(path).map_err(|e| corrupt(e.to_string()))?;
    let exact = reader
        .format()
        .frame_bytes(reader.size().0, reader.size().1);
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if let Some(n) = exact {
        let body = len.saturating_sub(32);
        let record = 8 + n as u64;
        if body % record != 0 {
            return Err(corrupt(format!(
                "{body} bytes of frames is not a whole number of {record}-byte records: the file is truncated; copy the recording again"
            )));
        }
        return Ok((body / record) as usize);
    }
    let mut buf = vec![0u8; reader.max_bytes()];
    while reader
        .next_frame(&mut buf)
        .map_err(|e| corrupt(e.to_string()))?
        .is_some()
    {}
    Ok(reader.frames_read())
}

/// Reads a results file record by record.
#[derive(Debug)]
pub struct ResultsReader {
    r: BufReader<File>,
    path: PathBuf,
    shape: ResultsShape,
    records: usize,
    next: usize,
    buf: Vec<u8>,
}

impl ResultsReader {
    /// Opens `path`, checks its header against `shape` and camera `camera`, and its length.
    pub fn open(
        path: &Path,
        shape: &ResultsShape,
        camera: usize,
    ) -> Result<ResultsReader, RecordingError> {
        let corrupt = |why: String| RecordingError::Corrupt {
            path: path.to_owned(),
            why,
        };
        let mut f = File::open(path).map_err(io(path))?;
        let len = f.metadata().map_err(io(path))?.len();
        let mut h = [0u8; RESULTS_HEADER_BYTES];
        f.read_exact(&mut h)
            .map_err(|e| corrupt(format!("not a results file: header unreadable ({e})")))?;
        if h[..8] != RESULTS_MAGIC {
            return Err(corrupt("not a results file (no OCRESULT magic)".into()));
        }
        let version = u32_at(&h, 8);
        if version != RESULTS_VERSION {
            return Err(RecordingError::NewerVersion {
                path: path.to_owned(),
                found: version.into(),
            });
        }
        let want = shape.header(camera);
        if h != want {
            return Err(corrupt(format!(
                "its shapes (E {}, L {}, D {}, K {}, stages {}, camera {}) differ from {HEADER_FILE}'s",
                u32_at(&h, 20),
                u32_at(&h, 24),
                u32_at(&h, 28),
                u32_at(&h, 32),
                u32_at(&h, 36),
                u32_at(&h, 40)
            )));
        }
        let record = shape.record_bytes() as u64;
        let body = len - RESULTS_HEADER_BYTES as u64;
        if body % record != 0 {
            return Err(corrupt(format!(
                "{body} bytes of records is not a whole number of {record}-byte records: the file is truncated; copy the recording again"
            )));
        }
        f.seek(SeekFrom::Start(RESULTS_HEADER_BYTES as u64))
            .map_err(io(path))?;
        Ok(ResultsReader {
            r: BufReader::new(f),
            path: path.to_owned(),
            shape: *shape,
            records: (body / record) as usize,
            next: 0,
            buf: vec![0; record as usize],
        })
    }

    /// Records in the file.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The next record, `None` after the last.
    pub fn next_record(&mut self) -> Result<Option<FrameResults>, RecordingError> {
        if self.next >= self.records {
            return Ok(None);
        }
        self.r.read_exact(&mut self.buf).map_err(io(&self.path))?;
        self.next += 1;
        Ok(Some(decode_record(&self.shape, &self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let shape = ResultsShape {
            embed_dim: 3,
            num_latents: 2,
            latent_dim: 2,
            max_scores: 4,
        };
        assert_eq!(shape.record_bytes(), 120 + 4 * 11 + 4);
        let meta = RecordMeta {
            sequence: 7,
            capture_ns: 1,
            publish_ns: 2,
            stage_ns: [1, 2, 3, 4, 5, 6, 7],
            flags: 1 << 16 | 4,
            num_scores: 2,
            prompt_version: 9,
            driver_dropped: 3,
            dropped: 4,
            label: Some(5),
            frame_bytes: 100,
        };
        let mut out = vec![0xAA; shape.record_bytes()];
        encode_record(
            &shape,
            &meta,
            &[0.5, -1.0, 2.0],
            &[1.0, 2.0, 3.0, 4.0],
            &[0.25, 0.75],
            &mut out,
        );
        let r = decode_record(&shape, &out);
        assert_eq!((r.sequence, r.flags, r.label), (7, 1 << 16 | 4, Some(5)));
        assert_eq!(r.stage_ns, meta.stage_ns);
        assert_eq!(r.image_embeds, [0.5, -1.0, 2.0]);
        assert_eq!(r.latents, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(r.scores, [0.25, 0.75]);
        assert_eq!((r.driver_dropped, r.dropped, r.frame_bytes), (3, 4, 100));
    }
}
