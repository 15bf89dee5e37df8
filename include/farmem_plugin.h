/*
 * farmem_plugin.h: the ABI of farmem's policy plug-ins, for unmodified programs.
 *
 * `farmem run --plugin PATH.so -- PROGRAM` (or FARMEM_PLUGIN=PATH.so) loads a shared
 * object into the program and calls it on the far heap's faults, allocations and frees.
 * A plug-in knows something farmem does not (the program's data structures) and says
 * what to bring in with a fault: a researcher's policy in an afternoon, without a kernel
 * patch or a change to the program.
 *
 * A plug-in exports one function, `farmem_plugin`, returning a description of itself
 * whose `abi` is the FARMEM_PLUGIN_ABI it was built against; farmem refuses (one line,
 * before the program starts) a plug-in without it or built for another ABI. Every
 * callback but `fault` may be NULL.
 *
 * The callbacks run inside the program, in whatever thread faulted or allocated; `fault`
 * runs inside the fault, in a signal handler. They must not allocate, take locks the
 * program may hold, or touch far memory: read the program's memory with farmem_read(),
 * which copies what is local and fails on what is not, never faulting. Ranges a plug-in
 * asks for are hints: farmem brings in whole verified pages and caps how many it takes
 * per fault; a range not wholly inside the far heap, an empty one, or more than `max`,
 * is ignored and reported once on stderr. Wrong hints cost time, never data. A plug-in
 * that crashes (SIGSEGV, SIGILL, SIGFPE, or abort, as a Rust panic does) stops the
 * program with one line naming it, unless the program has installed its own handler for
 * that signal (Redis has, for SIGSEGV: its crash report then names no plug-in); one that
 * touches far memory directly inside a fault is killed by the kernel. Eviction hints are
 * asked by the clock policy (`--evict clock`, the default), not by fifo.
 *
 * Build: cc -O2 -shared -fPIC -I/usr/local/include my_plugin.c -o my_plugin.so
 * (no library to link: the calls below are provided by farmem in the running program).
 */
#ifndef FARMEM_PLUGIN_H
#define FARMEM_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "farmem.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FARMEM_PLUGIN_ABI 1

/* struct farmem_fault.flags */
enum farmem_fault_flags {
    FARMEM_FAULT_WRITE = 1, /* the access was a write */
    FARMEM_FAULT_HIT = 2    /* the first touch of a page prefetched earlier (a cheap minor
                               fault): the program reached the end of what was brought in */
};

/* What the fault upcall is told. */
struct farmem_fault {
    void *addr;           /* the faulting address */
    void *block;          /* the heap block it lies in (start), or NULL if unknown */
    size_t block_len;     /* the block's length in bytes, 0 if unknown */
    uint32_t flags;       /* enum farmem_fault_flags */
    uint32_t nregs;       /* entries in regs: 16 on x86-64 (rax, rbx, rcx, rdx, rsi, rdi,
                             rbp, r8 to r15, and rsp last), 0 where the fault is
                             resolved on another thread (the thread fault mode) */
    const uint64_t *regs; /* the faulting thread's registers at the fault: what the
                             program was working with (a list node, an iterator) */
    uint32_t nstack;      /* words in stack (0 without registers, or if unreadable) */
    const uint64_t *stack; /* a copy of the faulting thread's stack from rsp up (up to
                              FARMEM_PLUGIN_STACK_WORDS words): its callers' locals and
                              spilled registers, such as a structure the walk keeps on
                              the stack */
};

/* Words of the faulting thread's stack copied into struct farmem_fault. */
#define FARMEM_PLUGIN_STACK_WORDS 64

/* The fault upcall's return value may carry these bits besides the count:
 * ENOUGH: the ranges asked for are all this fault needs, so farmem's own prefetch
 *   (readahead) is skipped for it.
 * WHOLE: the ranges are objects the program will read to their ends (a list's next
 *   nodes, say): they are mapped at once, with no marker page (whose first touch would
 *   be a minor fault and a prefetch hit), and their use is not counted. Without it, the
 *   ranges are guesses: installed like readahead's, the far end of each unmapped as its
 *   marker, so that their use is counted and the upcall runs again when the program
 *   reaches it. */
#define FARMEM_PLUGIN_ENOUGH ((size_t)1 << (sizeof(size_t) * 8 - 1))
#define FARMEM_PLUGIN_WHOLE ((size_t)1 << (sizeof(size_t) * 8 - 2))

/* What the priority callback says about a page. */
enum farmem_priority {
    FARMEM_PRIORITY_KEEP = 0,       /* leave it local while anything else can go */
    FARMEM_PRIORITY_NORMAL = 1,     /* as farmem's policy decides (any other value too) */
    FARMEM_PRIORITY_EVICT_FIRST = 2 /* evict it at the reclaimer's next pass, used or not */
};

/* A plug-in, as `farmem_plugin` describes it. */
struct farmem_plugin {
    uint32_t abi;     /* FARMEM_PLUGIN_ABI */
    const char *name; /* for messages and statistics */
    /* On every major fault in the far heap and every prefetch hit: write up to `max`
     * ranges to bring in with the fault into `out`, return how many (| ENOUGH). */
    size_t (*fault)(const struct farmem_fault *f, struct farmem_range *out, size_t max);
    /* Optional: a block of the far heap was allocated (`size` bytes asked for at `addr`),
     * or is about to be freed (`size`: its usable size). Called on every malloc, free and
     * realloc that the far heap serves: keep them short. */
    void (*alloc)(void *addr, size_t size);
    void (*free)(void *addr, size_t size);
    /* Optional: an eviction hint, asked for each resident page (`len` bytes at `page`)
     * that the reclaimer's hand passes, on its thread or on a faulting thread reclaiming
     * for itself (so possibly inside a fault, like `fault`). Returns an enum
     * farmem_priority. Pages kept still go when nothing else can. */
    int (*priority)(void *page, size_t len);
};

/* Exported by the plug-in (under this name, with C linkage). */
const struct farmem_plugin *farmem_plugin(void);

/* Provided by farmem to the plug-in: copies `len` bytes at `addr` of the far heap that
 * are in local memory into `out`, without a fault. Returns 0, or -1 if any of it is not
 * in the far heap or not local (then `out` is unspecified). Safe in the fault upcall. */
int farmem_read(const void *addr, void *out, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* FARMEM_PLUGIN_H */
