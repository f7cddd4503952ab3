//! Pillow's 8-bit separable resampling (libImaging/Resample.c): the coefficients, bit for bit, and the passes
//! that apply them sixteen lanes at a time.
//!
//! The horizontal pass runs on a *transposed* strip of sixteen source rows (`t[b]` holds byte `b` of each of
//! the sixteen rows), so one output column of sixteen rows is sixteen independent sums over the same taps: a
//! multiply-add per tap across sixteen i32 lanes. Its results are transposed back into row-major planes, on
//! which the vertical pass sums rows 32 columns at a time. The inner loops are the [`Taps`] trait's:
//! [`Portable`] here, AVX2 intrinsics in [`super::simd`]. Every sum is Pillow's: i32, 22-bit coefficients, the
//! rounding bias `1 << 21` first, then `>> 22` clamped to 0..=255. The sums cannot overflow (the |k| of an
//! output sum to less than 1.3 * 2^22 and pixels are below 2^8), so wrapping arithmetic is exact and keeps the
//! loops free of overflow branches in builds that check them.

/// Pillow's `PRECISION_BITS` for 8-bit images: 32 - 8 - 2.
pub(super) const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Rows per strip of the horizontal pass, columns per block of the vertical pass.
pub(super) const LANES: usize = 16;

/// Sixteen bytes: one source byte position across a strip's rows, or one block of a row.
pub(super) type Lanes = [u8; LANES];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's `ImagingResample` of the box `crop` (source pixels, rounded to C floats as Pillow receives them) of
/// an `in_w` x `in_h` image to `out_w` x `out_h`: the horizontal and the vertical pass, each None where Pillow
/// skips it (same size and the box spans the axis).
pub(super) fn passes(
    in_w: usize,
    in_h: usize,
    crop: [f64; 4],
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> (Option<Axis>, Option<Axis>) {
    let b = crop.map(|v| v as f32);
    let need_h = out_w != in_w || b[0] != 0.0 || b[2] != out_w as f32;
    let need_v = out_h != in_h || b[1] != 0.0 || b[3] != out_h as f32;
    (
        need_h.then(|| Axis::pillow(in_w, b[0], b[2], out_w, filter)),
        need_v.then(|| Axis::pillow(in_h, b[1], b[3], out_h, filter)),
    )
}

/// Coefficients of one axis: output `i` reads inputs `start[i] .. start[i] + len[i]` with weights
/// `k[i * ksize ..][.. len[i]]` in 22-bit fixed point.
#[derive(Debug, Clone)]
pub(super) struct Axis {
    pub(super) start: Vec<u32>,
    pub(super) len: Vec<u32>,
    pub(super) k: Vec<i32>,
    pub(super) ksize: usize,
}

impl Axis {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`; `in0`, `in1` are the box edges as C floats.
    pub(super) fn pillow(
        in_size: usize,
        in0: f32,
        in1: f32,
        out_size: usize,
        filter: Filter,
    ) -> Axis {
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut k = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = in0 as f64 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut ww = 0.0;
            for (x, slot) in w.iter_mut().enumerate().take(n) {
                let v = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *slot = v;
                ww += v;
            }
            let row = &mut k[xx * ksize..(xx + 1) * ksize];
            for (dst, &v) in row.iter_mut().zip(&w[..n]) {
                let v = if ww != 0.0 { v / ww } else { v };
                let scaled = v * (1u32 << PRECISION_BITS) as f64;
                *dst = if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            start.push(xmin as u32);
            len.push(n as u32);
        }
        Axis {
            start,
            len,
            k,
            ksize,
        }
    }

    /// The pass Pillow skips (same size, whole box): one tap of weight 1, which the fixed-point sum returns
    /// unchanged (`(v << 22) + (1 << 21) >> 22 = v`).
    pub(super) fn identity(size: usize) -> Axis {
        Axis {
            start: (0..size as u32).collect(),
            len: vec![1; size],
            k: vec![1 << PRECISION_BITS; size],
            ksize: 1,
        }
    }

    pub(super) fn outputs(&self) -> usize {
        self.start.len()
    }

    /// The inputs any output reads: `first .. end`.
    pub(super) fn span(&self) -> (usize, usize) {
        let reads = self.start.iter().zip(&self.len).filter(|(_, &n)| n > 0);
        let first = reads.clone().map(|(&s, _)| s).min().unwrap_or(0);
        let end = reads.map(|(&s, &n)| s + n).max().unwrap_or(0);
        (first as usize, end as usize)
    }

    /// Makes the starts relative to input `origin` (at most the span's first).
    pub(super) fn rebase(&mut self, origin: usize) {
        for (s, &n) in self.start.iter_mut().zip(&self.len) {
            *s = if n > 0 { *s - origin as u32 } else { 0 };
        }
    }

    #[inline(always)]
    pub(super) fn weights(&self, i: usize) -> (usize, &[i32]) {
        let k = &self.k[i * self.ksize..][..self.len[i] as usize];
        (self.start[i] as usize, k)
    }

    /// Heap bytes held.
    pub(super) fn held_bytes(&self) -> usize {
        (self.start.capacity() + self.len.capacity()) * 4 + self.k.capacity() * 4
    }
}

/// The two inner loops of the resize, the only code that differs between builds: [`Portable`] here, and an AVX2
/// implementation with explicit intrinsics in [`super::simd`]. Both compute exactly Pillow's sums.
pub(super) trait Taps: Copy {
    /// One output column of a transposed strip: `sum_j t[(start + j) * C + c] * k[j]`, sixteen rows at once,
    /// rounded and clamped to u8.
    fn column<const C: usize>(self, t: &[Lanes], start: usize, k: &[i32], c: usize) -> Lanes;

    /// `W` (16 or 32) columns of one output row: `sum_j plane[(start + j) * stride + x ..][.. W] * k[j]`,
    /// rounded and clamped into `out[x .. x + W]`.
    fn vertical_block<const W: usize>(
        self,
        plane: &[u8],
        stride: usize,
        start: usize,
        k: &[i32],
        x: usize,
        out: &mut [u8],
    );
}

/// The kernels in plain Rust, vectorised by LLVM for the target's baseline (SSE2 on x86_64, NEON on
/// aarch64).
#[derive(Debug, Clone, Copy)]
pub(super) struct Portable;

#[inline(always)]
fn clip8<const W: usize>(acc: [i32; W], out: &mut [u8]) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = (a >> PRECISION_BITS).clamp(0, 255) as u8;
    }
}

impl Taps for Portable {
    /// Written with `step_by`: as a plain index loop, or unrolled over `chunks_exact`, LLVM vectorises the
    /// loop across the taps instead of the rows, gathering bytes one by one (2.5x slower; seen in the asm for
    /// AVX2 with one channel and with three). This shape keeps the sixteen rows in the lanes for x86_64 (SSE2,
    /// AVX2) and aarch64 (NEON `tbl` + `mla`), one channel or three.
    #[inline(always)]
    fn column<const C: usize>(self, t: &[Lanes], start: usize, k: &[i32], c: usize) -> Lanes {
        let mut acc = [1i32 << (PRECISION_BITS - 1); LANES];
        let mut out = [0u8; LANES];
        if !k.is_empty() {
            let taps = &t[start * C + c..][..(k.len() - 1) * C + 1];
            for (col, &kv) in taps.iter().step_by(C).zip(k) {
                for (a, &p) in acc.iter_mut().zip(col) {
                    *a = a.wrapping_add(i32::from(p).wrapping_mul(kv));
                }
            }
        }
        clip8(acc, &mut out);
        out
    }

    #[inline(always)]
    fn vertical_block<const W: usize>(
        self,
        plane: &[u8],
        stride: usize,
        start: usize,
        k: &[i32],
        x: usize,
        out: &mut [u8],
    ) {
        let mut acc = [1i32 << (PRECISION_BITS - 1); W];
        for (j, &kv) in k.iter().enumerate() {
            let src = &plane[(start + j) * stride + x..][..W];
            for (a, &p) in acc.iter_mut().zip(src) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(kv));
            }
        }
        clip8(acc, &mut out[x..x + W]);
    }
}

/// `out[i][r] = m[r][i]`: four rounds of interleaving row `i` with row `i + 8` byte by byte, each a rotation of
/// the 8-bit index `row * 16 + column` by one bit, four of them a swap of row and column. Written on arrays so
/// LLVM emits the byte interleaves of the target (`punpcklbw`/`punpckhbw` on x86_64, `zip1`/`zip2` on
/// aarch64): about 150 instructions for 256 bytes instead of 512 loads and stores.
#[inline(always)]
pub(super) fn transpose16(m: &[Lanes; LANES]) -> [Lanes; LANES] {
    #[inline(always)]
    fn round(v: &[Lanes; LANES]) -> [Lanes; LANES] {
        let mut o = [[0u8; LANES]; LANES];
        for i in 0..LANES / 2 {
            for j in 0..LANES / 2 {
                o[2 * i][2 * j] = v[i][j];
                o[2 * i][2 * j + 1] = v[i + 8][j];
                o[2 * i + 1][2 * j] = v[i][8 + j];
                o[2 * i + 1][2 * j + 1] = v[i + 8][8 + j];
            }
        }
        o
    }
    round(&round(&round(&round(m))))
}

/// Transposes a strip: `t[b][r] = rows[r][b]` for every byte `b` of the rows (`t.len()` of them).
#[inline(always)]
fn transpose_rows(rows: &[&[u8]; LANES], t: &mut [Lanes]) {
    let n = t.len();
    let full = n - n % LANES;
    for (b0, cols) in (0..full).step_by(LANES).zip(t.chunks_exact_mut(LANES)) {
        let mut block = [[0u8; LANES]; LANES];
        for (dst, row) in block.iter_mut().zip(rows) {
            dst.copy_from_slice(&row[b0..b0 + LANES]);
        }
        cols.copy_from_slice(&transpose16(&block));
    }
    for (b, col) in t.iter_mut().enumerate().skip(full) {
        for (v, row) in col.iter_mut().zip(rows) {
            *v = row[b];
        }
    }
}

/// The horizontal pass of one strip of sixteen rows (`rows[r]` holds the region's bytes of row `r`, `C` per
/// pixel): transposed into `t`, then [`horizontal_transposed`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn horizontal_strip<K: Taps, const C: usize>(
    kernels: K,
    rows: &[&[u8]; LANES],
    t: &mut [Lanes],
    axis: &Axis,
    tmp: &mut [u8],
    plane_len: usize,
    stride: usize,
    row0: usize,
) {
    transpose_rows(rows, t);
    horizontal_transposed::<K, C>(kernels, t, axis, tmp, plane_len, stride, row0);
}

/// The horizontal pass over one transposed strip: for each channel `c` and output column, sixteen rows,
/// written to rows `row0 .. row0 + 16` of plane `c` of `tmp` (planes of `plane_len` bytes, rows of `stride`
/// bytes, `stride` a multiple of 16 and at least the axis's outputs).
#[inline(always)]
fn horizontal_transposed<K: Taps, const C: usize>(
    kernels: K,
    t: &[Lanes],
    axis: &Axis,
    tmp: &mut [u8],
    plane_len: usize,
    stride: usize,
    row0: usize,
) {
    let outputs = axis.outputs();
    for c in 0..C {
        let plane = &mut tmp[c * plane_len..][..plane_len];
        for xb in (0..stride).step_by(LANES) {
            let mut block = [[0u8; LANES]; LANES];
            for (i, col) in block.iter_mut().enumerate() {
                if xb + i < outputs {
                    let (start, k) = axis.weights(xb + i);
                    *col = kernels.column::<C>(t, start, k, c);
                }
            }
            let rows = transpose16(&block);
            for (r, row) in rows.iter().enumerate() {
                plane[(row0 + r) * stride + xb..][..LANES].copy_from_slice(row);
            }
        }
    }
}

/// Columns per block of the vertical pass (32 measured 3% faster than 16 and the same as 64).
const VBLOCK: usize = 32;

/// The vertical pass of one plane: output row `yy` of `out` (rows of `stride` bytes, a multiple of 16) sums
/// rows of `plane` (the horizontal pass's output, same stride) with the axis's weights, 32 columns at a time
/// (then 16).
#[inline(always)]
pub(super) fn vertical_plane<K: Taps>(
    kernels: K,
    plane: &[u8],
    axis: &Axis,
    out: &mut [u8],
    stride: usize,
) {
    let blocks = stride - stride % VBLOCK;
    for (yy, row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, k) = axis.weights(yy);
        for x in (0..blocks).step_by(VBLOCK) {
            kernels.vertical_block::<VBLOCK>(plane, stride, start, k, x, row);
        }
        for x in (blocks..stride).step_by(LANES) {
            kernels.vertical_block::<LANES>(plane, stride, start, k, x, row);
        }
    }
}

/// `(v * rescale - mean) / std` in f32 for each byte: the tools' numpy float32 operations, in their order
/// (so every value is bit for bit theirs).
#[inline(always)]
pub(super) fn normalise(src: &[u8], dst: &mut [f32], rescale: f32, mean: f32, std: f32) {
    for (o, &v) in dst.iter_mut().zip(src) {
        *o = (f32::from(v) * rescale - mean) / std;
    }
}

/// A straightforward port of Pillow's loops on interleaved pixels, kept as the oracle the fast kernels are
/// tested against.
#[cfg(test)]
pub(super) mod reference {
    use super::{Axis, PRECISION_BITS};

    fn clip8(v: i32) -> u8 {
        (v >> PRECISION_BITS).clamp(0, 255) as u8
    }

    /// `ImagingResample` of a `w` x `h` image of `c` interleaved channels, horizontal pass first (skipped when
    /// `horiz` is None), then vertical (skipped when `vert` is None); absolute starts.
    pub(crate) fn resample(
        src: &[u8],
        w: usize,
        h: usize,
        c: usize,
        horiz: Option<&Axis>,
        vert: Option<&Axis>,
    ) -> (usize, usize, Vec<u8>) {
        let (mut cw, mut img) = (w, src.to_vec());
        if let Some(a) = horiz {
            let ow = a.outputs();
            let mut out = vec![0u8; ow * h * c];
            for y in 0..h {
                for xx in 0..ow {
                    let (x0, k) = a.weights(xx);
                    for ch in 0..c {
                        let mut ss = 1i32 << (PRECISION_BITS - 1);
                        for (j, &kv) in k.iter().enumerate() {
                            ss += img[(y * w + x0 + j) * c + ch] as i32 * kv;
                        }
                        out[(y * ow + xx) * c + ch] = clip8(ss);
                    }
                }
            }
            (cw, img) = (ow, out);
        }
        let Some(a) = vert else {
            return (cw, h, img);
        };
        let oh = a.outputs();
        let mut out = vec![0u8; cw * oh * c];
        for yy in 0..oh {
            let (y0, k) = a.weights(yy);
            for x in 0..cw * c {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (j, &kv) in k.iter().enumerate() {
                    ss += img[(y0 + j) * cw * c + x] as i32 * kv;
                }
                out[yy * cw * c + x] = clip8(ss);
            }
        }
        (cw, oh, out)
    }
}
