/*
 * wild.c: a plug-in that asks for everything it should not: ranges outside the heap,
 * unaligned and enormous ones, the address 0, and more ranges than it was given room
 * for (it writes only `max`, and says more). The program must run exactly as without
 * it. Reads the faulting block with farmem_read and checks that reads of far or foreign
 * memory fail instead of faulting, and that a fault with registers comes with a copy of
 * the stack.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "farmem_plugin.h"

static int stack_word = 42;

static size_t on_fault(const struct farmem_fault *f, struct farmem_range *out, size_t max)
{
    uint64_t w;
    /* Memory that is not the far heap: refused, never read. */
    if (farmem_read(&stack_word, &w, sizeof w) == 0 || farmem_read(NULL, &w, 8) == 0) {
        static const char msg[] = "wild plug-in: farmem_read read outside the far heap\n";
        if (write(2, msg, sizeof msg - 1) < 0)
            abort();
        abort();
    }
    /* With the registers (the in-thread fault mode) comes a copy of the stack. */
    if (f->nregs > 0 && (f->nstack == 0 || f->nstack > FARMEM_PLUGIN_STACK_WORDS || !f->stack)) {
        static const char msg[] = "wild plug-in: registers without a stack copy\n";
        if (write(2, msg, sizeof msg - 1) < 0)
            abort();
        abort();
    }
    if (f->block)
        (void)farmem_read(f->block, &w, sizeof w);
    struct farmem_range wild[] = {
        {.addr = NULL, .len = 4096},
        {.addr = (void *)&stack_word, .len = 1 << 20},
        {.addr = (char *)f->addr + 1, .len = (size_t)-1 / 2},
        {.addr = (char *)f->addr - 3, .len = 7},
        {.addr = (void *)UINTPTR_MAX, .len = 1},
        {.addr = f->addr, .len = 0},
    };
    size_t n = sizeof wild / sizeof wild[0];
    for (size_t i = 0; i < n && i < max; i++)
        out[i] = wild[i];
    return (max + 1000) | FARMEM_PLUGIN_ENOUGH;
}

/* Priorities that are not in the enum count as normal; keeping everything must not stop
 * reclaim. */
static int priority(void *page, size_t len)
{
    (void)len;
    return ((uintptr_t)page >> 12) % 3 == 0 ? FARMEM_PRIORITY_KEEP : (int)((uintptr_t)page >> 12) * 7919;
}

static const struct farmem_plugin plugin = {
    .abi = FARMEM_PLUGIN_ABI,
    .name = "wild",
    .fault = on_fault,
    .priority = priority,
};

const struct farmem_plugin *farmem_plugin(void)
{
    return &plugin;
}
