"""Demo scene generator: the Python side of docs/scene-spec.md (version 1).

A scene is one coloured shape (4 shapes x 4 colours = 16 classes) on a noisy grey gradient. The runtime's
`synthetic` camera (src/scene.rs) draws from the same distribution, so the demo model trained on these scenes
can be scored against the camera's ground truth.

Rendering is vectorised over a batch: `render_batch` draws thousands of 64x64 scenes per second. The shape is
anti-aliased by rendering its coverage at `supersample` times the target size and averaging blocks; the
background is linear in y, so its pixel-centre value is already the block average. Noise is per output
pixel and per channel, drawn from a generator seeded by the scene's `noise_seed`, so `render` is a pure
function of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

SPEC_VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
BASE_RGB: np.ndarray = np.array(
    [
        [0.90, 0.12, 0.10],
        [0.10, 0.75, 0.20],
        [0.12, 0.25, 0.95],
        [0.95, 0.88, 0.10],
    ],
    dtype=np.float64,
)
NUM_CLASSES = len(SHAPES) * len(COLOURS)
#: (shape, colour) of each class index; index = shape_index * 4 + colour_index.
CLASSES: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLOURS)

GREY_RANGE = (0.15, 0.85)
TINT_RANGE = (-0.05, 0.05)
NOISE_RANGE = (0.0, 0.04)
JITTER_RANGE = (-0.08, 0.08)
SIZE_RANGE = (0.12, 0.24)
MARGIN = 0.02

#: Horizontal position words by band (cx < 0.4, else cx > 0.6, else middle).
X_WORDS: tuple[str, ...] = ("on the left", "in the middle", "on the right")
#: Vertical position words by band; the middle band has no word.
Y_WORDS: tuple[str | None, ...] = ("at the top", None, "at the bottom")

#: Caption templates (scene-spec "Captions"); `{y}` templates apply only when the scene has a y-position word.
TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape}",
    "a {colour} {shape} {x}",
    "{colour} {shape}",
    "a photo of a {colour} {shape}",
    "a {shape} that is {colour}",
    "a {colour} {shape} {y}",
)


def class_index(shape: int, colour: int) -> int:
    return shape * len(COLOURS) + colour


def class_name(label: int) -> str:
    """The zero-shot prompt and ground-truth label of class `label`: "a {colour} {shape}"."""
    shape, colour = CLASSES[label]
    return f"a {colour} {shape}"


def prompts() -> list[str]:
    """The 16 zero-shot prompts in class order."""
    return [class_name(k) for k in range(NUM_CLASSES)]


def x_band(cx: float | np.ndarray):
    """0 = left (cx < 0.4), 2 = right (cx > 0.6), 1 = middle."""
    return np.where(np.asarray(cx) < 0.4, 0, np.where(np.asarray(cx) > 0.6, 2, 1))


def y_band(cy: float | np.ndarray):
    """0 = top (cy < 0.4), 2 = bottom (cy > 0.6), 1 = middle (no word)."""
    return np.where(np.asarray(cy) < 0.4, 0, np.where(np.asarray(cy) > 0.6, 2, 1))


@dataclass(frozen=True)
class SceneParams:
    """The parameters of one scene (scene-spec "Parameters of one scene")."""

    g0: float
    g1: float
    tint: tuple[float, float, float]
    noise: float
    shape: int
    colour: int
    jitter: tuple[float, float, float]
    size: float
    cx: float
    cy: float
    noise_seed: int

    @property
    def label(self) -> int:
        return class_index(self.shape, self.colour)

    @property
    def rgb(self) -> np.ndarray:
        return np.clip(BASE_RGB[self.colour] + np.asarray(self.jitter), 0.0, 1.0)


@dataclass
class SceneBatch:
    """Parameters of n scenes as arrays (struct of arrays), the unit `render_batch` works on."""

    g0: np.ndarray  # [n]
    g1: np.ndarray  # [n]
    tint: np.ndarray  # [n, 3]
    noise: np.ndarray  # [n]
    shape: np.ndarray  # [n] int
    colour: np.ndarray  # [n] int
    jitter: np.ndarray  # [n, 3]
    size: np.ndarray  # [n]
    cx: np.ndarray  # [n]
    cy: np.ndarray  # [n]
    noise_seed: np.ndarray  # [n] uint64

    def __len__(self) -> int:
        return len(self.g0)

    @property
    def labels(self) -> np.ndarray:
        return self.shape * len(COLOURS) + self.colour

    @property
    def rgb(self) -> np.ndarray:
        return np.clip(BASE_RGB[self.colour] + self.jitter, 0.0, 1.0)

    def __getitem__(self, i: int) -> SceneParams:
        return SceneParams(
            g0=float(self.g0[i]),
            g1=float(self.g1[i]),
            tint=tuple(float(v) for v in self.tint[i]),
            noise=float(self.noise[i]),
            shape=int(self.shape[i]),
            colour=int(self.colour[i]),
            jitter=tuple(float(v) for v in self.jitter[i]),
            size=float(self.size[i]),
            cx=float(self.cx[i]),
            cy=float(self.cy[i]),
            noise_seed=int(self.noise_seed[i]),
        )

    def __iter__(self) -> Iterator[SceneParams]:
        return (self[i] for i in range(len(self)))

    @staticmethod
    def stack(params: Sequence[SceneParams]) -> "SceneBatch":
        return SceneBatch(
            g0=np.array([p.g0 for p in params], dtype=np.float64),
            g1=np.array([p.g1 for p in params], dtype=np.float64),
            tint=np.array([p.tint for p in params], dtype=np.float64).reshape(-1, 3),
            noise=np.array([p.noise for p in params], dtype=np.float64),
            shape=np.array([p.shape for p in params], dtype=np.int64),
            colour=np.array([p.colour for p in params], dtype=np.int64),
            jitter=np.array([p.jitter for p in params], dtype=np.float64).reshape(-1, 3),
            size=np.array([p.size for p in params], dtype=np.float64),
            cx=np.array([p.cx for p in params], dtype=np.float64),
            cy=np.array([p.cy for p in params], dtype=np.float64),
            noise_seed=np.array([p.noise_seed for p in params], dtype=np.uint64),
        )


def sample_batch(rng: np.random.Generator, n: int, labels: np.ndarray | None = None) -> SceneBatch:
    """Draws the parameters of `n` scenes uniformly and independently (scene-spec ranges).

    `labels`, if given, fixes the class of each scene (used for class-balanced sets); everything else is drawn.
    """
    g0 = rng.uniform(*GREY_RANGE, size=n)
    g1 = rng.uniform(*GREY_RANGE, size=n)
    tint = rng.uniform(*TINT_RANGE, size=(n, 3))
    noise = rng.uniform(*NOISE_RANGE, size=n)
    if labels is None:
        shape = rng.integers(0, len(SHAPES), size=n)
        colour = rng.integers(0, len(COLOURS), size=n)
    else:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
            raise ValueError(f"labels must be {n} class indices in [0, {NUM_CLASSES})")
        shape, colour = labels // len(COLOURS), labels % len(COLOURS)
    jitter = rng.uniform(*JITTER_RANGE, size=(n, 3))
    size = rng.uniform(*SIZE_RANGE, size=n)
    lo = size + MARGIN
    cx = lo + (1.0 - 2.0 * lo) * rng.random(n)
    cy = lo + (1.0 - 2.0 * lo) * rng.random(n)
    noise_seed = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    return SceneBatch(g0, g1, tint, noise, shape.astype(np.int64), colour.astype(np.int64), jitter, size, cx,
                      cy, noise_seed)


def sample_params(rng: np.random.Generator) -> SceneParams:
    """Draws the parameters of one scene."""
    return sample_batch(rng, 1)[0]


def _inside(shape: int, dx: np.ndarray, dy: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The scene-spec membership test of `shape` (dx, dy and s broadcast together)."""
    if shape == 0:
        return dx * dx + dy * dy <= s * s
    adx, ady = np.abs(dx), np.abs(dy)
    if shape == 1:
        return np.maximum(adx, ady) <= 0.8 * s
    if shape == 2:
        return (dy <= 0.5 * s) & (adx <= (dy + s) / np.sqrt(3.0))
    if shape == 3:
        arm = 0.3 * s
        return ((adx <= arm) & (ady <= s)) | ((ady <= arm) & (adx <= s))
    raise ValueError(f"unknown shape index {shape}")


def inside(shape: int, x: np.ndarray, y: np.ndarray, cx: float, cy: float, s: float) -> np.ndarray:
    """Whether the points (x, y) (normalised coordinates) are inside the shape of the given centre and size."""
    return _inside(shape, np.asarray(x) - cx, np.asarray(y) - cy, np.asarray(s))


def coverage(batch: SceneBatch, size: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each output pixel covered by the shape, float32 [n, size, size].

    Each shape lies inside a square window of side 2 * max size around its centre, so only that window is
    supersampled (a quarter of the canvas) and the rest stays 0.
    """
    n, k = len(batch), size * supersample
    out = np.zeros((n, size, size), dtype=np.float32)
    win = min(size, int(np.ceil(2 * SIZE_RANGE[1] * size)) + 2)
    if win < size and len(batch) and batch.size.max() > SIZE_RANGE[1]:
        win = size
    sub = (np.arange(win * supersample, dtype=np.float32) + 0.5) / k  # window-relative sample offsets
    for shape in range(len(SHAPES)):
        idx = np.nonzero(batch.shape == shape)[0]
        if idx.size == 0:
            continue
        ox = np.clip(np.floor(batch.cx[idx] * size).astype(np.int64) - win // 2, 0, size - win)
        oy = np.clip(np.floor(batch.cy[idx] * size).astype(np.int64) - win // 2, 0, size - win)
        cx = (batch.cx[idx] - ox / size).astype(np.float32)[:, None, None]
        cy = (batch.cy[idx] - oy / size).astype(np.float32)[:, None, None]
        s = batch.size[idx].astype(np.float32)[:, None, None]
        mask = _inside(shape, sub[None, None, :] - cx, sub[None, :, None] - cy, s)
        cov = mask.reshape(idx.size, win, supersample, win, supersample).mean(axis=(2, 4), dtype=np.float32)
        rows = oy[:, None, None] + np.arange(win)[None, :, None]
        cols = ox[:, None, None] + np.arange(win)[None, None, :]
        out[idx[:, None, None], rows, cols] = cov
    return out


def render_float(batch: SceneBatch, size: int, supersample: int = 4) -> np.ndarray:
    """Renders the scenes as float32 [n, size, size, 3] in [0, 1] (before u8 conversion)."""
    if size <= 0 or supersample <= 0:
        raise ValueError("size and supersample must be positive")
    n = len(batch)
    y = (np.arange(size, dtype=np.float32) + 0.5) / size
    g0 = batch.g0.astype(np.float32)[:, None, None, None]
    g1 = batch.g1.astype(np.float32)[:, None, None, None]
    tint = batch.tint.astype(np.float32)[:, None, None, :]
    bg = g0 + (g1 - g0) * y[None, :, None, None] + tint  # [n, size, 1, 3]
    bg = np.broadcast_to(bg, (n, size, size, 3)).copy()
    for i in range(n):
        a = np.float32(batch.noise[i])
        if a > 0:
            noise_rng = np.random.Generator(np.random.PCG64(int(batch.noise_seed[i])))
            bg[i] += noise_rng.uniform(-a, a, size=(size, size, 3)).astype(np.float32)
    np.clip(bg, 0.0, 1.0, out=bg)
    cov = coverage(batch, size, supersample)[..., None]
    rgb = batch.rgb.astype(np.float32)[:, None, None, :]
    return bg * (1.0 - cov) + rgb * cov


def to_u8(img: np.ndarray) -> np.ndarray:
    """`round(clip(v, 0, 1) * 255)` as uint8."""
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_batch(batch: SceneBatch, size: int, supersample: int = 4) -> np.ndarray:
    """Renders the scenes as uint8 [n, size, size, 3] (RGB)."""
    return to_u8(render_float(batch, size, supersample))


def render(params: SceneParams, size: int, supersample: int = 4) -> np.ndarray:
    """Renders one scene as uint8 [size, size, 3] (RGB)."""
    return render_batch(SceneBatch.stack([params]), size, supersample)[0]


@dataclass(frozen=True)
class Caption:
    """A caption and what it claims: the class and, if mentioned, the position bands."""

    text: str
    label: int
    x: int | None  # x band (0 left, 1 middle, 2 right) if the caption names it
    y: int | None  # y band (0 top, 2 bottom) if the caption names it

    def matches(self, label: int, x: int, y: int) -> bool:
        """Whether this caption is true of a scene with the given class and position bands."""
        return label == self.label and (self.x is None or self.x == x) and (self.y is None or self.y == y)


def caption_for(label: int, cx: float, cy: float, template: int) -> Caption:
    """The caption of template `template` for a scene; a `{y}` template falls back to template 0 when the
    scene is in the vertical middle band (which has no word)."""
    shape, colour = CLASSES[label]
    xb, yb = int(x_band(cx)), int(y_band(cy))
    tpl = TEMPLATES[template]
    if "{y}" in tpl and Y_WORDS[yb] is None:
        tpl = TEMPLATES[0]
    text = tpl.format(colour=colour, shape=shape, x=X_WORDS[xb], y=Y_WORDS[yb])
    return Caption(text, label, xb if "{x}" in tpl else None, yb if "{y}" in tpl else None)


def caption(params: SceneParams, rng: np.random.Generator) -> str:
    """A training caption of the scene, from a template drawn uniformly (among those that apply)."""
    return caption_spec(params, rng).text


def caption_spec(params: SceneParams, rng: np.random.Generator) -> Caption:
    templates = _applicable(int(y_band(params.cy)))
    return caption_for(params.label, params.cx, params.cy, int(templates[rng.integers(len(templates))]))


def _applicable(yb: int) -> np.ndarray:
    return np.array([i for i, t in enumerate(TEMPLATES) if "{y}" not in t or Y_WORDS[yb] is not None])


def captions(batch: SceneBatch, rng: np.random.Generator) -> list[Caption]:
    """One caption per scene of the batch."""
    out = []
    for p in batch:
        out.append(caption_spec(p, rng))
    return out


def all_caption_texts() -> list[str]:
    """Every caption the templates can produce (the tokenizer's training text besides sampled captions)."""
    texts = set(prompts())
    for label in range(NUM_CLASSES):
        for cx in (0.2, 0.5, 0.8):
            for cy in (0.2, 0.5, 0.8):
                for t in range(len(TEMPLATES)):
                    texts.add(caption_for(label, cx, cy, t).text)
    return sorted(texts)


def positives(labels: np.ndarray, xs: np.ndarray, ys: np.ndarray, caps: Sequence[Caption]) -> np.ndarray:
    """bool [n_images, n_captions]: caption j is true of image i (class and any named position agree)."""
    labels, xs, ys = np.asarray(labels), np.asarray(xs), np.asarray(ys)
    cl = np.array([c.label for c in caps])
    cxb = np.array([-1 if c.x is None else c.x for c in caps])
    cyb = np.array([-1 if c.y is None else c.y for c in caps])
    ok = labels[:, None] == cl[None, :]
    ok &= (cxb[None, :] < 0) | (cxb[None, :] == xs[:, None])
    ok &= (cyb[None, :] < 0) | (cyb[None, :] == ys[:, None])
    return ok


def generate(seed: int, n: int, size: int = 64, chunk: int = 256, supersample: int = 4
             ) -> Iterator[tuple[np.ndarray, SceneBatch, list[Caption]]]:
    """Yields (images uint8 [m, size, size, 3], parameters, captions) in chunks until `n` scenes are made.
    The same seed gives the same scenes and captions."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        batch = sample_batch(rng, m)
        caps = captions(batch, rng)
        yield render_batch(batch, size, supersample), batch, caps
        done += m
