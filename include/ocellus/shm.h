/*
 * ocellus/shm.h - read ocellus results from shared memory (layout version 1, docs/shm-layout.md).
 *
 * Header-only C99 (usable from C++), libc only (POSIX shm_open/mmap/fstat, clock_gettime). Atomics are the
 * GCC/Clang __atomic builtins. Linux, x86-64 or AArch64, little-endian.
 *
 * Include this header first in its translation unit (or define _POSIX_C_SOURCE >= 200809L yourself):
 *
 *     ocellus_shm shm;
 *     if (ocellus_shm_open(&shm, "/ocellus") != OCELLUS_SHM_OK) ...;
 *     float emb[E], lat[L * D], sc[K];              // sizes from ocellus_shm_dims()
 *     ocellus_shm_sample s = { .embedding = emb, .embedding_cap = E, ... };
 *     ocellus_shm_info info;
 *     int rc = ocellus_shm_read_latest(&shm, camera, &s, &info);   // never blocks, never waits on the writer
 *     ...
 *     ocellus_shm_close(&shm);
 *
 * ocellus_shm_read_latest performs no system call while the writer is alive. When the writer is stopped or
 * stale it looks for a new segment under the same name (at most every reopen_interval_ns) and re-maps onto it,
 * so a restarted ocellus is picked up without restarting the reader.
 */
#ifndef OCELLUS_SHM_H
#define OCELLUS_SHM_H

#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- layout (docs/shm-layout.md); every field is a little-endian uint64 ---- */
#define OCELLUS_SHM_MAGIC 0x4d48534c4c45434fULL /* "OCELLSHM" */
#define OCELLUS_SHM_LAYOUT_VERSION 1u
#define OCELLUS_SHM_HEADER_SIZE 384u
#define OCELLUS_SHM_LABEL_BYTES 64u
#define OCELLUS_SHM_BUFFERS_PER_SLOT 3u
#define OCELLUS_SHM_STATUS_CAMERA_STRIDE 128u
#define OCELLUS_SHM_STAGES 7u

#define OCELLUS_SHM_H_MAGIC 0u
#define OCELLUS_SHM_H_VERSION 8u
#define OCELLUS_SHM_H_TOTAL_SIZE 16u
#define OCELLUS_SHM_H_LAYOUT_HASH 24u
#define OCELLUS_SHM_H_GENERATION 32u
#define OCELLUS_SHM_H_WRITER_PID 40u
#define OCELLUS_SHM_H_START_REALTIME_NS 48u
#define OCELLUS_SHM_H_START_MONOTONIC_NS 56u
#define OCELLUS_SHM_H_STATE 64u
#define OCELLUS_SHM_H_HEARTBEAT_NS 72u
#define OCELLUS_SHM_H_HEARTBEAT_PERIOD_NS 80u
#define OCELLUS_SHM_H_CAMERAS 128u
#define OCELLUS_SHM_H_EMBED_DIM 136u
#define OCELLUS_SHM_H_NUM_LATENTS 144u
#define OCELLUS_SHM_H_LATENT_DIM 152u
#define OCELLUS_SHM_H_MAX_PROMPTS 160u
#define OCELLUS_SHM_H_LATENTS_DTYPE 168u
#define OCELLUS_SHM_H_LABEL_BYTES 176u
#define OCELLUS_SHM_H_BUFFERS_PER_SLOT 184u
#define OCELLUS_SHM_H_PROMPTS_OFFSET 192u
#define OCELLUS_SHM_H_STATUS_OFFSET 200u
#define OCELLUS_SHM_H_SLOTS_OFFSET 208u
#define OCELLUS_SHM_H_SLOT_STRIDE 216u
#define OCELLUS_SHM_H_BUFFER_STRIDE 224u
#define OCELLUS_SHM_H_EMBEDDING_OFFSET 232u
#define OCELLUS_SHM_H_LATENTS_OFFSET 240u
#define OCELLUS_SHM_H_SCORES_OFFSET 248u
#define OCELLUS_SHM_H_MODEL_ID 256u
#define OCELLUS_SHM_H_MODEL_SHA256 304u

#define OCELLUS_SHM_STATE_RUNNING 1u
#define OCELLUS_SHM_STATE_STOPPED 2u
#define OCELLUS_SHM_DTYPE_F32 1u
#define OCELLUS_SHM_DTYPE_F16 2u

#define OCELLUS_SHM_P_SEQ 0u
#define OCELLUS_SHM_P_VERSION 8u
#define OCELLUS_SHM_P_COUNT 16u
#define OCELLUS_SHM_P_LABELS 64u
#define OCELLUS_SHM_SLOT_LATEST 0u
#define OCELLUS_SHM_SLOT_BUFFERS 64u
#define OCELLUS_SHM_B_SEQ 0u
#define OCELLUS_SHM_B_CHECKSUM 8u
#define OCELLUS_SHM_B_SEQUENCE 16u
#define OCELLUS_SHM_B_PAYLOAD 128u
#define OCELLUS_SHM_META_WORDS 14u

/* stage indices of stage_ns[] */
#define OCELLUS_SHM_STAGE_DEQUEUE 0
#define OCELLUS_SHM_STAGE_PREPARE 1
#define OCELLUS_SHM_STAGE_ENCODER 2
#define OCELLUS_SHM_STAGE_RESAMPLER 3
#define OCELLUS_SHM_STAGE_SCORE 4
#define OCELLUS_SHM_STAGE_PUBLISH 5
#define OCELLUS_SHM_STAGE_END_TO_END 6
/* flags: bit s (0..6) = stage s late */
#define OCELLUS_SHM_FLAG_LATE_MASK 0x7full
#define OCELLUS_SHM_FLAG_CAMERA_LOST (1ull << 16)
#define OCELLUS_SHM_FLAG_CAMERA_RESTARTED (1ull << 17)
#define OCELLUS_SHM_FLAG_DEGRADED (1ull << 18)
#define OCELLUS_SHM_FLAG_STALLED (1ull << 19)

/* ---- results ---- */
#define OCELLUS_SHM_OK 0
#define OCELLUS_SHM_MAX_NAME 200             /* longest segment name after the leading '/' */
#define OCELLUS_SHM_E_NOT_RUNNING (-1)       /* no segment, being created (0 bytes or no magic yet), or the writer stopped */
#define OCELLUS_SHM_E_STALE (-2)             /* the writer's heartbeat is older than two periods */
#define OCELLUS_SHM_E_VERSION (-3)           /* another layout version */
#define OCELLUS_SHM_E_FOREIGN (-4)           /* not an ocellus segment / inconsistent header / unsafe mode */
#define OCELLUS_SHM_E_RETRIES_EXHAUSTED (-5) /* every attempt overlapped a write */
#define OCELLUS_SHM_E_NO_SAMPLE (-6)         /* nothing published for this camera yet */
#define OCELLUS_SHM_E_ARG (-7)               /* bad camera index, name, or buffers too small */
#define OCELLUS_SHM_E_IO (-8)                /* a system call failed: see errno */

typedef struct ocellus_shm {
    char name[256];
    const unsigned char *base; /* read-only mapping, NULL when closed */
    size_t size;
    /* validated geometry */
    uint64_t generation, writer_pid, heartbeat_period_ns;
    uint32_t cameras, embed_dim, num_latents, latent_dim, max_prompts, latents_dtype;
    uint64_t prompts_offset, status_offset, slots_offset, slot_stride, buffer_stride;
    uint64_t embedding_offset, latents_offset, scores_offset;
    /* options (set after open; defaults from ocellus_shm_open) */
    uint32_t max_retries;         /* default 1000 */
    int verify_checksum;          /* default 1 */
    uint64_t reopen_interval_ns;  /* default 50 ms */
    uint64_t stale_after_ns;      /* 0: two heartbeat periods */
    uint64_t last_reopen_ns;
    uint64_t remaps;
} ocellus_shm;

typedef struct ocellus_shm_sample {
    /* caller-owned output buffers and their capacities (in floats) */
    float *embedding;
    size_t embedding_cap;
    float *latents; /* L x D, converted to float when the segment stores f16 */
    size_t latents_cap;
    float *scores;
    size_t scores_cap;
    /* filled by ocellus_shm_read_latest */
    uint64_t sequence, capture_ns, publish_ns;
    uint64_t stage_ns[OCELLUS_SHM_STAGES];
    uint64_t flags, deadline_misses, prompt_version;
    uint32_t num_scores;
    uint64_t checksum; /* as stored */
} ocellus_shm_sample;

typedef struct ocellus_shm_info {
    uint64_t age_ns;           /* now - capture time */
    uint64_t heartbeat_age_ns; /* now - writer heartbeat */
    uint64_t generation;
    uint64_t published; /* samples published into the camera's slot */
    uint32_t retries;
    int remapped; /* this call followed a restarted writer */
} ocellus_shm_info;

/* ---- implementation ---- */

static inline uint64_t ocellus_shm__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline const uint64_t *ocellus_shm__w(const unsigned char *base, uint64_t offset) {
    return (const uint64_t *)(const void *)(base + offset);
}

static inline uint64_t ocellus_shm__load(const unsigned char *base, uint64_t offset) {
    return __atomic_load_n(ocellus_shm__w(base, offset), __ATOMIC_RELAXED);
}

static inline uint64_t ocellus_shm__load_acq(const unsigned char *base, uint64_t offset) {
    return __atomic_load_n(ocellus_shm__w(base, offset), __ATOMIC_ACQUIRE);
}

static inline uint64_t ocellus_shm__round64(uint64_t x) { return (x + 63u) / 64u * 64u; }

static inline uint64_t ocellus_shm__fnv(uint64_t h, uint64_t w) {
    int i;
    for (i = 0; i < 8; i++) {
        h ^= (w >> (8 * i)) & 0xffu;
        h *= 0x00000100000001b3ull;
    }
    return h;
}

static inline uint64_t ocellus_shm__finish(uint64_t sum, uint64_t count) {
    uint64_t x = sum ^ count;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* IEEE 754 half -> float. */
static inline float ocellus_shm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float ocellus_shm__f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Validates the header of a mapping of `size` bytes and fills the geometry of `s`. */
static inline int ocellus_shm__validate(ocellus_shm *s, const unsigned char *base, size_t size) {
    uint64_t h[OCELLUS_SHM_HEADER_SIZE / 8];
    uint64_t cameras, e, l, d, k, dtype, es, latents, hash, i;
    uint64_t prompts_off, status_off, slots_off, emb_off, lat_off, sc_off, buf_stride, slot_stride, total;
    /* 0 bytes: being created (not sized yet). A writer sizes the object in one ftruncate, so 1..383 bytes is
     * never a segment being created: not an ocellus segment. */
    if (size == 0) return OCELLUS_SHM_E_NOT_RUNNING;
    if (size < OCELLUS_SHM_HEADER_SIZE) return OCELLUS_SHM_E_FOREIGN;
    h[0] = ocellus_shm__load_acq(base, 0);
    for (i = 1; i < OCELLUS_SHM_HEADER_SIZE / 8; i++) h[i] = ocellus_shm__load(base, i * 8);
    if (h[0] == 0) return OCELLUS_SHM_E_NOT_RUNNING;
    if (h[0] != OCELLUS_SHM_MAGIC) return OCELLUS_SHM_E_FOREIGN;
    if (h[OCELLUS_SHM_H_VERSION / 8] != OCELLUS_SHM_LAYOUT_VERSION) return OCELLUS_SHM_E_VERSION;
    if (h[OCELLUS_SHM_H_TOTAL_SIZE / 8] != (uint64_t)size) return OCELLUS_SHM_E_FOREIGN;
    cameras = h[OCELLUS_SHM_H_CAMERAS / 8];
    e = h[OCELLUS_SHM_H_EMBED_DIM / 8];
    l = h[OCELLUS_SHM_H_NUM_LATENTS / 8];
    d = h[OCELLUS_SHM_H_LATENT_DIM / 8];
    k = h[OCELLUS_SHM_H_MAX_PROMPTS / 8];
    dtype = h[OCELLUS_SHM_H_LATENTS_DTYPE / 8];
    if (cameras < 1 || cameras > 64 || e < 1 || e > 65536 || l < 1 || l > 65536 || d < 1 || d > 65536 ||
        k < 1 || k > 4096 || l * d > (1u << 24) || (dtype != OCELLUS_SHM_DTYPE_F32 && dtype != OCELLUS_SHM_DTYPE_F16))
        return OCELLUS_SHM_E_FOREIGN;
    es = dtype == OCELLUS_SHM_DTYPE_F32 ? 4 : 2;
    latents = l * d;
    prompts_off = OCELLUS_SHM_HEADER_SIZE;
    status_off = prompts_off + ocellus_shm__round64(64 + k * OCELLUS_SHM_LABEL_BYTES);
    slots_off = status_off + 64 + cameras * OCELLUS_SHM_STATUS_CAMERA_STRIDE;
    emb_off = OCELLUS_SHM_B_PAYLOAD;
    lat_off = emb_off + ocellus_shm__round64(e * 4);
    sc_off = lat_off + ocellus_shm__round64(latents * es);
    buf_stride = sc_off + ocellus_shm__round64(k * 4);
    slot_stride = OCELLUS_SHM_SLOT_BUFFERS + OCELLUS_SHM_BUFFERS_PER_SLOT * buf_stride;
    total = slots_off + cameras * slot_stride;
    if (total != (uint64_t)size) return OCELLUS_SHM_E_FOREIGN;
    {
        const uint64_t words[19] = {OCELLUS_SHM_LAYOUT_VERSION, OCELLUS_SHM_HEADER_SIZE, cameras, e, l, d, k, dtype,
                                    OCELLUS_SHM_LABEL_BYTES, OCELLUS_SHM_BUFFERS_PER_SLOT, prompts_off, status_off,
                                    slots_off, slot_stride, buf_stride, emb_off, lat_off, sc_off, total};
        hash = 0xcbf29ce484222325ull;
        for (i = 0; i < 19; i++) hash = ocellus_shm__fnv(hash, words[i]);
    }
    if (h[OCELLUS_SHM_H_LAYOUT_HASH / 8] != hash || h[OCELLUS_SHM_H_LABEL_BYTES / 8] != OCELLUS_SHM_LABEL_BYTES ||
        h[OCELLUS_SHM_H_BUFFERS_PER_SLOT / 8] != OCELLUS_SHM_BUFFERS_PER_SLOT ||
        h[OCELLUS_SHM_H_PROMPTS_OFFSET / 8] != prompts_off || h[OCELLUS_SHM_H_STATUS_OFFSET / 8] != status_off ||
        h[OCELLUS_SHM_H_SLOTS_OFFSET / 8] != slots_off || h[OCELLUS_SHM_H_SLOT_STRIDE / 8] != slot_stride ||
        h[OCELLUS_SHM_H_BUFFER_STRIDE / 8] != buf_stride || h[OCELLUS_SHM_H_EMBEDDING_OFFSET / 8] != emb_off ||
        h[OCELLUS_SHM_H_LATENTS_OFFSET / 8] != lat_off || h[OCELLUS_SHM_H_SCORES_OFFSET / 8] != sc_off)
        return OCELLUS_SHM_E_FOREIGN;
    s->generation = h[OCELLUS_SHM_H_GENERATION / 8];
    s->writer_pid = h[OCELLUS_SHM_H_WRITER_PID / 8];
    s->heartbeat_period_ns = h[OCELLUS_SHM_H_HEARTBEAT_PERIOD_NS / 8] ? h[OCELLUS_SHM_H_HEARTBEAT_PERIOD_NS / 8] : 1;
    s->cameras = (uint32_t)cameras;
    s->embed_dim = (uint32_t)e;
    s->num_latents = (uint32_t)l;
    s->latent_dim = (uint32_t)d;
    s->max_prompts = (uint32_t)k;
    s->latents_dtype = (uint32_t)dtype;
    s->prompts_offset = prompts_off;
    s->status_offset = status_off;
    s->slots_offset = slots_off;
    s->slot_stride = slot_stride;
    s->buffer_stride = buf_stride;
    s->embedding_offset = emb_off;
    s->latents_offset = lat_off;
    s->scores_offset = sc_off;
    return OCELLUS_SHM_OK;
}

/* Opens and maps `name` read-only into `s->base`/`s->size` and validates it; `s` is unchanged on error. */
static inline int ocellus_shm__map(ocellus_shm *s, const char *name) {
    struct stat st;
    void *p;
    int fd, rc;
    ocellus_shm tmp = *s;
    fd = shm_open(name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) return errno == ENOENT ? OCELLUS_SHM_E_NOT_RUNNING : OCELLUS_SHM_E_IO;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return OCELLUS_SHM_E_IO;
    }
    if (st.st_mode & S_IWOTH) {
        close(fd);
        return OCELLUS_SHM_E_FOREIGN;
    }
    if (st.st_size < (off_t)OCELLUS_SHM_HEADER_SIZE) {
        close(fd);
        return st.st_size == 0 ? OCELLUS_SHM_E_NOT_RUNNING : OCELLUS_SHM_E_FOREIGN;
    }
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return OCELLUS_SHM_E_IO;
    rc = ocellus_shm__validate(&tmp, (const unsigned char *)p, (size_t)st.st_size);
    if (rc != OCELLUS_SHM_OK) {
        munmap(p, (size_t)st.st_size);
        return rc;
    }
    tmp.base = (const unsigned char *)p;
    tmp.size = (size_t)st.st_size;
    *s = tmp;
    return OCELLUS_SHM_OK;
}

/* The segment-name rule of docs/shm-layout.md: '/' then 1..=200 characters of A-Z a-z 0-9 . _ -, not "." or
 * "..". Returns 1 when `name` follows it. */
static inline int ocellus_shm_name_ok(const char *name) {
    size_t n = strlen(name), i;
    if (n < 2 || n > 1 + OCELLUS_SHM_MAX_NAME || name[0] != '/') return 0;
    if (strcmp(name, "/.") == 0 || strcmp(name, "/..") == 0) return 0;
    for (i = 1; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-';
        if (!ok) return 0;
    }
    return 1;
}

/* Opens `name` (e.g. "/ocellus"). Returns OCELLUS_SHM_OK or a negative OCELLUS_SHM_E_*. */
static inline int ocellus_shm_open(ocellus_shm *s, const char *name) {
    size_t n = strlen(name);
    memset(s, 0, sizeof *s);
    if (!ocellus_shm_name_ok(name)) return OCELLUS_SHM_E_ARG;
    memcpy(s->name, name, n + 1);
    s->max_retries = 1000;
    s->verify_checksum = 1;
    s->reopen_interval_ns = 50000000ull;
    s->last_reopen_ns = ocellus_shm__now_ns();
    return ocellus_shm__map(s, name);
}

static inline void ocellus_shm_close(ocellus_shm *s) {
    if (s->base) munmap((void *)(uintptr_t)s->base, s->size);
    s->base = NULL;
    s->size = 0;
}

static inline void ocellus_shm_dims(const ocellus_shm *s, uint32_t *cameras, uint32_t *e, uint32_t *l, uint32_t *d,
                                    uint32_t *k) {
    *cameras = s->cameras;
    *e = s->embed_dim;
    *l = s->num_latents;
    *d = s->latent_dim;
    *k = s->max_prompts;
}

/* Liveness; on a stopped or stale writer, looks (rate-limited) for a new generation and re-maps onto it. */
static inline int ocellus_shm__ensure_alive(ocellus_shm *s, uint64_t *hb_age, int *remapped) {
    int tries;
    *remapped = 0;
    for (tries = 0; tries < 2; tries++) {
        uint64_t now = ocellus_shm__now_ns();
        uint64_t state = ocellus_shm__load_acq(s->base, OCELLUS_SHM_H_STATE);
        uint64_t hb = ocellus_shm__load(s->base, OCELLUS_SHM_H_HEARTBEAT_NS);
        uint64_t stale_after = s->stale_after_ns ? s->stale_after_ns : 2 * s->heartbeat_period_ns;
        *hb_age = now > hb ? now - hb : 0;
        if (state == OCELLUS_SHM_STATE_RUNNING && *hb_age < stale_after) return OCELLUS_SHM_OK;
        if (!*remapped && now - s->last_reopen_ns >= s->reopen_interval_ns) {
            ocellus_shm fresh = *s;
            int rc;
            s->last_reopen_ns = now;
            fresh.last_reopen_ns = now;
            rc = ocellus_shm__map(&fresh, s->name);
            if (rc == OCELLUS_SHM_OK) {
                if (fresh.generation != s->generation) {
                    ocellus_shm_close(s);
                    *s = fresh;
                    s->remaps++;
                    *remapped = 1;
                    continue;
                }
                munmap((void *)(uintptr_t)fresh.base, fresh.size);
            } else if (rc != OCELLUS_SHM_E_NOT_RUNNING) {
                return rc;
            }
        }
        return state == OCELLUS_SHM_STATE_STOPPED ? OCELLUS_SHM_E_NOT_RUNNING : OCELLUS_SHM_E_STALE;
    }
    return OCELLUS_SHM_E_STALE;
}

/* Copies buffer `buf` into `out`; returns 1 when the checksum matches (or verification is off). Relaxed loads
 * only: a concurrent write makes values torn, never undefined; the caller's seqlock check decides. */
static inline int ocellus_shm__load_buffer(const ocellus_shm *s, const unsigned char *buf, ocellus_shm_sample *out) {
    uint64_t sum = 0, idx = 0, i, v, meta[OCELLUS_SHM_META_WORDS];
    uint64_t ew = ((uint64_t)s->embed_dim + 1) / 2, n_lat = (uint64_t)s->num_latents * s->latent_dim;
    uint64_t lw = s->latents_dtype == OCELLUS_SHM_DTYPE_F32 ? (n_lat + 1) / 2 : (n_lat + 3) / 4;
    uint64_t sw = ((uint64_t)s->max_prompts + 1) / 2;
    for (i = 0; i < OCELLUS_SHM_META_WORDS; i++, idx++) {
        meta[i] = ocellus_shm__load(buf, OCELLUS_SHM_B_SEQUENCE + 8 * i);
        sum += meta[i] * (2 * idx + 1);
    }
    for (i = 0; i < ew; i++, idx++) {
        v = ocellus_shm__load(buf, s->embedding_offset + 8 * i);
        sum += v * (2 * idx + 1);
        out->embedding[2 * i] = ocellus_shm__f32((uint32_t)v);
        if (2 * i + 1 < s->embed_dim) out->embedding[2 * i + 1] = ocellus_shm__f32((uint32_t)(v >> 32));
    }
    for (i = 0; i < lw; i++, idx++) {
        v = ocellus_shm__load(buf, s->latents_offset + 8 * i);
        sum += v * (2 * idx + 1);
        if (s->latents_dtype == OCELLUS_SHM_DTYPE_F32) {
            out->latents[2 * i] = ocellus_shm__f32((uint32_t)v);
            if (2 * i + 1 < n_lat) out->latents[2 * i + 1] = ocellus_shm__f32((uint32_t)(v >> 32));
        } else {
            uint64_t j;
            for (j = 0; j < 4 && 4 * i + j < n_lat; j++)
                out->latents[4 * i + j] = ocellus_shm_f16_to_f32((uint16_t)(v >> (16 * j)));
        }
    }
    for (i = 0; i < sw; i++, idx++) {
        v = ocellus_shm__load(buf, s->scores_offset + 8 * i);
        sum += v * (2 * idx + 1);
        out->scores[2 * i] = ocellus_shm__f32((uint32_t)v);
        if (2 * i + 1 < s->max_prompts) out->scores[2 * i + 1] = ocellus_shm__f32((uint32_t)(v >> 32));
    }
    out->checksum = ocellus_shm__load(buf, OCELLUS_SHM_B_CHECKSUM);
    out->sequence = meta[0];
    out->capture_ns = meta[1];
    out->publish_ns = meta[2];
    for (i = 0; i < OCELLUS_SHM_STAGES; i++) out->stage_ns[i] = meta[3 + i];
    out->flags = meta[10];
    out->deadline_misses = meta[11];
    out->prompt_version = meta[12];
    out->num_scores = (uint32_t)(meta[13] < s->max_prompts ? meta[13] : s->max_prompts);
    return !s->verify_checksum || out->checksum == ocellus_shm__finish(sum, idx);
}

/* The prompt table: label i names score i of every sample whose prompt_version equals `version`. Filled with
 * the first sample of a prompt set: version 0 and count 0 until then. Re-read it when a sample's prompt_version
 * differs from the version you hold. `labels` has room for `cap` labels; `*count` is set to the labels in use,
 * at most `cap` and K. Sequence-locked like a sample: at most 1 + max_retries attempts. */
static inline int ocellus_shm_read_prompts(const ocellus_shm *s, uint64_t *version,
                                           char (*labels)[OCELLUS_SHM_LABEL_BYTES + 1], uint32_t cap,
                                           uint32_t *count) {
    uint32_t attempt, i, j, n;
    const unsigned char *table = s->base + s->prompts_offset;
    for (attempt = 0; attempt <= s->max_retries; attempt++) {
        uint64_t s1 = __atomic_load_n(ocellus_shm__w(table, OCELLUS_SHM_P_SEQ), __ATOMIC_ACQUIRE);
        uint64_t c;
        if (s1 & 1u) continue;
        *version = ocellus_shm__load(table, OCELLUS_SHM_P_VERSION);
        c = ocellus_shm__load(table, OCELLUS_SHM_P_COUNT);
        n = (uint32_t)(c < s->max_prompts ? c : s->max_prompts);
        if (n > cap) n = cap;
        for (i = 0; i < n; i++) {
            for (j = 0; j < OCELLUS_SHM_LABEL_BYTES / 8; j++) {
                uint64_t w = ocellus_shm__load(table, OCELLUS_SHM_P_LABELS + i * OCELLUS_SHM_LABEL_BYTES + 8 * j);
                memcpy(labels[i] + 8 * j, &w, 8);
            }
            labels[i][OCELLUS_SHM_LABEL_BYTES] = '\0';
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(ocellus_shm__w(table, OCELLUS_SHM_P_SEQ), __ATOMIC_RELAXED) == s1) {
            *count = n;
            return OCELLUS_SHM_OK;
        }
    }
    return OCELLUS_SHM_E_RETRIES_EXHAUSTED;
}

/* One camera's counters in the status block. Each value is whole; the set is not a snapshot. */
typedef struct {
    uint64_t captured, dropped, late[OCELLUS_SHM_STAGES], reconnects, processed, corrupt, errors;
    uint64_t flags;            /* OCELLUS_SHM_FLAG_CAMERA_LOST, OCELLUS_SHM_FLAG_STALLED */
    uint64_t last_overrun_ns;  /* by how much the most recent late frame overran its worst stage (0: none) */
    uint64_t last_late_stages; /* that frame's late bits (bit s = stage s) */
} ocellus_shm_counters;

static inline int ocellus_shm_read_counters(const ocellus_shm *s, uint32_t camera, ocellus_shm_counters *out) {
    uint64_t base, i;
    if (camera >= s->cameras) return OCELLUS_SHM_E_ARG;
    base = s->status_offset + 64 + (uint64_t)camera * OCELLUS_SHM_STATUS_CAMERA_STRIDE;
    out->captured = ocellus_shm__load(s->base, base + 0);
    out->dropped = ocellus_shm__load(s->base, base + 8);
    for (i = 0; i < OCELLUS_SHM_STAGES; i++) out->late[i] = ocellus_shm__load(s->base, base + 16 + 8 * i);
    out->reconnects = ocellus_shm__load(s->base, base + 72);
    out->processed = ocellus_shm__load(s->base, base + 80);
    out->corrupt = ocellus_shm__load(s->base, base + 88);
    out->errors = ocellus_shm__load(s->base, base + 96);
    out->flags = ocellus_shm__load(s->base, base + 104);
    out->last_overrun_ns = ocellus_shm__load(s->base, base + 112);
    out->last_late_stages = ocellus_shm__load(s->base, base + 120);
    return OCELLUS_SHM_OK;
}

/* The writer's memory high-water mark in bytes (VmHWM), from the status block. */
static inline uint64_t ocellus_shm_memory_high_water(const ocellus_shm *s) {
    return ocellus_shm__load(s->base, s->status_offset);
}

/* The writer's flight-recorder counters (docs/recorder.md): recordings written, triggers dropped because the
 * previous recording was still being written, recordings that failed. All 0 without a recorder. */
static inline void ocellus_shm_recordings(const ocellus_shm *s, uint64_t *made, uint64_t *dropped,
                                          uint64_t *errors) {
    *made = ocellus_shm__load(s->base, s->status_offset + 8);
    *dropped = ocellus_shm__load(s->base, s->status_offset + 16);
    *errors = ocellus_shm__load(s->base, s->status_offset + 24);
}

/* Copies `camera`'s latest complete sample into `out` (its buffers must hold E, L*D and K floats). Never blocks
 * and never waits on the writer: at most 1 + max_retries attempts. `info` may be NULL. */
static inline int ocellus_shm_read_latest(ocellus_shm *s, uint32_t camera, ocellus_shm_sample *out,
                                          ocellus_shm_info *info) {
    uint64_t hb_age = 0, n, slot;
    uint32_t attempt;
    int remapped = 0, rc;
    if (!s->base) return OCELLUS_SHM_E_NOT_RUNNING;
    rc = ocellus_shm__ensure_alive(s, &hb_age, &remapped);
    if (rc != OCELLUS_SHM_OK) return rc;
    if (camera >= s->cameras || out->embedding_cap < s->embed_dim ||
        out->latents_cap < (size_t)s->num_latents * s->latent_dim || out->scores_cap < s->max_prompts ||
        !out->embedding || !out->latents || !out->scores)
        return OCELLUS_SHM_E_ARG;
    slot = s->slots_offset + (uint64_t)camera * s->slot_stride;
    for (attempt = 0;; attempt++) {
        n = __atomic_load_n(ocellus_shm__w(s->base, slot + OCELLUS_SHM_SLOT_LATEST), __ATOMIC_ACQUIRE);
        if (n == 0) return OCELLUS_SHM_E_NO_SAMPLE;
        {
            const unsigned char *buf =
                s->base + slot + OCELLUS_SHM_SLOT_BUFFERS + (n % OCELLUS_SHM_BUFFERS_PER_SLOT) * s->buffer_stride;
            const uint64_t *seq = ocellus_shm__w(buf, OCELLUS_SHM_B_SEQ);
            uint64_t s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
            if (!(s1 & 1u)) {
                int ok = ocellus_shm__load_buffer(s, buf, out);
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (ok && __atomic_load_n(seq, __ATOMIC_RELAXED) == s1) {
                    if (info) {
                        uint64_t now = ocellus_shm__now_ns();
                        info->age_ns = now > out->capture_ns ? now - out->capture_ns : 0;
                        info->heartbeat_age_ns = hb_age;
                        info->generation = s->generation;
                        info->published = ocellus_shm__load(s->base, slot + OCELLUS_SHM_SLOT_LATEST);
                        info->retries = attempt;
                        info->remapped = remapped;
                    }
                    return OCELLUS_SHM_OK;
                }
            }
        }
        if (attempt >= s->max_retries) return OCELLUS_SHM_E_RETRIES_EXHAUSTED;
    }
}

static inline const char *ocellus_shm_strerror(int rc) {
    switch (rc) {
    case OCELLUS_SHM_OK: return "ok";
    case OCELLUS_SHM_E_NOT_RUNNING: return "ocellus is not running";
    case OCELLUS_SHM_E_STALE: return "the writer is not alive (no heartbeat for two periods)";
    case OCELLUS_SHM_E_VERSION: return "segment has another layout version";
    case OCELLUS_SHM_E_FOREIGN: return "not a valid ocellus segment";
    case OCELLUS_SHM_E_RETRIES_EXHAUSTED: return "every retry overlapped a write";
    case OCELLUS_SHM_E_NO_SAMPLE: return "the camera has published nothing yet";
    case OCELLUS_SHM_E_ARG: return "invalid argument";
    case OCELLUS_SHM_E_IO: return "system call failed";
    default: return "unknown error";
    }
}

#ifdef __cplusplus
}
#endif

#endif /* OCELLUS_SHM_H */
