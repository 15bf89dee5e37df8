/*
 * crash.c: a plug-in with a bug: its fault callback dereferences NULL (with -DABORT it
 * aborts instead, as a Rust plug-in that panics does). farmem must say so in one line
 * and stop the program, inside a fault where every signal is otherwise blocked.
 */
#include <stdlib.h>

#include "farmem_plugin.h"

static size_t on_fault(const struct farmem_fault *f, struct farmem_range *out, size_t max)
{
    (void)f;
    (void)out;
    (void)max;
#ifdef ABORT
    abort();
#else
    return (size_t) * (volatile int *)0;
#endif
}

static const struct farmem_plugin plugin = {
    .abi = FARMEM_PLUGIN_ABI,
    .name = "crash",
    .fault = on_fault,
};

const struct farmem_plugin *farmem_plugin(void)
{
    return &plugin;
}
