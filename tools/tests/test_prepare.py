"""The preprocessing contract (tools/README.md): crop box in source pixels, Pillow resampling, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ocellus_tools.bundle import Preprocess
from ocellus_tools.prepare import crop_box, prepare_image


def test_crop_box_shortest_edge_center():
    pre = Preprocess(height=64, width=64)
    assert crop_box(160, 96, pre) == (32.0, 0.0, 128.0, 96.0)
    assert crop_box(80, 128, pre) == (0.0, 24.0, 80.0, 104.0)
    x0, y0, x1, y1 = crop_box(101, 50, pre)  # odd margins stay fractional
    assert (x0, x1) == (25.5, 75.5) and (y0, y1) == (0.0, 50.0)


def test_crop_box_keeps_model_aspect():
    pre = Preprocess(height=48, width=64)
    for w, h in [(640, 480), (480, 640), (100, 30), (30, 100)]:
        x0, y0, x1, y1 = crop_box(w, h, pre)
        assert (x1 - x0) / (y1 - y0) == pytest.approx(64 / 48)
        assert x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
        assert x0 == pytest.approx(w - x1) and y0 == pytest.approx(h - y1)
        assert x0 == 0 or y0 == 0  # the largest such box


def test_squash_is_whole_image():
    pre = Preprocess(height=64, width=64, resize="squash", crop="none")
    assert crop_box(160, 96, pre) == (0.0, 0.0, 160.0, 96.0)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_model_size_is_identity(interp):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pre = Preprocess(height=64, width=64, interpolation=interp, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    x = prepare_image(img, pre)
    want = (img.astype(np.float32) * np.float32(1 / 255) - np.float32([0.1, 0.2, 0.3])) / np.float32([0.5, 0.25, 2.0])
    assert x.dtype == np.float32 and x.shape == (1, 3, 64, 64)
    np.testing.assert_array_equal(x[0], want.transpose(2, 0, 1))


def test_center_crop_reads_margins_only_at_the_edge():
    """The box (48, 0, 112, 64) of a 160x64 image goes to 32x32; the filter (Pillow's, which the runtime
    reproduces) reaches past the box edge, so the margins touch only the outermost output columns."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 160, 3), dtype=np.uint8)
    pre = Preprocess(height=32, width=32)
    assert crop_box(160, 64, pre) == (48.0, 0.0, 112.0, 64.0)
    a = prepare_image(img, pre)
    img2 = img.copy()
    img2[:, :48] = 0
    img2[:, 112:] = 255
    b = prepare_image(img2, pre)
    np.testing.assert_array_equal(a[..., 1:-1], b[..., 1:-1])
    assert not np.array_equal(a[..., 0], b[..., 0]) and not np.array_equal(a[..., -1], b[..., -1])


def test_matches_pillow_box_resize_and_bgr():
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8))
    pre = Preprocess(height=30, width=40, interpolation="bicubic", channel_order="bgr")
    x = prepare_image(img, pre)
    ref = np.asarray(img.resize((40, 30), Image.Resampling.BICUBIC, box=crop_box(150, 90, pre)), dtype=np.float32)
    ref = (ref / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(x[0], ref[..., ::-1].transpose(2, 0, 1), atol=1e-6)


def test_preprocess_check_rejects_bad_values():
    with pytest.raises(ValueError):
        Preprocess(height=64, width=64, resize="shortest_edge", crop="none").check()
    with pytest.raises(ValueError):
        Preprocess(height=64, width=64, interpolation="nearest").check()
