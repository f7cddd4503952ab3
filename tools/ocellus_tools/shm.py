"""Read ocellus results from shared memory (layout version 1, docs/shm-layout.md).

Standard library ``mmap`` plus numpy views; the same protocol as the Rust reader (``ocellus::shm``) and the C
header (``include/ocellus/shm.h``)::

    from ocellus_tools.shm import Reader
    with Reader("/ocellus") as r:
        sample, info = r.read_latest(0)
        print(info.age_ns, sample.sequence, sample.scores[: sample.num_scores])

A read never blocks the writer: it copies the newest ring buffer of the camera between two loads of that
buffer's sequence word and keeps the copy only if both loads saw the same even value (and the checksum
matches); it retries at most ``max_retries`` times, then raises :class:`RetriesExhausted`. When the writer is
stopped or stale the reader looks for a new segment under the same name (at most every ``reopen_interval``
seconds) and re-maps onto it, so a restarted ocellus is picked up without restarting the reader.

``python -m ocellus_tools.shm [NAME] [--follow]`` prints what a reader sees.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import time
from dataclasses import dataclass, field

import numpy as np

MAGIC = int.from_bytes(b"OCELLSHM", "little")
LAYOUT_VERSION = 1
HEADER_SIZE = 384
LABEL_BYTES = 64
BUFFERS_PER_SLOT = 3
STATUS_CAMERA_STRIDE = 128
STAGES = 7
STAGE_NAMES = ("dequeue", "prepare", "encoder", "resampler", "score", "publish", "end_to_end")
META_WORDS = 14
DTYPE_F32, DTYPE_F16 = 1, 2
STATE_RUNNING, STATE_STOPPED = 1, 2

FLAG_LATE_MASK = (1 << STAGES) - 1
FLAG_CAMERA_LOST = 1 << 16
FLAG_CAMERA_RESTARTED = 1 << 17
FLAG_DEGRADED = 1 << 18
FLAG_STALLED = 1 << 19

# Header word indices (byte offset / 8).
H = dict(
    magic=0, version=1, total_size=2, layout_hash=3, generation=4, writer_pid=5, start_realtime_ns=6,
    start_monotonic_ns=7, state=8, heartbeat_ns=9, heartbeat_period_ns=10, cameras=16, embed_dim=17,
    num_latents=18, latent_dim=19, max_prompts=20, latents_dtype=21, label_bytes=22, buffers_per_slot=23,
    prompts_offset=24, status_offset=25, slots_offset=26, slot_stride=27, buffer_stride=28,
    embedding_offset=29, latents_offset=30, scores_offset=31,
)
H_MODEL_ID, MODEL_ID_BYTES = 256, 48
H_MODEL_SHA256, MODEL_SHA_BYTES = 304, 16
_MASK = (1 << 64) - 1


class ShmError(Exception):
    """Base of the reader's errors."""


class NotRunning(ShmError):
    """No segment, one being created, or its writer stopped."""


class Stale(ShmError):
    """The writer's heartbeat is older than two heartbeat periods (it died or hangs)."""


class VersionMismatch(ShmError):
    """The segment has another layout version."""


class Foreign(ShmError):
    """Not an ocellus segment, an inconsistent header, or an unsafe mode."""


class RetriesExhausted(ShmError):
    """Every attempt overlapped a write."""


class NoSample(ShmError):
    """The camera has published nothing yet."""


def _round64(x: int) -> int:
    return (x + 63) // 64 * 64


def _fnv(h: int, w: int) -> int:
    for i in range(8):
        h ^= (w >> (8 * i)) & 0xFF
        h = (h * 0x00000100000001B3) & _MASK
    return h


def finish_checksum(total: int, count: int) -> int:
    """splitmix64's finaliser of ``total ^ count`` (docs/shm-layout.md, "Checksum")."""
    x = (total ^ count) & _MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass
class Layout:
    cameras: int
    embed_dim: int
    num_latents: int
    latent_dim: int
    max_prompts: int
    latents_dtype: int
    prompts_offset: int = 0
    status_offset: int = 0
    slots_offset: int = 0
    slot_stride: int = 0
    buffer_stride: int = 0
    embedding_offset: int = 0
    latents_offset: int = 0
    scores_offset: int = 0
    total_size: int = 0
    hash: int = 0

    @staticmethod
    def compute(cameras, embed_dim, num_latents, latent_dim, max_prompts, latents_dtype) -> "Layout":
        """The layout for these dimensions, as the writer computes it."""
        lay = Layout(cameras, embed_dim, num_latents, latent_dim, max_prompts, latents_dtype)
        es = 4 if latents_dtype == DTYPE_F32 else 2
        lay.prompts_offset = HEADER_SIZE
        lay.status_offset = lay.prompts_offset + _round64(64 + max_prompts * LABEL_BYTES)
        lay.slots_offset = lay.status_offset + 64 + cameras * STATUS_CAMERA_STRIDE
        lay.embedding_offset = 128
        lay.latents_offset = lay.embedding_offset + _round64(embed_dim * 4)
        lay.scores_offset = lay.latents_offset + _round64(num_latents * latent_dim * es)
        lay.buffer_stride = lay.scores_offset + _round64(max_prompts * 4)
        lay.slot_stride = 64 + BUFFERS_PER_SLOT * lay.buffer_stride
        lay.total_size = lay.slots_offset + cameras * lay.slot_stride
        h = 0xCBF29CE484222325
        for w in (LAYOUT_VERSION, HEADER_SIZE, cameras, embed_dim, num_latents, latent_dim, max_prompts,
                  latents_dtype, LABEL_BYTES, BUFFERS_PER_SLOT, lay.prompts_offset, lay.status_offset,
                  lay.slots_offset, lay.slot_stride, lay.buffer_stride, lay.embedding_offset, lay.latents_offset,
                  lay.scores_offset, lay.total_size):
            h = _fnv(h, w)
        lay.hash = h
        return lay

    @property
    def words(self) -> tuple[int, int, int]:
        """Words of the embedding, latents and scores arrays."""
        n = self.num_latents * self.latent_dim
        lw = (n + 1) // 2 if self.latents_dtype == DTYPE_F32 else (n + 3) // 4
        return (self.embed_dim + 1) // 2, lw, (self.max_prompts + 1) // 2


def validate_header(header: np.ndarray, size: int) -> Layout:
    """Checks a header snapshot (uint64 words) against the segment size; raises a typed error."""
    if size == 0:
        raise NotRunning("0 bytes, not sized yet: being created, or its writer died doing so")
    if size < HEADER_SIZE or len(header) < HEADER_SIZE // 8:
        # A writer sizes the object in one ftruncate: 1..383 bytes is never a segment being created.
        raise Foreign(f"{size} bytes, shorter than the {HEADER_SIZE}-byte header: not an ocellus segment")
    w = [int(x) for x in header[: HEADER_SIZE // 8]]
    if w[H["magic"]] == 0:
        raise NotRunning("no magic yet: the segment is being created")
    if w[H["magic"]] != MAGIC:
        raise Foreign(f"magic {w[H['magic']]:#018x} is not ocellus's")
    if w[H["version"]] != LAYOUT_VERSION:
        raise VersionMismatch(f"layout version {w[H['version']]}, this reader reads {LAYOUT_VERSION}")
    if w[H["total_size"]] != size:
        raise Foreign(f"header says {w[H['total_size']]} bytes, the segment has {size}")
    dims = [w[H[k]] for k in ("cameras", "embed_dim", "num_latents", "latent_dim", "max_prompts", "latents_dtype")]
    cameras, e, l, d, k, dtype = dims
    if not (1 <= cameras <= 64 and 1 <= e <= 65536 and 1 <= l <= 65536 and 1 <= d <= 65536
            and 1 <= k <= 4096 and l * d <= 1 << 24 and dtype in (DTYPE_F32, DTYPE_F16)):
        raise Foreign(f"dimensions out of range: {dims}")
    lay = Layout.compute(*dims)
    expected = dict(layout_hash=lay.hash, label_bytes=LABEL_BYTES, buffers_per_slot=BUFFERS_PER_SLOT,
                    prompts_offset=lay.prompts_offset, status_offset=lay.status_offset,
                    slots_offset=lay.slots_offset, slot_stride=lay.slot_stride, buffer_stride=lay.buffer_stride,
                    embedding_offset=lay.embedding_offset, latents_offset=lay.latents_offset,
                    scores_offset=lay.scores_offset)
    for key, value in expected.items():
        if w[H[key]] != value:
            raise Foreign(f"header {key} = {w[H[key]]}, the layout computed from its dimensions says {value}")
    if lay.total_size != size:
        raise Foreign("size differs from the layout")
    return lay


_fence_lock = threading.Lock()


def _fence() -> None:
    """An ordering point between the loads around it.

    CPython has no fence primitive. An uncontended lock release followed by an acquire is an atomic store with
    release and an atomic read-modify-write with acquire semantics in every CPython build, which keeps the loads
    before it before, and the loads after it after, on x86-64 and AArch64. The checksum is the second line of
    defence.
    """
    _fence_lock.acquire()
    _fence_lock.release()


@dataclass
class Sample:
    sequence: int = 0
    capture_ns: int = 0
    publish_ns: int = 0
    stage_ns: np.ndarray = field(default_factory=lambda: np.zeros(STAGES, dtype=np.uint64))
    flags: int = 0
    deadline_misses: int = 0
    prompt_version: int = 0
    num_scores: int = 0
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    latents: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    checksum: int = 0

    def top(self, n: int = 3) -> list[tuple[int, float]]:
        s = self.scores[: self.num_scores]
        order = np.argsort(-s, kind="stable")[:n]
        return [(int(i), float(s[i])) for i in order]


@dataclass
class SampleInfo:
    age_ns: int
    heartbeat_age_ns: int
    generation: int
    retries: int
    published: int
    remapped: bool


def describe_flags(flags: int) -> str:
    parts = []
    late = [STAGE_NAMES[s] for s in range(STAGES) if flags & (1 << s)]
    if late:
        parts.append("late(" + ",".join(late) + ")")
    for bit, name in ((FLAG_CAMERA_LOST, "camera-lost"), (FLAG_CAMERA_RESTARTED, "camera-restarted"),
                      (FLAG_DEGRADED, "degraded"), (FLAG_STALLED, "stalled")):
        if flags & bit:
            parts.append(name)
    return " ".join(parts) or "-"


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


MAX_NAME = 200
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def name_ok(name: str) -> bool:
    """The segment-name rule of docs/shm-layout.md: '/' then 1..=200 of A-Z a-z 0-9 . _ -, not '.' or '..'."""
    bare = name[1:] if name.startswith("/") else None
    return (bare is not None and 1 <= len(bare) <= MAX_NAME and bare not in (".", "..")
            and all(c in _NAME_CHARS for c in bare))


class Reader:
    """A read-only view of an ocellus segment (``/dev/shm`` + name)."""

    def __init__(self, name: str = "/ocellus", *, max_retries: int = 1000, verify_checksum: bool = True,
                 reopen_interval: float = 0.05, stale_after: float | None = None, expected_uid: int | None = None):
        if not name_ok(name):
            raise Foreign(f"{name!r} is not a shared-memory segment name: '/' then 1 to {MAX_NAME} of "
                          "A-Z a-z 0-9 . _ - (docs/shm-layout.md)")
        self.name = name
        self.max_retries = max_retries
        self.verify_checksum = verify_checksum
        self.reopen_interval_ns = int(reopen_interval * 1e9)
        self.stale_after_ns = None if stale_after is None else int(stale_after * 1e9)
        self.expected_uid = expected_uid
        self.remaps = 0
        self._mm = None
        self._words = None
        self._attach(*self._map())
        self._last_reopen_ns = _now_ns()

    # -- mapping -----------------------------------------------------------------------------------------------
    def _map(self):
        path = "/dev/shm" + self.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotRunning(f"no segment {path}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & stat.S_IWOTH:
                raise Foreign(f"{path} is world-writable (mode {st.st_mode & 0o777:o}); ocellus never creates it so")
            if self.expected_uid is not None and st.st_uid != self.expected_uid:
                raise Foreign(f"{path} is owned by uid {st.st_uid}, expected {self.expected_uid}")
            if st.st_size == 0:
                raise NotRunning(f"{path} has 0 bytes: being created")
            if st.st_size < HEADER_SIZE:
                raise Foreign(f"{path} has {st.st_size} bytes, shorter than the {HEADER_SIZE}-byte header: "
                              "not an ocellus segment")
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        words = np.frombuffer(mm, dtype="<u8")
        try:
            magic = int(words[0])
            _fence()
            header = words[: HEADER_SIZE // 8].copy()
            header[0] = magic
            layout = validate_header(header, st.st_size)
        except ShmError:
            del words
            mm.close()
            raise
        return mm, words, layout

    def _attach(self, mm, words, layout: Layout) -> None:
        self._release()
        self._mm, self._words, self.layout = mm, words, layout
        self.generation = int(words[H["generation"]])
        self.writer_pid = int(words[H["writer_pid"]])
        self.heartbeat_period_ns = max(1, int(words[H["heartbeat_period_ns"]]))
        ew, lw, sw = layout.words
        e, lat, sc = layout.embedding_offset // 8, layout.latents_offset // 8, layout.scores_offset // 8
        # Word indices (within a buffer) the checksum covers, in order, and their odd multipliers 2i+1.
        self._covered = np.concatenate([np.arange(2, 2 + META_WORDS), np.arange(e, e + ew),
                                        np.arange(lat, lat + lw), np.arange(sc, sc + sw)])
        self._odd = (np.arange(len(self._covered), dtype=np.uint64) * np.uint64(2) + np.uint64(1))

    def _release(self) -> None:
        if self._mm is not None:
            self._words = None
            self._mm.close()
            self._mm = None

    def close(self) -> None:
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- liveness ----------------------------------------------------------------------------------------------
    def _stale_after(self) -> int:
        return self.stale_after_ns if self.stale_after_ns is not None else 2 * self.heartbeat_period_ns

    def _ensure_alive(self) -> tuple[int, bool]:
        remapped = False
        while True:
            now = _now_ns()
            state = int(self._words[H["state"]])
            hb_age = max(0, now - int(self._words[H["heartbeat_ns"]]))
            if state == STATE_RUNNING and hb_age < self._stale_after():
                return hb_age, remapped
            if not remapped and now - self._last_reopen_ns >= self.reopen_interval_ns:
                self._last_reopen_ns = now
                try:
                    mm, words, layout = self._map()
                except NotRunning:
                    pass
                else:
                    if int(words[H["generation"]]) != self.generation:
                        self._attach(mm, words, layout)
                        self.remaps += 1
                        remapped = True
                        continue
                    del words
                    mm.close()
            if state == STATE_STOPPED:
                raise NotRunning(f"the writer (pid {self.writer_pid}) stopped")
            raise Stale(f"the writer (pid {self.writer_pid}) is not alive: no heartbeat for {hb_age / 1e6:.0f} ms")

    def writer(self) -> dict:
        """The writer's identity and liveness."""
        w = self._words
        now = _now_ns()
        state = int(w[H["state"]])
        hb_age = max(0, now - int(w[H["heartbeat_ns"]]))
        raw = bytes(self._mm[H_MODEL_ID:H_MODEL_ID + MODEL_ID_BYTES])
        sha = bytes(self._mm[H_MODEL_SHA256:H_MODEL_SHA256 + MODEL_SHA_BYTES])
        return dict(pid=self.writer_pid, generation=self.generation, heartbeat_age_ns=hb_age,
                    heartbeat_period_ns=self.heartbeat_period_ns,
                    alive=state == STATE_RUNNING and hb_age < self._stale_after(), stopped=state == STATE_STOPPED,
                    start_realtime_ns=int(w[H["start_realtime_ns"]]),
                    model_id=raw.split(b"\0", 1)[0].decode("utf-8", "replace"),
                    model_sha256=sha.split(b"\0", 1)[0].decode("utf-8", "replace"))

    # -- reading -----------------------------------------------------------------------------------------------
    def decode(self, raw: np.ndarray) -> tuple[Sample, bool]:
        """Decodes a private copy of one buffer; returns the sample and whether its checksum matches."""
        lay = self.layout
        ew, lw, sw = lay.words
        e, lat, sc = lay.embedding_offset // 8, lay.latents_offset // 8, lay.scores_offset // 8
        meta = raw[2:2 + META_WORDS]
        s = Sample(
            sequence=int(meta[0]), capture_ns=int(meta[1]), publish_ns=int(meta[2]), stage_ns=meta[3:10].copy(),
            flags=int(meta[10]), deadline_misses=int(meta[11]), prompt_version=int(meta[12]),
            num_scores=min(int(meta[13]), lay.max_prompts), checksum=int(raw[1]),
        )
        s.embedding = raw[e:e + ew].view("<f4")[: lay.embed_dim].copy()
        n = lay.num_latents * lay.latent_dim
        lat_dtype = "<f4" if lay.latents_dtype == DTYPE_F32 else "<f2"
        s.latents = raw[lat:lat + lw].view(lat_dtype)[:n].astype(np.float32).reshape(lay.num_latents, lay.latent_dim)
        s.scores = raw[sc:sc + sw].view("<f4")[: lay.max_prompts].copy()
        with np.errstate(over="ignore"):
            total = int(np.sum(raw[self._covered] * self._odd, dtype=np.uint64))
        ok = s.checksum == finish_checksum(total, len(self._covered))
        return s, ok

    def read_latest(self, camera: int) -> tuple[Sample, SampleInfo]:
        """The camera's latest complete sample. Raises NotRunning, Stale, NoSample, RetriesExhausted, ..."""
        hb_age, remapped = self._ensure_alive()
        lay = self.layout
        if not 0 <= camera < lay.cameras:
            raise ShmError(f"camera {camera} does not exist (the segment has {lay.cameras})")
        words = self._words
        slot = (lay.slots_offset + camera * lay.slot_stride) // 8
        stride = lay.buffer_stride // 8
        attempt = 0
        while True:
            n = int(words[slot])
            if n == 0:
                raise NoSample(f"camera {camera} has published nothing yet")
            _fence()
            base = slot + 8 + (n % BUFFERS_PER_SLOT) * stride
            s1 = int(words[base])
            if s1 & 1 == 0:
                _fence()
                raw = words[base:base + stride].copy()
                _fence()
                if int(words[base]) == s1:
                    sample, ok = self.decode(raw)
                    if ok or not self.verify_checksum:
                        info = SampleInfo(age_ns=max(0, _now_ns() - sample.capture_ns), heartbeat_age_ns=hb_age,
                                          generation=self.generation, retries=attempt,
                                          published=int(words[slot]), remapped=remapped)
                        return sample, info
            if attempt >= self.max_retries:
                raise RetriesExhausted(f"camera {camera}: every one of {self.max_retries} retries overlapped a write")
            attempt += 1

    def prompts(self) -> tuple[int, list[str]]:
        """(version, labels) of the prompt table."""
        lay = self.layout
        base = lay.prompts_offset
        for _ in range(self.max_retries + 1):
            s1 = int(self._words[base // 8])
            if s1 & 1:
                continue
            _fence()
            block = bytes(self._mm[base:base + 64 + lay.max_prompts * LABEL_BYTES])
            _fence()
            if int(self._words[base // 8]) != s1:
                continue
            version = int.from_bytes(block[8:16], "little")
            count = min(int.from_bytes(block[16:24], "little"), lay.max_prompts)
            labels = [block[64 + i * LABEL_BYTES:64 + (i + 1) * LABEL_BYTES].split(b"\0", 1)[0]
                      .decode("utf-8", "replace") for i in range(count)]
            return version, labels
        raise RetriesExhausted("prompt table: every retry overlapped a write")

    def counters(self, camera: int) -> dict:
        """The camera's counters from the status block (each whole; not a snapshot of the set)."""
        lay = self.layout
        if not 0 <= camera < lay.cameras:
            raise ShmError(f"camera {camera} does not exist")
        b = (lay.status_offset + 64 + camera * STATUS_CAMERA_STRIDE) // 8
        w = self._words[b:b + 16].copy()
        return dict(captured=int(w[0]), dropped=int(w[1]), late=[int(x) for x in w[2:2 + STAGES]],
                    reconnects=int(w[9]), processed=int(w[10]), corrupt=int(w[11]), errors=int(w[12]),
                    flags=int(w[13]), last_overrun_ns=int(w[14]), last_late_stages=int(w[15]))

    def memory_high_water(self) -> int:
        """The writer's memory high-water mark in bytes (VmHWM), from the status block."""
        return int(self._words[self.layout.status_offset // 8])

    def recordings(self) -> dict:
        """The writer's flight-recorder counters (docs/recorder.md): recordings made, triggers dropped while the
        previous recording was written, recordings that failed. All 0 without a recorder."""
        b = self.layout.status_offset // 8
        w = self._words[b + 1:b + 4].copy()
        return dict(made=int(w[0]), dropped=int(w[1]), errors=int(w[2]))


def format_sample(camera: int, sample: Sample, info: SampleInfo, labels: list[str], top: int = 3) -> str:
    line = (f"cam {camera} seq {sample.sequence} age {info.age_ns / 1e6:.1f} ms hb {info.heartbeat_age_ns / 1e6:.1f} ms "
            f"e2e {int(sample.stage_ns[6]) / 1e6:.1f} ms flags {describe_flags(sample.flags)}")
    best = sample.top(top)
    if best:
        line += " top: " + ", ".join(f"{labels[i] if i < len(labels) else '?'} {s:.3f}" for i, s in best)
    return line


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ocellus_tools.shm", description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", default="/ocellus")
    p.add_argument("--follow", action="store_true", help="keep printing, following restarts")
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args(argv)
    reader = None
    while True:
        try:
            if reader is None:
                reader = Reader(args.name)
            _, labels = reader.prompts()
            for cam in range(reader.layout.cameras):
                try:
                    sample, info = reader.read_latest(cam)
                    print(format_sample(cam, sample, info, labels), flush=True)
                except NoSample as e:
                    print(f"cam {cam}: {e}", flush=True)
        except ShmError as e:
            print(f"{args.name}: {type(e).__name__}: {e}", flush=True)
            if not args.follow:
                return 1
        if not args.follow:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
