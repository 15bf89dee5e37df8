/*
 * api.c: every call in farmem.h on a large malloc'd buffer, with and without farmem.
 *
 * Fills SIZE bytes (default 64 MiB), installs a prefetch hook that asks for the 4 pages
 * after each faulting page, then reads the buffer back under each advice (SEQUENTIAL,
 * RANDOM, DONTNEED, WILLNEED with farmem_prefetch, NORMAL), checking the data every time
 * (DONTNEED evicts but keeps the data). It checks that an unknown advice fails with
 * EINVAL, that hints on memory farmem does not manage are accepted and ignored, and
 * then reads farmem_stats.
 *
 * Linked against the stub libfarmem.so and run plainly, it must see farmem_active() = 0,
 * no hook calls, and farmem_stats() = -1 with errno ENOSYS and the struct zeroed. Under
 * `farmem run` (whose preloaded library provides the real calls) it must see
 * farmem_active() = 1, farmem_stats() = 0 with nonzero faults, and hook calls whenever
 * the buffer is larger than the local budget.
 *
 * Usage: api [--size SIZE]     SIZE takes K, M or G.
 * Prints what it saw and "api: ok"; on any mismatch, one "api: FAIL: ..." line on stderr
 * and exit status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread -I include api.c -o api -L DIR -lfarmem
 *        (`pkg-config --cflags --libs farmem` once installed)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "farmem.h"

#define PAGE 4096

_Static_assert(FARMEM_API_VERSION == 1, "api.c is written for farmem API version 1");
_Static_assert(sizeof(struct farmem_stats) == 13 * 8, "struct farmem_stats layout");

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fputs("api: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* The hook runs inside a fault: it only reads these and bumps counters outside far
 * memory (static storage is not the heap). */
static uintptr_t buf_start, buf_end;
static atomic_ulong hook_calls, hook_calls_in_buf;

static size_t next_four_pages(void *fault_addr, struct farmem_range *out, size_t max)
{
    uintptr_t a = (uintptr_t)fault_addr;
    atomic_fetch_add_explicit(&hook_calls, 1, memory_order_relaxed);
    if (a >= buf_start && a < buf_end)
        atomic_fetch_add_explicit(&hook_calls_in_buf, 1, memory_order_relaxed);
    if (max == 0)
        return 0;
    out[0].addr = (void *)((a & ~(uintptr_t)(PAGE - 1)) + PAGE);
    out[0].len = 4 * PAGE;
    return 1;
}

static void verify(const uint64_t *w, size_t words, const char *when)
{
    for (size_t i = 0; i < words; i++)
        if (w[i] != mix64(i))
            fail("%s: word %zu of the buffer is %016llx, expected %016llx", when, i,
                 (unsigned long long)w[i], (unsigned long long)mix64(i));
}

static const char *advice_name[] = {"NORMAL", "SEQUENTIAL", "RANDOM", "WILLNEED", "DONTNEED"};

static void advise(const void *p, size_t len, int advice)
{
    int r = farmem_advise(p, len, advice);
    printf("api: farmem_advise(%s) = %d\n", advice_name[advice], r);
    if (r != 0)
        fail("farmem_advise(%s) returned %d (%s), expected 0", advice_name[advice], r,
             strerror(errno));
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    size_t mult = 1;
    if (*end && strchr("kK", *end))
        mult = (size_t)1 << 10;
    else if (*end && strchr("mM", *end))
        mult = (size_t)1 << 20;
    else if (*end && strchr("gG", *end))
        mult = (size_t)1 << 30;
    if (mult > 1) {
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "B"))
            end += strlen(end);
    }
    if (*end || !(v > 0))
        return 0;
    return (size_t)(v * (double)mult);
}

int main(int argc, char **argv)
{
    size_t size = (size_t)64 << 20;
    if (argc == 3 && !strcmp(argv[1], "--size"))
        size = parse_size(argv[2]) / PAGE * PAGE;
    else if (argc != 1)
        size = 0;
    if (size < 16 * PAGE) {
        fprintf(stderr, "usage: api [--size SIZE]   (default 64M, at least 64K)\n");
        return 2;
    }
    size_t words = size / 8;

    int active = farmem_active();
    printf("api: farmem_active() = %d\n", active);
    if (active != 0 && active != 1)
        fail("farmem_active() returned %d, not 0 or 1", active);

    uint64_t *buf = malloc(size);
    if (!buf)
        fail("malloc(%zu) returned NULL", size);
    buf_start = (uintptr_t)buf;
    buf_end = buf_start + size;
    for (size_t i = 0; i < words; i++)
        buf[i] = mix64(i);

    int r = farmem_set_prefetch_hook(next_four_pages);
    printf("api: farmem_set_prefetch_hook(next 4 pages) = %d\n", r);
    if (r != 0)
        fail("farmem_set_prefetch_hook returned %d, expected 0", r);

    advise(buf, size, FARMEM_ADVICE_SEQUENTIAL);
    verify(buf, words, "read front to back after SEQUENTIAL");

    advise(buf, size, FARMEM_ADVICE_RANDOM);
    uint64_t s = 12345;
    for (size_t k = 0; k < size / PAGE; k++) {
        s = mix64(s + k);
        size_t i = (size_t)(s % words);
        if (buf[i] != mix64(i))
            fail("random read after RANDOM: word %zu is wrong", i);
    }

    advise(buf, size, FARMEM_ADVICE_DONTNEED);
    verify(buf, words, "after DONTNEED (evicted, but the data is kept)");

    advise(buf, size, FARMEM_ADVICE_WILLNEED);
    r = farmem_prefetch(buf, size / 4);
    printf("api: farmem_prefetch(first quarter) = %d\n", r);
    if (r != 0)
        fail("farmem_prefetch returned %d, expected 0", r);
    verify(buf, words, "after WILLNEED and farmem_prefetch");

    advise(buf, size, FARMEM_ADVICE_NORMAL);

    int bad_advice[] = {5, 99, -1};
    for (size_t k = 0; k < sizeof bad_advice / sizeof bad_advice[0]; k++) {
        errno = 0;
        r = farmem_advise(buf, size, bad_advice[k]);
        int e = errno;
        printf("api: farmem_advise(%d) = %d, errno %s\n", bad_advice[k], r,
               e == EINVAL ? "EINVAL" : strerror(e));
        if (r != -1 || e != EINVAL)
            fail("farmem_advise(%d) returned %d with errno %d, expected -1 and EINVAL",
                 bad_advice[k], r, e);
    }

    /* Hints on memory farmem does not manage (the stack) are accepted and ignored. */
    char local[2 * PAGE];
    memset(local, 7, sizeof local);
    if (farmem_prefetch(local, sizeof local) != 0 ||
        farmem_advise(local, sizeof local, FARMEM_ADVICE_DONTNEED) != 0)
        fail("a hint on stack memory was refused");
    for (size_t i = 0; i < sizeof local; i++)
        if (local[i] != 7)
            fail("stack memory changed after a hint on it");

    r = farmem_set_prefetch_hook(NULL);
    printf("api: farmem_set_prefetch_hook(NULL) = %d\n", r);
    if (r != 0)
        fail("farmem_set_prefetch_hook(NULL) returned %d, expected 0", r);
    unsigned long calls = atomic_load(&hook_calls), in_buf = atomic_load(&hook_calls_in_buf);
    printf("api: prefetch hook called %lu times, %lu for faults in the buffer\n", calls, in_buf);

    struct farmem_stats st;
    memset(&st, 0xab, sizeof st);
    errno = 0;
    r = farmem_stats(&st);
    int e = errno;
    if (active) {
        if (r != 0)
            fail("under farmem, farmem_stats returned %d (%s), expected 0", r, strerror(e));
        printf("api: farmem_stats() = 0: faults %llu, major %llu, fetched %llu, prefetched "
               "%llu, evicted %llu, written back %llu, resident %llu of %llu bytes (peak "
               "%llu), far %llu bytes, fault p50 %llu ns p99 %llu ns, prefetch accuracy "
               "%.2f\n",
               (unsigned long long)st.faults, (unsigned long long)st.major_faults,
               (unsigned long long)st.fetched, (unsigned long long)st.prefetched,
               (unsigned long long)st.evicted, (unsigned long long)st.written_back,
               (unsigned long long)st.resident_bytes, (unsigned long long)st.budget_bytes,
               (unsigned long long)st.peak_resident_bytes, (unsigned long long)st.far_bytes,
               (unsigned long long)st.fault_p50_ns, (unsigned long long)st.fault_p99_ns,
               st.prefetch_accuracy);
        if (st.faults == 0)
            fail("under farmem, farmem_stats reports no faults after touching %zu bytes", size);
        if (st.budget_bytes == 0 || st.peak_resident_bytes > st.budget_bytes)
            fail("under farmem, peak residency %llu bytes is not within the budget of %llu",
                 (unsigned long long)st.peak_resident_bytes,
                 (unsigned long long)st.budget_bytes);
        if (!(st.prefetch_accuracy >= 0.0 && st.prefetch_accuracy <= 1.0))
            fail("prefetch accuracy %f is outside 0..1", st.prefetch_accuracy);
        if (size > st.budget_bytes && in_buf == 0)
            fail("the buffer (%zu bytes) is larger than the budget (%llu) but the prefetch "
                 "hook was never called for a fault in it",
                 size, (unsigned long long)st.budget_bytes);
    } else {
        printf("api: farmem_stats() = %d, errno %s\n", r, e == ENOSYS ? "ENOSYS" : strerror(e));
        if (r != -1 || e != ENOSYS)
            fail("without farmem, farmem_stats returned %d with errno %d, expected -1 and "
                 "ENOSYS",
                 r, e);
        const unsigned char *b = (const unsigned char *)&st;
        for (size_t i = 0; i < sizeof st; i++)
            if (b[i])
                fail("without farmem, farmem_stats left byte %zu of *out nonzero", i);
        printf("api: farmem_stats() zeroed *out\n");
        if (calls != 0)
            fail("without farmem, the prefetch hook was called %lu times", calls);
    }
    free(buf);
    printf("api: ok\n");
    return 0;
}
