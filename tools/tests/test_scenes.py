import numpy as np
import pytest

from ocellus_tools import scenes


def test_classes_and_prompts_follow_the_spec_order():
    assert scenes.NUM_CLASSES == 16
    assert scenes.CLASSES[0] == ("circle", "red")
    assert scenes.CLASSES[scenes.class_index(2, 1)] == ("triangle", "green")
    p = scenes.prompts()
    assert len(p) == 16 and len(set(p)) == 16
    assert p[0] == "a red circle" and p[5] == "a green square" and p[15] == "a yellow cross"


@pytest.mark.parametrize(
    "shape,inside,outside",
    [
        # (dx, dy) in units of s
        (0, [(0, 0), (0.7, 0.7), (1.0, 0), (0, -0.99)], [(0.75, 0.75), (1.01, 0), (0, -1.02)]),
        (1, [(0, 0), (0.8, 0.8), (-0.79, 0.5)], [(0.81, 0), (0, -0.85), (0.9, 0.9)]),
        (2, [(0, 0), (0, -0.99), (0.85, 0.49), (-0.85, 0.49)], [(0, -1.02), (0, 0.55), (0.5, -0.3), (0.9, 0.49)]),
        (3, [(0, 0), (0.29, 0.99), (0.99, -0.29), (-0.99, 0)], [(0.5, 0.5), (0.31, 0.9), (1.01, 0), (0.4, -0.4)]),
    ],
)
def test_shape_membership(shape, inside, outside):
    s, cx, cy = 0.2, 0.5, 0.5
    for dx, dy in inside:
        assert scenes.inside(shape, cx + dx * s, cy + dy * s, cx, cy, s), (shape, dx, dy)
    for dx, dy in outside:
        assert not scenes.inside(shape, cx + dx * s, cy + dy * s, cx, cy, s), (shape, dx, dy)


def test_parameters_stay_in_their_ranges():
    b = scenes.sample_batch(np.random.default_rng(3), 5000)
    assert np.all((b.g0 >= 0.15) & (b.g0 <= 0.85)) and np.all((b.g1 >= 0.15) & (b.g1 <= 0.85))
    assert np.all(np.abs(b.tint) <= 0.05) and np.all((b.noise >= 0) & (b.noise <= 0.04))
    assert np.all(np.abs(b.jitter) <= 0.08)
    assert np.all((b.size >= 0.12) & (b.size <= 0.24))
    for c in (b.cx, b.cy):
        assert np.all(c >= b.size + 0.02) and np.all(c <= 1 - b.size - 0.02)


def test_every_class_is_drawn_about_equally():
    b = scenes.sample_batch(np.random.default_rng(4), 16000)
    counts = np.bincount(b.labels, minlength=16)
    assert counts.min() > 800 and counts.max() < 1200


def test_same_seed_same_scenes_and_captions():
    a = list(scenes.generate(seed=11, n=40, chunk=16))
    b = list(scenes.generate(seed=11, n=40, chunk=16))
    c = list(scenes.generate(seed=12, n=40, chunk=16))
    assert [x[0].shape[0] for x in a] == [16, 16, 8]
    for (ia, _, ca), (ib, _, cb) in zip(a, b):
        assert np.array_equal(ia, ib)
        assert ca == cb
    assert not np.array_equal(a[0][0], c[0][0])


def test_render_single_matches_batch_and_is_pure():
    b = scenes.sample_batch(np.random.default_rng(5), 8)
    batch_imgs = scenes.render_batch(b, 64)
    for i, p in enumerate(b):
        img = scenes.render(p, 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert np.array_equal(img, batch_imgs[i])
        assert np.array_equal(img, scenes.render(p, 64))


def test_windowed_coverage_equals_full_canvas_supersampling():
    b = scenes.sample_batch(np.random.default_rng(6), 64)
    cov = scenes.coverage(b, 32, supersample=4)
    k = 128
    axis = (np.arange(k) + 0.5) / k
    for i, p in enumerate(b):
        full = scenes.inside(p.shape, axis[None, :], axis[:, None], p.cx, p.cy, p.size)
        assert np.array_equal(cov[i], full.reshape(32, 4, 32, 4).mean(axis=(1, 3)).astype(np.float32))


def test_rendered_pixels_show_the_shape_colour_and_the_background_gradient():
    p = scenes.SceneParams(g0=0.2, g1=0.8, tint=(0.0, 0.0, 0.0), noise=0.0, shape=1, colour=2,
                           jitter=(0.0, 0.0, 0.0), size=0.2, cx=0.5, cy=0.5, noise_seed=0)
    img = scenes.render(p, 64).astype(int)
    assert tuple(img[32, 32]) == (round(0.12 * 255), round(0.25 * 255), round(0.95 * 255))
    # Outside the square (half extent 0.16): grey gradient from top to bottom.
    top, bottom = img[1, 1], img[62, 1]
    assert top[0] == top[1] == top[2] and bottom[0] == bottom[1] == bottom[2]
    assert top[0] == round((0.2 + 0.6 * 1.5 / 64) * 255) and bottom[0] > top[0]
    # Exact square edge: x in [0.34, 0.66] covers pixels 22..41 fully (centres 0.35..0.65), partially at the edge.
    row = img[32, :, 2]
    assert row[30] == row[25] > row[15]
    assert 0 < (row[21] - row[15]) < (row[25] - row[15])


def test_noise_only_on_background_and_bounded():
    p = scenes.SceneParams(g0=0.5, g1=0.5, tint=(0.0, 0.0, 0.0), noise=0.04, shape=0, colour=0,
                           jitter=(0.0, 0.0, 0.0), size=0.2, cx=0.5, cy=0.5, noise_seed=99)
    img = scenes.render(p, 64).astype(int)
    bg = img[:8, :8]
    assert bg.std() > 1.0
    assert np.all(np.abs(bg - 127.5) <= 0.04 * 255 + 1)
    centre = img[28:36, 28:36]
    assert np.all(centre == centre[0, 0])


def test_captions_mention_the_class_and_true_positions():
    rng = np.random.default_rng(7)
    b = scenes.sample_batch(rng, 500)
    caps = scenes.captions(b, rng)
    texts = set()
    for p, c in zip(b, caps):
        shape, colour = scenes.CLASSES[p.label]
        assert shape in c.text and colour in c.text and c.label == p.label
        xb, yb = int(scenes.x_band(p.cx)), int(scenes.y_band(p.cy))
        assert c.matches(p.label, xb, yb)
        if c.x is not None:
            assert scenes.X_WORDS[xb] in c.text
        if c.y is not None:
            assert scenes.Y_WORDS[yb] in c.text
        if yb == 1:
            assert "top" not in c.text and "bottom" not in c.text
        texts.add(c.text)
    assert len(texts) > 100
    assert set(texts) <= set(scenes.all_caption_texts())


def test_positives_respect_class_and_named_positions():
    caps = [scenes.Caption("a red circle", 0, None, None), scenes.Caption("a red circle on the left", 0, 0, None),
            scenes.Caption("a red circle at the top", 0, None, 0), scenes.Caption("a green circle", 1, None, None)]
    pos = scenes.positives(np.array([0, 0, 1]), np.array([0, 2, 0]), np.array([1, 0, 0]), caps)
    assert pos.tolist() == [[True, True, False, False], [True, False, True, False], [False, False, False, True]]
