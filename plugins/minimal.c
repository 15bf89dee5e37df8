/*
 * minimal.c: the smallest useful farmem plug-in, as a starting point for your own.
 *
 * On a fault in a heap block it asks for the rest of the block (up to 64 KiB), and on a
 * fault outside any known block for the next page; it leaves eviction to farmem; it counts
 * faults, prefetch hits, allocations, frees and eviction hints asked, and prints the
 * counts when the program exits.
 *
 * Build: cc -O2 -Wall -shared -fPIC -I include plugins/minimal.c -o minimal.so
 * Run:   farmem run --local-mem 64M --plugin ./minimal.so -- PROGRAM
 */
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "farmem_plugin.h"

static atomic_ulong faults, hits, allocs, frees, priorities;

static size_t on_fault(const struct farmem_fault *f, struct farmem_range *out, size_t max)
{
    atomic_fetch_add_explicit(&faults, 1, memory_order_relaxed);
    if (f->flags & FARMEM_FAULT_HIT)
        atomic_fetch_add_explicit(&hits, 1, memory_order_relaxed);
    if (max == 0)
        return 0;
    char *addr = f->addr;
    if (f->block) {
        char *end = (char *)f->block + f->block_len;
        size_t len = (size_t)(end - addr);
        out[0] = (struct farmem_range){.addr = addr, .len = len < (64 << 10) ? len : (64 << 10)};
        return 1;
    }
    out[0] = (struct farmem_range){.addr = addr + 4096, .len = 4096};
    return 1;
}

static void on_alloc(void *addr, size_t size)
{
    (void)addr;
    (void)size;
    atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
}

static void on_free(void *addr, size_t size)
{
    (void)addr;
    (void)size;
    atomic_fetch_add_explicit(&frees, 1, memory_order_relaxed);
}

static int priority(void *page, size_t len)
{
    (void)page;
    (void)len;
    atomic_fetch_add_explicit(&priorities, 1, memory_order_relaxed);
    return FARMEM_PRIORITY_NORMAL;
}

static const struct farmem_plugin plugin = {
    .abi = FARMEM_PLUGIN_ABI,
    .name = "minimal",
    .fault = on_fault,
    .alloc = on_alloc,
    .free = on_free,
    .priority = priority,
};

const struct farmem_plugin *farmem_plugin(void)
{
    return &plugin;
}

__attribute__((destructor)) static void report(void)
{
    char line[160];
    int n = snprintf(line, sizeof line,
                     "minimal plug-in: %lu faults (%lu prefetch hits), %lu allocations, %lu frees, %lu eviction hints\n",
                     atomic_load(&faults), atomic_load(&hits), atomic_load(&allocs), atomic_load(&frees),
                     atomic_load(&priorities));
    if (n > 0 && write(2, line, (size_t)n) < 0)
        return;
}
