/*
 * objects.c: whole objects of 4 to 128 KiB read in random order, as a key-value store
 * reads its values (Redis copying a value into its reply).
 *
 * Allocates objects of 4, 8, 16, 32, 64 and 128 KiB (plus 40 bytes, so that they do not
 * start on page boundaries) in equal shares until SIZE bytes, each followed by a small
 * "key" allocation as a store's bookkeeping would be, and fills every object with bytes
 * derived from its number and generation. Then READS times: picks an object at random and
 * copies it whole into a buffer, checking every byte; one read in 16 instead frees the
 * object and allocates a new one of another size with the next generation's bytes (so
 * that freed blocks are reused). At the end every object is checked once more.
 *
 * Linked against libfarmem (the stub without farmem), it prints under `farmem run` the
 * fetch counters of the read phase: pages the copies covered, pages fetched from the far
 * tier, pages prefetched, major faults, other faults (minor and zero-fill) and prefetch
 * accuracy. With farmem's object prefetch, a fault in
 * an object brings in the rest of that object and nothing past it.
 *
 * Usage: objects [--size SIZE] [--reads N] [--seed N]   defaults --size 64M --reads 20000
 * Prints "objects: ok"; on any mismatch, one "objects: FAIL: ..." line on stderr and exit
 * status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -I include objects.c -o objects -L DIR -lfarmem
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "farmem.h"

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fputs("objects: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static uint64_t rng = 0x243f6a8885a308d3ULL;

static uint64_t next(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'K': case 'k': v <<= 10; break;
    case 'M': case 'm': v <<= 20; break;
    case 'G': case 'g': v <<= 30; break;
    case 0: break;
    default: fail("bad size %s", s);
    }
    return (size_t)v;
}

struct object {
    unsigned char *data;
    size_t len;
    uint32_t gen;
    char *key;
};

/* The byte at offset i of object n in generation g. */
static unsigned char byte_at(size_t n, uint32_t g, size_t i)
{
    uint64_t x = (n * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)g << 40) ^ (i / 8);
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 32;
    return (unsigned char)(x >> (8 * (i % 8)));
}

static void fill(struct object *o, size_t n)
{
    for (size_t i = 0; i < o->len; i++)
        o->data[i] = byte_at(n, o->gen, i);
}

static void check(const unsigned char *copy, const struct object *o, size_t n)
{
    for (size_t i = 0; i < o->len; i++)
        if (copy[i] != byte_at(n, o->gen, i))
            fail("object %zu (generation %u, %zu bytes): byte %zu is %u, not %u", n, o->gen,
                 o->len, i, copy[i], byte_at(n, o->gen, i));
}

static void make(struct object *o, size_t n, uint32_t gen)
{
    static const size_t sizes[] = {4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10};
    o->len = sizes[next() % 6] + 40;
    o->gen = gen;
    o->data = malloc(o->len);
    o->key = malloc(40);
    if (!o->data || !o->key)
        fail("out of memory");
    snprintf(o->key, 40, "key:%zu", n);
    fill(o, n);
}

static size_t pages_of(const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p;
    return (a + len + 4095) / 4096 - a / 4096;
}

int main(int argc, char **argv)
{
    size_t size = 64 << 20;
    long reads = 20000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 1 < argc)
            size = parse_size(argv[++i]);
        else if (!strcmp(argv[i], "--reads") && i + 1 < argc)
            reads = atol(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            rng = strtoull(argv[++i], NULL, 10);
        else
            fail("usage: objects [--size SIZE] [--reads N] [--seed N]");
    }
    size_t cap = size / (4 << 10) + 1, n = 0, total = 0;
    struct object *objs = calloc(cap, sizeof *objs);
    unsigned char *copy = malloc((128 << 10) + 40);
    if (!objs || !copy)
        fail("out of memory");
    while (total < size && n < cap) {
        make(&objs[n], n, 0);
        total += objs[n].len;
        n++;
    }

    struct farmem_stats before, after;
    int active = farmem_active();
    if (active && farmem_stats(&before) != 0)
        fail("farmem_stats failed under farmem");
    size_t covered = 0, replaced = 0;
    for (long r = 0; r < reads; r++) {
        size_t k = next() % n;
        struct object *o = &objs[k];
        if (next() % 16 == 0) {
            free(o->data);
            free(o->key);
            make(o, k, o->gen + 1);
            replaced++;
            continue;
        }
        covered += pages_of(o->data, o->len);
        memcpy(copy, o->data, o->len);
        check(copy, o, k);
        if (strncmp(o->key, "key:", 4) != 0)
            fail("object %zu: its key was overwritten", k);
    }
    if (active && farmem_stats(&after) != 0)
        fail("farmem_stats failed under farmem");
    for (size_t k = 0; k < n; k++)
        check(objs[k].data, &objs[k], k);
    printf("objects: %zu objects, %zu bytes, %ld reads, %zu replaced\n", n, total, reads,
           replaced);
    if (active) {
        unsigned long long majors = after.major_faults - before.major_faults;
        printf("objects: read phase: pages covered %zu, fetched %llu, prefetched %llu, "
               "major faults %llu, other faults %llu, prefetch accuracy %.3f\n",
               covered, (unsigned long long)(after.fetched - before.fetched),
               (unsigned long long)(after.prefetched - before.prefetched), majors,
               (unsigned long long)(after.faults - before.faults) - majors,
               after.prefetch_accuracy);
    }
    puts("objects: ok");
    return 0;
}
