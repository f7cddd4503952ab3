//! ocellus: a real-time vision-language perception runtime for robots.
//!
//! Frames flow one way, **camera -> prepare -> infer -> publish** (docs/architecture.md): one capture
//! thread per camera hands its newest frame to the inference thread through a one-slot, lock-free,
//! latest-wins handoff; the inference thread prepares it, runs the vision encoder and the resampler
//! (tract), scores the pooled embedding against the current prompt set and gives the result to each
//! [`Sink`].
//!
//! # Real-time contract
//!
//! * **Allocated at start-up** ([`Runtime::build`]): every camera's pool of frame buffers (sized for the
//!   largest frame it can deliver), the handoff slots, the preparers and the model-input tensor, the
//!   engine's planned models and its [`VisionOutput`], the score buffer (sized to `prompts.max`), the latency
//!   histograms and counters ([`Stats`]), the shared-memory segment, and the frame-path memory region
//!   ([`alloc`]) that tract's per-run tensors come from. Their total is checked against
//!   `budgets.memory-mib` before the models are loaded and again once they are planned
//!   ([`budget::MemoryPlan`]); with `memory.lock` the whole process is then locked in memory (`mlockall`).
//! * **Never allocates from the system** on the frame path (the capture threads, the inference thread and
//!   tract's matrix-product workers, after the first frames): taking and returning pooled buffers, the
//!   handoff (`ArrayQueue::force_push`), preparation, scoring ([`PromptSet::score`]), building a
//!   [`FrameResult`] (it borrows the buffers), publishing into shared memory, recording latencies and
//!   counters. tract allocates its intermediate tensors on every run (about a thousand per demo frame);
//!   those allocations are served by the region, whose size classes reach a steady state after the first
//!   frame, and are counted ([`alloc::stats`]; tests/alloc_zero.rs: 0 system allocations in 1,000
//!   frames). Remaining exceptions: the synthetic camera's MJPEG encoder allocates (served by the region
//!   like any capture-thread allocation), a new prompt set or frame format allocates once when it
//!   arrives, and the log sink formats only when `debug` is on. A region that runs out falls back to the
//!   system allocator, counted and warned about once.
//! * **May block**: a source's `next_frame` (until its next frame or a timeout); the inference thread
//!   parks while every handoff slot is empty. The frame path takes one lock: the region's spinlock, held
//!   for a few instructions per allocation and contended only by tract's matrix-product workers and by
//!   other threads freeing region blocks. The prompt set is swapped in by another thread through an
//!   `ArcSwap`, counters are relaxed atomics.
//! * **Never panics on input**: a source error is counted and the source restarted with backoff, a
//!   corrupt frame is counted and skipped, a failed model run is counted and skipped.
//!
//! # Layers
//!
//! Modules import only from layers below their own (docs/architecture.md has the map; tests/layers.rs
//! enforces it): the leaves (`clock`, `thread`, `alloc`, `budget`, `manifest`, `scene`, and the
//! [`shm`] crate), then `frame`, `stats`, `rt`; the components `source`, `prepare`, `infer`, `prompts`;
//! `sink` and `notify`; the frame path `pipeline`; `config`, which fills in the components' settings; and
//! `runtime`, which assembles everything. `unsafe` lives only in the OS leaves (`alloc`, `rt::os`,
//! `source::v4l2::sys`, and the shm crate's `os`) and in `prepare::simd` (AVX2 intrinsics behind run-time
//! detection).
//!
//! # Entry point
//!
//! [`Config`] (one TOML file) -> [`Runtime::build`] -> `start` / `wait` / `stop`, or the `ocellus` binary
//! (`ocellus run | check | bench | infer`), which does exactly that.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(unreachable_pub)]

#[allow(unsafe_code)]
pub mod alloc;
pub mod budget;
pub mod clock;
pub mod config;
pub mod frame;
pub mod infer;
pub mod manifest;
pub mod notify;
pub mod pipeline;
pub mod prepare;
pub mod prompts;
pub mod recorder;
pub mod rt;
pub mod runtime;
pub mod scene;
pub mod sink;
pub mod source;
pub mod stats;
pub mod thread;

/// The shared-memory segment: layout, writer and reader (the `ocellus-shm` crate, which control loops link
/// on its own).
pub use ocellus_shm as shm;

pub use config::Config;
pub use frame::{FrameBuf, FrameMeta, PixelFormat};
pub use infer::{InferenceEngine, TractEngine, VisionOutput};
pub use manifest::Manifest;
pub use pipeline::{Pipeline, PipelineSettings};
pub use prompts::{PromptSet, TextEncoder};
pub use runtime::{Runtime, RuntimeOptions};
pub use sink::{FrameResult, Sink, SinkError};
pub use source::FrameSource;
pub use stats::Stats;
