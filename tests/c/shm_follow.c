/* A control-loop reader for the systemd VM test (tests/hil/systemd/driver.sh): polls camera 0 of segment
 * argv[1] every 10 ms through include/ocellus/shm.h, as a control loop would, and never restarts. It prints one
 * line per event (key=value, CLOCK_MONOTONIC seconds), which the driver checks against what systemd did:
 *
 *   t=.. event=state state=ok|stale|stopped|absent|no-sample|retries|error rc=N gen=G pid=P hb_age_ms=A
 *   t=.. event=remap gen=G pid=P                  the reader followed a new writer (a new generation)
 *   t=.. event=writer-exit pid=P                  the writer process is gone or a zombie (/proc/P/stat)
 *   t=.. event=flags flags=0x..                   the status block's camera flags changed (stalled, lost)
 *   t=.. event=reconnects n=N                     the status block's reconnect counter changed
 *   t=.. event=tick state=.. gen=G seq=S published=N age_ms=A   once a second
 *
 * `--once`: open, read once, print the state line and exit 0 iff a sample was read (a permission check).
 * `--no-follow`: set the handle's reopen_interval_ns to the maximum, so it never looks for a new writer: a
 * reader whose follow is broken, for showing that the systemd test's follow checks fail without it.
 * SIGTERM/SIGINT end the loop. The writer's pid is watched through /proc, so the time from its death to the
 * reader calling it stale can be measured in one process on one clock. */
#include "ocellus/shm.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static double now_s(void) { return (double)ocellus_shm__now_ns() / 1e9; }

/* 1 if process `pid` has exited (no /proc entry, or a zombie / dead task). */
static int pid_gone(uint64_t pid) {
    char path[64], buf[512], *p;
    FILE *f;
    size_t n;
    snprintf(path, sizeof path, "/proc/%llu/stat", (unsigned long long)pid);
    f = fopen(path, "r");
    if (!f) return 1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static const char *state_name(const ocellus_shm *shm, int rc) {
    switch (rc) {
    case OCELLUS_SHM_OK: return "ok";
    case OCELLUS_SHM_E_STALE: return "stale";
    case OCELLUS_SHM_E_NOT_RUNNING:
        return shm->base && ocellus_shm__load_acq(shm->base, OCELLUS_SHM_H_STATE) == OCELLUS_SHM_STATE_STOPPED
                   ? "stopped"
                   : "absent";
    case OCELLUS_SHM_E_NO_SAMPLE: return "no-sample";
    case OCELLUS_SHM_E_RETRIES_EXHAUSTED: return "retries";
    default: return "error";
    }
}

static double hb_age_ms(const ocellus_shm *shm) {
    uint64_t hb, now = ocellus_shm__now_ns();
    if (!shm->base) return -1;
    hb = ocellus_shm__load(shm->base, OCELLUS_SHM_H_HEARTBEAT_NS);
    return now > hb ? (double)(now - hb) / 1e6 : 0;
}

int main(int argc, char **argv) {
    ocellus_shm shm;
    ocellus_shm_sample s;
    ocellus_shm_info info = {0, 0, 0, 0, 0, 0};
    ocellus_shm_counters c;
    const char *name;
    const char *last_state = "";
    uint64_t gen = 0, pid = 0, last_flags = ~0ull, last_reconnects = ~0ull, seq = 0, published = 0;
    int once = 0, no_follow = 0, rc, exited_reported = 0;
    double next_tick = 0, age_ms = 0;
    struct timespec period = {0, 10000000};

    if (argc == 3 && strcmp(argv[1], "--once") == 0) {
        once = 1;
        name = argv[2];
    } else if (argc == 3 && strcmp(argv[1], "--no-follow") == 0) {
        no_follow = 1;
        name = argv[2];
    } else if (argc == 2) {
        name = argv[1];
    } else {
        fprintf(stderr, "usage: %s [--once | --no-follow] NAME\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    /* Until the first segment opens (the service may not have created it yet). */
    while ((rc = ocellus_shm_open(&shm, name)) != OCELLUS_SHM_OK) {
        if (once || (rc != OCELLUS_SHM_E_NOT_RUNNING)) {
            printf("t=%.3f event=state state=open-failed rc=%d errno=%d (%s)\n", now_s(), rc, errno,
                   ocellus_shm_strerror(rc));
            return 1;
        }
        if (stop_flag) return 1;
        nanosleep(&period, NULL);
    }
    memset(&s, 0, sizeof s);
    s.embedding_cap = shm.embed_dim;
    s.latents_cap = (size_t)shm.num_latents * shm.latent_dim;
    s.scores_cap = shm.max_prompts;
    s.embedding = (float *)calloc(s.embedding_cap, sizeof(float));
    s.latents = (float *)calloc(s.latents_cap, sizeof(float));
    s.scores = (float *)calloc(s.scores_cap, sizeof(float));
    if (!s.embedding || !s.latents || !s.scores) return 2;
    if (no_follow) shm.reopen_interval_ns = ~0ull;
    gen = shm.generation;
    pid = shm.writer_pid;
    printf("t=%.3f event=remap gen=%016llx pid=%llu period_ms=%.0f\n", now_s(), (unsigned long long)gen,
           (unsigned long long)pid, (double)shm.heartbeat_period_ns / 1e6);

    while (!stop_flag) {
        const char *state;
        double t;
        rc = ocellus_shm_read_latest(&shm, 0, &s, &info);
        t = now_s();
        state = state_name(&shm, rc);
        if (shm.generation != gen) {
            /* The geometry may differ in a new generation: the buffers were sized for the first. */
            if (shm.embed_dim > s.embedding_cap || (size_t)shm.num_latents * shm.latent_dim > s.latents_cap ||
                shm.max_prompts > s.scores_cap) {
                printf("t=%.3f event=state state=error rc=%d new geometry too large\n", t, OCELLUS_SHM_E_ARG);
                return 1;
            }
            gen = shm.generation;
            pid = shm.writer_pid;
            exited_reported = 0;
            printf("t=%.3f event=remap gen=%016llx pid=%llu\n", t, (unsigned long long)gen,
                   (unsigned long long)pid);
        }
        if (!exited_reported && pid && pid_gone(pid)) {
            exited_reported = 1;
            printf("t=%.3f event=writer-exit pid=%llu\n", t, (unsigned long long)pid);
        }
        if (strcmp(state, last_state) != 0) {
            printf("t=%.3f event=state state=%s rc=%d gen=%016llx pid=%llu hb_age_ms=%.1f\n", t, state, rc,
                   (unsigned long long)gen, (unsigned long long)pid, hb_age_ms(&shm));
            last_state = state;
        }
        if (rc == OCELLUS_SHM_OK) {
            seq = s.sequence;
            published = info.published;
            age_ms = (double)info.age_ns / 1e6;
        }
        if (shm.base && ocellus_shm_read_counters(&shm, 0, &c) == OCELLUS_SHM_OK) {
            if (c.flags != last_flags) {
                printf("t=%.3f event=flags flags=0x%llx\n", t, (unsigned long long)c.flags);
                last_flags = c.flags;
            }
            if (c.reconnects != last_reconnects) {
                printf("t=%.3f event=reconnects n=%llu\n", t, (unsigned long long)c.reconnects);
                last_reconnects = c.reconnects;
            }
        }
        if (once) return rc == OCELLUS_SHM_OK ? 0 : 1;
        if (t >= next_tick) {
            printf("t=%.3f event=tick state=%s gen=%016llx seq=%llu published=%llu age_ms=%.0f\n", t, state,
                   (unsigned long long)gen, (unsigned long long)seq, (unsigned long long)published, age_ms);
            next_tick = t + 1.0;
        }
        nanosleep(&period, NULL);
    }
    ocellus_shm_close(&shm);
    free(s.embedding);
    free(s.latents);
    free(s.scores);
    return 0;
}
