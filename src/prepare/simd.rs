//! Which build of the resize kernels runs: the portable one (the target's baseline vectors: SSE2 on x86_64,
//! NEON on aarch64) or, on x86_64 CPUs that have AVX2, the same source compiled with AVX2 enabled (eight i32
//! lanes and `vpmulld` instead of SSE2's four lanes and emulated 32-bit multiplies). Both builds are the same
//! integer arithmetic, so they give the same bytes; the unit tests run both against a plain port of Pillow.
//!
//! The only `unsafe` of preparation is here: calling a `#[target_feature(enable = "avx2")]` function, sound
//! because [`Isa::detect`] returns [`Isa::Avx2`] only when the CPU reports AVX2. (AVX-512 builds would need
//! Rust 1.89 for the target feature; the crate's MSRV is 1.85.)

use super::resample::{self, Axis, Lanes, LANES};

/// The kernels' build chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best build this CPU runs.
    pub(super) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
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
        match (self, channels) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 1) => {
                // SAFETY: Isa::Avx2 exists only when `detect` saw AVX2 on this CPU.
                unsafe { avx2::horizontal_strip::<1>(rows, t, axis, tmp, plane_len, stride, row0) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, _) => {
                // SAFETY: as above.
                unsafe { avx2::horizontal_strip::<3>(rows, t, axis, tmp, plane_len, stride, row0) }
            }
            (Isa::Portable, 1) => {
                resample::horizontal_strip::<1>(rows, t, axis, tmp, plane_len, stride, row0)
            }
            (Isa::Portable, _) => {
                resample::horizontal_strip::<3>(rows, t, axis, tmp, plane_len, stride, row0)
            }
        }
    }

    /// [`resample::vertical_plane`].
    pub(super) fn vertical_plane(self, plane: &[u8], axis: &Axis, out: &mut [u8], stride: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: as in `horizontal_strip`.
                unsafe { avx2::vertical_plane(plane, axis, out, stride) }
            }
            Isa::Portable => resample::vertical_plane(plane, axis, out, stride),
        }
    }

    /// [`resample::normalise`].
    pub(super) fn normalise(self, src: &[u8], dst: &mut [f32], rescale: f32, mean: f32, std: f32) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: as in `horizontal_strip`.
                unsafe { avx2::normalise(src, dst, rescale, mean, std) }
            }
            Isa::Portable => resample::normalise(src, dst, rescale, mean, std),
        }
    }
}

/// The kernels compiled with AVX2: each calls the `#[inline(always)]` portable body, which is then generated
/// for AVX2.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::resample::{self, Axis, Lanes, LANES};

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn horizontal_strip<const C: usize>(
        rows: &[&[u8]; LANES],
        t: &mut [Lanes],
        axis: &Axis,
        tmp: &mut [u8],
        plane_len: usize,
        stride: usize,
        row0: usize,
    ) {
        resample::horizontal_strip::<C>(rows, t, axis, tmp, plane_len, stride, row0)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical_plane(plane: &[u8], axis: &Axis, out: &mut [u8], stride: usize) {
        resample::vertical_plane(plane, axis, out, stride)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn normalise(src: &[u8], dst: &mut [f32], rescale: f32, mean: f32, std: f32) {
        resample::normalise(src, dst, rescale, mean, std)
    }
}
