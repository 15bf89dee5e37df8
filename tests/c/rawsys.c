/*
 * rawsys.c: system calls on far buffers that no C library wrapper sees.
 *
 * Under `farmem run` in the in-thread (sigbus) fault mode the kernel cannot fault a far
 * page in: a system call on an evicted heap buffer fails with EFAULT unless farmem brings
 * the page in first. The preload wraps the C library's common entry points; this program
 * uses the ones it does not wrap and the `syscall` instruction itself:
 *
 *   raw read, write, clock_gettime, getrandom, stat (path and result in the heap),
 *   readv (iovec array and buffers in the heap); the C library's uname, ioctl(FIONREAD),
 *   pipe, getcwd, readlink, sched_getaffinity, nanosleep and sysinfo; a signal handler
 *   (its return goes through rt_sigreturn); the same raw calls in a new thread and in a
 *   forked child; system(3).
 *
 * Before each group of checks the heap buffers are evicted: sweeps over an array of SIZE
 * bytes (far above the local budget the test gives) push them out. Every result is compared
 * with the same call on a stack buffer.
 *
 * Usage: rawsys [--size SIZE] [--rounds N]   defaults --size 64M --rounds 2
 * Prints "rawsys: ok"; on a failure, "rawsys: FAIL: ..." lines on stderr (an EFAULT is
 * named as such) and exit status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread rawsys.c -o rawsys
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
static size_t sweep_size = 64 << 20;
static unsigned char *sweep_buf;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            int e_ = errno;                                                                \
            fprintf(stderr, "rawsys: FAIL: " __VA_ARGS__);                                 \
            fprintf(stderr, " (%s)\n", e_ == EFAULT ? "EFAULT" : strerror(e_));           \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

/* The syscall instruction itself: no C library function in between. */
static long raw(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

/* Pushes the heap buffers out of local memory: three sweeps, so that a CLOCK hand has
 * lapped the whole heap (a page it finds referenced is only evicted on its next pass).
 * The last one goes in scattered order, so that no readahead runs on past the array's
 * end into the buffers. */
static void evict(void)
{
    size_t pages = sweep_size / 4096;
    for (int lap = 0; lap < 2; lap++)
        for (size_t i = 0; i < pages; i++)
            sweep_buf[i * 4096]++;
    for (size_t k = 0; k < pages; k++)
        sweep_buf[(k * 7919 % pages) * 4096]++;
}

/* A heap buffer of n bytes, filled with c, pushed out. */
static void *far(size_t n, int c)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "rawsys: FAIL: malloc(%zu)\n", n);
        exit(1);
    }
    memset(p, c, n);
    return p;
}

static volatile sig_atomic_t got_signal;
static char *signal_buf;

static void on_usr1(int sig)
{
    (void)sig;
    /* A raw system call inside a handler, on a heap buffer. */
    if (raw(SYS_getrandom, (long)signal_buf, 64, 0) == 64)
        got_signal = 1;
}

static void raw_calls(const char *who)
{
    int fds[2];
    CHECK(pipe(fds) == 0, "%s: pipe", who);

    /* Every buffer is allocated and filled first, then all are pushed out at once: each
     * call below meets its buffers evicted. */
    char *out = far(20000, 'w');
    char *in = far(20000, 0);
    struct timespec *ts = far(sizeof *ts + 3000, 0);
    unsigned char *rnd = far(4096, 0);
    char *path = far(6000, 0);
    strcpy(path + 5000, "/proc/self/exe");
    struct stat *st = far(sizeof *st + 5000, 0);
    struct stat local;
    CHECK(stat("/proc/self/exe", &local) == 0, "%s: stat on the stack", who);
    struct iovec *iov = far(3 * sizeof *iov, 0);
    char *parts = far(30000, 0);
    iov[0] = (struct iovec){parts, 5000};
    iov[1] = (struct iovec){parts + 12000, 5000};
    iov[2] = (struct iovec){parts + 25000, 5000};
    char copy[20000];
    memset(copy, 'w', sizeof copy);
    evict();

    /* raw write from a far buffer, raw read into a far buffer. */
    long wrote = raw(SYS_write, fds[1], (long)out, 20000);
    CHECK(wrote == 20000, "%s: raw write from the heap", who);
    long got = 0;
    while (wrote == 20000 && got < 20000) {
        long r = raw(SYS_read, fds[0], (long)(in + got), 20000 - got);
        if (r <= 0) {
            CHECK(0, "%s: raw read into the heap", who);
            break;
        }
        got += r;
    }
    /* raw clock_gettime and getrandom into far buffers. */
    CHECK(raw(SYS_clock_gettime, CLOCK_MONOTONIC, (long)ts, 0) == 0,
          "%s: raw clock_gettime into the heap", who);
    CHECK(raw(SYS_getrandom, (long)rnd, 4096, 0) == 4096, "%s: raw getrandom into the heap", who);
    /* raw stat: path and result both far. */
    CHECK(raw(SYS_stat, (long)(path + 5000), (long)st, 0) == 0,
          "%s: raw stat with path and result in the heap", who);
    /* raw readv: the iovec array and its buffers far. */
    /* Non-blocking from here: a failed call must not leave the next one waiting. */
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    CHECK(write(fds[1], copy, 15000) == 15000, "%s: write", who);
    CHECK(raw(SYS_readv, fds[0], (long)iov, 3) == 15000, "%s: raw readv into the heap", who);

    CHECK(got == 20000 && memcmp(in, copy, 20000) == 0, "%s: bytes through the pipe differ", who);
    CHECK(ts->tv_sec > 0, "%s: clock_gettime result", who);
    CHECK(st->st_ino == local.st_ino, "%s: stat result", who);
    CHECK(memcmp(parts, copy, 5000) == 0 && memcmp(parts + 12000, copy, 5000) == 0 &&
              memcmp(parts + 25000, copy, 5000) == 0,
          "%s: readv bytes differ", who);

    free(out);
    free(in);
    free(ts);
    free(rnd);
    free(path);
    free(st);
    free(iov);
    free(parts);
    close(fds[0]);
    close(fds[1]);
}

static void libc_calls(void)
{
    struct utsname *u = far(sizeof *u + 100, 0), lu;
    CHECK(uname(&lu) == 0, "uname on the stack");
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    CHECK(write(fds[1], "12345", 5) == 5, "write");
    int *avail = far(64, 0);
    int *pair = far(64, 0);
    char here[4096], *cwd = far(4096, 0);
    CHECK(getcwd(here, sizeof here) != NULL, "getcwd on the stack");
    char exe[4096], *link = far(4096, 0);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe);
    cpu_set_t *mask = far(sizeof *mask, 0), lmask;
    CHECK(sched_getaffinity(0, sizeof lmask, &lmask) == 0, "sched_getaffinity on the stack");
    struct timespec *nap = far(sizeof *nap, 0);
    nap->tv_sec = 0;
    nap->tv_nsec = 1000;
    struct sysinfo *si = far(sizeof *si, 0);
    evict();

    /* The C library's own entry points that farmem does not wrap. */
    CHECK(uname(u) == 0 && strcmp(u->release, lu.release) == 0, "uname into the heap");
    CHECK(ioctl(fds[0], FIONREAD, avail) == 0 && *avail == 5, "ioctl(FIONREAD) into the heap");
    CHECK(pipe(pair) == 0 && pair[0] > 2 && pair[1] > 2, "pipe into the heap");
    CHECK(getcwd(cwd, 4096) != NULL && strcmp(cwd, here) == 0, "getcwd into the heap");
    CHECK(n > 0 && readlink("/proc/self/exe", link, 4096) == n && memcmp(link, exe, n) == 0,
          "readlink into the heap");
    CHECK(sched_getaffinity(0, sizeof *mask, mask) == 0 && CPU_EQUAL(mask, &lmask),
          "sched_getaffinity into the heap");
    CHECK(nanosleep(nap, NULL) == 0, "nanosleep from the heap");
    CHECK(sysinfo(si) == 0 && si->totalram > 0, "sysinfo into the heap");

    close(fds[0]);
    close(fds[1]);
    close(pair[0]);
    close(pair[1]);
    free(u);
    free(avail);
    free(pair);
    free(cwd);
    free(link);
    free(mask);
    free(nap);
    free(si);
}

static void *thread_main(void *arg)
{
    (void)arg;
    raw_calls("thread");
    return NULL;
}

static size_t parse_size(const char *s)
{
    char *end;
    size_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'G': v <<= 10; /* fall through */
    case 'M': v <<= 10; /* fall through */
    case 'K': v <<= 10;
    }
    return v;
}

int main(int argc, char **argv)
{
    int rounds = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--size") == 0)
            sweep_size = parse_size(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
    }
    sweep_buf = malloc(sweep_size);
    if (!sweep_buf) {
        fprintf(stderr, "rawsys: FAIL: malloc(%zu)\n", sweep_size);
        return 1;
    }
    memset(sweep_buf, 1, sweep_size);
    signal_buf = far(4096, 0);
    CHECK(signal(SIGUSR1, on_usr1) != SIG_ERR, "signal");

    for (int r = 0; r < rounds; r++) {
        raw_calls("main");
        libc_calls();

        pthread_t t;
        CHECK(pthread_create(&t, NULL, thread_main, NULL) == 0, "pthread_create");
        pthread_join(t, NULL);

        got_signal = 0;
        evict();
        raise(SIGUSR1);
        CHECK(got_signal, "raw getrandom into the heap inside a signal handler");

        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            failures = 0;
            raw_calls("child");
            _exit(failures ? 1 : 0);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child's raw calls");
        CHECK(system("exit 3") == 3 << 8, "system(3)");
    }
    free(sweep_buf);
    free(signal_buf);
    if (failures) {
        fprintf(stderr, "rawsys: %d failures\n", failures);
        return 1;
    }
    printf("rawsys: ok\n");
    return 0;
}
