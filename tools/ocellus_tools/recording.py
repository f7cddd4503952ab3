"""Reading an ocellus recording (docs/recorder.md): a flight recording or an `ocellus record --duration` capture.

    from ocellus_tools.recording import open_recording

    rec = open_recording("recordings/rec-20250131T120000.123Z-0001-late-encoder")
    cam = rec.cameras[0]
    r = cam.results                       # numpy structured array, one record per frame
    r["sequence"], r["stage_ns"][:, 2], r["embedding"], r["scores"][:, :r["num_scores"][0]]
    rgb = cam.rgb(0)                      # frame 0 as H x W x 3 uint8 (BT.601 limited range, as the runtime)
    top = rec.top_labels(0)               # the top prompt of every frame

A recording is a directory: ``recording.json`` (format "ocellus-recording", version 1), and per camera N a raw frame
file ``camN.raw`` (the replay source's format, magic OCFRAMES) and a results file ``camN.results`` (magic
OCRESULT, fixed-size records). A reader refuses another format or a newer version, and a file whose length does
not match the header (a truncated copy).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ToolError

FORMAT = "ocellus-recording"
VERSION = 1
RAW_MAGIC = b"OCFRAMES"
RESULTS_MAGIC = b"OCRESULT"
RESULTS_HEADER_BYTES = 64
RECORD_FIXED_BYTES = 120
STAGES = ("dequeue", "prepare", "encoder", "resampler", "score", "publish", "end_to_end")
NO_LABEL = 0xFFFF
FOURCC = {b"YUYV": "yuyv", b"NV12": "nv12", b"GREY": "grey", b"RGB3": "rgb24", b"BGR3": "bgr24", b"MJPG": "mjpeg",
          b"JPEG": "mjpeg"}


class RecordingError(ToolError):
    """A recording that cannot be read: what is wrong and what to do."""


def record_bytes(e: int, l: int, d: int, k: int) -> int:
    return (RECORD_FIXED_BYTES + 4 * (e + l * d + k) + 7) // 8 * 8


def results_dtype(e: int, l: int, d: int, k: int) -> np.dtype:
    """The numpy dtype of one results record (little-endian, padded to a multiple of 8 bytes)."""
    fields = [("sequence", "<u8"), ("capture_ns", "<u8"), ("publish_ns", "<u8"), ("stage_ns", "<u8", (len(STAGES),)),
              ("flags", "<u4"), ("num_scores", "<u4"), ("prompt_version", "<u8"), ("driver_dropped", "<u8"),
              ("dropped", "<u8"), ("label", "<u2"), ("reserved", "<u2"), ("frame_bytes", "<u4"),
              ("embedding", "<f4", (e,)), ("latents", "<f4", (l, d)), ("scores", "<f4", (k,))]
    packed = np.dtype(fields)
    return np.dtype({"names": list(packed.names), "formats": [packed.fields[n][0] for n in packed.names],
                     "offsets": [packed.fields[n][1] for n in packed.names], "itemsize": record_bytes(e, l, d, k)})


def to_rgb(data: bytes, pixel_format: str, width: int, height: int) -> np.ndarray:
    """One frame's bytes as H x W x 3 uint8 RGB; YUYV and NV12 as BT.601 limited range (the runtime's conversion,
    up to its fixed-point rounding)."""
    w, h = width, height
    buf = np.frombuffer(data, dtype=np.uint8)
    if pixel_format == "mjpeg":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    if pixel_format == "rgb24":
        return buf.reshape(h, w, 3).copy()
    if pixel_format == "bgr24":
        return buf.reshape(h, w, 3)[..., ::-1].copy()
    if pixel_format == "grey":
        return np.repeat(buf.reshape(h, w, 1), 3, axis=2)
    if pixel_format == "yuyv":
        p = buf.reshape(h, w // 2, 4).astype(np.float64)
        y = np.stack([p[..., 0], p[..., 2]], axis=-1).reshape(h, w)
        u = np.repeat(p[..., 1], 2, axis=1)
        v = np.repeat(p[..., 3], 2, axis=1)
    elif pixel_format == "nv12":
        y = buf[: w * h].reshape(h, w).astype(np.float64)
        uv = buf[w * h:].reshape(h // 2, w // 2, 2).astype(np.float64)
        u = np.repeat(np.repeat(uv[..., 0], 2, axis=0), 2, axis=1)
        v = np.repeat(np.repeat(uv[..., 1], 2, axis=0), 2, axis=1)
    else:
        raise RecordingError(f"pixel format '{pixel_format}' is not one ocellus records")
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    rgb = np.stack([c + 1.596 * e, c - 0.392 * d - 0.813 * e, c + 2.017 * d], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _raw_index(path: Path) -> tuple[str, int, int, list[tuple[int, int, int]]]:
    """(pixel format, width, height, [(offset, length, label)]) of a raw frame file."""
    data = path.read_bytes()
    if len(data) < 32 or data[:8] != RAW_MAGIC:
        raise RecordingError(f"{path}: not a raw frame file (no OCFRAMES magic)")
    version, fourcc, w, h, _max = struct.unpack_from("<I4sIII", data, 8)
    if version != 1:
        raise RecordingError(f"{path}: raw frame file version {version}; this reader reads version 1")
    if fourcc not in FOURCC:
        raise RecordingError(f"{path}: FourCC {fourcc!r} is not one ocellus records")
    frames, at = [], 32
    while at < len(data):
        if at + 8 > len(data):
            raise RecordingError(f"{path}: frame {len(frames)}: record header cut short: the file is truncated; "
                                 "copy the recording again")
        n, label = struct.unpack_from("<IH", data, at)
        if at + 8 + n > len(data):
            raise RecordingError(f"{path}: frame {len(frames)}: data cut short: the file is truncated; copy the "
                                 "recording again")
        frames.append((at + 8, n, label))
        at += 8 + n
    return FOURCC[fourcc], w, h, frames


@dataclass
class Camera:
    """One camera of a recording: its frames (``frame``, ``rgb``) and results (``results``)."""

    index: int
    name: str
    pixel_format: str
    width: int
    height: int
    fps: int
    raw_path: Path
    results: np.ndarray
    _frames: list = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, i: int) -> bytes:
        """Frame i's bytes as captured."""
        offset, n, _ = self._frames[i]
        with open(self.raw_path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    def label(self, i: int) -> int | None:
        """Frame i's ground-truth class (synthetic source), None for a real camera."""
        v = self._frames[i][2]
        return None if v == NO_LABEL else v

    def rgb(self, i: int) -> np.ndarray:
        """Frame i as H x W x 3 uint8 RGB."""
        return to_rgb(self.frame(i), self.pixel_format, self.width, self.height)


@dataclass
class Recording:
    path: Path
    header: dict
    cameras: list[Camera]

    def labels(self, version: int) -> list[str] | None:
        """The labels of prompt set ``version`` (what ``scores[k]`` of a frame with that prompt_version means)."""
        for p in self.header["prompts"]:
            if p["version"] == version:
                return list(p["labels"])
        return None

    def top_labels(self, camera: int) -> list[str | None]:
        """The top prompt of every frame of ``camera`` (None where a frame has no scores)."""
        r = self.cameras[camera].results
        out = []
        for rec in r:
            n = int(rec["num_scores"])
            labels = self.labels(int(rec["prompt_version"]))
            if n == 0 or labels is None:
                out.append(None)
                continue
            out.append(labels[int(np.argmax(rec["scores"][:n]))])
        return out


def open_recording(path: str | Path) -> Recording:
    """Opens and checks the recording in ``path`` (its directory, or its recording.json)."""
    path = Path(path)
    if path.name == "recording.json":
        path = path.parent
    header_path = path / "recording.json"
    if not header_path.is_file():
        if (path / "cam0.raw").is_file():
            raise RecordingError(f"{path}: the recording is incomplete (no recording.json): it was being written, or "
                                 "its writer stopped; record again")
        raise RecordingError(f"{path}: not a recording (no recording.json)")
    try:
        header = json.loads(header_path.read_text())
    except (OSError, ValueError) as e:
        raise RecordingError(f"{header_path}: not readable JSON: {e}") from e
    if header.get("format") != FORMAT:
        raise RecordingError(f"{header_path}: its \"format\" is not \"{FORMAT}\"")
    if header.get("version") != VERSION:
        raise RecordingError(f"{header_path}: recording format version {header.get('version')}; this reader reads "
                             f"version {VERSION}: use the ocellus-tools of the ocellus that wrote it (or a newer one)")
    e, l, d, k = (int(header[n]) for n in ("embed_dim", "num_latents", "latent_dim", "max_scores"))
    dtype = results_dtype(e, l, d, k)
    cameras = []
    for c in header["cameras"]:
        raw = path / c["raw"]
        fmt, w, h, frames = _raw_index(raw)
        if (fmt, w, h) != (c["pixel_format"], c["width"], c["height"]):
            raise RecordingError(f"{raw}: holds {fmt} {w}x{h} frames, but recording.json says {c['pixel_format']} "
                                 f"{c['width']}x{c['height']}")
        res_path = path / c["results"]
        blob = res_path.read_bytes()
        if len(blob) < RESULTS_HEADER_BYTES or blob[:8] != RESULTS_MAGIC:
            raise RecordingError(f"{res_path}: not a results file (no OCRESULT magic)")
        version, hbytes, rbytes, he, hl, hd, hk, stages, cam = struct.unpack_from("<9I", blob, 8)
        if version != 1:
            raise RecordingError(f"{res_path}: results file version {version}; this reader reads version 1")
        if (hbytes, rbytes, he, hl, hd, hk, stages, cam) != (RESULTS_HEADER_BYTES, dtype.itemsize, e, l, d, k,
                                                               len(STAGES), c["index"]):
            raise RecordingError(f"{res_path}: its shapes differ from recording.json's")
        body = len(blob) - RESULTS_HEADER_BYTES
        if body % rbytes:
            raise RecordingError(f"{res_path}: {body} bytes is not a whole number of {rbytes}-byte records: the file "
                                 "is truncated; copy the recording again")
        results = np.frombuffer(blob, dtype=dtype, offset=RESULTS_HEADER_BYTES)
        if len(frames) != c["frames"] or len(results) != c["frames"]:
            raise RecordingError(f"{path}: camera {c['index']} holds {len(frames)} frames and {len(results)} results "
                                 f"but recording.json says {c['frames']}: a file is truncated; copy the recording again")
        cameras.append(Camera(c["index"], c["name"], fmt, w, h, c["fps"], raw, results, frames))
    return Recording(path, header, cameras)
