/*
 * quicksort.c: sorts SIZE bytes of 64-bit numbers in one malloc'd array, in place.
 *
 * Fills the array from a seeded PRNG (splitmix64), takes its sum and xor, sorts it with
 * its own quicksort (median-of-three pivot, Hoare partition, insertion sort below 24
 * elements, recursion on the smaller side so the stack stays O(log n); no libc qsort),
 * then checks the order and that the sum and xor are unchanged. Under farmem run with a
 * small local budget this is the classic far-memory workload: partitions sweep the array
 * sequentially at first and become local as they shrink.
 *
 * Usage: quicksort [--size SIZE] [--seed N]     SIZE takes K, M or G; default 1G.
 * Prints "quicksort: sort S s (...)" with the seconds the sort took, then "quicksort: ok";
 * on any mismatch, one "quicksort: FAIL: ..." line on stderr and exit status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread quicksort.c -o quicksort
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("quicksort: FAIL: ", stderr);
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

static void swap(uint64_t *a, uint64_t *b)
{
    uint64_t t = *a;
    *a = *b;
    *b = t;
}

static void insertion_sort(uint64_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint64_t v = a[i];
        size_t j = i;
        while (j > 0 && a[j - 1] > v) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

/* Sorts a[0..n). Loops on the larger part and recurses on the smaller one. */
static void quicksort(uint64_t *a, size_t n)
{
    while (n > 24) {
        /* Median of three, left in a[mid]; a[0] <= pivot <= a[n-1] act as sentinels. */
        size_t mid = n / 2;
        if (a[mid] < a[0])
            swap(&a[mid], &a[0]);
        if (a[n - 1] < a[0])
            swap(&a[n - 1], &a[0]);
        if (a[n - 1] < a[mid])
            swap(&a[n - 1], &a[mid]);
        uint64_t pivot = a[mid];
        /* Hoare partition: afterwards a[0..=j] <= pivot <= a[j+1..n). */
        size_t i = 0, j = n - 1;
        for (;;) {
            while (a[i] < pivot)
                i++;
            while (a[j] > pivot)
                j--;
            if (i >= j)
                break;
            swap(&a[i], &a[j]);
            i++;
            j--;
        }
        size_t left = j + 1, right = n - left;
        if (left < right) {
            quicksort(a, left);
            a += left;
            n = right;
        } else {
            quicksort(a + left, right);
            n = left;
        }
    }
    insertion_sort(a, n);
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
    fprintf(stderr, "usage: quicksort [--size SIZE] [--seed N]   (default --size 1G --seed 1)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    size_t size = (size_t)1 << 30;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--size"))
            size = parse_size(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed"))
            seed = strtoull(argv[i + 1], NULL, 0);
        else
            usage();
    }
    size_t n = size / sizeof(uint64_t);
    if (n < 2)
        usage();

    uint64_t *a = malloc(n * sizeof *a);
    if (!a)
        fail("malloc(%zu) returned NULL", n * sizeof *a);
    printf("quicksort: %zu MiB, %zu numbers, seed %llu\n", (n * 8) >> 20, n,
           (unsigned long long)seed);
    fflush(stdout);

    uint64_t s = seed, sum = 0, xor = 0;
    double t0 = now();
    for (size_t i = 0; i < n; i++) {
        uint64_t v = splitmix64(&s);
        a[i] = v;
        sum += v;
        xor ^= v;
    }
    double t1 = now();
    quicksort(a, n);
    double t2 = now();

    uint64_t sum2 = a[0], xor2 = a[0];
    for (size_t i = 1; i < n; i++) {
        if (a[i - 1] > a[i])
            fail("not sorted: a[%zu] = %llu > a[%zu] = %llu", i - 1,
                 (unsigned long long)a[i - 1], i, (unsigned long long)a[i]);
        sum2 += a[i];
        xor2 ^= a[i];
    }
    if (sum2 != sum || xor2 != xor)
        fail("the numbers changed: sum %016llx -> %016llx, xor %016llx -> %016llx",
             (unsigned long long)sum, (unsigned long long)sum2, (unsigned long long)xor,
             (unsigned long long)xor2);
    printf("quicksort: sort %.3f s (fill %.3f s, check %.3f s)\n", t2 - t1, t1 - t0,
           now() - t2);
    free(a);
    printf("quicksort: ok\n");
    return 0;
}
