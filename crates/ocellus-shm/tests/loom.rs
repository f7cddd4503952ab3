//! Model check of the shared-memory publish/read protocol (src/seqlock.rs) with loom: in every interleaving
//! and every memory-model-permitted load result that loom explores, a reader never accepts a torn sample.
//!
//! The protocol file is compiled here against loom's atomics (the `sync` module below stands in for
//! src/sync.rs), so this is a normal integration test: no `--cfg loom` rebuild of the dependency tree.

use std::sync::Arc;

use loom::thread;

mod sync {
    pub use loom::sync::atomic::{fence, AtomicU64, Ordering};

    pub fn spin_loop() {
        loom::thread::yield_now();
    }
}

#[allow(dead_code)]
#[path = "../src/seqlock.rs"]
mod seqlock;

use sync::{AtomicU64, Ordering::Relaxed};

/// Payload words per buffer: a torn copy mixes words of two publishes.
const WORDS: usize = 2;

/// One slot: the ring's `latest` word and `nbuf` buffers of [seq, payload...].
struct Slot {
    latest: AtomicU64,
    bufs: Vec<[AtomicU64; WORDS + 1]>,
}

impl Slot {
    fn new(nbuf: usize) -> Self {
        Slot {
            latest: AtomicU64::new(0),
            bufs: (0..nbuf)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Publish number `value` (the writer counts 1, 2, ...; the payload is the number itself).
    fn publish(&self, value: u64) {
        seqlock::publish_ring(
            &self.latest,
            value,
            self.bufs.len(),
            |b| &self.bufs[b][0],
            |b| {
                for w in &self.bufs[b][1..] {
                    w.store(value, Relaxed);
                }
            },
        );
    }

    fn read(&self, max_retries: u32) -> Result<[u64; WORDS], seqlock::RingReadError> {
        seqlock::read_ring(
            &self.latest,
            self.bufs.len(),
            |b| &self.bufs[b][0],
            max_retries,
            |b| {
                let mut out = [0u64; WORDS];
                for (o, w) in out.iter_mut().zip(&self.bufs[b][1..]) {
                    *o = w.load(Relaxed);
                }
                Some(out)
            },
        )
        .map(|(v, _)| v)
    }
}

fn check(nbuf: usize, publishes: u64, reads: usize, max_retries: u32) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let slot = Arc::new(Slot::new(nbuf));
        let writer = {
            let slot = slot.clone();
            thread::spawn(move || {
                for v in 1..=publishes {
                    slot.publish(v);
                }
            })
        };
        let mut last = 0;
        for _ in 0..reads {
            match slot.read(max_retries) {
                Ok(words) => {
                    assert!(
                        words.iter().all(|&w| w == words[0]),
                        "torn sample accepted: {words:?}"
                    );
                    assert!((1..=publishes).contains(&words[0]), "{words:?}");
                    assert!(words[0] >= last || nbuf > 1, "went back in time");
                    last = words[0];
                }
                Err(seqlock::RingReadError::Empty) => assert_eq!(last, 0, "empty after a sample"),
                Err(seqlock::RingReadError::RetriesExhausted) => {}
            }
        }
        writer.join().expect("writer thread");
        // Once the writer is done, a read must succeed with the last value.
        let words = slot.read(0).expect("quiescent read");
        assert_eq!(words, [publishes; WORDS]);
    });
}

/// A single buffer: the reader races every write of the same buffer.
#[test]
fn single_buffer_never_accepts_a_torn_sample() {
    check(1, 2, 1, 1);
}

/// A ring of two buffers, with the writer lapping it while the reader copies.
#[test]
fn ring_never_accepts_a_torn_sample() {
    check(2, 3, 1, 1);
}

/// Two reads in a row against a writer lapping a two-buffer ring.
#[test]
fn repeated_reads_never_accept_a_torn_sample() {
    check(2, 3, 2, 0);
}

/// The sequence lock on its own (the prompt table uses it without a ring).
#[test]
fn try_read_never_returns_a_torn_value() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let seq = Arc::new(AtomicU64::new(0));
        let data = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let writer = {
            let (seq, data) = (seq.clone(), data.clone());
            thread::spawn(move || {
                for v in 1..=2u64 {
                    seqlock::write(&seq, v, || {
                        data[0].store(v, Relaxed);
                        data[1].store(v, Relaxed);
                    });
                }
            })
        };
        if let Some((a, b)) =
            seqlock::try_read(&seq, || (data[0].load(Relaxed), data[1].load(Relaxed)))
        {
            assert_eq!(a, b, "torn value accepted");
        }
        writer.join().expect("writer thread");
    });
}
