"""Images for calibration and reference data: generated demo scenes (docs/scene-spec.md), at any frame size."""

from __future__ import annotations

import numpy as np


def _scenes():
    try:
        from . import scenes
    except ImportError:  # the scene generator is optional for HF bundles
        return None
    return scenes


def scene_frame(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One scene as a camera frame uint8 [height, width, 3]: the square canvas (side min(width, height)) in the
    centre, the margins continuing the background gradient and noise (scene-spec "Canvas and coordinates")."""
    sc = _scenes()
    side = min(width, height)
    if sc is None:
        return _pattern(rng, width, height)
    params = sc.sample_params(rng)
    canvas = sc.render(params, side)
    if width == height:
        return canvas
    # background in canvas coordinates: y runs from 0 to 1 across the canvas, beyond it in the margins
    y0 = (height - side) // 2
    x0 = (width - side) // 2
    ys = (np.arange(height, dtype=np.float64) - y0 + 0.5) / side
    grey = params.g0 + (params.g1 - params.g0) * ys
    bg = grey[:, None, None] + np.asarray(params.tint)[None, None, :]
    bg = np.broadcast_to(bg, (height, width, 3)).copy()
    bg += rng.uniform(-params.noise, params.noise, size=bg.shape)
    frame = np.round(np.clip(bg, 0.0, 1.0) * 255.0).astype(np.uint8)
    frame[y0:y0 + side, x0:x0 + side] = canvas
    return frame


def _pattern(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field with a bright disc (used only when the scene generator is absent)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.empty((height, width, 3))
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.3 * np.sin(a * xx / 7 + b * yy / 5 + p * 6)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, 0.2 * min(width, height)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.uniform(0, 1, 3)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def frame_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Camera-like frame sizes around a model input of width x height: the input size itself, landscape 5:3,
    portrait 5:8 and a larger square, so resize and crop (or squash) shape the calibration data as they will
    shape camera frames."""
    return [(width, height), (round(width * 2.5), round(height * 1.5)), (round(width * 1.25), round(height * 2.0)),
            (round(width * 1.5), round(height * 1.5))]


def calibration_frames(n: int, width: int, height: int, seed: int) -> list[np.ndarray]:
    """`n` generated frames cycling through :func:`frame_sizes`."""
    rng = np.random.default_rng(seed)
    sizes = frame_sizes(width, height)
    return [scene_frame(rng, *sizes[i % len(sizes)]) for i in range(n)]


def text_corpus() -> list[str]:
    """Prompts and training-style captions for text calibration (the scene captions, or a fixed list)."""
    sc = _scenes()
    if sc is not None:
        return sc.all_caption_texts()
    return [f"a {c} {s}" for s in ("circle", "square", "triangle", "cross") for c in ("red", "green", "blue", "yellow")]


def reference_prompts() -> list[str]:
    """The zero-shot prompts written to reference/ (the 16 demo classes)."""
    sc = _scenes()
    if sc is not None:
        return sc.prompts()
    return text_corpus()[:16]
