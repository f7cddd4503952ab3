//! The latest-wins handoff between a camera's capture thread and the inference thread.

use crossbeam_queue::ArrayQueue;

use crate::frame::FramePool;

/// What one camera's capture thread and the inference thread share.
pub(super) struct Handoff {
    /// Latest frame, capacity 1.
    pub(super) slot: ArrayQueue<crate::frame::FrameBuf>,
    /// Free buffers.
    pub(super) pool: FramePool,
}
