//! Values of keys a file leaves out, and the limits values are checked against.

pub const PIXEL_FORMAT: &str = "yuyv";
pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 480;
pub const FPS: u32 = 30;
pub const POOL_SIZE: usize = 4;
pub const HOLD_FRAMES: u32 = 30;
pub const SEED: u64 = 1;
pub const V4L2_BUFFERS: u32 = 4;
pub const STALL_PERIODS: u32 = 10;
pub const THREADS: usize = 1;
pub const PROMPTS_MAX: usize = 64;
pub const MEMORY_MIB: u64 = 512;
pub const SHM_NAME: &str = "ocellus";
pub const SHM_MODE: u32 = 0o640;

/// Limits on values (checked at load).
pub(super) const MAX_POOL_SIZE: usize = 64;
pub(super) const MAX_PROMPTS: usize = 1024;
pub(super) const MAX_THREADS: usize = 256;
pub(super) const MAX_FPS: u32 = 1000;
pub(super) const MAX_DEADLINE_MS: f64 = 60_000.0;
pub(super) const MAX_ARENA_MIB: u64 = 1 << 20;
pub(super) const MIN_V4L2_BUFFERS: u32 = 2;
pub(super) const MAX_V4L2_BUFFERS: u32 = 32;
pub(super) const MAX_STALL_PERIODS: u32 = 1000;
/// The shortest stall timeout (below it a scheduling hiccup would look like a stall).
pub(super) const MIN_STALL_MS: f64 = 100.0;
/// The longest flight-recorder window (`recorder.seconds`) and the most frames per camera (`recorder.frames`).
pub(super) const MAX_RECORDER_SECONDS: f64 = 600.0;
pub(super) const MAX_RECORDER_FRAMES: usize = 100_000;
/// The largest fraction of the window recorded after a trigger (`recorder.after`).
pub(super) const MAX_RECORDER_AFTER: f64 = 0.9;
