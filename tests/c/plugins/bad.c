/*
 * bad.c: plug-ins farmem must refuse before the program starts, one per -D:
 *   -DNO_SYMBOL     exports no farmem_plugin
 *   -DWRONG_ABI     built for ABI 999
 *   -DNULL_PLUGIN   farmem_plugin returns NULL
 *   -DNO_FAULT      no fault callback
 */
#include <stddef.h>

#include "farmem_plugin.h"

static size_t on_fault(const struct farmem_fault *f, struct farmem_range *out, size_t max) __attribute__((unused));
static size_t on_fault(const struct farmem_fault *f, struct farmem_range *out, size_t max)
{
    (void)f;
    (void)out;
    (void)max;
    return 0;
}

__attribute__((unused)) static const struct farmem_plugin plugin = {
#ifdef WRONG_ABI
    .abi = 999,
#else
    .abi = FARMEM_PLUGIN_ABI,
#endif
    .name = "bad",
#ifndef NO_FAULT
    .fault = on_fault,
#endif
};

#ifndef NO_SYMBOL
const struct farmem_plugin *farmem_plugin(void)
{
#ifdef NULL_PLUGIN
    return NULL;
#else
    return &plugin;
#endif
}
#else
const struct farmem_plugin *not_the_entry_point(void)
{
    return &plugin;
}
#endif
