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
//! * **Allocated at start-up** ([`Pipeline::new`]): every camera's pool of frame buffers (sized for the
//!   largest frame it can deliver), the handoff slots, the preparers and the model-input tensor, the
//!   engine's planned models and its [`VisionOutput`], the score buffer (sized to `prompts.max`), the
//!   latency histograms and counters ([`Stats`]).
//! * **Never allocates** on the frame path: taking and returning pooled buffers, the handoff
//!   (`ArrayQueue::force_push`), preparation, scoring ([`PromptSet::score`]), building a
//!   [`FrameResult`] (it borrows the buffers), recording latencies and counters, the status line.
//!   Known exceptions, to be closed by issue 6: tract allocates its intermediate tensors on every run,
//!   the synthetic camera's MJPEG encoder allocates, and the log sink formats only when `debug` is on.
//! * **May block**: a source's `next_frame` (until its next frame or a timeout); the inference thread
//!   parks while every handoff slot is empty. Nothing on the frame path takes a lock: the prompt set is
//!   swapped in by another thread through an `ArcSwap`, counters are relaxed atomics.
//! * **Never panics on input**: a source error is counted and the source restarted with backoff, a
//!   corrupt frame is counted and skipped, a failed model run is counted and skipped.
//!
//! # Entry points
//!
//! [`Config`] (one TOML file) -> [`Manifest`] + [`Engine`] + [`TextEncoder`] -> [`Pipeline`], or the
//! `ocellus` binary (`ocellus run | check | infer`), which does exactly that.

pub mod alloc;
pub mod budget;
pub mod config;
pub mod frame;
pub mod infer;
pub mod manifest;
pub mod notify;
pub mod pipeline;
pub mod prepare;
pub mod prompts;
pub mod rt;
pub mod scene;
pub mod shm;
pub mod sink;
pub mod source;
pub mod stats;

pub use config::Config;
pub use frame::{FrameBuf, FrameMeta, PixelFormat};
pub use infer::{Engine, VisionOutput};
pub use manifest::Manifest;
pub use pipeline::{FrameResult, Pipeline, PipelineSettings};
pub use prompts::{PromptSet, TextEncoder};
pub use sink::{Sink, SinkError};
pub use source::FrameSource;
pub use stats::Stats;
