//! The segment's binary layout (docs/shm-layout.md): offsets, sizes, the layout hash, the sample checksum, and
//! the validation of a header read from a segment of unknown origin.
//!
//! Every field is a little-endian `u64` at an 8-byte-aligned offset (accessed as one atomic word); blocks start
//! on 64-byte cache lines. Everything after the fixed header is computed from (cameras, E, L, D, K, dtype).

/// `b"OCELLSHM"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"OCELLSHM");
/// The layout described here. Readers refuse any other.
pub const LAYOUT_VERSION: u64 = 1;
pub const CACHE_LINE: u64 = 64;
/// Size of the fixed header; the prompt block follows it.
pub const HEADER_SIZE: u64 = 384;
/// Bytes per prompt label (UTF-8, NUL-padded; a label of exactly 64 bytes has no NUL).
pub const LABEL_BYTES: u64 = 64;
/// Buffers in each camera's ring.
pub const BUFFERS_PER_SLOT: u64 = 3;
/// Bytes of one camera's counters in the status block.
pub const STATUS_CAMERA_STRIDE: u64 = 128;
pub const MODEL_ID_BYTES: usize = 48;
pub const MODEL_SHA_BYTES: usize = 16;

// Header, line 0: identity (written once, before `magic`). Lines 0 and 1 keep these offsets in every layout
// version, so any version's writer can tell a stale segment of another version from a live one.
pub const H_MAGIC: u64 = 0;
pub const H_VERSION: u64 = 8;
pub const H_TOTAL_SIZE: u64 = 16;
pub const H_LAYOUT_HASH: u64 = 24;
pub const H_GENERATION: u64 = 32;
pub const H_WRITER_PID: u64 = 40;
pub const H_START_REALTIME_NS: u64 = 48;
pub const H_START_MONOTONIC_NS: u64 = 56;
// Line 1: liveness.
pub const H_STATE: u64 = 64;
pub const H_HEARTBEAT_NS: u64 = 72;
pub const H_HEARTBEAT_PERIOD_NS: u64 = 80;
// Lines 2 and 3: geometry.
pub const H_CAMERAS: u64 = 128;
pub const H_EMBED_DIM: u64 = 136;
pub const H_NUM_LATENTS: u64 = 144;
pub const H_LATENT_DIM: u64 = 152;
pub const H_MAX_PROMPTS: u64 = 160;
pub const H_LATENTS_DTYPE: u64 = 168;
pub const H_LABEL_BYTES: u64 = 176;
pub const H_BUFFERS_PER_SLOT: u64 = 184;
pub const H_PROMPTS_OFFSET: u64 = 192;
pub const H_STATUS_OFFSET: u64 = 200;
pub const H_SLOTS_OFFSET: u64 = 208;
pub const H_SLOT_STRIDE: u64 = 216;
pub const H_BUFFER_STRIDE: u64 = 224;
pub const H_EMBEDDING_OFFSET: u64 = 232;
pub const H_LATENTS_OFFSET: u64 = 240;
pub const H_SCORES_OFFSET: u64 = 248;
// Lines 4 and 5: model identity.
pub const H_MODEL_ID: u64 = 256;
pub const H_MODEL_SHA256: u64 = 304;

pub const STATE_INITIALISING: u64 = 0;
pub const STATE_RUNNING: u64 = 1;
pub const STATE_STOPPED: u64 = 2;

// Prompt block (at `prompts_offset`), guarded by its own sequence lock.
pub const P_SEQ: u64 = 0;
pub const P_VERSION: u64 = 8;
pub const P_COUNT: u64 = 16;
pub const P_LABELS: u64 = 64;

// Status block (at `status_offset`): one global line, then one 128-byte record per camera. Each word is a
// counter or state written on its own (relaxed): whole values, not a consistent set.
pub const S_MEMORY_HIGH_WATER: u64 = 0;
/// The flight recorder's recordings written, triggers dropped (the writer was busy) and failed writes.
/// Zero from a writer without a recorder (and from writers older than these words).
pub const S_RECORDINGS_MADE: u64 = 8;
pub const S_RECORDINGS_DROPPED: u64 = 16;
pub const S_RECORDING_ERRORS: u64 = 24;
pub const S_CAMERAS: u64 = 64;
pub const C_CAPTURED: u64 = 0;
pub const C_DROPPED: u64 = 8;
pub const C_LATE: u64 = 16; // STAGES words, one per stage (STAGE_*)
pub const C_RECONNECTS: u64 = 72;
pub const C_PROCESSED: u64 = 80;
pub const C_CORRUPT: u64 = 88;
pub const C_ERRORS: u64 = 96;
pub const C_FLAGS: u64 = 104;
pub const C_LAST_OVERRUN_NS: u64 = 112;
pub const C_LAST_LATE_STAGES: u64 = 120;

// Slot (at `slots_offset + camera * slot_stride`): the ring's `latest` word, then the buffers.
pub const SLOT_LATEST: u64 = 0;
pub const SLOT_BUFFERS: u64 = 64;

// Buffer (at `slot + SLOT_BUFFERS + b * buffer_stride`).
pub const B_SEQ: u64 = 0;
pub const B_CHECKSUM: u64 = 8;
pub const B_SEQUENCE: u64 = 16;
pub const B_CAPTURE_NS: u64 = 24;
pub const B_PUBLISH_NS: u64 = 32;
pub const B_STAGES: u64 = 40; // STAGES words, one per stage (STAGE_*)
pub const B_FLAGS: u64 = 96;
pub const B_DEADLINE_MISSES: u64 = 104;
pub const B_PROMPT_VERSION: u64 = 112;
pub const B_NUM_SCORES: u64 = 120;
/// Start of the embedding; also the end of the metadata words the checksum covers (from `B_SEQUENCE`).
pub const B_PAYLOAD: u64 = 128;
/// Metadata words covered by the checksum (`B_SEQUENCE..B_PAYLOAD`).
pub const META_WORDS: usize = ((B_PAYLOAD - B_SEQUENCE) / 8) as usize;

/// Stages whose durations each sample carries (the runtime's `stats::Stage` order).
pub const STAGES: usize = 7;
pub const STAGE_DEQUEUE: usize = 0;
pub const STAGE_PREPARE: usize = 1;
pub const STAGE_ENCODER: usize = 2;
pub const STAGE_RESAMPLER: usize = 3;
pub const STAGE_SCORE: usize = 4;
pub const STAGE_PUBLISH: usize = 5;
pub const STAGE_END_TO_END: usize = 6;
pub const STAGE_NAMES: [&str; STAGES] = [
    "dequeue",
    "prepare",
    "encoder",
    "resampler",
    "score",
    "publish",
    "end_to_end",
];

/// Sample and camera flags: bit `s` (0..STAGES) = stage `s` missed its deadline.
pub const FLAG_LATE_MASK: u64 = (1 << STAGES) - 1;
/// The camera's source is failing (frames taken while it is restarted).
pub const FLAG_CAMERA_LOST: u64 = 1 << 16;
/// The source was restarted since the camera's previous sample.
pub const FLAG_CAMERA_RESTARTED: u64 = 1 << 17;
/// Scores are missing (no prompt set, or more prompts than K).
pub const FLAG_DEGRADED: u64 = 1 << 18;
/// Status block only: the camera has published nothing for longer than the writer's stall limit.
pub const FLAG_STALLED: u64 = 1 << 19;

// Validation bounds: a header outside them is refused before anything is computed from it.
pub const MAX_CAMERAS: u64 = 64;
pub const MAX_DIM: u64 = 1 << 16;
pub const MAX_LATENT_ELEMENTS: u64 = 1 << 24;
pub const MAX_PROMPTS: u64 = 4096;
pub const MAX_SEGMENT_BYTES: u64 = 1 << 32;

/// Element type of the latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentsDtype {
    F32,
    F16,
}

impl LatentsDtype {
    pub fn code(self) -> u64 {
        match self {
            LatentsDtype::F32 => 1,
            LatentsDtype::F16 => 2,
        }
    }

    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(LatentsDtype::F32),
            2 => Some(LatentsDtype::F16),
            _ => None,
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            LatentsDtype::F32 => 4,
            LatentsDtype::F16 => 2,
        }
    }
}

impl std::fmt::Display for LatentsDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LatentsDtype::F32 => "f32",
            LatentsDtype::F16 => "f16",
        })
    }
}

/// The sizes a segment is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub cameras: usize,
    /// E: pooled embedding length.
    pub embed_dim: usize,
    /// L: number of latents.
    pub num_latents: usize,
    /// D: latent width.
    pub latent_dim: usize,
    /// K: capacity of the prompt table and of each sample's scores.
    pub max_prompts: usize,
    pub latents_dtype: LatentsDtype,
}

/// Every offset of a segment, computed from its [`Dims`]. All in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub dims: Dims,
    pub prompts_offset: u64,
    pub status_offset: u64,
    pub slots_offset: u64,
    pub slot_stride: u64,
    pub buffer_stride: u64,
    /// Within a buffer.
    pub embedding_offset: u64,
    pub latents_offset: u64,
    pub scores_offset: u64,
    pub total_size: u64,
    pub hash: u64,
}

/// Why a set of dimensions (or a header) does not give a valid layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimsError(pub String);

impl std::fmt::Display for DimsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DimsError {}

fn round_up(x: u64) -> u64 {
    x.div_ceil(CACHE_LINE) * CACHE_LINE
}

fn check(name: &str, value: u64, min: u64, max: u64) -> Result<u64, DimsError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(DimsError(format!(
            "{name} = {value} is outside {min}..={max}"
        )))
    }
}

impl Layout {
    /// Computes the layout for `dims`; refuses dimensions outside the documented bounds.
    pub fn new(dims: Dims) -> Result<Layout, DimsError> {
        let cameras = check("cameras", dims.cameras as u64, 1, MAX_CAMERAS)?;
        let e = check("embed_dim (E)", dims.embed_dim as u64, 1, MAX_DIM)?;
        let l = check("num_latents (L)", dims.num_latents as u64, 1, MAX_DIM)?;
        let d = check("latent_dim (D)", dims.latent_dim as u64, 1, MAX_DIM)?;
        let k = check("max_prompts (K)", dims.max_prompts as u64, 1, MAX_PROMPTS)?;
        let latents = check("L x D", l * d, 1, MAX_LATENT_ELEMENTS)?;

        let prompts_offset = HEADER_SIZE;
        let status_offset = prompts_offset + round_up(P_LABELS + k * LABEL_BYTES);
        let slots_offset = status_offset + S_CAMERAS + cameras * STATUS_CAMERA_STRIDE;
        let embedding_offset = B_PAYLOAD;
        let latents_offset = embedding_offset + round_up(e * 4);
        let scores_offset = latents_offset + round_up(latents * dims.latents_dtype.bytes());
        let buffer_stride = scores_offset + round_up(k * 4);
        let slot_stride = SLOT_BUFFERS + BUFFERS_PER_SLOT * buffer_stride;
        let total_size = slots_offset + cameras * slot_stride;
        check("segment size", total_size, HEADER_SIZE, MAX_SEGMENT_BYTES)?;

        let mut layout = Layout {
            dims,
            prompts_offset,
            status_offset,
            slots_offset,
            slot_stride,
            buffer_stride,
            embedding_offset,
            latents_offset,
            scores_offset,
            total_size,
            hash: 0,
        };
        layout.hash = layout.compute_hash();
        Ok(layout)
    }

    /// FNV-1a (64-bit) over the little-endian bytes of the layout's defining numbers, in the order documented.
    fn compute_hash(&self) -> u64 {
        let d = &self.dims;
        let words = [
            LAYOUT_VERSION,
            HEADER_SIZE,
            d.cameras as u64,
            d.embed_dim as u64,
            d.num_latents as u64,
            d.latent_dim as u64,
            d.max_prompts as u64,
            d.latents_dtype.code(),
            LABEL_BYTES,
            BUFFERS_PER_SLOT,
            self.prompts_offset,
            self.status_offset,
            self.slots_offset,
            self.slot_stride,
            self.buffer_stride,
            self.embedding_offset,
            self.latents_offset,
            self.scores_offset,
            self.total_size,
        ];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for w in words {
            for b in w.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// The header words (at their byte offsets / 8) that describe this layout, as the writer stores them.
    pub fn geometry_words(&self) -> [(u64, u64); 19] {
        let d = &self.dims;
        [
            (H_VERSION, LAYOUT_VERSION),
            (H_TOTAL_SIZE, self.total_size),
            (H_LAYOUT_HASH, self.hash),
            (H_CAMERAS, d.cameras as u64),
            (H_EMBED_DIM, d.embed_dim as u64),
            (H_NUM_LATENTS, d.num_latents as u64),
            (H_LATENT_DIM, d.latent_dim as u64),
            (H_MAX_PROMPTS, d.max_prompts as u64),
            (H_LATENTS_DTYPE, d.latents_dtype.code()),
            (H_LABEL_BYTES, LABEL_BYTES),
            (H_BUFFERS_PER_SLOT, BUFFERS_PER_SLOT),
            (H_PROMPTS_OFFSET, self.prompts_offset),
            (H_STATUS_OFFSET, self.status_offset),
            (H_SLOTS_OFFSET, self.slots_offset),
            (H_SLOT_STRIDE, self.slot_stride),
            (H_BUFFER_STRIDE, self.buffer_stride),
            (H_EMBEDDING_OFFSET, self.embedding_offset),
            (H_LATENTS_OFFSET, self.latents_offset),
            (H_SCORES_OFFSET, self.scores_offset),
        ]
    }

    /// Words of the embedding, latents and scores arrays (the last word of each may hold padding zeros).
    pub fn embedding_words(&self) -> usize {
        self.dims.embed_dim.div_ceil(2)
    }

    pub fn latents_words(&self) -> usize {
        let elements = self.dims.num_latents * self.dims.latent_dim;
        match self.dims.latents_dtype {
            LatentsDtype::F32 => elements.div_ceil(2),
            LatentsDtype::F16 => elements.div_ceil(4),
        }
    }

    pub fn scores_words(&self) -> usize {
        self.dims.max_prompts.div_ceil(2)
    }

    /// Byte offset of buffer `b` of `camera`'s slot.
    pub fn buffer_offset(&self, camera: usize, b: usize) -> u64 {
        self.slots_offset
            + camera as u64 * self.slot_stride
            + SLOT_BUFFERS
            + b as u64 * self.buffer_stride
    }

    pub fn slot_offset(&self, camera: usize) -> u64 {
        self.slots_offset + camera as u64 * self.slot_stride
    }

    pub fn status_camera_offset(&self, camera: usize) -> u64 {
        self.status_offset + S_CAMERAS + camera as u64 * STATUS_CAMERA_STRIDE
    }
}

/// What is wrong with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Empty (0 bytes), or no magic yet: a writer is creating it (or died doing so). A writer sizes the object
    /// in one `ftruncate`, so an object of 1 to [`HEADER_SIZE`] - 1 bytes is never a segment being created:
    /// that is [`HeaderError::Foreign`].
    Incomplete(String),
    /// Not an ocellus segment, or one whose header contradicts itself or its size.
    Foreign(String),
    /// An ocellus segment of another layout version.
    Version { found: u64 },
}

/// Reads the `u64` at byte `offset` of a header snapshot.
pub fn word_at(header: &[u64], offset: u64) -> u64 {
    header.get((offset / 8) as usize).copied().unwrap_or(0)
}

/// Validates a header snapshot (the first [`HEADER_SIZE`] bytes as words) of a segment of `segment_len` bytes.
/// Every field is checked against the segment size and against the layout recomputed from the dimensions
/// before anything is derived from it; the returned layout is the recomputed one.
pub fn validate_header(header: &[u64], segment_len: u64) -> Result<Layout, HeaderError> {
    if segment_len == 0 {
        return Err(HeaderError::Incomplete("0 bytes, not sized yet".into()));
    }
    if segment_len < HEADER_SIZE || header.len() < (HEADER_SIZE / 8) as usize {
        return Err(HeaderError::Foreign(format!(
            "{segment_len} bytes, shorter than the {HEADER_SIZE}-byte header (a writer sizes a segment in one step, so this is not one being created)"
        )));
    }
    let magic = word_at(header, H_MAGIC);
    if magic == 0 {
        return Err(HeaderError::Incomplete("no magic yet".into()));
    }
    if magic != MAGIC {
        return Err(HeaderError::Foreign(format!(
            "magic {magic:#018x} is not ocellus's {MAGIC:#018x}"
        )));
    }
    let version = word_at(header, H_VERSION);
    if version != LAYOUT_VERSION {
        return Err(HeaderError::Version { found: version });
    }
    let total = word_at(header, H_TOTAL_SIZE);
    if total != segment_len {
        return Err(HeaderError::Foreign(format!(
            "header says {total} bytes, the segment has {segment_len}"
        )));
    }
    let dim = |offset: u64, name: &str, max: u64| -> Result<usize, HeaderError> {
        let v = word_at(header, offset);
        if v == 0 || v > max {
            Err(HeaderError::Foreign(format!(
                "{name} = {v} is out of range"
            )))
        } else {
            Ok(v as usize)
        }
    };
    let dtype_code = word_at(header, H_LATENTS_DTYPE);
    let dims = Dims {
        cameras: dim(H_CAMERAS, "cameras", MAX_CAMERAS)?,
        embed_dim: dim(H_EMBED_DIM, "E", MAX_DIM)?,
        num_latents: dim(H_NUM_LATENTS, "L", MAX_DIM)?,
        latent_dim: dim(H_LATENT_DIM, "D", MAX_DIM)?,
        max_prompts: dim(H_MAX_PROMPTS, "K", MAX_PROMPTS)?,
        latents_dtype: LatentsDtype::from_code(dtype_code).ok_or_else(|| {
            HeaderError::Foreign(format!("latents dtype code {dtype_code} is unknown"))
        })?,
    };
    let layout = Layout::new(dims).map_err(|e| HeaderError::Foreign(e.to_string()))?;
    for (offset, expected) in layout.geometry_words() {
        let found = word_at(header, offset);
        if found != expected {
            return Err(HeaderError::Foreign(format!(
                "header word at byte {offset} is {found}, the layout computed from its dimensions says {expected}"
            )));
        }
    }
    Ok(layout)
}

/// The sample checksum over the covered words (the metadata words `B_SEQUENCE..B_PAYLOAD`, then the words of
/// the embedding, the latents and the scores; `i` counts them from 0 in that order):
/// `mix(sum(w_i * (2i + 1)) ^ count)` with wrapping arithmetic and splitmix64's finaliser as `mix`.
/// A sum of independent terms, so the writer can add the words in any order (and numpy can vectorise it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Checksum {
    sum: u64,
}

impl Checksum {
    #[inline(always)]
    pub fn add_at(&mut self, index: usize, word: u64) {
        self.sum = self
            .sum
            .wrapping_add(word.wrapping_mul((index as u64).wrapping_mul(2).wrapping_add(1)));
    }

    pub fn finish(&self, count: usize) -> u64 {
        let mut x = self.sum ^ count as u64;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

/// `s` as a fixed-size NUL-padded UTF-8 field, cut at a character boundary to fit.
pub fn pack_str(s: &str, bytes: usize) -> Vec<u8> {
    let mut end = s.len().min(bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = vec![0u8; bytes];
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// The text of a NUL-padded UTF-8 field (invalid UTF-8 is replaced, never trusted).
pub fn unpack_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Dims {
        Dims {
            cameras: 2,
            embed_dim: 64,
            num_latents: 16,
            latent_dim: 96,
            max_prompts: 16,
            latents_dtype: LatentsDtype::F16,
        }
    }

    #[test]
    fn blocks_are_cache_line_aligned_and_ordered() {
        let l = Layout::new(demo()).expect("demo dims are valid");
        for off in [
            l.prompts_offset,
            l.status_offset,
            l.slots_offset,
            l.slot_stride,
            l.buffer_stride,
            l.embedding_offset,
            l.latents_offset,
            l.scores_offset,
            l.total_size,
        ] {
            assert_eq!(off % CACHE_LINE, 0, "{l:?}");
        }
        assert!(l.prompts_offset < l.status_offset && l.status_offset < l.slots_offset);
        assert_eq!(l.latents_offset - l.embedding_offset, 256);
        assert_eq!(l.scores_offset - l.latents_offset, 16 * 96 * 2);
    }

    #[test]
    fn header_round_trip_and_hash_sensitivity() {
        let l = Layout::new(demo()).expect("valid");
        let mut header = vec![0u64; (HEADER_SIZE / 8) as usize];
        header[0] = MAGIC;
        for (off, v) in l.geometry_words() {
            header[(off / 8) as usize] = v;
        }
        assert_eq!(validate_header(&header, l.total_size), Ok(l));
        let mut other = demo();
        other.latents_dtype = LatentsDtype::F32;
        assert_ne!(Layout::new(other).expect("valid").hash, l.hash);
        assert!(matches!(
            validate_header(&header, l.total_size + 64),
            Err(HeaderError::Foreign(_))
        ));
        header[(H_VERSION / 8) as usize] = 2;
        assert_eq!(
            validate_header(&header, l.total_size),
            Err(HeaderError::Version { found: 2 })
        );
    }

    #[test]
    fn strings_are_cut_at_char_boundaries() {
        let packed = pack_str("caméra", 4);
        assert_eq!(unpack_str(&packed), "cam");
        assert_eq!(unpack_str(&pack_str("cat", 8)), "cat");
    }
}
