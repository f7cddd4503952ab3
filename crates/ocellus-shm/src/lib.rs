//! Results in shared memory: a versioned, lock-free segment that control loops read without a system call and
//! without ever blocking the writer (issue 4; the layout is docs/shm-layout.md, its C form
//! `include/ocellus/shm.h`, its Python form `ocellus_tools.shm`).
//!
//! Real-time contract:
//! * [`ShmWriter::create`] allocates and maps everything once. [`ShmWriter::publish`] is wait-free: a bounded
//!   number of relaxed atomic stores and two clock reads, no allocation, no system call, no loop on readers.
//! * [`ShmReader::read_latest`] copies into a caller's [`Sample`] (made once with [`ShmReader::new_sample`]):
//!   no allocation and no system call while the writer is alive; it retries at most
//!   [`ReaderOptions::max_retries`] times and then returns [`ReadError::RetriesExhausted`]. Only when the
//!   writer is stopped or stale does it look for a new segment (at most once per
//!   [`ReaderOptions::reopen_interval`]); re-mapping onto larger dimensions resizes the sample once.
//!
//! Layers: `os` (the only `unsafe`: shm_open, mmap, fstat, clocks), `sync` + `seqlock` (the protocol core,
//! model-checked by `tests/loom.rs`), `layout` (offsets, validation, checksum), then the writer and the reader.
//!
//! This crate is what a Rust control loop links to read ocellus's results: it depends on `libc` and `half`
//! only (no inference engine, no tokenizer, no V4L2 bindings), so it builds in seconds. The runtime publishes
//! through the same [`ShmWriter`]; the C header `include/ocellus/shm.h` and the Python reader
//! `ocellus_tools.shm` implement the same reader side of docs/shm-layout.md.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod format;
pub mod layout;
#[allow(unsafe_code)]
mod os;
mod reader;
mod segment;
mod seqlock;
mod sync;
mod writer;

pub use format::{format_sample, format_top, CameraTop, TopSnapshot};
pub use layout::{Dims, HeaderError, LatentsDtype, Layout};
pub use reader::{validate_bytes, ReadError, ReaderOptions, SampleInfo, ShmReader, WriterInfo};
pub use writer::{CreateError, Heartbeat, PublishError, ShmWriter, WriterConfig};

/// The clock of every timestamp in the segment (and of the runtime's frame timestamps): CLOCK_MONOTONIC.
pub mod clock {
    /// CLOCK_MONOTONIC now, in ns: the time base of capture, publish and heartbeat times.
    pub fn monotonic_ns() -> u64 {
        crate::os::monotonic_ns()
    }

    /// CLOCK_REALTIME now, in ns since the Unix epoch.
    pub fn realtime_ns() -> u64 {
        crate::os::realtime_ns()
    }
}

/// Default segment name (`/dev/shm/ocellus`).
pub const DEFAULT_NAME: &str = "/ocellus";

/// Longest segment name, without the leading `/`.
pub const MAX_NAME_LEN: usize = 200;

/// The one rule for segment names (docs/shm-layout.md, the config's `shm.name`, `--shm`, the readers): 1 to
/// [`MAX_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`, not `.` or `..`, optionally after one leading `/`.
/// Returns the POSIX name, with the leading `/` (the object is `/dev/shm/<name>`).
pub fn segment_name(name: &str) -> Result<String, String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= MAX_NAME_LEN
        && bare != "."
        && bare != ".."
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(format!("/{bare}"))
    } else {
        Err(format!(
            "'{name}' is not a shared-memory segment name: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ - (no '/' inside; a leading '/' is optional)"
        ))
    }
}

/// The metadata of one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleMeta {
    /// The camera's frame sequence number.
    pub sequence: u64,
    /// Capture time (the driver's timestamp), CLOCK_MONOTONIC ns.
    pub capture_ns: u64,
    /// When the sample was published, CLOCK_MONOTONIC ns (set by the writer).
    pub publish_ns: u64,
    /// Stage durations in ns ([`layout::STAGE_NAMES`]); the writer sets `publish` and `end_to_end`.
    pub stages_ns: [u64; layout::STAGES],
    /// `layout::FLAG_*` and per-stage late bits.
    pub flags: u64,
    /// Deadline misses of this camera so far.
    pub deadline_misses: u64,
    /// Version of the prompt set the scores were computed with.
    pub prompt_version: u64,
}

/// A sample to publish, borrowing the producer's buffers.
#[derive(Debug, Clone, Copy)]
pub struct SampleRef<'a> {
    pub meta: SampleMeta,
    /// Pooled embedding, exactly E values.
    pub embedding: &'a [f32],
    /// Latents row-major, exactly L x D values (stored as f16 when the segment says so).
    pub latents: &'a [f32],
    /// One score per prompt, at most K values.
    pub scores: &'a [f32],
}

/// A sample read from the segment into buffers the caller owns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub meta: SampleMeta,
    /// Number of valid entries of `scores`.
    pub num_scores: usize,
    pub embedding: Vec<f32>,
    pub latents: Vec<f32>,
    /// K entries; the first `num_scores` are valid.
    pub scores: Vec<f32>,
}

impl Sample {
    /// A zeroed sample sized for `dims`.
    pub fn new(dims: &Dims) -> Sample {
        Sample {
            meta: SampleMeta::default(),
            num_scores: 0,
            embedding: vec![0.0; dims.embed_dim],
            latents: vec![0.0; dims.num_latents * dims.latent_dim],
            scores: vec![0.0; dims.max_prompts],
        }
    }

    /// Resizes the buffers for `dims` (allocates only when they grow).
    pub fn fit(&mut self, dims: &Dims) {
        self.embedding.resize(dims.embed_dim, 0.0);
        self.latents.resize(dims.num_latents * dims.latent_dim, 0.0);
        self.scores.resize(dims.max_prompts, 0.0);
    }

    /// The valid scores.
    pub fn scores(&self) -> &[f32] {
        &self.scores[..self.num_scores.min(self.scores.len())]
    }

    /// This sample as something to publish.
    pub fn view(&self) -> SampleRef<'_> {
        SampleRef {
            meta: self.meta,
            embedding: &self.embedding,
            latents: &self.latents,
            scores: self.scores(),
        }
    }
}

/// The flight recorder's counters in the status block (docs/recorder.md). Each value is whole; the set is not
/// a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderCounts {
    /// Recordings written.
    pub made: u64,
    /// Triggers that came while the previous recording was still being written (not recorded).
    pub dropped: u64,
    /// Recordings that could not be written (disk full, directory not writable, over the quota).
    pub errors: u64,
}

/// One camera's counters in the status block. Each value is whole; the set is not a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CameraCounters {
    pub captured: u64,
    pub dropped: u64,
    /// Deadline misses per stage.
    pub late: [u64; layout::STAGES],
    pub reconnects: u64,
    pub processed: u64,
    pub corrupt: u64,
    /// Source, inference and publish errors.
    pub errors: u64,
    /// Current state: `FLAG_CAMERA_LOST`, `FLAG_STALLED`.
    pub flags: u64,
    /// By how much the camera's most recent late frame overran its worst stage's deadline, in ns (0: none yet).
    pub last_overrun_ns: u64,
    /// That frame's late bits (bit s = stage s, as in a sample's flags).
    pub last_late_stages: u64,
}

/// The prompt table: version and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    pub version: u64,
    pub labels: Vec<String>,
}

/// The flags for people: `late(encoder,end_to_end) camera-lost`, or `-` when none is set.
pub fn describe_flags(flags: u64) -> String {
    let mut out = String::new();
    let late: Vec<&str> = (0..layout::STAGES)
        .filter(|s| flags & (1 << s) != 0)
        .map(|s| layout::STAGE_NAMES[s])
        .collect();
    if !late.is_empty() {
        out.push_str("late(");
        out.push_str(&late.join(","));
        out.push(')');
    }
    for (bit, name) in [
        (layout::FLAG_CAMERA_LOST, "camera-lost"),
        (layout::FLAG_CAMERA_RESTARTED, "camera-restarted"),
        (layout::FLAG_DEGRADED, "degraded"),
        (layout::FLAG_STALLED, "stalled"),
    ] {
        if flags & bit != 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}
