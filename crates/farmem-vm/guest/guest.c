/* farmem's minimal guest: a freestanding long-mode payload that runs one workload over
 * its RAM and reports through ports. No OS, no interrupts, no SSE (-mgeneral-regs-only).
 *
 * The VMM (crates/farmem-vm/src/layout.rs) identity-maps guest memory with 2 MiB pages,
 * writes a `struct params` at PARAMS_ADDR and enters `_start` on every vCPU in 64-bit
 * mode, each with its own stack below 512 KiB and its index in %rdi. Output: bytes to
 * port 0x3f8 (the console), the exit code to port 0xf4 (then hlt); a write to port 0xf5
 * asks the VMM to take a waiting vCPU off its CPU for a moment. The layout facts here
 * and in layout.rs must agree; layout.rs is the one description, this file restates the
 * two addresses it reads. */
#include <stdint.h>

#define PARAMS_ADDR 0x9000UL
#define PARAMS_MAGIC 0x6661726d656d766dULL /* "farmemvm" */
#define HEAP_START (4UL << 20)             /* workloads use guest memory from 4 MiB */

struct params {
    uint64_t magic;
    uint64_t workload; /* 1 sort, 2 random, 3 kv, 4 crash, 5 hang, 6 latency */
    uint64_t size;     /* bytes of guest memory the workload uses */
    uint64_t seed;
    uint64_t ops;      /* random / kv: operations (all vCPUs together) */
    uint64_t mem_end;  /* guest RAM size */
    uint64_t cpus;     /* vCPUs, each entered at _start with its index in %rdi */
    uint64_t tsc_khz;  /* the TSC's frequency, for latencies in ns */
};

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

/* Output goes through the VMM line by line per vCPU, so lines of different vCPUs do not
 * mix. Only vCPU 0 reports success; any vCPU reports what it found wrong. */
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

/* One vCPU's own state (on its stack). */
struct cpu {
    uint64_t id, n;   /* this vCPU's index, and how many there are */
    uint64_t rng;     /* xorshift64* state */
    uint64_t passed;  /* barriers passed */
};

static uint64_t next(struct cpu *c) { /* xorshift64* */
    c->rng ^= c->rng >> 12; c->rng ^= c->rng << 25; c->rng ^= c->rng >> 27;
    return c->rng * 2685821657736338717ULL;
}

/* Every vCPU waits here until all have arrived. A vCPU that waits long asks the VMM to
 * take it off its CPU for a moment (a write to port 0xf5), so that waiting does not take
 * CPU time from the vCPUs, and the fault handlers, that are working. */
static uint64_t arrived;
static void barrier(struct cpu *c) {
    uint64_t target = ++c->passed * c->n;
    __atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
    for (uint64_t spins = 0; __atomic_load_n(&arrived, __ATOMIC_ACQUIRE) < target; spins++) {
        if (spins < 1000) __asm__ volatile("pause");
        else outb(0xf5, 0);
    }
}

/* vCPU c's share [lo, hi) of n items. */
static void share(const struct cpu *c, uint64_t n, uint64_t *lo, uint64_t *hi) {
    *lo = n * c->id / c->n;
    *hi = n * (c->id + 1) / c->n;
}

/* sort: fill, quicksort in place (recursing into the smaller side, so the stack stays
 * within log2(n) frames; partitions sweep memory in order, as a far-memory program
 * should), verify order and sum. With several vCPUs each sorts its own slice. */
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

static uint64_t total;

static int sort(const struct params *p, struct cpu *c) {
    uint64_t *all = (uint64_t *)HEAP_START, n = p->size / 8, lo, hi, sum = 0;
    share(c, n, &lo, &hi);
    uint64_t *a = all + lo, m = hi - lo;
    for (uint64_t i = 0; i < m; i++) { a[i] = next(c); sum += a[i]; }
    barrier(c);
    if (c->id == 0) { puts_("sort: filled "); putu(n); puts_(" numbers\n"); }
    if (m) quicksort(a, 0, (int64_t)m - 1);
    uint64_t check = 0;
    for (uint64_t i = 0; i < m; i++) {
        check += a[i];
        if (i && a[i - 1] > a[i]) { puts_("sort: out of order at "); putu(lo + i); puts_("\n"); return 1; }
    }
    if (check != sum) { puts_("sort: sum changed\n"); return 1; }
    __atomic_fetch_add(&total, sum, __ATOMIC_SEQ_CST);
    barrier(c);
    if (c->id == 0) { puts_("sort: sorted and verified, sum "); putx(total); puts_("\n"); }
    return 0;
}

/* random: every word holds a function of its index and a 16-bit version; random
 * read-modify-writes (compare-and-swap, so vCPUs can share words) check the word and
 * bump its version. At the end every word is checked, and the versions must add up to
 * the number of updates (mod 2^16): an update lost to a stale page shows there. */
static uint64_t mix(uint64_t i, uint64_t v) { return (i * 0x9e3779b97f4a7c15ULL) ^ (v << 48) ^ 0x5bd1e995; }
static uint64_t version(uint64_t i, uint64_t w) { return (w ^ (i * 0x9e3779b97f4a7c15ULL) ^ 0x5bd1e995) >> 48; }

#define PROGRESS 16384 /* vCPU 0 reports every this many of its updates */

static int random_(const struct params *p, struct cpu *c) {
    uint64_t *a = (uint64_t *)HEAP_START, n = p->size / 8, lo, hi;
    share(c, n, &lo, &hi);
    for (uint64_t i = lo; i < hi; i++) a[i] = mix(i, 0);
    barrier(c);
    share(c, p->ops, &lo, &hi);
    for (uint64_t k = lo; k < hi; k++) {
        uint64_t i = next(c) % n, w = __atomic_load_n(&a[i], __ATOMIC_RELAXED);
        for (;;) {
            uint64_t v = version(i, w);
            if (w != mix(i, v)) { puts_("random: word "); putu(i); puts_(" is wrong\n"); return 1; }
            if (__atomic_compare_exchange_n(&a[i], &w, mix(i, (v + 1) & 0xffff), 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                break;
        }
        /* Progress, for measuring throughput over time (scripts/vm-recover.py). */
        if (c->id == 0 && (k - lo + 1) % PROGRESS == 0 && k + 1 < hi) {
            puts_("random: "); putu((k - lo + 1) * c->n); puts_(" updates\n");
        }
    }
    barrier(c);
    if (c->id != 0) return 0;
    uint64_t versions = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = version(i, a[i]);
        if (a[i] != mix(i, v)) { puts_("random: word "); putu(i); puts_(" is wrong at the end\n"); return 1; }
        versions += v;
    }
    if ((versions & 0xffff) != (p->ops & 0xffff)) { puts_("random: updates were lost\n"); return 1; }
    puts_("random: "); putu(p->ops); puts_(" updates over "); putu(n); puts_(" words verified\n");
    return 0;
}

/* kv: an open-addressing table of keys to values of 64 B to 4 KiB, carved from the heap
 * in order; vCPU 0 sets them, then every vCPU gets random keys, each value checked byte
 * for byte. */
struct slot { uint64_t key; uint64_t len; uint8_t *val; };

static uint8_t byte_of(uint64_t key, uint64_t j) { return (uint8_t)((key * 31 + j * 7) >> 3); }

static uint64_t keys;

static int kv(const struct params *p, struct cpu *c) {
    uint64_t nslots = 1;
    while (nslots * 64 < p->size / 8) nslots <<= 1; /* slots take about 1/8 of the size */
    struct slot *t = (struct slot *)HEAP_START;
    if (c->id == 0) {
        uint8_t *heap = (uint8_t *)(HEAP_START + nslots * sizeof(struct slot));
        uint8_t *end = (uint8_t *)(HEAP_START + p->size);
        for (uint64_t i = 0; i < nslots; i++) t[i].val = 0;
        for (;; keys++) {
            uint64_t len = 64ULL << (next(c) % 7); /* 64 B .. 4 KiB */
            if (heap + len > end || keys * 2 >= nslots) break;
            uint64_t key = keys * 0x9e3779b97f4a7c15ULL + 1, h = key & (nslots - 1);
            while (t[h].val) h = (h + 1) & (nslots - 1);
            t[h].key = key; t[h].len = len; t[h].val = heap;
            for (uint64_t j = 0; j < len; j++) heap[j] = byte_of(key, j);
            heap += len;
        }
    }
    barrier(c);
    uint64_t lo, hi;
    share(c, p->ops, &lo, &hi);
    for (uint64_t k = lo; k < hi; k++) {
        uint64_t key = (next(c) % keys) * 0x9e3779b97f4a7c15ULL + 1, h = key & (nslots - 1);
        while (t[h].val && t[h].key != key) h = (h + 1) & (nslots - 1);
        if (!t[h].val) { puts_("kv: key lost\n"); return 1; }
        for (uint64_t j = 0; j < t[h].len; j++)
            if (t[h].val[j] != byte_of(key, j)) { puts_("kv: value of a key is wrong\n"); return 1; }
    }
    barrier(c);
    if (c->id == 0) { puts_("kv: "); putu(keys); puts_(" keys set, "); putu(p->ops); puts_(" gets verified\n"); }
    return 0;
}

/* latency: the cost of one access as the guest sees it, timed with the TSC. Writes the
 * first word of every page of SIZE (so that each has data, and with a small budget most
 * go far), then OPS reads of the first word of random pages, each timed and checked;
 * reports the 50th, 90th and 99th percentiles. With little of SIZE local, most reads are
 * a vCPU fault served by the VMM's fault handler (vCPU 0 only). */
#define LAT_BUCKET 64   /* cycles per histogram bucket */
#define LAT_BUCKETS 65536
static uint64_t hist[LAT_BUCKETS];

static inline uint64_t tsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi) : : "memory");
    return ((uint64_t)hi << 32) | lo;
}

static void put_ns(const struct params *p, uint64_t bucket) {
    uint64_t cycles = bucket * LAT_BUCKET + LAT_BUCKET / 2;
    uint64_t ns = p->tsc_khz ? cycles * 1000000 / p->tsc_khz : 0;
    putu(ns / 1000); puts_("."); putu((ns / 100) % 10); puts_(" us");
}

static int latency(const struct params *p, struct cpu *c) {
    if (c->id != 0) return 0;
    uint8_t *base = (uint8_t *)HEAP_START;
    uint64_t pages = p->size / 4096;
    for (uint64_t i = 0; i < pages; i++) *(volatile uint64_t *)(base + i * 4096) = i;
    for (uint64_t k = 0; k < p->ops; k++) {
        uint64_t i = next(c) % pages;
        uint64_t t0 = tsc();
        uint64_t v = *(volatile uint64_t *)(base + i * 4096);
        uint64_t t1 = tsc();
        if (v != i) { puts_("latency: page "); putu(i); puts_(" is wrong\n"); return 1; }
        uint64_t b = (t1 - t0) / LAT_BUCKET;
        hist[b < LAT_BUCKETS ? b : LAT_BUCKETS - 1]++;
    }
    uint64_t want[3] = { p->ops / 2, p->ops * 9 / 10, p->ops * 99 / 100 }, at[3] = {0, 0, 0};
    uint64_t seen = 0;
    for (uint64_t b = 0, w = 0; b < LAT_BUCKETS && w < 3; b++) {
        seen += hist[b];
        while (w < 3 && seen > want[w]) at[w++] = b;
    }
    puts_("latency: "); putu(p->ops); puts_(" reads of random pages of "); putu(pages);
    puts_(": p50 "); put_ns(p, at[0]); puts_(", p90 "); put_ns(p, at[1]);
    puts_(", p99 "); put_ns(p, at[2]); puts_("\n");
    return 0;
}

/* crash and hang: guests that go wrong on purpose, to show how the VMM reports them. */
static int crash(void) {
    puts_("crash: executing an undefined instruction with no interrupt table\n");
    __asm__ volatile("ud2"); /* #UD, no IDT: #GP, double fault, triple fault */
    return 1;
}

__attribute__((noreturn)) static void hang(void) {
    puts_("hang: looping forever\n");
    for (;;) __asm__ volatile("pause");
}

void guest_main(uint64_t id) {
    const struct params *p = (const struct params *)PARAMS_ADDR;
    if (p->magic != PARAMS_MAGIC) { puts_("guest: no parameters\n"); exit_(2); }
    if (HEAP_START + p->size > p->mem_end) { puts_("guest: size does not fit in memory\n"); exit_(2); }
    struct cpu c = { .id = id, .n = p->cpus, .rng = (p->seed + id * 0x9e3779b97f4a7c15ULL) | 1 };
    int rc;
    switch (p->workload) {
    case 1: rc = sort(p, &c); break;
    case 2: rc = random_(p, &c); break;
    case 3: rc = kv(p, &c); break;
    case 4: rc = crash(); break;
    case 5: hang();
    case 6: rc = latency(p, &c); break;
    default: puts_("guest: unknown workload\n"); exit_(2);
    }
    exit_((uint8_t)rc);
}

/* The VMM sets each vCPU's stack and puts its index in %rdi (guest_main's argument). */
__asm__(".section .text.start\n"
        ".globl _start\n"
        "_start:\n"
        "  call guest_main\n"
        "1: hlt\n"
        "  jmp 1b\n");
