/* The control loop of tests/soak.rs: a 1 kHz loop that reads the newest result of every camera of segment
 * argv[1] with the checksum verified, as a robot's control loop would, until the writer marks the segment
 * stopped. It checks that each camera's sequence numbers and prompt-set versions never go back, and counts
 * what it saw (prompt_versions: the prompt sets camera 0's results were scored with).
 * Prints one line:
 *   "RESULT reads=N ok=N no_sample=N stale=N exhausted=N other=N regressions=N prompt_versions=N max_age_ms=F"
 * Exit 0 iff it read at least one sample and saw no sequence go back. */
#include "ocellus/shm.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_CAMERAS 16

int main(int argc, char **argv) {
    ocellus_shm shm;
    ocellus_shm_sample s;
    ocellus_shm_info info;
    uint32_t cameras, e, l, d, k, cam;
    uint64_t last_seq[MAX_CAMERAS] = {0}, last_prompts[MAX_CAMERAS] = {0};
    unsigned long long reads = 0, ok = 0, no_sample = 0, stale = 0, exhausted = 0, other = 0, regressions = 0;
    unsigned long long prompt_versions = 0;
    double max_age_ms = 0;
    int rc, attempts, running = 1;
    const struct timespec period = {0, 1000000};
    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    for (attempts = 0; (rc = ocellus_shm_open(&shm, argv[1])) != OCELLUS_SHM_OK; attempts++) {
        if (attempts > 120000) {
            fprintf(stderr, "open %s: %s\n", argv[1], ocellus_shm_strerror(rc));
            return 2;
        }
        nanosleep(&period, NULL);
    }
    ocellus_shm_dims(&shm, &cameras, &e, &l, &d, &k);
    if (cameras > MAX_CAMERAS) {
        fprintf(stderr, "%u cameras: this reader follows at most %d\n", cameras, MAX_CAMERAS);
        return 2;
    }
    memset(&s, 0, sizeof s);
    s.embedding_cap = e;
    s.latents_cap = (size_t)l * d;
    s.scores_cap = k;
    s.embedding = (float *)calloc(e, sizeof(float));
    s.latents = (float *)calloc((size_t)l * d, sizeof(float));
    s.scores = (float *)calloc(k ? k : 1, sizeof(float));
    if (!s.embedding || !s.latents || !s.scores) return 2;
    while (running) {
        for (cam = 0; cam < cameras; cam++) {
            reads++;
            rc = ocellus_shm_read_latest(&shm, cam, &s, &info);
            if (rc == OCELLUS_SHM_OK) {
                double age_ms = (double)info.age_ns / 1e6;
                ok++;
                if (s.sequence < last_seq[cam]) regressions++;
                last_seq[cam] = s.sequence;
                if (s.prompt_version < last_prompts[cam]) regressions++;
                if (cam == 0 && s.prompt_version != last_prompts[cam]) prompt_versions++;
                last_prompts[cam] = s.prompt_version;
                if (age_ms > max_age_ms) max_age_ms = age_ms;
            } else if (rc == OCELLUS_SHM_E_NO_SAMPLE) {
                no_sample++;
            } else if (rc == OCELLUS_SHM_E_STALE) {
                stale++;
            } else if (rc == OCELLUS_SHM_E_RETRIES_EXHAUSTED) {
                exhausted++;
            } else if (rc == OCELLUS_SHM_E_NOT_RUNNING) {
                running = 0; /* the writer stopped: the soak is over */
                break;
            } else {
                other++;
            }
        }
        nanosleep(&period, NULL);
    }
    printf("RESULT reads=%llu ok=%llu no_sample=%llu stale=%llu exhausted=%llu other=%llu regressions=%llu "
           "prompt_versions=%llu max_age_ms=%.1f\n",
           reads, ok, no_sample, stale, exhausted, other, regressions, prompt_versions, max_age_ms);
    ocellus_shm_close(&shm);
    free(s.embedding);
    free(s.latents);
    free(s.scores);
    return ok > 0 && regressions == 0 ? 0 : 1;
}
