"""Tests of ocellus_tools.shm against segments written here from docs/shm-layout.md.

Also the Python reader of the multi-process stress test (tests/shm_stress.rs runs
``python tools/tests/test_shm.py stress-read NAME COUNT``).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from ocellus_tools import shm


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class SegmentWriter:
    """A minimal writer of the documented layout (single buffer write, for tests only)."""

    def __init__(self, name, cameras=1, e=6, l=2, d=5, k=3, dtype=shm.DTYPE_F16, generation=7, mode=0o640):
        self.path = "/dev/shm" + name
        self.lay = shm.Layout.compute(cameras, e, l, d, k, dtype)
        self.words = np.zeros(self.lay.total_size // 8, dtype="<u8")
        w, lay = self.words, self.lay
        hdr = dict(magic=shm.MAGIC, version=shm.LAYOUT_VERSION, total_size=lay.total_size, layout_hash=lay.hash,
                   generation=generation, writer_pid=os.getpid(), start_realtime_ns=time.time_ns(),
                   start_monotonic_ns=_now(), state=shm.STATE_RUNNING, heartbeat_ns=_now(),
                   heartbeat_period_ns=100_000_000, cameras=cameras, embed_dim=e, num_latents=l, latent_dim=d,
                   max_prompts=k, latents_dtype=dtype, label_bytes=shm.LABEL_BYTES,
                   buffers_per_slot=shm.BUFFERS_PER_SLOT, prompts_offset=lay.prompts_offset,
                   status_offset=lay.status_offset, slots_offset=lay.slots_offset, slot_stride=lay.slot_stride,
                   buffer_stride=lay.buffer_stride, embedding_offset=lay.embedding_offset,
                   latents_offset=lay.latents_offset, scores_offset=lay.scores_offset)
        for key, value in hdr.items():
            w[shm.H[key]] = value
        self.mode = mode
        self.flush()

    def flush(self):
        """Writes the image in place (readers map the same object), creating the object on the first call."""
        if not getattr(self, "_created", False):
            if os.path.exists(self.path):
                os.unlink(self.path)  # a restarted writer makes a new object, as ShmWriter does
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, self.mode)
            os.close(fd)
            self._created = True
        with open(self.path, "r+b") as f:
            f.write(self.words.tobytes())

    def publish(self, camera, seq, emb, lat, scores, n=1):
        lay = self.lay
        slot = (lay.slots_offset + camera * lay.slot_stride) // 8
        base = slot + 8 + (n % shm.BUFFERS_PER_SLOT) * (lay.buffer_stride // 8)
        buf = np.zeros(lay.buffer_stride // 8, dtype="<u8")
        meta = [seq, _now() - 5_000_000, _now()] + [1, 2, 3, 4, 5, 6, 7] + [shm.FLAG_DEGRADED, 9, 11, len(scores)]
        buf[2:16] = meta
        ew, lw, sw = lay.words

        def put(offset, arr, dt, nwords):
            raw = np.zeros(nwords * 8, dtype=np.uint8)
            b = np.asarray(arr, dtype=dt).tobytes()
            raw[: len(b)] = np.frombuffer(b, dtype=np.uint8)
            buf[offset // 8: offset // 8 + nwords] = raw.view("<u8")

        put(lay.embedding_offset, emb, "<f4", ew)
        put(lay.latents_offset, np.ravel(lat), "<f4" if lay.latents_dtype == shm.DTYPE_F32 else "<f2", lw)
        put(lay.scores_offset, scores, "<f4", sw)
        e, la, sc = lay.embedding_offset // 8, lay.latents_offset // 8, lay.scores_offset // 8
        covered = np.concatenate([np.arange(2, 16), np.arange(e, e + ew), np.arange(la, la + lw),
                                  np.arange(sc, sc + sw)])
        odd = np.arange(len(covered), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        total = int(np.sum(buf[covered] * odd, dtype=np.uint64))
        buf[1] = shm.finish_checksum(total, len(covered))
        buf[0] = 2 * n
        self.words[base: base + len(buf)] = buf
        self.words[slot] = n
        self.flush()

    def set(self, key, value):
        self.words[shm.H[key]] = value
        self.flush()


@pytest.fixture
def name():
    n = f"/ocellus-pytest-{os.getpid()}"
    yield n
    if os.path.exists("/dev/shm" + n):
        os.unlink("/dev/shm" + n)


def test_reads_a_published_sample(name):
    w = SegmentWriter(name)
    emb = np.arange(6, dtype=np.float32) / 4
    lat = np.arange(10, dtype=np.float32).reshape(2, 5) - 3
    w.publish(0, 42, emb, lat, [0.5, 0.25, 0.125])
    with shm.Reader(name) as r:
        s, info = r.read_latest(0)
        assert s.sequence == 42
        np.testing.assert_array_equal(s.embedding, emb)
        np.testing.assert_array_equal(s.latents, lat)
        assert list(s.scores[: s.num_scores]) == [0.5, 0.25, 0.125]
        assert info.age_ns >= 5_000_000 and info.generation == 7 and not info.remapped
        assert s.top(1) == [(0, 0.5)]
        assert "degraded" in shm.format_sample(0, s, info, ["a", "b", "c"])


def test_no_sample_yet_and_bad_camera(name):
    SegmentWriter(name, cameras=2)
    with shm.Reader(name) as r:
        with pytest.raises(shm.NoSample):
            r.read_latest(1)
        with pytest.raises(shm.ShmError):
            r.read_latest(2)


def test_missing_segment_is_not_running(name):
    with pytest.raises(shm.NotRunning):
        shm.Reader(name)


def test_wrong_version_and_foreign_segments_are_refused(name):
    w = SegmentWriter(name)
    w.set("version", 2)
    with pytest.raises(shm.VersionMismatch):
        shm.Reader(name)
    w.set("version", shm.LAYOUT_VERSION)
    w.set("layout_hash", 1)
    with pytest.raises(shm.Foreign):
        shm.Reader(name)
    w.set("magic", int.from_bytes(b"NOTOCELL", "little"))
    with pytest.raises(shm.Foreign):
        shm.Reader(name)


def test_world_writable_segment_is_refused(name):
    SegmentWriter(name, mode=0o666)
    with pytest.raises(shm.Foreign):
        shm.Reader(name)


def test_write_in_progress_exhausts_retries(name):
    w = SegmentWriter(name)
    w.publish(0, 1, np.zeros(6), np.zeros(10), [])
    lay = w.lay
    base = (lay.slots_offset + 64 + (1 % 3) * lay.buffer_stride) // 8
    w.words[base] = 3  # odd: a write in progress
    w.flush()
    with shm.Reader(name, max_retries=5) as r:
        with pytest.raises(shm.RetriesExhausted):
            r.read_latest(0)


def test_corrupt_checksum_is_never_accepted(name):
    w = SegmentWriter(name)
    w.publish(0, 1, np.ones(6), np.zeros(10), [])
    lay = w.lay
    emb = (lay.slots_offset + 64 + (1 % 3) * lay.buffer_stride + lay.embedding_offset) // 8
    w.words[emb] ^= 1
    w.flush()
    with shm.Reader(name, max_retries=3) as r:
        with pytest.raises(shm.RetriesExhausted):
            r.read_latest(0)


def test_stale_stopped_and_restart_are_followed(name):
    w = SegmentWriter(name, generation=1)
    w.publish(0, 5, np.zeros(6), np.zeros(10), [])
    r = shm.Reader(name, reopen_interval=0.0)
    assert r.read_latest(0)[0].sequence == 5
    w.set("heartbeat_ns", _now() - 10**9)
    with pytest.raises(shm.Stale):
        r.read_latest(0)
    w.set("state", shm.STATE_STOPPED)
    with pytest.raises(shm.NotRunning):
        r.read_latest(0)
    # A new writer (new generation, other dimensions) replaces the segment: the same reader follows it.
    w2 = SegmentWriter(name, e=8, generation=2)
    w2.publish(0, 77, np.arange(8), np.zeros(10), [1.0])
    s, info = r.read_latest(0)
    assert (s.sequence, info.generation, info.remapped, r.remaps) == (77, 2, True, 1)
    assert len(s.embedding) == 8
    r.close()


def test_prompts_and_counters(name):
    w = SegmentWriter(name)
    lay = w.lay
    b = lay.prompts_offset // 8
    w.words[b + 1] = 3
    w.words[b + 2] = 2
    raw = np.zeros(2 * shm.LABEL_BYTES, dtype=np.uint8)
    raw[:3] = np.frombuffer(b"cat", dtype=np.uint8)
    raw[64:67] = np.frombuffer(b"dog", dtype=np.uint8)
    w.words[b + 8: b + 24] = raw.view("<u8")
    c = (lay.status_offset + 64) // 8
    w.words[c] = 10
    w.words[c + 1] = 4
    w.words[lay.status_offset // 8 + 1: lay.status_offset // 8 + 4] = [5, 6, 7]
    w.flush()
    with shm.Reader(name) as r:
        assert r.prompts() == (3, ["cat", "dog"])
        counters = r.counters(0)
        assert counters["captured"] == 10 and counters["dropped"] == 4
        assert r.recordings() == {"made": 5, "dropped": 6, "errors": 7}
        assert r.writer()["alive"]


# ---- the stress test's Python reader ----------------------------------------------------------------------------

def _intact(s: shm.Sample, e: int, n_lat: int, k: int) -> bool:
    seq = s.sequence
    m = seq % 251  # the payload variant (tests/shm_stress.rs)
    emb = ((m * 31 + np.arange(e, dtype=np.uint64)) % 65536).astype(np.float32)
    lat = ((m + np.arange(n_lat, dtype=np.uint64)) % 1024).astype(np.float32)
    sc = ((m * 7 + np.arange(k, dtype=np.uint64)) % 1000).astype(np.float32)
    if not (np.array_equal(s.embedding, emb) and np.array_equal(s.latents.ravel(), lat)
            and np.array_equal(s.scores, sc)):
        return False
    bits = np.concatenate([emb.view(np.uint32), lat.view(np.uint32), sc.view(np.uint32)]).astype(np.uint64)
    odd = np.arange(len(bits), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        total = (seq * 0x9E3779B97F4A7C15 + int(np.sum(bits * odd, dtype=np.uint64))) & ((1 << 64) - 1)
    return (int(s.stage_ns[0]) == seq and s.prompt_version == seq ^ 0xABCD and s.num_scores == k
            and s.deadline_misses == total)


def stress_read(name: str, target: int) -> int:
    deadline = time.monotonic() + 5
    while True:
        try:
            r = shm.Reader(name, verify_checksum=False)
            break
        except shm.NotRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    lay = r.layout
    accepted = torn = exhausted = other = retries = 0
    stale_since = None
    while accepted < target:
        try:
            s, info = r.read_latest(0)
            stale_since = None
        except shm.Stale:
            # The writer is starved or gone: give up if it stays so (the parent test may have failed).
            stale_since = stale_since or time.monotonic()
            if time.monotonic() - stale_since > 10:
                break
            other += 1
            continue
        except shm.RetriesExhausted:
            exhausted += 1
            continue
        except shm.NotRunning as e:
            print(f"python reader: writer went away: {e}", file=sys.stderr)
            break
        except shm.ShmError:
            other += 1
            continue
        if _intact(s, lay.embed_dim, lay.num_latents * lay.latent_dim, lay.max_prompts):
            accepted += 1
            retries += info.retries
        else:
            torn += 1
    print(f"RESULT python accepted={accepted} torn={torn} exhausted={exhausted} other={other} retries={retries}",
          flush=True)
    return 0 if torn == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "stress-read":
        raise SystemExit(stress_read(sys.argv[2], int(sys.argv[3])))
    raise SystemExit(f"usage: {sys.argv[0]} stress-read NAME COUNT")


def _object(name, data):
    path = "/dev/shm" + name
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def test_an_empty_object_is_being_created_and_a_short_one_is_foreign(name):
    # docs/shm-layout.md: a writer sizes the object in one ftruncate, so 0 bytes is a segment being created and
    # 1..383 bytes never is one. The Rust and C readers say the same.
    _object(name, b"")
    with pytest.raises(shm.NotRunning):
        shm.Reader(name)
    _object(name, b"OCELLSHM" + bytes(92))
    with pytest.raises(shm.Foreign):
        shm.Reader(name)


def test_segment_names_follow_the_one_rule():
    for ok in ["/ocellus", "/a", "/cam-0_front.v2", "/" + "x" * 200]:
        assert shm.name_ok(ok), ok
    for bad in ["ocellus", "/", "/a/b", "/.", "/..", "/" + "x" * 201, "/a b", "/é"]:
        assert not shm.name_ok(bad), bad
    with pytest.raises(shm.Foreign):
        shm.Reader("/a b")
