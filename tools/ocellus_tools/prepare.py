"""Image preparation: RGB8 image -> pixel_values f32 [1,3,H,W]. This definition is the contract the runtime's
`prepare` module reproduces (tools/README.md, "Preprocessing contract").

1. Crop box in source pixel coordinates, as floats:
   * resize = "shortest_edge", crop = "center": the largest box centred in the image with the model's aspect
     ratio W/H (for a square model, side min(w, h));
   * resize = "squash": the whole image (0, 0, w, h).
2. Resample that box to W x H with Pillow's separable convolution resampling (`Image.resize((W, H),
   resample=BILINEAR|BICUBIC, box=box)`), which widens the filter support when downscaling (antialiasing);
   when the box is the whole image and already W x H, this is the identity.
   * resize = "letterbox" instead: the whole image is resampled to (sw, sh) of :func:`letterbox_size` (its
     aspect kept) and pasted centred on a W x H canvas filled with `pad`, the odd pixel right/bottom.
3. x = u8 * rescale, then (x - mean[c]) / std[c], in float32 (pad pixels too); planes in `channel_order`; NCHW.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .bundle import Preprocess
from .errors import ToolError

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif")


def crop_box(width: int, height: int, pre: Preprocess) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the source region that is resampled to the model input, in source pixels."""
    w, h = float(width), float(height)
    mw, mh = float(pre.width), float(pre.height)
    if pre.resize in ("squash", "letterbox"):
        return (0.0, 0.0, w, h)
    # exact comparison of the aspect ratios, then the same float64 operations as the runtime's crop_box
    if w * mh > h * mw:
        cw = h * mw / mh
        left = (w - cw) / 2.0
        return (left, 0.0, left + cw, h)
    ch = w * mh / mw
    top = (h - ch) / 2.0
    return (0.0, top, w, top + ch)


def round_half_up(x: float) -> int:
    """Rounds a non-negative float to the nearest integer, ties up (Rust's ``f64::round`` for x >= 0; Python's
    ``round`` rounds ties to even, which the runtime does not)."""
    whole = math.floor(x)
    return int(whole) + (1 if x - whole >= 0.5 else 0)


def letterbox_size(width: int, height: int, pre: Preprocess) -> tuple[int, int]:
    """(sw, sh): the size a w x h image is scaled to inside the W x H letterbox. In float64, s = min(W / w,
    H / h); sw = round(w * s), sh = round(h * s), ties up, each clamped to [1, W] and [1, H]."""
    s = min(pre.width / width, pre.height / height)
    sw = min(max(round_half_up(width * s), 1), pre.width)
    sh = min(max(round_half_up(height * s), 1), pre.height)
    return sw, sh


def letterbox_offset(sw: int, sh: int, pre: Preprocess) -> tuple[int, int]:
    """(left, top) of the scaled image on the canvas: centred, the odd pixel to the right and bottom."""
    return (pre.width - sw) // 2, (pre.height - sh) // 2


def _letterbox(image: Image.Image, pre: Preprocess, resample) -> Image.Image:
    w, h = image.width, image.height
    sw, sh = letterbox_size(w, h, pre)
    rows = image.resize((sw, h), resample=resample, box=(0.0, 0.0, float(w), float(h)))
    scaled = rows.resize((sw, sh), resample=resample, box=(0.0, 0.0, float(sw), float(h)))
    canvas = Image.new("RGB", (pre.width, pre.height), tuple(int(v) for v in pre.pad))
    canvas.paste(scaled, letterbox_offset(sw, sh, pre))
    return canvas


def prepare_image(image: Image.Image | np.ndarray, pre: Preprocess) -> np.ndarray:
    """The model input for one image: float32 [1, 3, pre.height, pre.width]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    resample = _RESAMPLE[pre.interpolation]
    if pre.resize == "letterbox":
        resized = _letterbox(image, pre, resample)
    else:
        box = crop_box(image.width, image.height, pre)
        # Two single-axis calls pin the pass order to horizontal then vertical (the contract, and what the
        # runtime does): Pillow 13 picks the order of a two-axis resize itself and for some shapes goes vertical
        # first, which rounds the intermediate image differently. Each call computes the same coefficients a
        # single call would.
        x0, y0, x1, y1 = box
        rows = image.resize((pre.width, image.height), resample=resample, box=(x0, 0.0, x1, float(image.height)))
        resized = rows.resize((pre.width, pre.height), resample=resample, box=(0.0, y0, float(pre.width), y1))
    x = np.asarray(resized, dtype=np.uint8).astype(np.float32) * np.float32(pre.rescale)
    x = (x - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    if pre.channel_order == "bgr":
        x = x[..., ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted; ToolError when the folder is missing or holds none."""
    if not folder.is_dir():
        raise ToolError(f"calibration folder {folder} does not exist: pass --images DIR with image files, or use --scenes N")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ToolError(
            f"calibration folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}): "
            "add images to it, or use --scenes N for generated scenes"
        )
    return files


def load_images(files: list[Path]) -> list[Image.Image]:
    """Opens every readable image among `files` as RGB (unreadable ones are skipped with a note on stderr)."""
    import sys

    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            print(f"warning: skipping unreadable image {f}: {e}", file=sys.stderr)
    return images
