//! The rings: per camera a fixed number of slots, each holding one processed frame's bytes and results,
//! allocated (and their pages touched) at start-up; and what the inference thread and the writer share.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

use super::format::{RecordMeta, ResultsShape};
use super::Trigger;
use crate::prompts::PromptSet;

/// One recorded frame. Written by the inference thread, read by the writer; a slot's mutex is never
/// contended (see [`Ring`]), it is there to hand the slot from one thread to the other safely.
pub(super) struct SlotData {
    pub(super) meta: RecordMeta,
    pub(super) frame: Box<[u8]>,
    pub(super) embeds: Box<[f32]>,
    pub(super) latents: Box<[f32]>,
    pub(super) scores: Box<[f32]>,
    /// The prompt set that scored the frame (a reference, not a copy: its labels go into the recording).
    pub(super) prompts: Option<Arc<PromptSet>>,
}

/// A zeroed buffer whose pages are resident: every page written once, so the memory the plan counts is
/// the memory the process holds from the start (and the frame path never faults a page in).
fn resident<T: Copy + Default>(n: usize) -> Box<[T]> {
    let mut v = std::hint::black_box(vec![T::default(); n]);
    let per_page = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..n).step_by(per_page) {
        v[i] = T::default();
    }
    v.into_boxed_slice()
}

impl SlotData {
    fn new(frame_bytes: usize, shape: &ResultsShape) -> SlotData {
        SlotData {
            meta: RecordMeta::default(),
            frame: resident(frame_bytes),
            embeds: resident(shape.embed_dim),
            latents: resident(shape.num_latents * shape.latent_dim),
            scores: resident(shape.max_scores),
            prompts: None,
        }
    }
}

/// One camera's ring.
///
/// The inference thread is its only producer: position `written` goes to slot `written % slots.len()`.
/// * A flight recorder (window) overwrites the oldest slot while not frozen; a trigger freezes the last
///   `frozen_len` positions before `frozen_end` for the writer, and the producer leaves every slot alone
///   until the writer moves `base` to `frozen_end` and unfreezes.
/// * A capture (`ocellus record --duration`) hands each slot over: `full` set by the producer, cleared by
///   the writer once the slot is on disk; the producer skips a frame whose slot is still full.
pub(super) struct Ring {
    pub(super) slots: Box<[Mutex<SlotData>]>,
    pub(super) full: Box<[AtomicBool]>,
    pub(super) written: AtomicU64,
    pub(super) base: AtomicU64,
    pub(super) frozen_end: AtomicU64,
    pub(super) frozen_len: AtomicU64,
    /// Processed frames this ring could not keep (a capture's writer behind, a frame of another format).
    pub(super) not_recorded: AtomicU64,
}

impl Ring {
    pub(super) fn new(slots: usize, frame_bytes: usize, shape: &ResultsShape) -> Ring {
        Ring {
            slots: (0..slots.max(1))
                .map(|_| Mutex::new(SlotData::new(frame_bytes, shape)))
                .collect(),
            full: (0..slots.max(1)).map(|_| AtomicBool::new(false)).collect(),
            written: AtomicU64::new(0),
            base: AtomicU64::new(0),
            frozen_end: AtomicU64::new(0),
            frozen_len: AtomicU64::new(0),
            not_recorded: AtomicU64::new(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of position `pos`.
    pub(super) fn slot(&self, pos: u64) -> &Mutex<SlotData> {
        &self.slots[(pos % self.slots.len() as u64) as usize]
    }

    pub(super) fn full_flag(&self, pos: u64) -> &AtomicBool {
        &self.full[(pos % self.full.len() as u64) as usize]
    }
}

/// What a frozen window is to the writer: which recording and why.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Job {
    pub(super) number: u64,
    pub(super) trigger: Option<Trigger>,
}

/// How a recording the writer finished ended.
#[derive(Debug, Clone)]
pub(super) struct Finished {
    pub(super) number: u64,
    pub(super) result: Result<PathBuf, String>,
}

/// How many finished recordings are remembered for `ocellus record --trigger --wait`.
pub(super) const FINISHED_KEPT: usize = 32;

/// What the inference thread, the writer and the trigger sources share.
pub(super) struct Shared {
    pub(super) rings: Box<[Ring]>,
    /// A window is frozen and being written; the producer records nothing meanwhile.
    pub(super) frozen: AtomicBool,
    /// The frozen window's recording; set by the producer before `frozen`, read by the writer after it.
    pub(super) job: Mutex<Job>,
    /// External trigger requests (signal, command): a counter, and the kind of the latest.
    pub(super) request_seq: AtomicU64,
    pub(super) request_kind: AtomicU8,
    /// The latest request the producer handled and its outcome (`tap::encode_outcome`).
    pub(super) handled_seq: AtomicU64,
    pub(super) handled_outcome: AtomicU64,
    /// Recordings the writer finished (written or failed), newest last.
    pub(super) finished: Mutex<VecDeque<Finished>>,
    pub(super) stop: AtomicBool,
    pub(super) writer: OnceLock<Thread>,
}

impl Shared {
    pub(super) fn new(rings: Box<[Ring]>) -> Shared {
        Shared {
            rings,
            frozen: AtomicBool::new(false),
            job: Mutex::new(Job::default()),
            request_seq: AtomicU64::new(0),
            request_kind: AtomicU8::new(0),
            handled_seq: AtomicU64::new(0),
            handled_outcome: AtomicU64::new(0),
            finished: Mutex::new(VecDeque::with_capacity(FINISHED_KEPT)),
            stop: AtomicBool::new(false),
            writer: OnceLock::new(),
        }
    }

    /// Wakes the writer (no allocation: `Thread::unpark`).
    pub(super) fn wake_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }
}
