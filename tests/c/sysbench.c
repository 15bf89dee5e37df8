/*
 * sysbench.c: what one system call costs, with and without farmem's syscall guard.
 *
 * Two loops of N `syscall` instructions made directly (no C library function, so no
 * wrapper sees them): getppid (no memory) and clock_getres into a heap buffer. Run it
 * plainly, under `farmem run --no-syscall-guard` and under `farmem run` (guard on): the
 * difference is the guard's cost per dispatched call (BENCHMARKS.md).
 *
 * Usage: sysbench [N]   default 200000
 * Build: gcc -O2 -Wall -Wextra -Werror sysbench.c -o sysbench
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long raw(long n, long a, long b)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return r;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    struct timespec *ts = malloc(sizeof *ts);
    if (!ts || n <= 0)
        return 1;
    memset(ts, 0, sizeof *ts);
    double t0 = now();
    for (long i = 0; i < n; i++)
        raw(SYS_getppid, 0, 0);
    double t1 = now();
    for (long i = 0; i < n; i++)
        raw(SYS_clock_getres, CLOCK_MONOTONIC, (long)ts);
    double t2 = now();
    printf("getppid %.3f us/call, clock_getres into a heap buffer %.3f us/call\n",
           (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6);
    free(ts);
    return 0;
}
