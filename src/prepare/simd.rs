//! Which build of the resize kernels runs, and the AVX2 one: the only `unsafe` code of preparation.
//!
//! [`Isa::Portable`] is plain Rust ([`resample::Portable`]), vectorised by LLVM for the target's baseline
//! (SSE2 on x86_64, NEON on aarch64). On x86_64 CPUs with AVX2, [`Isa::Avx2`] runs the same passes compiled
//! with AVX2 enabled and with the two inner loops written in intrinsics (eight i32 lanes, `vpmulld`): written
//! in plain Rust, LLVM vectorised some of them across the filter taps with byte gathers instead of across the
//! rows, depending on the channel count and the unrolling; intrinsics leave it no such choice. Both builds
//! compute Pillow's integer sums exactly, so they give the same bytes; the unit tests run both against a
//! plain port of Pillow. (AVX-512 would need Rust 1.89 for its target features; the crate's MSRV is 1.85.)

use super::resample::{self, Axis, Lanes, LANES};

/// The kernels' build chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

impl Isa {
    /// The best build this CPU runs.
    pub(super) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = avx2::Avx2::detect() {
            return Isa::Avx2(token);
        }
        Isa::Portable
    }

    /// Every build this CPU runs (for tests comparing them).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            all.push(Isa::detect());
        }
        all
    }

    /// [`resample::horizontal_strip`] for `channels` (1 or 3) bytes per pixel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn horizontal_strip(
        self,
        channels: usize,
        rows: &[&[u8]; LANES],
        t: &mut [Lanes],
        axis: &Axis,
        tmp: &mut [u8],
        plane_len: usize,
        stride: usize,
        row0: usize,
    ) {
        let portable = resample::Portable;
        match (self, channels) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(token), 1) => {
                // SAFETY: an Avx2 token exists only on a CPU with AVX2 (`Avx2::detect`).
                unsafe {
                    avx2::horizontal_strip::<1>(token, rows, t, axis, tmp, plane_len, stride, row0)
                }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(token), _) => {
                // SAFETY: as above.
                unsafe {
                    avx2::horizontal_strip::<3>(token, rows, t, axis, tmp, plane_len, stride, row0)
                }
            }
            (Isa::Portable, 1) => resample::horizontal_strip::<_, 1>(
                portable, rows, t, axis, tmp, plane_len, stride, row0,
            ),
            (Isa::Portable, _) => resample::horizontal_strip::<_, 3>(
                portable, rows, t, axis, tmp, plane_len, stride, row0,
            ),
        }
    }

    /// [`resample::vertical_plane`].
    pub(super) fn vertical_plane(self, plane: &[u8], axis: &Axis, out: &mut [u8], stride: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(token) => {
                // SAFETY: as in `horizontal_strip`.
                unsafe { avx2::vertical_plane(token, plane, axis, out, stride) }
            }
            Isa::Portable => resample::vertical_plane(resample::Portable, plane, axis, out, stride),
        }
    }

    /// [`resample::normalise`].
    pub(super) fn normalise(self, src: &[u8], dst: &mut [f32], rescale: f32, mean: f32, std: f32) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => {
                // SAFETY: as in `horizontal_strip`.
                unsafe { avx2::normalise(src, dst, rescale, mean, std) }
            }
            Isa::Portable => resample::normalise(src, dst, rescale, mean, std),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_castsi256_si128, _mm256_cvtepu8_epi32,
        _mm256_extracti128_si256, _mm256_mullo_epi32, _mm256_packs_epi32, _mm256_permute4x64_epi64,
        _mm256_set1_epi32, _mm256_srai_epi32, _mm_loadl_epi64, _mm_packus_epi16, _mm_storeu_si128,
    };

    use super::super::resample::{self, Axis, Lanes, Taps, LANES, PRECISION_BITS};

    /// Proof that this CPU has AVX2: made only by [`Avx2::detect`], so holding one makes calling this
    /// module's `#[target_feature(enable = "avx2")]` functions sound.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(in super::super) struct Avx2(());

    impl Avx2 {
        pub(super) fn detect() -> Option<Avx2> {
            std::arch::is_x86_feature_detected!("avx2").then_some(Avx2(()))
        }
    }

    impl Taps for Avx2 {
        #[inline(always)]
        fn column<const C: usize>(self, t: &[Lanes], start: usize, k: &[i32], c: usize) -> Lanes {
            // SAFETY: `self` proves AVX2.
            unsafe { column::<C>(t, start, k, c) }
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
            // SAFETY: `self` proves AVX2.
            unsafe { vertical_block::<W>(plane, stride, start, k, x, out) }
        }
    }

    /// `(acc >> 22)` clamped to 0..=255 for sixteen lanes (rows or columns 0-7 in `lo`, 8-15 in `hi`), in
    /// order: i32 -> i16 saturating (the shifted sums are within +-2^10), then i16 -> u8 saturating, which
    /// is the clamp.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn narrow(lo: __m256i, hi: __m256i, out: &mut Lanes) {
        // SAFETY: AVX2 (the caller's promise); the store writes the 16 bytes of `out`.
        unsafe {
            let lo = _mm256_srai_epi32(lo, PRECISION_BITS as i32);
            let hi = _mm256_srai_epi32(hi, PRECISION_BITS as i32);
            // packs works per 128-bit half: [lo0-3 hi0-3 | lo4-7 hi4-7]; the permute puts lo before hi.
            let words = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0b11_01_10_00);
            let bytes = _mm_packus_epi16(
                _mm256_castsi256_si128(words),
                _mm256_extracti128_si256(words, 1),
            );
            _mm_storeu_si128(out.as_mut_ptr().cast(), bytes);
        }
    }

    /// Eight bytes from `p` widened to eight i32, times `k`, added to `acc`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and `p` must point to 8 readable bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn mac8(acc: __m256i, p: *const u8, k: __m256i) -> __m256i {
        // SAFETY: AVX2 and the 8 bytes at `p` (the caller's promise); the load is unaligned.
        unsafe {
            let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()));
            _mm256_add_epi32(acc, _mm256_mullo_epi32(v, k))
        }
    }

    /// [`Taps::column`] in intrinsics.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn column<const C: usize>(t: &[Lanes], start: usize, k: &[i32], c: usize) -> Lanes {
        let mut out = [0u8; LANES];
        let taps = &t[start * C + c..];
        // SAFETY: AVX2 (the caller's promise); each load reads 8 bytes inside a 16-byte `col` borrowed from
        // `t` through bounds-checked indexing.
        unsafe {
            let mut lo = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
            let mut hi = lo;
            for (j, &kv) in k.iter().enumerate() {
                let col = &taps[j * C];
                let kv = _mm256_set1_epi32(kv);
                lo = mac8(lo, col.as_ptr(), kv);
                hi = mac8(hi, col.as_ptr().add(8), kv);
            }
            narrow(lo, hi, &mut out);
        }
        out
    }

    /// [`Taps::vertical_block`] in intrinsics.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn vertical_block<const W: usize>(
        plane: &[u8],
        stride: usize,
        start: usize,
        k: &[i32],
        x: usize,
        out: &mut [u8],
    ) {
        let out = &mut out[x..x + W];
        // SAFETY: AVX2 (the caller's promise); each load reads 8 bytes inside a `W`-byte `src` borrowed from
        // `plane` through bounds-checked indexing (W is a multiple of 16, so `i * 8 + 8 <= W`); each store
        // writes 16 bytes of `out`, which holds `W`.
        unsafe {
            let mut acc = [_mm256_set1_epi32(1 << (PRECISION_BITS - 1)); 4];
            let acc = &mut acc[..W / 8];
            for (j, &kv) in k.iter().enumerate() {
                let src = &plane[(start + j) * stride + x..][..W];
                let kv = _mm256_set1_epi32(kv);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = mac8(*a, src.as_ptr().add(i * 8), kv);
                }
            }
            for (pair, dst) in acc.chunks_exact(2).zip(out.chunks_exact_mut(LANES)) {
                let dst: &mut Lanes = dst.try_into().expect("16-byte chunk");
                narrow(pair[0], pair[1], dst);
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn horizontal_strip<const C: usize>(
        token: Avx2,
        rows: &[&[u8]; LANES],
        t: &mut [Lanes],
        axis: &Axis,
        tmp: &mut [u8],
        plane_len: usize,
        stride: usize,
        row0: usize,
    ) {
        resample::horizontal_strip::<_, C>(token, rows, t, axis, tmp, plane_len, stride, row0)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical_plane(
        token: Avx2,
        plane: &[u8],
        axis: &Axis,
        out: &mut [u8],
        stride: usize,
    ) {
        resample::vertical_plane(token, plane, axis, out, stride)
    }

    /// The portable normalisation, generated with AVX2 (LLVM vectorises it well; no intrinsics needed).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn normalise(src: &[u8], dst: &mut [f32], rescale: f32, mean: f32, std: f32) {
        resample::normalise(src, dst, rescale, mean, std)
    }
}
