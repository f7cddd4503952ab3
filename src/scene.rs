//! The demo scenes of docs/scene-spec.md (version 1), as the synthetic camera shows them.
//!
//! The tools (`tools/ocellus_tools/scenes.py`) draw the training scenes from the same distribution with another
//! generator; the class order and prompt strings here are identical to theirs. Rendering writes into a
//! caller's buffer and never allocates.

/// The scene-spec version this module implements.
pub const SPEC_VERSION: u32 = 1;

pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];
pub const COLOURS: [&str; 4] = ["red", "green", "blue", "yellow"];
/// Base RGB (0..1) of each colour.
pub const BASE_RGB: [[f64; 3]; 4] = [
    [0.90, 0.12, 0.10],
    [0.10, 0.75, 0.20],
    [0.12, 0.25, 0.95],
    [0.95, 0.88, 0.10],
];
pub const NUM_CLASSES: usize = SHAPES.len() * COLOURS.len();

/// The zero-shot prompt and ground-truth label of each class, `"a {colour} {shape}"`, in class order
/// (index = shape * 4 + colour).
pub const PROMPTS: [&str; NUM_CLASSES] = [
    "a red circle",
    "a green circle",
    "a blue circle",
    "a yellow circle",
    "a red square",
    "a green square",
    "a blue square",
    "a yellow square",
    "a red triangle",
    "a green triangle",
    "a blue triangle",
    "a yellow triangle",
    "a red cross",
    "a green cross",
    "a blue cross",
    "a yellow cross",
];

pub const GREY_RANGE: (f64, f64) = (0.15, 0.85);
pub const TINT_RANGE: (f64, f64) = (-0.05, 0.05);
pub const NOISE_RANGE: (f64, f64) = (0.0, 0.04);
pub const JITTER_RANGE: (f64, f64) = (-0.08, 0.08);
pub const SIZE_RANGE: (f64, f64) = (0.12, 0.24);
pub const MARGIN: f64 = 0.02;
/// Amplitude of the Lissajous motion within a hold (normalised units).
pub const MOTION_AMPLITUDE: f64 = 0.05;
/// Periods (frames) of the Lissajous motion in x and y.
pub const MOTION_PERIODS: (f64, f64) = (97.0, 61.0);

/// Class index of a shape and colour.
pub fn class_index(shape: usize, colour: usize) -> u16 {
    (shape * COLOURS.len() + colour) as u16
}

/// The prompt of a class index, if it is one.
pub fn class_prompt(label: u16) -> Option<&'static str> {
    PROMPTS.get(label as usize).copied()
}

/// A small, fast, seeded generator (SplitMix64). Not cryptographic; the same seed gives the same sequence on
/// every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n) (n > 0; Lemire's multiply-shift, bias below 2^-32 for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The parameters of one scene (scene-spec "Parameters of one scene").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneParams {
    pub g0: f64,
    pub g1: f64,
    pub tint: [f64; 3],
    pub noise: f64,
    pub shape: u8,
    pub colour: u8,
    pub jitter: [f64; 3],
    pub size: f64,
    pub cx: f64,
    pub cy: f64,
    /// Seed of the per-pixel background noise, so a scene renders the same every time.
    pub noise_seed: u64,
}

impl SceneParams {
    /// Draws a scene uniformly and independently over the spec's ranges.
    pub fn sample(rng: &mut Rng) -> SceneParams {
        let g0 = rng.uniform(GREY_RANGE);
        let g1 = rng.uniform(GREY_RANGE);
        let tint = [
            rng.uniform(TINT_RANGE),
            rng.uniform(TINT_RANGE),
            rng.uniform(TINT_RANGE),
        ];
        let noise = rng.uniform(NOISE_RANGE);
        let shape = rng.below(SHAPES.len() as u64) as u8;
        let colour = rng.below(COLOURS.len() as u64) as u8;
        let jitter = [
            rng.uniform(JITTER_RANGE),
            rng.uniform(JITTER_RANGE),
            rng.uniform(JITTER_RANGE),
        ];
        let size = rng.uniform(SIZE_RANGE);
        let lo = size + MARGIN;
        let cx = lo + (1.0 - 2.0 * lo) * rng.next_f64();
        let cy = lo + (1.0 - 2.0 * lo) * rng.next_f64();
        let noise_seed = rng.next_u64();
        SceneParams {
            g0,
            g1,
            tint,
            noise,
            shape,
            colour,
            jitter,
            size,
            cx,
            cy,
            noise_seed,
        }
    }

    /// The class index (ground truth).
    pub fn label(&self) -> u16 {
        class_index(self.shape as usize, self.colour as usize)
    }

    /// The prompt of this scene's class.
    pub fn prompt(&self) -> &'static str {
        PROMPTS[self.label() as usize % NUM_CLASSES]
    }

    /// The shape's colour: base RGB plus jitter, clipped to [0, 1].
    pub fn rgb(&self) -> [f64; 3] {
        let base = BASE_RGB[self.colour as usize % COLOURS.len()];
        [0, 1, 2].map(|c| (base[c] + self.jitter[c]).clamp(0.0, 1.0))
    }

    /// The allowed range of the centre, `[s + 0.02, 1 - s - 0.02]`.
    pub fn centre_range(&self) -> (f64, f64) {
        (self.size + MARGIN, 1.0 - self.size - MARGIN)
    }

    /// The scene at frame `t` of its hold: the centre moved along the spec's Lissajous path
    /// (`c0 + 0.05 sin(2 pi t / 97)`, `c0 + 0.05 sin(2 pi t / 61)`), clamped to the allowed range.
    pub fn at_frame(&self, t: u64) -> SceneParams {
        let (lo, hi) = self.centre_range();
        let t = t as f64;
        let tau = std::f64::consts::TAU;
        let mut moved = *self;
        moved.cx = (self.cx + MOTION_AMPLITUDE * (tau * t / MOTION_PERIODS.0).sin()).clamp(lo, hi);
        moved.cy = (self.cy + MOTION_AMPLITUDE * (tau * t / MOTION_PERIODS.1).sin()).clamp(lo, hi);
        moved
    }

    /// Whether the point (x, y) (normalised canvas coordinates) is inside the shape.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        inside(self.shape, x - self.cx, y - self.cy, self.size)
    }
}

/// The spec's membership test of `shape` for an offset (dx, dy) from the centre and size `s`.
pub fn inside(shape: u8, dx: f64, dy: f64, s: f64) -> bool {
    let (adx, ady) = (dx.abs(), dy.abs());
    match shape {
        0 => dx * dx + dy * dy <= s * s,
        1 => adx.max(ady) <= 0.8 * s,
        2 => dy <= 0.5 * s && adx <= (dy + s) / 3f64.sqrt(),
        3 => {
            let arm = 0.3 * s;
            (adx <= arm && ady <= s) || (ady <= arm && adx <= s)
        }
        _ => false,
    }
}

/// Why a scene could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("scene render target too small: {width}x{height} RGB needs {needed} bytes, the buffer has {got}")]
    BufferTooSmall {
        width: u32,
        height: u32,
        needed: usize,
        got: usize,
    },
    #[error("scene render size {width}x{height} is empty: width and height must be at least 1")]
    Empty { width: u32, height: u32 },
}

fn to_u8(v: f64) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Renders `params` as a `width` x `height` RGB8 frame (row-major, 3 bytes per pixel) into `out[..w*h*3]`.
///
/// The square canvas (side `min(width, height)`) sits in the centre; the margins continue the background
/// (gradient and noise) and hold no shape. Pixels are sampled at their centres without anti-aliasing (the
/// preparation step's resize does that). Never allocates.
pub fn render_into(
    params: &SceneParams,
    width: u32,
    height: u32,
    out: &mut [u8],
) -> Result<(), RenderError> {
    if width == 0 || height == 0 {
        return Err(RenderError::Empty { width, height });
    }
    let needed = width as usize * height as usize * 3;
    if out.len() < needed {
        return Err(RenderError::BufferTooSmall {
            width,
            height,
            needed,
            got: out.len(),
        });
    }
    let side = width.min(height) as f64;
    let ox = (width - width.min(height)) / 2;
    let oy = (height - height.min(width)) / 2;
    let rgb = params.rgb().map(to_u8);
    let amplitude = params.noise;
    let (lo_x, hi_x) = (params.cx - params.size, params.cx + params.size);
    let mut noise = Rng::new(params.noise_seed);
    for (j, row) in out[..needed]
        .chunks_exact_mut(width as usize * 3)
        .enumerate()
    {
        let y = (j as f64 - oy as f64 + 0.5) / side;
        let grey = params.g0 + (params.g1 - params.g0) * y;
        let base = [0, 1, 2].map(|c| grey + params.tint[c]);
        let row_may_hold_shape =
            (0.0..=1.0).contains(&y) && (y - params.cy).abs() <= params.size && params.size > 0.0;
        for (i, px) in row.chunks_exact_mut(3).enumerate() {
            let x = (i as f64 - ox as f64 + 0.5) / side;
            let bits = noise.next_u64();
            if row_may_hold_shape
                && x >= lo_x
                && x <= hi_x
                && (0.0..=1.0).contains(&x)
                && params.contains(x, y)
            {
                px.copy_from_slice(&rgb);
                continue;
            }
            for c in 0..3 {
                let u = ((bits >> (c * 21)) & 0x1F_FFFF) as f64 * (1.0 / (1u64 << 21) as f64);
                px[c] = to_u8(base[c] + amplitude * (2.0 * u - 1.0));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_spec() {
        for (s, shape) in SHAPES.iter().enumerate() {
            for (c, colour) in COLOURS.iter().enumerate() {
                let label = class_index(s, c);
                assert_eq!(
                    class_prompt(label),
                    Some(format!("a {colour} {shape}").as_str())
                );
            }
        }
        assert_eq!(class_prompt(16), None);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(7);
        let n = 20_000;
        let mean = (0..n).map(|_| rng.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let mut counts = [0u32; 4];
        for _ in 0..n {
            counts[rng.below(4) as usize] += 1;
        }
        assert!(counts.iter().all(|&k| k > 4_500 && k < 5_500), "{counts:?}");
    }
}
