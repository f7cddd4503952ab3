//! The frame-source conformance suite, written once over the `FrameSource` trait and run against every
//! implementation: tests/sources.rs (synthetic, replay) and tests/hil.rs (V4L2 in the VM) include it with
//! `#[path = "common/conformance.rs"] mod conformance;`.
//!
//! What it checks: `next_frame` before `start` and after `stop` is `NotStarted`; frames go into pooled
//! buffers that are never reallocated or resized; format, size and byte count are the configured ones
//! (MJPEG: SOI..EOI within the buffer); capture times are on CLOCK_MONOTONIC and never go back; sequence
//! numbers increase by exactly one (a source that drops frames fails it); labels, when expected, are on
//! every frame and valid classes.

use ocellus::frame::{FrameBuf, FramePool, PixelFormat};
use ocellus::scene::NUM_CLASSES;
use ocellus::source::{FrameSource, SourceError};

/// What a conformance run expects of a source.
pub struct Expect {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Every frame carries a ground-truth label (synthetic camera).
    pub labels: bool,
}

/// Runs `frames` frames through pooled buffers and checks the trait's contract.
pub fn conformance(source: &mut dyn FrameSource, expect: &Expect, frames: usize) {
    let what = source.describe();
    assert!(!what.is_empty());
    let mut unstarted = FrameBuf::new(source.max_frame_bytes());
    assert!(
        matches!(
            source.next_frame(&mut unstarted),
            Err(SourceError::NotStarted { .. })
        ),
        "{what}: next_frame before start is an error"
    );
    source
        .start()
        .unwrap_or_else(|e| panic!("{what}: start: {e}"));
    let max = source.max_frame_bytes();
    assert!(
        max >= expect
            .format
            .frame_bytes(expect.width, expect.height)
            .unwrap_or(1)
    );
    let pool = FramePool::new(3, max);
    let mut last: Option<(u64, u64)> = None;
    let mut labels = 0;
    for n in 0..frames {
        let mut buf = pool.take().expect("pool has a free buffer");
        let ptr = buf.data.as_ptr();
        source
            .next_frame(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: frame {n}: {e}"));
        assert_eq!(buf.data.as_ptr(), ptr, "{what}: the buffer was reallocated");
        assert_eq!(buf.data.len(), max, "{what}: the buffer changed size");
        let m = buf.meta;
        assert_eq!(
            (m.format, m.width, m.height),
            (expect.format, expect.width, expect.height),
            "{what}"
        );
        match expect.format.frame_bytes(m.width, m.height) {
            Some(exact) => assert_eq!(m.bytes, exact, "{what}: frame {n} byte count"),
            None => {
                assert!(
                    m.bytes > 4 && m.bytes <= max,
                    "{what}: mjpeg frame of {} bytes",
                    m.bytes
                );
                assert_eq!(
                    &buf.bytes()[..2],
                    &[0xFF, 0xD8],
                    "{what}: mjpeg frame starts with SOI"
                );
                assert_eq!(
                    &buf.bytes()[m.bytes - 2..],
                    &[0xFF, 0xD9],
                    "{what}: mjpeg frame ends with EOI"
                );
            }
        }
        assert!(m.capture_ns > 0, "{what}: capture time on CLOCK_MONOTONIC");
        if let Some((seq, t)) = last {
            assert_eq!(m.sequence, seq + 1, "{what}: sequence increases by one");
            assert!(m.capture_ns >= t, "{what}: capture time never goes back");
        }
        last = Some((m.sequence, m.capture_ns));
        if let Some(label) = m.label {
            assert!((label as usize) < NUM_CLASSES, "{what}: label {label}");
            labels += 1;
        }
        pool.give(buf).expect("buffer returns to its pool");
    }
    if expect.labels {
        assert_eq!(labels, frames, "{what}: every frame carries ground truth");
    }
    assert_eq!(pool.available(), 3);
    source.stop();
    assert!(matches!(
        source.next_frame(&mut unstarted),
        Err(SourceError::NotStarted { .. })
    ));
}
