/*
 * reserve.c: maps memory the way QEMU maps a guest's RAM (qemu_ram_mmap): a PROT_NONE
 * reservation of the size plus an alignment, a read-write MAP_FIXED anonymous mapping of
 * the size at the aligned address inside it, then munmap of the unaligned head and of the
 * tail past a guard page. Fills the RAM with a pattern, checks it twice (the second pass
 * after touching it all again, so that under a small budget pages come back from far
 * memory), maps a smaller MAP_FIXED region over part of it (it must read as zeros), and
 * frees it all.
 *
 * Usage: reserve [--size SIZE]     SIZE takes K, M or G; default 64M.
 * Prints "reserve: ram at 0x..., N MiB" then "reserve: ok".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static size_t parse_size(const char *s) {
    char *end;
    size_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'G': case 'g': v <<= 10; /* fall through */
    case 'M': case 'm': v <<= 10; /* fall through */
    case 'K': case 'k': v <<= 10;
    }
    return v;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    size_t size = 64 << 20;
    if (argc == 3 && !strcmp(argv[1], "--size")) size = parse_size(argv[2]);
    const size_t align = 2 << 20, guard = 4096, total = size + align + guard;
    uint8_t *res = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) fail("reserve: mmap PROT_NONE");
    uint8_t *ram = (uint8_t *)(((uintptr_t)res + align - 1) & ~(uintptr_t)(align - 1));
    if (mmap(ram, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
             -1, 0) != ram)
        fail("reserve: mmap MAP_FIXED");
    size_t head = ram - res, tail = total - head - size - guard;
    if (head && munmap(res, head)) fail("reserve: munmap head");
    if (tail && munmap(ram + size + guard, tail)) fail("reserve: munmap tail");
    printf("reserve: ram at %p, %zu MiB\n", (void *)ram, size >> 20);
    uint64_t *w = (uint64_t *)ram;
    size_t n = size / 8;
    for (size_t i = 0; i < n; i++) {
        if (w[i]) { fprintf(stderr, "reserve: word %zu of fresh RAM is not zero\n", i); return 1; }
        w[i] = i * 0x9e3779b97f4a7c15ULL;
    }
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < n; i++)
            if (w[i] != i * 0x9e3779b97f4a7c15ULL) { fprintf(stderr, "reserve: word %zu is wrong\n", i); return 1; }
    /* A fresh mapping over the middle reads as zeros; the rest keeps its data. */
    size_t mid = size / 2, part = size / 4;
    if (mmap(ram + mid, part, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != ram + mid)
        fail("reserve: mmap MAP_FIXED over the middle");
    for (size_t i = 0; i < n; i++) {
        int in = i * 8 >= mid && i * 8 < mid + part;
        if (w[i] != (in ? 0 : i * 0x9e3779b97f4a7c15ULL)) { fprintf(stderr, "reserve: word %zu after remap is wrong\n", i); return 1; }
    }
    if (munmap(ram, size + guard)) fail("reserve: munmap");
    printf("reserve: ok\n");
    return 0;
}
