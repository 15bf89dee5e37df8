/*
 * farmem.h: optional hints from a C program to farmem.
 *
 * A program that runs under `farmem run` has its heap (malloc and friends, and large
 * anonymous mmaps) in far memory without any change. These calls let it help: bring a
 * range in before it is needed, say how a range will be used, or tell the fault path
 * what to fetch next.
 *
 * Link with `pkg-config --cflags --libs farmem` (libfarmem.so). That library only holds
 * no-op versions of these calls: a program linked against it runs the same without
 * farmem (farmem_active() returns 0 and the hints do nothing). Under `farmem run`, the
 * preloaded farmem library provides the real ones.
 *
 * Every call is thread-safe. Addresses outside far memory are ignored.
 */
#ifndef FARMEM_H
#define FARMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FARMEM_API_VERSION 1

/* How a range will be used (farmem_advise). */
enum farmem_advice {
    FARMEM_ADVICE_NORMAL = 0,     /* no special treatment (clears earlier advice) */
    FARMEM_ADVICE_SEQUENTIAL = 1, /* read front to back: prefetch ahead on every fault */
    FARMEM_ADVICE_RANDOM = 2,     /* no locality: do not prefetch */
    FARMEM_ADVICE_WILLNEED = 3,   /* bring it in now */
    FARMEM_ADVICE_DONTNEED = 4    /* not needed soon: evict it now (the data is kept) */
};

/* A range of memory, for the prefetch hook. */
struct farmem_range {
    void *addr;
    size_t len;
};

/*
 * The prefetch upcall. The fault path calls it, in the faulting thread, with the address
 * that faulted; it writes up to `max` ranges to bring in along with the faulting page
 * into `out` and returns how many it wrote. It runs inside a fault: it must not
 * allocate, take locks the program may hold, or touch far memory.
 */
typedef size_t (*farmem_prefetch_hook)(void *fault_addr, struct farmem_range *out, size_t max);

/* Counters since the program started (farmem_stats). */
struct farmem_stats {
    uint64_t faults;            /* faults of every kind */
    uint64_t major_faults;      /* faults that fetched from the far tier */
    uint64_t fetched;           /* pages fetched from the far tier (prefetched included) */
    uint64_t prefetched;        /* pages brought in ahead of a fault (objects' rests too) */
    uint64_t evicted;           /* pages evicted from local memory */
    uint64_t written_back;      /* evicted pages that were dirty and written to the far tier */
    uint64_t resident_bytes;    /* local memory in use now */
    uint64_t peak_resident_bytes;
    uint64_t budget_bytes;      /* the local budget */
    uint64_t far_bytes;         /* bytes the far tier holds */
    uint64_t fault_p50_ns;      /* major fault latency */
    uint64_t fault_p99_ns;
    double prefetch_accuracy;   /* guessed pages used, 0..1 (0 when none; objects untracked) */
};

/* 1 under `farmem run`, 0 otherwise. */
int farmem_active(void);

/* Starts bringing [addr, addr+len) into local memory. Returns 0. */
int farmem_prefetch(const void *addr, size_t len);

/* Advises how [addr, addr+len) will be used (enum farmem_advice). Returns 0, or -1 with
 * errno EINVAL for an unknown advice. */
int farmem_advise(const void *addr, size_t len, int advice);

/* Sets (or, with NULL, clears) the prefetch upcall for all far memory. Returns 0. */
int farmem_set_prefetch_hook(farmem_prefetch_hook fn);

/* Fills *out. Returns 0 under farmem, or -1 with errno ENOSYS (and *out zeroed) without. */
int farmem_stats(struct farmem_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* FARMEM_H */
