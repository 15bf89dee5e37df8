/*
 * skewed.c: random read-modify-write updates over a malloc'd array, most of them to a
 * small hot set.
 *
 * The skew: 10% of the 4 KiB pages are hot (every tenth page, so hot and cold pages share
 * every region of the array and no contiguous range is hot); 90% of updates go to a
 * uniformly chosen hot page, the other 10% to a uniformly chosen cold page, each to a
 * random 64-bit word in that page. Under farmem with a budget above the hot set (10% of
 * SIZE) the hot pages should stay local and the cold ones page; below it, everything
 * pages.
 *
 * Each update adds a random number d to word i. The program keeps, outside the array,
 * the sum of every d and the sum of every d * (2i + 1); at the end the array's sum and
 * its index-weighted sum must have moved by exactly those amounts. A lost write, a stale
 * page or a page that came back at the wrong place changes one or both.
 *
 * Usage: skewed [--size SIZE] [--seconds D] [--updates N] [--seed N]
 *   SIZE takes K, M or G; defaults --size 1G --seconds 10. --updates runs a fixed count
 *   instead of for D seconds.
 * Prints updates per second and "skewed: ok"; on any mismatch, one "skewed: FAIL: ..."
 * line on stderr and exit status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread skewed.c -o skewed
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE_WORDS (4096 / 8)
#define HOT_EVERY 10    /* one page in ten is hot */
#define HOT_PERCENT 90 /* of updates */

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("skewed: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
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

static void usage(void)
{
    fprintf(stderr, "usage: skewed [--size SIZE] [--seconds D] [--updates N] [--seed N]\n"
                    "  defaults: --size 1G --seconds 10 --seed 1\n");
    exit(2);
}

int main(int argc, char **argv)
{
    size_t size = (size_t)1 << 30;
    double seconds = 10;
    uint64_t fixed = 0, seed = 1;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage();
        const char *v = argv[i + 1];
        if (!strcmp(argv[i], "--size"))
            size = parse_size(v);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(v);
        else if (!strcmp(argv[i], "--updates"))
            fixed = strtoull(v, NULL, 0);
        else if (!strcmp(argv[i], "--seed"))
            seed = strtoull(v, NULL, 0);
        else
            usage();
    }
    size_t n = size / 8;
    if (n < PAGE_WORDS || !(seconds > 0))
        usage();
    /* Whole pages only, so every page has the same number of words. */
    size_t pages = n / PAGE_WORDS;
    n = pages * PAGE_WORDS;
    size_t hot_pages = (pages + HOT_EVERY - 1) / HOT_EVERY; /* pages 0, 10, 20, ... */
    size_t cold_pages = pages - hot_pages;

    uint64_t *a = malloc(n * 8);
    if (!a)
        fail("malloc(%zu) returned NULL", n * 8);
    printf("skewed: %.1f MiB, %zu pages, %zu hot (every %dth page) taking %d%% of updates, ",
           (double)(n * 8) / (1 << 20), pages, hot_pages, HOT_EVERY, HOT_PERCENT);
    if (fixed)
        printf("%llu updates\n", (unsigned long long)fixed);
    else
        printf("%.1f s\n", seconds);
    fflush(stdout);

    uint64_t s = seed, sum = 0, wsum = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = splitmix64(&s);
        a[i] = v;
        sum += v;
        wsum += v * (2 * (uint64_t)i + 1);
    }

    uint64_t dsum = 0, dwsum = 0, done = 0, hot_hits = 0;
    double t0 = now(), t1 = t0, deadline = t0 + seconds;
    for (;;) {
        for (int k = 0; k < 65536; k++) {
            uint64_t r = splitmix64(&s);
            size_t page;
            /* r's low bits pick hot or cold, its high bits the page, a second draw the word. */
            if (r % 100 < HOT_PERCENT || cold_pages == 0) {
                page = (size_t)((r >> 8) % hot_pages) * HOT_EVERY;
                hot_hits++;
            } else {
                /* The j-th cold page: skip the hot page at the start of each group of ten. */
                size_t j = (size_t)((r >> 8) % cold_pages);
                page = j / (HOT_EVERY - 1) * HOT_EVERY + 1 + j % (HOT_EVERY - 1);
            }
            uint64_t d = splitmix64(&s);
            size_t i = page * PAGE_WORDS + (size_t)(d >> 55); /* 512 words a page */
            a[i] += d;
            dsum += d;
            dwsum += d * (2 * (uint64_t)i + 1);
            if (fixed && ++done == fixed)
                break;
            if (!fixed)
                done++;
        }
        t1 = now();
        if (fixed ? done == fixed : t1 >= deadline)
            break;
    }

    uint64_t sum2 = 0, wsum2 = 0;
    for (size_t i = 0; i < n; i++) {
        sum2 += a[i];
        wsum2 += a[i] * (2 * (uint64_t)i + 1);
    }
    if (sum2 != sum + dsum)
        fail("the array's sum is %016llx, expected %016llx: an update was lost or a page "
             "came back with the wrong contents",
             (unsigned long long)sum2, (unsigned long long)(sum + dsum));
    if (wsum2 != wsum + dwsum)
        fail("the array's index-weighted sum is %016llx, expected %016llx: a page came back "
             "at the wrong place",
             (unsigned long long)wsum2, (unsigned long long)(wsum + dwsum));
    double el = t1 - t0;
    printf("skewed: %llu updates in %.2f s: %.0f updates/s (%.1f%% to hot pages)\n",
           (unsigned long long)done, el, (double)done / el,
           100.0 * (double)hot_hits / (double)done);
    free(a);
    printf("skewed: ok\n");
    return 0;
}
