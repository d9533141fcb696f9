/* first-touch.c - what the lookback's first fill costs in page faults on this machine, and
 * what pre-faulting would save: 64 chunks of 1 MiB (the lookback's arena at its default
 * size) filled 160 bytes at a time, either faulted in by those writes (mode 0) or populated
 * first with madvise(MADV_POPULATE_WRITE) (mode 1), or as 32 chunks of 2 MiB, aligned and
 * advised MADV_HUGEPAGE (mode 2: huge pages where transparent_hugepage allows "madvise").
 * Prints the process CPU time.
 *
 *   cc -O2 -o /tmp/first-touch bench/first-touch.c && for i in 1 2 3; do /tmp/first-touch 0; /tmp/first-touch 1; done
 *   for i in 1 2 3; do /tmp/first-touch 2; done; sleep 5; /tmp/first-touch 2   # huge pages, then after a pause
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const size_t chunk = 1 << 20, record = 160;
    int mode = argc > 1 ? atoi(argv[1]) : 0;
    char *chunks[64];
    double start = cpu_seconds();
    if (mode == 2) {
        const size_t huge = 2 << 20;
        for (int c = 0; c < 32; c++) {
            char *raw = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (raw == MAP_FAILED) return 2;
            char *p = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
            madvise(p, huge, MADV_HUGEPAGE);
            for (size_t i = 0; i < huge; i += record) memset(p + i, 1, record < huge - i ? record : huge - i);
            chunks[c] = p;
        }
    } else {
        for (int c = 0; c < 64; c++) {
            char *p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return 2;
            if (mode == 1) madvise(p, chunk, MADV_POPULATE_WRITE);
            for (size_t i = 0; i < chunk; i += record) memset(p + i, 1, record < chunk - i ? record : chunk - i);
            chunks[c] = p;
        }
    }
    const char *how[] = {"faulted by the writes", "populated first", "huge pages"};
    printf("mode %d (%s): %.1f ms of CPU for 64 MiB\n", mode, how[mode < 0 || mode > 2 ? 0 : mode],
           (cpu_seconds() - start) * 1e3);
    return chunks[3][5] != 1;
}
