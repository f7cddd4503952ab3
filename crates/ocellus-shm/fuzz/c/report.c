/* What the C reader (include/ocellus/shm.h) makes of a segment, as text, for the differential fuzz target
 * (fuzz_targets/segment.rs links this file) and its corpus test (tests/fuzz_corpus.rs runs it as a program,
 * built with -DOCELLUS_REPORT_MAIN). src/lib.rs writes the same text from the Rust reader; the two must agree.
 *
 * The reader is opened with the options a test needs to see everything without a live writer: no stale
 * verdict (stale_after_ns = UINT64_MAX) and no re-open (reopen_interval_ns = UINT64_MAX), 2 retries. */
#include "ocellus/shm.h"

#include <stdio.h>
#include <stdlib.h>

#define FNV_START 0xcbf29ce484222325ull

static uint64_t fnv(uint64_t h, uint64_t w) { return ocellus_shm__fnv(h, w); }

/* The bits of a float, every NaN folded to one (the f16 conversions of C and Rust may keep different payloads). */
static uint64_t canon(float f) {
    uint32_t bits;
    if (f != f) return 0x7fc00000u;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

static uint64_t hash_floats(const float *v, size_t n) {
    uint64_t h = FNV_START;
    size_t i;
    for (i = 0; i < n; i++) h = fnv(h, canon(v[i]));
    return h;
}

/* Appends to out[*len..cap]; never overflows (the report is cut instead, and the comparison then fails). */
static void put(char *out, size_t cap, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#include <stdarg.h>
static void put(char *out, size_t cap, size_t *len, const char *fmt, ...) {
    va_list ap;
    int n;
    if (*len >= cap) return;
    va_start(ap, fmt);
    n = vsnprintf(out + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0) *len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

/* Writes the report for segment `name` into out (NUL-terminated); returns its length. */
size_t ocellus_fuzz_c_report(const char *name, char *out, size_t cap) {
    ocellus_shm shm;
    size_t len = 0;
    uint32_t cam;
    int rc = ocellus_shm_open(&shm, name);
    out[0] = '\0';
    put(out, cap, &len, "open %d\n", rc);
    if (rc != OCELLUS_SHM_OK) return len;
    shm.stale_after_ns = UINT64_MAX;
    shm.reopen_interval_ns = UINT64_MAX;
    shm.max_retries = 2;
    put(out, cap, &len, "dims %u %u %u %u %u %u\n", shm.cameras, shm.embed_dim, shm.num_latents, shm.latent_dim,
        shm.max_prompts, shm.latents_dtype);
    {
        size_t e = shm.embed_dim, ld = (size_t)shm.num_latents * shm.latent_dim, k = shm.max_prompts;
        float *emb = calloc(e, sizeof *emb), *lat = calloc(ld, sizeof *lat), *sc = calloc(k, sizeof *sc);
        for (cam = 0; cam < shm.cameras; cam++) {
            ocellus_shm_sample s;
            ocellus_shm_counters c;
            uint64_t h = FNV_START;
            int i;
            memset(&s, 0, sizeof s);
            s.embedding = emb;
            s.embedding_cap = e;
            s.latents = lat;
            s.latents_cap = ld;
            s.scores = sc;
            s.scores_cap = k;
            rc = ocellus_shm_read_latest(&shm, cam, &s, NULL);
            put(out, cap, &len, "cam %u read %d", cam, rc);
            if (rc == OCELLUS_SHM_OK) {
                put(out, cap, &len, " seq %llu capture %llu publish %llu", (unsigned long long)s.sequence,
                    (unsigned long long)s.capture_ns, (unsigned long long)s.publish_ns);
                for (i = 0; i < (int)OCELLUS_SHM_STAGES; i++)
                    put(out, cap, &len, " %llu", (unsigned long long)s.stage_ns[i]);
                put(out, cap, &len, " flags %llu misses %llu prompts %llu scores %u emb %016llx lat %016llx sc %016llx",
                    (unsigned long long)s.flags, (unsigned long long)s.deadline_misses,
                    (unsigned long long)s.prompt_version, s.num_scores, (unsigned long long)hash_floats(emb, e),
                    (unsigned long long)hash_floats(lat, ld), (unsigned long long)hash_floats(sc, k));
            }
            rc = ocellus_shm_read_counters(&shm, cam, &c);
            if (rc == OCELLUS_SHM_OK) {
                h = fnv(h, c.captured);
                h = fnv(h, c.dropped);
                for (i = 0; i < (int)OCELLUS_SHM_STAGES; i++) h = fnv(h, c.late[i]);
                h = fnv(h, c.reconnects);
                h = fnv(h, c.processed);
                h = fnv(h, c.corrupt);
                h = fnv(h, c.errors);
                h = fnv(h, c.flags);
                h = fnv(h, c.last_overrun_ns);
                h = fnv(h, c.last_late_stages);
            }
            put(out, cap, &len, " counters %d %016llx\n", rc, (unsigned long long)h);
        }
        free(emb);
        free(lat);
        free(sc);
    }
    put(out, cap, &len, "hwm %llu\n", (unsigned long long)ocellus_shm_memory_high_water(&shm));
    {
        char(*labels)[OCELLUS_SHM_LABEL_BYTES + 1] = calloc(shm.max_prompts, sizeof *labels);
        uint64_t version = 0;
        uint32_t count = 0, i, j;
        rc = ocellus_shm_read_prompts(&shm, &version, labels, shm.max_prompts, &count);
        put(out, cap, &len, "prompts %d", rc);
        if (rc == OCELLUS_SHM_OK) {
            put(out, cap, &len, " v%llu n%u", (unsigned long long)version, count);
            /* Raw bytes up to the first NUL, in hex: the Rust side decodes them as Rust's reader does. */
            for (i = 0; i < count; i++) {
                put(out, cap, &len, " ");
                for (j = 0; j < OCELLUS_SHM_LABEL_BYTES && labels[i][j]; j++)
                    put(out, cap, &len, "%02x", (unsigned char)labels[i][j]);
                if (j == 0) put(out, cap, &len, "-");
            }
        }
        put(out, cap, &len, "\n");
        free(labels);
    }
    ocellus_shm_close(&shm);
    return len;
}

#ifdef OCELLUS_REPORT_MAIN
int main(int argc, char **argv) {
    static char out[1 << 20];
    int a;
    for (a = 1; a < argc; a++) {
        ocellus_fuzz_c_report(argv[a], out, sizeof out);
        fputs(out, stdout);
        fputs("end\n", stdout);
    }
    return 0;
}
#endif
