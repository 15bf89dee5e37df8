/* farmem's minimal guest: a freestanding long-mode payload that runs one workload over
 * its RAM and reports through ports. No OS, no interrupts, no SSE (-mgeneral-regs-only).
 *
 * The VMM (crates/farmem-vm/src/lib.rs) identity-maps guest memory with 2 MiB pages,
 * writes a `struct params` at PARAMS_ADDR and enters `_start` in 64-bit mode with the
 * stack below 1 MiB. Output: bytes to port 0x3f8 (the console), and the exit code to port
 * 0xf4 (then hlt). The layout facts here and in lib.rs must agree; lib.rs is the one
 * description, this file restates the two addresses it reads. */
#include <stdint.h>

#define PARAMS_ADDR 0x9000UL
#define PARAMS_MAGIC 0x6661726d656d766dULL /* "farmemvm" */
#define HEAP_START (4UL << 20)             /* workloads use guest memory from 4 MiB */

struct params {
    uint64_t magic;
    uint64_t workload; /* 1 sort, 2 random, 3 kv */
    uint64_t size;     /* bytes of guest memory the workload uses */
    uint64_t seed;
    uint64_t ops;      /* random / kv: operations */
    uint64_t mem_end;  /* guest RAM size */
};

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

static void puts_(const char *s) { while (*s) outb(0x3f8, (uint8_t)*s++); }

static void putu(uint64_t v) {
    char b[21];
    int i = 20;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts_(b + i);
}

static void putx(uint64_t v) {
    char b[17];
    for (int i = 15; i >= 0; i--) { b[i] = "0123456789abcdef"[v & 15]; v >>= 4; }
    b[16] = 0;
    puts_(b);
}

__attribute__((noreturn)) static void exit_(uint8_t code) {
    outb(0xf4, code);
    for (;;) __asm__ volatile("hlt");
}

static uint64_t rng;
static uint64_t next(void) { /* xorshift64* */
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
}

/* sort: fill, quicksort in place (recursing into the smaller side, so the stack stays
 * within log2(n) frames; partitions sweep memory in order, as a far-memory program
 * should), verify order and sum. */
static void quicksort(uint64_t *a, int64_t lo, int64_t hi) {
    while (lo < hi) {
        uint64_t pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo - 1, j = hi + 1;
        for (;;) {
            do i++; while (a[i] < pivot);
            do j--; while (a[j] > pivot);
            if (i >= j) break;
            uint64_t t = a[i]; a[i] = a[j]; a[j] = t;
        }
        if (j - lo < hi - j) { quicksort(a, lo, j); lo = j + 1; }
        else { quicksort(a, j + 1, hi); hi = j; }
    }
}

static int sort(const struct params *p) {
    uint64_t *a = (uint64_t *)HEAP_START, n = p->size / 8, sum = 0;
    for (uint64_t i = 0; i < n; i++) { a[i] = next(); sum += a[i]; }
    puts_("sort: filled "); putu(n); puts_(" numbers\n");
    quicksort(a, 0, (int64_t)n - 1);
    uint64_t check = 0;
    for (uint64_t i = 0; i < n; i++) {
        check += a[i];
        if (i && a[i - 1] > a[i]) { puts_("sort: out of order at "); putu(i); puts_("\n"); return 1; }
    }
    if (check != sum) { puts_("sort: sum changed\n"); return 1; }
    puts_("sort: sorted and verified, sum "); putx(sum); puts_("\n");
    return 0;
}

/* random: every word holds a function of its index and a version; random read-modify-
 * writes bump versions, then a full pass checks every word. */
static uint64_t mix(uint64_t i, uint64_t v) { return (i * 0x9e3779b97f4a7c15ULL) ^ (v << 48) ^ 0x5bd1e995; }

static int random_(const struct params *p) {
    uint64_t *a = (uint64_t *)HEAP_START, n = p->size / 8;
    for (uint64_t i = 0; i < n; i++) a[i] = mix(i, 0);
    for (uint64_t k = 0; k < p->ops; k++) {
        uint64_t i = next() % n, v = a[i] ^ (i * 0x9e3779b97f4a7c15ULL) ^ 0x5bd1e995;
        v >>= 48;
        if (a[i] != mix(i, v)) { puts_("random: word "); putu(i); puts_(" is wrong\n"); return 1; }
        a[i] = mix(i, (v + 1) & 0xffff);
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = (a[i] ^ (i * 0x9e3779b97f4a7c15ULL) ^ 0x5bd1e995) >> 48;
        if (a[i] != mix(i, v)) { puts_("random: word "); putu(i); puts_(" is wrong at the end\n"); return 1; }
    }
    puts_("random: "); putu(p->ops); puts_(" updates over "); putu(n); puts_(" words verified\n");
    return 0;
}

/* kv: an open-addressing table of keys to values of 64 B to 4 KiB, carved from the heap
 * in order; sets, then gets of random keys, each value checked byte for byte. */
struct slot { uint64_t key; uint64_t len; uint8_t *val; };

static uint8_t byte_of(uint64_t key, uint64_t j) { return (uint8_t)((key * 31 + j * 7) >> 3); }

static int kv(const struct params *p) {
    uint64_t nslots = 1;
    while (nslots * 64 < p->size / 8) nslots <<= 1; /* slots take about 1/8 of the size */
    struct slot *t = (struct slot *)HEAP_START;
    uint8_t *heap = (uint8_t *)(HEAP_START + nslots * sizeof(struct slot));
    uint8_t *end = (uint8_t *)(HEAP_START + p->size);
    for (uint64_t i = 0; i < nslots; i++) t[i].val = 0;
    uint64_t keys = 0;
    for (;; keys++) {
        uint64_t len = 64ULL << (next() % 7); /* 64 B .. 4 KiB */
        if (heap + len > end || keys * 2 >= nslots) break;
        uint64_t key = keys * 0x9e3779b97f4a7c15ULL + 1, h = key & (nslots - 1);
        while (t[h].val) h = (h + 1) & (nslots - 1);
        t[h].key = key; t[h].len = len; t[h].val = heap;
        for (uint64_t j = 0; j < len; j++) heap[j] = byte_of(key, j);
        heap += len;
    }
    for (uint64_t k = 0; k < p->ops; k++) {
        uint64_t key = (next() % keys) * 0x9e3779b97f4a7c15ULL + 1, h = key & (nslots - 1);
        while (t[h].val && t[h].key != key) h = (h + 1) & (nslots - 1);
        if (!t[h].val) { puts_("kv: key lost\n"); return 1; }
        for (uint64_t j = 0; j < t[h].len; j++)
            if (t[h].val[j] != byte_of(key, j)) { puts_("kv: value of a key is wrong\n"); return 1; }
    }
    puts_("kv: "); putu(keys); puts_(" keys set, "); putu(p->ops); puts_(" gets verified\n");
    return 0;
}

void guest_main(void) {
    const struct params *p = (const struct params *)PARAMS_ADDR;
    if (p->magic != PARAMS_MAGIC) { puts_("guest: no parameters\n"); exit_(2); }
    if (HEAP_START + p->size > p->mem_end) { puts_("guest: size does not fit in memory\n"); exit_(2); }
    rng = p->seed | 1;
    int rc;
    switch (p->workload) {
    case 1: rc = sort(p); break;
    case 2: rc = random_(p); break;
    case 3: rc = kv(p); break;
    default: puts_("guest: unknown workload\n"); exit_(2);
    }
    exit_((uint8_t)rc);
}

__asm__(".section .text.start\n"
        ".globl _start\n"
        "_start:\n"
        "  mov $0x80000, %rsp\n"
        "  call guest_main\n"
        "1: hlt\n"
        "  jmp 1b\n");
