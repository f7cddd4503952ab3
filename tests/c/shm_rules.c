/* The rules of docs/shm-layout.md as the C header applies them, for crates/ocellus-shm/tests/stress.rs:
 * prints the header's verdict on the segment-name rule for a fixed list of names, then the return code of
 * ocellus_shm_open for each name given on the command line and, for a segment that opens, its prompt table,
 * camera 0's counters, the memory high-water mark and the recorder's counters. */
#include "ocellus/shm.h"

#include <stdio.h>

int main(int argc, char **argv) {
    static const char *names[] = {"/ocellus", "/a", "/cam-0_front.v2", "ocellus", "/", "/a/b", "/.", "/..", "/a b"};
    size_t i;
    int a;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) printf("name %s %d\n", names[i], ocellus_shm_name_ok(names[i]));
    for (a = 1; a < argc; a++) {
        ocellus_shm shm;
        int rc = ocellus_shm_open(&shm, argv[a]);
        printf("open %s %d\n", argv[a], rc);
        if (rc == OCELLUS_SHM_OK) {
            char labels[8][OCELLUS_SHM_LABEL_BYTES + 1];
            uint64_t version = 0;
            uint32_t count = 0, j;
            ocellus_shm_counters c;
            if (ocellus_shm_read_prompts(&shm, &version, labels, 8, &count) == OCELLUS_SHM_OK) {
                printf("prompts v%llu n%u", (unsigned long long)version, count);
                for (j = 0; j < count; j++) printf(" [%s]", labels[j]);
                printf("\n");
            }
            if (ocellus_shm_read_counters(&shm, 0, &c) == OCELLUS_SHM_OK)
                printf("counters captured %llu dropped %llu late2 %llu flags %llu overrun %llu stages %llu\n",
                       (unsigned long long)c.captured, (unsigned long long)c.dropped, (unsigned long long)c.late[2],
                       (unsigned long long)c.flags, (unsigned long long)c.last_overrun_ns,
                       (unsigned long long)c.last_late_stages);
            printf("hwm %llu\n", (unsigned long long)ocellus_shm_memory_high_water(&shm));
            {
                uint64_t made, dropped, errors;
                ocellus_shm_recordings(&shm, &made, &dropped, &errors);
                printf("recordings %llu %llu %llu\n", (unsigned long long)made, (unsigned long long)dropped,
                       (unsigned long long)errors);
            }
            ocellus_shm_close(&shm);
        }
    }
    return 0;
}
