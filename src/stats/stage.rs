//! The measured stages of the frame path.

/// The stages of the frame path whose durations are measured (and held to deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stage {
    /// From the frame's capture timestamp to the inference thread taking it from the handoff.
    Dequeue = 0,
    /// Pixel format conversion, resize, crop and normalisation into the model input.
    Prepare = 1,
    /// The vision encoder.
    Encoder = 2,
    /// The resampler.
    Resampler = 3,
    /// Cosine similarity against the prompt set and softmax.
    Score = 4,
    /// All sinks' `publish`.
    Publish = 5,
    /// Capture timestamp to the end of publishing.
    EndToEnd = 6,
}

/// Number of [`Stage`]s.
pub const STAGE_COUNT: usize = 7;

impl Stage {
    /// Every stage, in frame-path order.
    pub const ALL: [Stage; STAGE_COUNT] = [
        Stage::Dequeue,
        Stage::Prepare,
        Stage::Encoder,
        Stage::Resampler,
        Stage::Score,
        Stage::Publish,
        Stage::EndToEnd,
    ];

    /// Index of the stage in per-stage arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name used in the status line, the summary and the JSON report.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Dequeue => "dequeue",
            Stage::Prepare => "prepare",
            Stage::Encoder => "encoder",
            Stage::Resampler => "resampler",
            Stage::Score => "score",
            Stage::Publish => "publish",
            Stage::EndToEnd => "end_to_end",
        }
    }

    /// Short name for the one-line status.
    pub const fn short(self) -> &'static str {
        match self {
            Stage::Dequeue => "dq",
            Stage::Prepare => "prep",
            Stage::Encoder => "enc",
            Stage::Resampler => "res",
            Stage::Score => "score",
            Stage::Publish => "pub",
            Stage::EndToEnd => "e2e",
        }
    }

    /// The bit of this stage in a frame's late flags (`1 << index`).
    pub const fn late_bit(self) -> u32 {
        1 << (self as u32)
    }
}
