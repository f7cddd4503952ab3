//! A mapped segment with a validated layout, and the codec of one ring buffer (sample <-> words).

use half::slice::HalfFloatSliceExt;

use super::layout::{self, Checksum, LatentsDtype, Layout};
use super::os::Mapping;
use super::sync::{AtomicU64, Ordering::Relaxed};
use super::{CameraCounters, Sample, SampleRef};

/// A mapping whose length equals `layout.total_size` (checked by whoever builds it).
#[derive(Debug)]
pub(crate) struct Segment {
    pub map: Mapping,
    pub layout: Layout,
}

impl Segment {
    /// The word at byte `offset`. Offsets come from the validated layout and lie inside the mapping.
    #[inline]
    pub fn word(&self, offset: u64) -> &AtomicU64 {
        &self.map.words()[(offset / 8) as usize]
    }

    #[inline]
    pub fn load(&self, offset: u64) -> u64 {
        self.word(offset).load(Relaxed)
    }

    /// `count` words from byte `offset`.
    #[inline]
    pub fn block(&self, offset: u64, count: usize) -> &[AtomicU64] {
        let start = (offset / 8) as usize;
        &self.map.words()[start..start + count]
    }

    /// The words of buffer `b` of `camera`.
    #[inline]
    pub fn buffer(&self, camera: usize, b: usize) -> &[AtomicU64] {
        let l = &self.layout;
        self.block(l.buffer_offset(camera, b), (l.buffer_stride / 8) as usize)
    }

    pub fn slot_latest(&self, camera: usize) -> &AtomicU64 {
        self.word(self.layout.slot_offset(camera) + layout::SLOT_LATEST)
    }

    /// Reads a NUL-padded string field of `bytes` bytes at `offset`.
    pub fn load_str(&self, offset: u64, bytes: usize) -> String {
        let mut raw = Vec::with_capacity(bytes);
        for w in self.block(offset, bytes / 8) {
            raw.extend_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        layout::unpack_str(&raw)
    }

    /// Stores a string as a NUL-padded field of `bytes` (a multiple of 8, at most 64) bytes at `offset`,
    /// cut at a character boundary to fit. Does not allocate.
    pub fn store_str(&self, offset: u64, bytes: usize, s: &str) {
        let mut end = s.len().min(bytes).min(64);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut packed = [0u8; 64];
        packed[..end].copy_from_slice(&s.as_bytes()[..end]);
        for (w, chunk) in self
            .block(offset, bytes.min(64) / 8)
            .iter()
            .zip(packed.chunks_exact(8))
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Relaxed);
        }
    }

    /// Stores `camera`'s counters in the status block (each word on its own, relaxed).
    pub fn store_counters(&self, camera: usize, c: &CameraCounters) {
        if camera >= self.layout.dims.cameras {
            return;
        }
        let base = self.layout.status_camera_offset(camera);
        let put = |off: u64, v: u64| self.word(base + off).store(v, Relaxed);
        put(layout::C_CAPTURED, c.captured);
        put(layout::C_DROPPED, c.dropped);
        for (s, &v) in c.late.iter().enumerate() {
            put(layout::C_LATE + 8 * s as u64, v);
        }
        put(layout::C_RECONNECTS, c.reconnects);
        put(layout::C_PROCESSED, c.processed);
        put(layout::C_CORRUPT, c.corrupt);
        put(layout::C_ERRORS, c.errors);
        put(layout::C_FLAGS, c.flags);
        put(layout::C_LAST_OVERRUN_NS, c.last_overrun_ns);
        put(layout::C_LAST_LATE_STAGES, c.last_late_stages);
    }
}

#[inline(always)]
fn pack2(a: f32, b: f32) -> u64 {
    u64::from(a.to_bits()) | (u64::from(b.to_bits()) << 32)
}

/// Stores `values` as f32 pairs into `dst`, zero-padding the last word; adds each word to `ck` from `index`.
#[inline]
fn store_f32(dst: &[AtomicU64], values: &[f32], ck: &mut Checksum, index: usize) {
    let pairs = values.chunks_exact(2);
    let rest = pairs.remainder();
    let n = values.len() / 2;
    for (i, (w, p)) in dst.iter().zip(pairs).enumerate() {
        let v = pack2(p[0], p[1]);
        w.store(v, Relaxed);
        ck.add_at(index + i, v);
    }
    if let (Some(&last), Some(w)) = (rest.first(), dst.get(n)) {
        let v = pack2(last, 0.0);
        w.store(v, Relaxed);
        ck.add_at(index + n, v);
    }
}

/// f16 values converted per chunk (16 words): half's slice conversion uses F16C/NEON when the CPU has it.
const F16_CHUNK: usize = 64;

#[inline]
fn store_f16(dst: &[AtomicU64], values: &[f32], ck: &mut Checksum, index: usize) {
    let mut h = [half::f16::ZERO; F16_CHUNK];
    for (c, (vals, words)) in values
        .chunks(F16_CHUNK)
        .zip(dst.chunks(F16_CHUNK / 4))
        .enumerate()
    {
        h[..vals.len()].convert_from_f32_slice(vals);
        h[vals.len()..].fill(half::f16::ZERO);
        for (j, (w, q)) in words.iter().zip(h.chunks_exact(4)).enumerate() {
            let v = u64::from(q[0].to_bits())
                | (u64::from(q[1].to_bits()) << 16)
                | (u64::from(q[2].to_bits()) << 32)
                | (u64::from(q[3].to_bits()) << 48);
            w.store(v, Relaxed);
            ck.add_at(index + c * (F16_CHUNK / 4) + j, v);
        }
    }
}

#[inline]
fn load_f32(src: &[AtomicU64], out: &mut [f32], ck: &mut Checksum, index: usize) {
    let n = out.len() / 2;
    let mut pairs = out.chunks_exact_mut(2);
    for (i, (w, p)) in src.iter().zip(&mut pairs).enumerate() {
        let v = w.load(Relaxed);
        ck.add_at(index + i, v);
        p[0] = f32::from_bits(v as u32);
        p[1] = f32::from_bits((v >> 32) as u32);
    }
    if let (Some(last), Some(w)) = (pairs.into_remainder().first_mut(), src.get(n)) {
        let v = w.load(Relaxed);
        ck.add_at(index + n, v);
        *last = f32::from_bits(v as u32);
    }
}

#[inline]
fn load_f16(src: &[AtomicU64], out: &mut [f32], ck: &mut Checksum, index: usize) {
    let mut h = [half::f16::ZERO; F16_CHUNK];
    for (c, (outs, words)) in out
        .chunks_mut(F16_CHUNK)
        .zip(src.chunks(F16_CHUNK / 4))
        .enumerate()
    {
        for (j, (w, q)) in words.iter().zip(h.chunks_exact_mut(4)).enumerate() {
            let v = w.load(Relaxed);
            ck.add_at(index + c * (F16_CHUNK / 4) + j, v);
            for (k, x) in q.iter_mut().enumerate() {
                *x = half::f16::from_bits((v >> (16 * k)) as u16);
            }
        }
        h[..outs.len()].convert_to_f32_slice(outs);
    }
}

/// Word index (within a buffer) of a metadata byte offset.
const fn wi(offset: u64) -> usize {
    (offset / 8) as usize
}

/// Fills one buffer with `sample` (payload first, then the metadata with the publish timing) and its checksum.
/// `now` reads CLOCK_MONOTONIC. The caller holds the buffer's sequence lock and checked the sample's shape.
pub(crate) fn store_buffer(
    buf: &[AtomicU64],
    layout: &Layout,
    sample: &SampleRef<'_>,
    now: impl Fn() -> u64,
) {
    let t0 = now();
    let mut ck = Checksum::default();
    let emb_at = wi(layout.embedding_offset);
    let lat_at = wi(layout.latents_offset);
    let sc_at = wi(layout.scores_offset);
    let (ew, lw, sw) = (
        layout.embedding_words(),
        layout.latents_words(),
        layout.scores_words(),
    );
    let meta_n = layout::META_WORDS;
    store_f32(&buf[emb_at..emb_at + ew], sample.embedding, &mut ck, meta_n);
    match layout.dims.latents_dtype {
        LatentsDtype::F32 => store_f32(
            &buf[lat_at..lat_at + lw],
            sample.latents,
            &mut ck,
            meta_n + ew,
        ),
        LatentsDtype::F16 => store_f16(
            &buf[lat_at..lat_at + lw],
            sample.latents,
            &mut ck,
            meta_n + ew,
        ),
    }
    let scores = &buf[sc_at..sc_at + sw];
    store_f32(scores, sample.scores, &mut ck, meta_n + ew + lw);
    // Unused score words are zeroed so a buffer's content depends only on the sample.
    let used = sample.scores.len().div_ceil(2);
    for (i, w) in scores.iter().enumerate().skip(used) {
        w.store(0, Relaxed);
        ck.add_at(meta_n + ew + lw + i, 0);
    }

    let t1 = now();
    let m = &sample.meta;
    let mut stages = m.stages_ns;
    stages[layout::STAGE_PUBLISH] = t1.saturating_sub(t0);
    stages[layout::STAGE_END_TO_END] = t1.saturating_sub(m.capture_ns);
    let mut meta = [0u64; layout::META_WORDS];
    let at = |offset: u64| wi(offset - layout::B_SEQUENCE);
    meta[at(layout::B_SEQUENCE)] = m.sequence;
    meta[at(layout::B_CAPTURE_NS)] = m.capture_ns;
    meta[at(layout::B_PUBLISH_NS)] = t1;
    meta[at(layout::B_STAGES)..at(layout::B_STAGES) + layout::STAGES].copy_from_slice(&stages);
    meta[at(layout::B_FLAGS)] = m.flags;
    meta[at(layout::B_DEADLINE_MISSES)] = m.deadline_misses;
    meta[at(layout::B_PROMPT_VERSION)] = m.prompt_version;
    meta[at(layout::B_NUM_SCORES)] = sample.scores.len() as u64;
    let meta_dst = &buf[wi(layout::B_SEQUENCE)..wi(layout::B_PAYLOAD)];
    for (i, (w, &v)) in meta_dst.iter().zip(&meta).enumerate() {
        w.store(v, Relaxed);
        ck.add_at(i, v);
    }
    buf[wi(layout::B_CHECKSUM)].store(ck.finish(meta_n + ew + lw + sw), Relaxed);
}

/// Copies one buffer into `out` (sized for `layout` by the caller). Returns whether the checksum matches (or
/// `verify` is off). Any value may be torn: nothing here trusts it beyond clamping.
pub(crate) fn load_buffer(
    buf: &[AtomicU64],
    layout: &Layout,
    out: &mut Sample,
    verify: bool,
) -> bool {
    let mut ck = Checksum::default();
    let mut meta = [0u64; layout::META_WORDS];
    let meta_src = &buf[wi(layout::B_SEQUENCE)..wi(layout::B_PAYLOAD)];
    for (i, (m, w)) in meta.iter_mut().zip(meta_src).enumerate() {
        *m = w.load(Relaxed);
        ck.add_at(i, *m);
    }
    let emb_at = wi(layout.embedding_offset);
    let lat_at = wi(layout.latents_offset);
    let sc_at = wi(layout.scores_offset);
    let (ew, lw, sw) = (
        layout.embedding_words(),
        layout.latents_words(),
        layout.scores_words(),
    );
    let meta_n = layout::META_WORDS;
    load_f32(
        &buf[emb_at..emb_at + ew],
        &mut out.embedding,
        &mut ck,
        meta_n,
    );
    match layout.dims.latents_dtype {
        LatentsDtype::F32 => load_f32(
            &buf[lat_at..lat_at + lw],
            &mut out.latents,
            &mut ck,
            meta_n + ew,
        ),
        LatentsDtype::F16 => load_f16(
            &buf[lat_at..lat_at + lw],
            &mut out.latents,
            &mut ck,
            meta_n + ew,
        ),
    }
    load_f32(
        &buf[sc_at..sc_at + sw],
        &mut out.scores,
        &mut ck,
        meta_n + ew + lw,
    );
    let stored = buf[wi(layout::B_CHECKSUM)].load(Relaxed);

    let at = |offset: u64| wi(offset - layout::B_SEQUENCE);
    let m = &mut out.meta;
    m.sequence = meta[at(layout::B_SEQUENCE)];
    m.capture_ns = meta[at(layout::B_CAPTURE_NS)];
    m.publish_ns = meta[at(layout::B_PUBLISH_NS)];
    m.stages_ns
        .copy_from_slice(&meta[at(layout::B_STAGES)..at(layout::B_STAGES) + layout::STAGES]);
    m.flags = meta[at(layout::B_FLAGS)];
    m.deadline_misses = meta[at(layout::B_DEADLINE_MISSES)];
    m.prompt_version = meta[at(layout::B_PROMPT_VERSION)];
    let num_scores = meta[at(layout::B_NUM_SCORES)];
    out.num_scores = usize::try_from(num_scores)
        .unwrap_or(usize::MAX)
        .min(layout.dims.max_prompts);
    !verify || stored == ck.finish(meta_n + ew + lw + sw)
}
