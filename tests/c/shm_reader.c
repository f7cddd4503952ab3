/* Stress reader for tests/shm_stress.rs: reads camera 0 of segment argv[1] until argv[2] samples are accepted,
 * checking every accepted sample against the test pattern and the test checksum the writer carries in
 * `deadline_misses`. The header's own checksum verification is off, so only the sequence lock protects.
 * Prints one line: "RESULT c accepted=N torn=N exhausted=N other=N retries=N". Exit 0 iff no torn sample. */
#include "ocellus/shm.h"

#include <stdio.h>
#include <stdlib.h>

static uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* The pattern of tests/shm_stress.rs (payload variant seq % 251): returns 1 iff `s` is exactly the sample
 * published as number s->sequence. */
static int check(const ocellus_shm_sample *s, uint32_t e, uint32_t n_lat, uint32_t k) {
    uint64_t seq = s->sequence, m = seq % 251u, sum = seq * 0x9e3779b97f4a7c15ull, idx = 0;
    uint32_t i;
    if (s->stage_ns[0] != seq || s->prompt_version != (seq ^ 0xabcdu) || s->num_scores != k) return 0;
    for (i = 0; i < e; i++, idx++) {
        if (s->embedding[i] != (float)((m * 31u + i) % 65536u)) return 0;
        sum += (uint64_t)bits_of(s->embedding[i]) * (2 * idx + 1);
    }
    for (i = 0; i < n_lat; i++, idx++) {
        if (s->latents[i] != (float)((m + i) % 1024u)) return 0;
        sum += (uint64_t)bits_of(s->latents[i]) * (2 * idx + 1);
    }
    for (i = 0; i < k; i++, idx++) {
        if (s->scores[i] != (float)((m * 7u + i) % 1000u)) return 0;
        sum += (uint64_t)bits_of(s->scores[i]) * (2 * idx + 1);
    }
    return sum == s->deadline_misses;
}

int main(int argc, char **argv) {
    ocellus_shm shm;
    ocellus_shm_sample s;
    ocellus_shm_info info;
    uint32_t cameras, e, l, d, k;
    unsigned long long target, accepted = 0, torn = 0, exhausted = 0, other = 0, retries = 0;
    uint64_t stale_since = 0;
    int rc, attempts;
    if (argc != 3) {
        fprintf(stderr, "usage: %s NAME ACCEPTED\n", argv[0]);
        return 2;
    }
    target = strtoull(argv[2], NULL, 10);
    for (attempts = 0; (rc = ocellus_shm_open(&shm, argv[1])) != OCELLUS_SHM_OK; attempts++) {
        if (attempts > 2000) {
            fprintf(stderr, "open %s: %s\n", argv[1], ocellus_shm_strerror(rc));
            return 2;
        }
        {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    shm.verify_checksum = 0;
    ocellus_shm_dims(&shm, &cameras, &e, &l, &d, &k);
    memset(&s, 0, sizeof s);
    s.embedding_cap = e;
    s.latents_cap = (size_t)l * d;
    s.scores_cap = k;
    s.embedding = (float *)calloc(e, sizeof(float));
    s.latents = (float *)calloc((size_t)l * d, sizeof(float));
    s.scores = (float *)calloc(k, sizeof(float));
    if (!s.embedding || !s.latents || !s.scores) return 2;
    while (accepted < target) {
        rc = ocellus_shm_read_latest(&shm, 0, &s, &info);
        if (rc == OCELLUS_SHM_E_STALE) {
            /* The writer is starved or gone: give up if it stays so for 10 s (the parent test may have failed). */
            uint64_t now = ocellus_shm__now_ns();
            if (!stale_since) stale_since = now;
            if (now - stale_since > 10000000000ull) break;
        } else {
            stale_since = 0;
        }
        if (rc == OCELLUS_SHM_OK) {
            if (check(&s, e, l * d, k)) {
                accepted++;
                retries += info.retries;
            } else
                torn++;
        } else if (rc == OCELLUS_SHM_E_RETRIES_EXHAUSTED) {
            exhausted++;
        } else if (rc == OCELLUS_SHM_E_NOT_RUNNING) {
            fprintf(stderr, "c reader: writer went away: %s\n", ocellus_shm_strerror(rc));
            break;
        } else {
            other++;
        }
    }
    printf("RESULT c accepted=%llu torn=%llu exhausted=%llu other=%llu retries=%llu\n", accepted, torn, exhausted,
           other, retries);
    ocellus_shm_close(&shm);
    free(s.embedding);
    free(s.latents);
    free(s.scores);
    return torn == 0 ? 0 : 1;
}
