"""The preprocessing contract (tools/README.md): crop box in source pixels, Pillow resampling, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ocellus_tools.bundle import Preprocess
from ocellus_tools.prepare import crop_box, letterbox_offset, letterbox_size, prepare_image, round_half_up


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


def test_committed_reference_pixel_values_are_unchanged():
    """The committed bundles' reference tensors (what tests/prepare.rs holds the runtime to) come out of
    prepare_image bit for bit: adding letterbox left shortest_edge and squash as they were."""
    import tomllib
    from pathlib import Path

    models = Path(__file__).resolve().parents[2] / "models"
    checked = 0
    for index in sorted(models.glob("*/reference/index.toml")):
        bundle = index.parent.parent
        m = tomllib.loads((bundle / "manifest.toml").read_text())
        pre = Preprocess.from_record(m["preprocess"])
        for img in tomllib.loads(index.read_text())["images"]:
            with Image.open(index.parent / img["file"]) as im:
                got = prepare_image(im, pre)
            want = np.load(index.parent / img["pixel_values"])
            assert got.tobytes() == want.tobytes(), (bundle.name, img["id"])
            checked += 1
    assert checked >= 8


def _letterbox_reference(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The letterbox definition of /docs/manifest.md written out step by step (u8 canvas before normalising)."""
    h, w = img.shape[:2]
    s = min(pre.width / w, pre.height / h)
    sw = min(max(int(np.floor(w * s + 0.5)), 1), pre.width)
    sh = min(max(int(np.floor(h * s + 0.5)), 1), pre.height)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[pre.interpolation]
    rows = Image.fromarray(img).resize((sw, h), resample, box=(0, 0, w, h))
    scaled = np.asarray(rows.resize((sw, sh), resample, box=(0, 0, sw, h)))
    canvas = np.empty((pre.height, pre.width, 3), np.uint8)
    canvas[...] = np.asarray(pre.pad, np.uint8)
    left, top = (pre.width - sw) // 2, (pre.height - sh) // 2
    canvas[top:top + sh, left:left + sw] = scaled
    return canvas


def _normalise(u8: np.ndarray, pre: Preprocess) -> np.ndarray:
    x = u8.astype(np.float32) * np.float32(pre.rescale)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return x.transpose(2, 0, 1)[None]


def test_round_half_up_is_not_bankers_rounding():
    assert [round_half_up(x) for x in (0.0, 0.49999999999999994, 0.5, 1.5, 2.5, 48.5, 48.49)] == [0, 0, 1, 2, 3, 49, 48]


@pytest.mark.parametrize("w,h,size,scaled,offset", [
    (161, 96, (64, 64), (64, 38), (0, 13)),       # landscape, odd width
    (80, 129, (64, 64), (40, 64), (12, 0)),       # portrait, odd height
    (128, 97, (64, 64), (64, 49), (0, 7)),        # 97 * 0.5 = 48.5: the tie rounds up, the odd row goes below
    (49, 33, (64, 64), (64, 43), (0, 10)),        # smaller than the model: scaled up
    (1000, 3, (64, 48), (64, 1), (0, 23)),        # a sliver keeps at least one row
    (64, 48, (64, 48), (64, 48), (0, 0)),         # already the model size
    (30, 100, (48, 64), (19, 64), (14, 0)),       # non-square model, portrait image, odd margin
])
def test_letterbox_geometry(w, h, size, scaled, offset):
    pre = Preprocess(height=size[1], width=size[0], resize="letterbox", crop="none")
    assert letterbox_size(w, h, pre) == scaled
    assert letterbox_offset(*scaled, pre) == offset


@pytest.mark.parametrize("w,h,interp", [(161, 96, "bilinear"), (80, 129, "bicubic"), (128, 97, "bicubic"),
                                          (49, 33, "bilinear"), (101, 57, "bicubic")])
def test_letterbox_matches_the_definition(w, h, interp):
    rng = np.random.default_rng(w * h)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pre = Preprocess(height=64, width=64, resize="letterbox", crop="none", interpolation=interp,
                     pad=(114, 20, 255), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    pre.check()
    got = prepare_image(img, pre)
    np.testing.assert_array_equal(got, _normalise(_letterbox_reference(img, pre), pre))


def test_letterbox_pad_colour_fills_the_margins_only():
    img = np.full((50, 100, 3), 7, np.uint8)  # 100x50 -> 64x32 at (0, 16): bands of 16 rows above and below
    pre = Preprocess(height=64, width=64, resize="letterbox", crop="none", pad=(255, 0, 128), mean=(0, 0, 0),
                     std=(1, 1, 1))
    x = prepare_image(img, pre)[0]
    pad = np.float32([255, 0, 128]) * np.float32(1 / 255)
    for band in (x[:, :16, :], x[:, 48:, :]):
        np.testing.assert_array_equal(band, np.broadcast_to(pad[:, None, None], band.shape))
    np.testing.assert_array_equal(x[:, 16:48, :], np.float32(7 * np.float32(1 / 255)))
    bgr = prepare_image(img, Preprocess(**{**pre.__dict__, "channel_order": "bgr"}))[0]
    np.testing.assert_array_equal(bgr[:, 0, 0], pad[::-1])


def test_letterbox_preprocess_check():
    Preprocess(height=64, width=64, resize="letterbox", crop="none", pad=(1, 2, 3)).check()
    with pytest.raises(ValueError, match="crop = 'none'"):
        Preprocess(height=64, width=64, resize="letterbox", crop="center").check()
    with pytest.raises(ValueError, match="pad"):
        Preprocess(height=64, width=64, resize="letterbox", crop="none", pad=(0, 0, 256)).check()
    rec = Preprocess(height=64, width=48, resize="letterbox", crop="none", pad=(9, 8, 7)).record()
    assert rec["pad"] == [9, 8, 7] and Preprocess.from_record(rec).pad == (9, 8, 7)
    assert "pad" not in Preprocess(height=64, width=64).record()
