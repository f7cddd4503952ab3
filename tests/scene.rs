//! The demo scene generator against docs/scene-spec.md: class membership, ranges, motion, determinism.

use ocellus::scene::{
    class_prompt, inside, render_into, Rng, SceneParams, BASE_RGB, GREY_RANGE, NUM_CLASSES,
    PROMPTS, SIZE_RANGE,
};

fn scene(shape: u8, colour: u8) -> SceneParams {
    SceneParams {
        g0: 0.3,
        g1: 0.7,
        tint: [0.0; 3],
        noise: 0.0,
        shape,
        colour,
        jitter: [0.0; 3],
        size: 0.2,
        cx: 0.5,
        cy: 0.5,
        noise_seed: 1,
    }
}

#[test]
fn membership_follows_the_spec() {
    let s = 0.2;
    // circle: radius s
    assert!(inside(0, 0.199, 0.0, s) && !inside(0, 0.15, 0.15, s));
    // square: half-extent 0.8 s
    assert!(inside(1, 0.159, 0.159, s) && !inside(1, 0.161, 0.0, s));
    // triangle, point up: apex (0, -s), base at dy = 0.5 s from -0.866 s to 0.866 s
    assert!(inside(2, 0.0, -0.199, s) && !inside(2, 0.0, -0.201, s));
    assert!(inside(2, 0.17, 0.099, s) && !inside(2, 0.175, 0.099, s) && !inside(2, 0.0, 0.101, s));
    assert!(!inside(2, 0.05, -0.19, s));
    // cross: arms 0.3 s wide, s long
    assert!(inside(3, 0.199, 0.059, s) && inside(3, 0.059, 0.199, s) && !inside(3, 0.1, 0.1, s));
    assert!(!inside(7, 0.0, 0.0, s), "unknown shapes hold nothing");
}

#[test]
fn sampled_scenes_stay_in_range_and_cover_every_class() {
    let mut rng = Rng::new(1234);
    let mut seen = [0u32; NUM_CLASSES];
    for _ in 0..4000 {
        let p = SceneParams::sample(&mut rng);
        seen[p.label() as usize] += 1;
        assert!(
            (GREY_RANGE.0..GREY_RANGE.1).contains(&p.g0)
                && (GREY_RANGE.0..GREY_RANGE.1).contains(&p.g1)
        );
        assert!((SIZE_RANGE.0..SIZE_RANGE.1).contains(&p.size));
        let (lo, hi) = p.centre_range();
        assert!(p.cx >= lo && p.cx <= hi && p.cy >= lo && p.cy <= hi);
        assert!(p.tint.iter().all(|t| t.abs() <= 0.05) && p.jitter.iter().all(|j| j.abs() <= 0.08));
        assert!((0.0..=0.04).contains(&p.noise));
        for t in [0, 13, 48, 96, 500] {
            let m = p.at_frame(t);
            assert!(m.cx >= lo && m.cx <= hi && m.cy >= lo && m.cy <= hi);
            assert!((m.cx - p.cx).abs() <= 0.05 + 1e-12 && (m.cy - p.cy).abs() <= 0.05 + 1e-12);
            assert_eq!(m.label(), p.label());
        }
        assert_eq!(class_prompt(p.label()), Some(p.prompt()));
    }
    assert!(seen.iter().all(|&n| n > 150), "every class drawn: {seen:?}");
    assert_eq!(PROMPTS.len(), NUM_CLASSES);
}

#[test]
fn same_seed_same_scenes_and_pixels() {
    let (mut a, mut b, mut c) = (Rng::new(9), Rng::new(9), Rng::new(10));
    let (pa, pb, pc) = (
        SceneParams::sample(&mut a),
        SceneParams::sample(&mut b),
        SceneParams::sample(&mut c),
    );
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
    let mut fa = vec![0u8; 96 * 64 * 3];
    let mut fb = vec![0u8; 96 * 64 * 3];
    render_into(&pa, 96, 64, &mut fa).unwrap();
    render_into(&pb, 96, 64, &mut fb).unwrap();
    assert_eq!(fa, fb);
    let mut moved = vec![0u8; 96 * 64 * 3];
    render_into(&pa.at_frame(20), 96, 64, &mut moved).unwrap();
    assert_ne!(fa, moved, "the shape moves within a hold");
}

#[test]
fn the_shape_is_drawn_in_the_centre_square_only() {
    // A 120x60 frame: the 60x60 canvas spans columns 30..90; the margins hold background only.
    let p = scene(1, 2);
    let (w, h) = (120usize, 60usize);
    let mut f = vec![0u8; w * h * 3];
    render_into(&p, w as u32, h as u32, &mut f).unwrap();
    let px = |i: usize, j: usize| {
        [
            f[(j * w + i) * 3],
            f[(j * w + i) * 3 + 1],
            f[(j * w + i) * 3 + 2],
        ]
    };
    let blue = BASE_RGB[2].map(|v| (v * 255.0).round() as u8);
    assert_eq!(px(60, 30), blue, "canvas centre holds the square");
    // Half-extent 0.8 * 0.2 * 60 = 9.6 px around the centre (60, 30).
    assert_eq!(px(51, 30), blue);
    assert_ne!(px(49, 30), blue);
    // Background: grey g0 + (g1 - g0) * y without noise, at the canvas's y.
    let y = 0.5 / 60.0;
    let grey = ((0.3 + 0.4 * y) * 255.0_f64).round() as u8;
    assert_eq!(px(0, 0), [grey; 3]);
    assert_eq!(px(119, 0), [grey; 3]);
    let blues = (0..w * h).filter(|&k| px(k % w, k / w) == blue).count();
    // 19x19 or so pixels: (2 * 9.6)^2 ~ 369.
    assert!((300..=420).contains(&blues), "{blues}");
    assert!((0..h).all(|j| (0..30).chain(90..w).all(|i| px(i, j) != blue)));
}

#[test]
fn render_rejects_a_small_buffer() {
    let mut f = vec![0u8; 10];
    assert!(render_into(&scene(0, 0), 4, 4, &mut f).is_err());
    assert!(render_into(&scene(0, 0), 0, 4, &mut f).is_err());
}
