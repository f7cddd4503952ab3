//! The publish/read protocol core: a sequence lock per buffer and a ring of buffers per slot.
//!
//! This file depends on nothing but `super::sync` so `tests/shm_loom.rs` can model-check it with loom.
//!
//! * A **sequence lock** guards one buffer: the writer makes the sequence word odd, stores the payload, and
//!   makes it even again (write `k` of a buffer: `2k - 1`, then `2k`); a reader copies the payload between two loads of the sequence word and keeps the copy
//!   only if both loads saw the same even value. Every payload access is an atomic (relaxed) load or store of a
//!   whole `u64`, so a racing copy is a torn *value*, never a data race.
//! * A **ring** of `nbuf` buffers per slot: publish number `n` (1, 2, ...) goes into buffer `n % nbuf`, and the
//!   slot's `latest` word then becomes `n`. A reader copies buffer `latest % nbuf`; it is disturbed only when the
//!   writer laps the whole ring during the copy, so a writer publishing back to back does not starve readers.
//!
//! Fences (the classic seqlock of Boehm, "Can seqlocks get along with programming language memory models?"):
//! writer `seq := 2k-1` (relaxed), `fence(Release)`, payload stores (relaxed), `seq := 2k` (Release);
//! reader `s1 := seq` (Acquire), payload loads (relaxed), `fence(Acquire)`, `s2 := seq` (relaxed).
//! If a payload load saw a store made after the writer's release fence, the reader's acquire fence
//! synchronises with it, so `s2` sees at least `2k-1` and the copy is rejected. If `s1 == s2` is even, every
//! payload load saw stores of the completed write `s1` and none of a later one.

use super::sync::{fence, spin_loop, AtomicU64, Ordering};

/// Why a ring read gave no sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingReadError {
    /// Nothing has been published into this slot yet.
    Empty,
    /// Every attempt overlapped a write (or was refused by the caller's check).
    RetriesExhausted,
}

/// Opens the `k`-th write (k >= 1) of the buffer guarded by `seq`: the word becomes `2k - 1` (odd).
///
/// Only the single writer calls this, and it counts its writes itself instead of loading `seq`: the writer
/// never reads shared memory it does not own a copy of (and loom explores its stores fully).
#[inline]
pub fn begin_write(seq: &AtomicU64, k: u64) {
    seq.store(k.wrapping_mul(2).wrapping_sub(1), Ordering::Relaxed);
    fence(Ordering::Release);
}

/// Closes the `k`-th write: the word becomes `2k` (even) and publishes the payload.
#[inline]
pub fn end_write(seq: &AtomicU64, k: u64) {
    seq.store(k.wrapping_mul(2), Ordering::Release);
}

/// Stores the payload with `store` as the `k`-th write under the sequence lock `seq`. Wait-free: no loop, no
/// wait on readers.
#[inline]
pub fn write<R>(seq: &AtomicU64, k: u64, store: impl FnOnce() -> R) -> R {
    begin_write(seq, k);
    let r = store();
    end_write(seq, k);
    r
}

/// One read attempt: `load` copies the payload (relaxed loads only); its result is returned only if no write
/// overlapped the copy. `None`: a write was in progress or happened during the copy.
#[inline]
pub fn try_read<T>(seq: &AtomicU64, load: impl FnOnce() -> T) -> Option<T> {
    let s1 = seq.load(Ordering::Acquire);
    if s1 & 1 == 1 {
        return None;
    }
    let value = load();
    fence(Ordering::Acquire);
    let s2 = seq.load(Ordering::Relaxed);
    (s1 == s2).then_some(value)
}

/// Publishes number `n` (1, 2, ... counted by the single writer) into a ring of `nbuf` buffers: `store(buffer)`
/// fills buffer `n % nbuf` under `seq_of(buffer)`, whose word holds `2n - 1` during the write and `2n` after it
/// (distinct for every write of that buffer), then `latest` becomes `n`. Wait-free.
#[inline]
pub fn publish_ring<'a>(
    latest: &AtomicU64,
    n: u64,
    nbuf: usize,
    seq_of: impl Fn(usize) -> &'a AtomicU64,
    store: impl FnOnce(usize),
) {
    let buffer = (n % nbuf as u64) as usize;
    write(seq_of(buffer), n, || store(buffer));
    latest.store(n, Ordering::Release);
}

/// Reads the newest complete buffer of a ring: up to `1 + max_retries` attempts. `load(buffer)` copies buffer
/// `buffer` and returns `Some` when the copy passes the caller's own check (a checksum); a copy is kept only if
/// `load` accepted it and the sequence lock shows no overlapping write. Returns the copy and the number of
/// retries it took. Never blocks the writer; never waits on anything but its own bounded loop.
#[inline]
pub fn read_ring<'a, T>(
    latest: &AtomicU64,
    nbuf: usize,
    seq_of: impl Fn(usize) -> &'a AtomicU64,
    max_retries: u32,
    mut load: impl FnMut(usize) -> Option<T>,
) -> Result<(T, u32), RingReadError> {
    let mut attempt = 0u32;
    loop {
        let n = latest.load(Ordering::Acquire);
        if n == 0 {
            return Err(RingReadError::Empty);
        }
        let buffer = (n % nbuf as u64) as usize;
        if let Some(Some(value)) = try_read(seq_of(buffer), || load(buffer)) {
            return Ok((value, attempt));
        }
        if attempt >= max_retries {
            return Err(RingReadError::RetriesExhausted);
        }
        attempt += 1;
        spin_loop();
    }
}
