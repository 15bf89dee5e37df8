/*
 * redis_guide.c: a farmem plug-in that knows Redis 7's lists.
 *
 * A Redis list is a quicklist: a doubly linked list of 32-byte nodes, each pointing at a
 * listpack of up to 8 KiB that holds the elements. LRANGE walks the nodes in order and
 * reads each listpack whole. Under farmem the nodes stay local (they are small and
 * touched often) and the listpacks are far, so every listpack is a major fault, each
 * one found only when the walk reaches it. This guide brings the next listpacks in with
 * the fault on one: on a fault inside a listpack it finds the node being walked (in a
 * register or on the stack: the node, or a list iterator or entry that points at it),
 * and asks for the
 * listpacks of the next AHEAD nodes, in the walk's direction, each whole (its length is
 * in the node) and mapped at once. The next fault, AHEAD listpacks on, does it again. Strings need no guide: farmem's object prefetch already fetches a large
 * value whole on its first fault.
 *
 * Everything it reads, it reads with farmem_read (local memory only, never a fault), and
 * it checks what it reads looks like Redis 7.0's structures before it trusts it; a wrong
 * guess costs a prefetch, never data.
 *
 * Build: cc -O2 -Wall -shared -fPIC -I include plugins/redis_guide.c -o redis_guide.so
 * Run:   farmem run --local-mem 128M --plugin ./redis_guide.so -- redis-server
 */
#include <stdatomic.h>
#include <stdint.h>

#include "farmem_plugin.h"

/* Listpacks fetched ahead of the walk: 6 took LRANGE 0 99 (lists of 14 listpacks) the
 * fewest seconds of 3, 6, 8 and 12 (BENCHMARKS.md). */
#ifndef AHEAD
#define AHEAD 6
#endif

/* Redis 7.0's quicklistNode (quicklist.h). */
struct ql_node {
    struct ql_node *prev, *next;
    unsigned char *entry; /* the listpack */
    size_t sz;            /* its bytes */
    unsigned int count : 16, encoding : 2, container : 2, recompress : 1,
        attempted_compress : 1, dont_compress : 1, extra : 9;
};

/* Redis 7.0's quicklistIter (quicklist.h). */
struct ql_iter {
    void *quicklist;
    struct ql_node *current;
    unsigned char *zi;
    long offset;
    int direction; /* AL_START_HEAD 0: head to tail; AL_START_TAIL 1 */
};

#define QL_RAW 1
#define QL_PACKED 2

/* Reads a node at `p`; 1 if it looks like a plain (uncompressed, packed) node. */
static int read_node(const void *p, struct ql_node *n)
{
    if (!p || farmem_read(p, n, sizeof *n) != 0)
        return 0;
    return n->entry && n->sz > 6 && n->sz <= (1u << 20) && n->count > 0 &&
           n->encoding == QL_RAW && n->container == QL_PACKED;
}

static int holds(const struct ql_node *n, const void *addr)
{
    const unsigned char *a = addr;
    return a >= n->entry && a < n->entry + n->sz;
}

/* The word (a register, or a stack slot from FARMEM_PLUGIN_STACK_WORDS on) and how it
 * led to the node last time: tried first, so that a fault usually costs two or three
 * reads. */
static _Atomic int last_word = -1, last_was_iter;

/* Word `i` of the fault's context: the registers, then the stack. */
static uint64_t word(const struct farmem_fault *f, int i)
{
    return (unsigned)i < f->nregs ? f->regs[i] : f->stack[i - (int)f->nregs];
}

/* Finds the node whose listpack holds `addr`, from word `w`: the node itself, or an
 * iterator pointing at it. Sets *dir to the walk's direction (0 forward). */
static int from_word(const struct farmem_fault *f, int w, int as_iter, struct ql_node *n,
                     int *dir)
{
    const void *v = (const void *)(uintptr_t)word(f, w);
    if (!as_iter) {
        *dir = 0;
        return read_node(v, n) && holds(n, f->addr);
    }
    struct ql_iter it;
    if (!v || farmem_read(v, &it, sizeof it) != 0 || (it.direction != 0 && it.direction != 1))
        return 0;
    *dir = it.direction;
    return read_node(it.current, n) && holds(n, f->addr);
}

static size_t on_fault(const struct farmem_fault *f, struct farmem_range *out, size_t max)
{
    if (f->nregs + f->nstack == 0 || !f->block || f->block_len < 64)
        return 0;
    struct ql_node n;
    int dir = 0, found = 0;
    int words = (int)(f->nregs + f->nstack);
    int lw = atomic_load_explicit(&last_word, memory_order_relaxed);
    if (lw >= 0 && lw < words)
        found = from_word(f, lw, atomic_load_explicit(&last_was_iter, memory_order_relaxed), &n, &dir);
    /* The registers, then the stack: a walk keeps its cursor in one or the other (the
     * first listpack of an LRANGE is reached through a quicklistEntry on the stack). */
    for (int w = 0; !found && w < words; w++)
        for (int as_iter = 0; !found && as_iter < 2; as_iter++)
            if (from_word(f, w, as_iter, &n, &dir)) {
                found = 1;
                atomic_store_explicit(&last_word, w, memory_order_relaxed);
                atomic_store_explicit(&last_was_iter, as_iter, memory_order_relaxed);
            }
    if (!found)
        return 0;
    size_t k = 0;
    struct ql_node *next = dir ? n.prev : n.next;
    while (k < AHEAD && k < max && read_node(next, &n)) {
        out[k++] = (struct farmem_range){.addr = n.entry, .len = n.sz};
        next = dir ? n.prev : n.next;
    }
    /* The listpacks are read whole: mapped at once (WHOLE), no marker faults. The rest
     * of this one comes with the fault (the object prefetch); past it, readahead would
     * fetch a neighbour nobody asked for (ENOUGH). */
    return k | FARMEM_PLUGIN_WHOLE | FARMEM_PLUGIN_ENOUGH;
}

static const struct farmem_plugin plugin = {
    .abi = FARMEM_PLUGIN_ABI,
    .name = "redis-guide",
    .fault = on_fault,
};

const struct farmem_plugin *farmem_plugin(void)
{
    return &plugin;
}
