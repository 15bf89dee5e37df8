/*
 * torture.c: a torture test for a malloc replacement and for kernel access to heap memory.
 *
 * Written for farmem run (which replaces malloc and large anonymous mmaps with far
 * memory), but it only uses standard interfaces and passes on plain glibc too. For
 * --seconds it runs, all at once:
 *
 *   - first, requests every allocator must refuse (malloc(SIZE_MAX - 8K), an overflowing
 *     calloc, posix_memalign with alignment 24) and malloc(0), free(NULL);
 *   - THREADS workers that allocate blocks of 16 B to 4 MiB (most of them small) through
 *     every malloc entry point, write a pattern, verify it, realloc (grow and shrink, the
 *     kept prefix checked), check alignment and malloc_usable_size, hand blocks to other
 *     threads and free them, keeping about HEAP/2 live;
 *   - byte streams through a pipe, an AF_UNIX stream socketpair and a TCP loopback
 *     connection, and messages through an AF_UNIX datagram socketpair, each with a sender
 *     and a receiver thread (read/write, send/recv, readv/writev, sendmsg/recvmsg), every
 *     buffer malloc'd so the kernel reads and writes heap memory;
 *   - pwrite/pread and pwritev/preadv on an unlinked temp file against a malloc'd shadow;
 *   - a producer/consumer queue whose mutex and condition variables live in a malloc'd
 *     struct (so futex words are heap memory);
 *   - large anonymous mmaps (16 MiB MAP_PRIVATE|MAP_ANONYMOUS): fresh pages read zero,
 *     written and verified, a part munmapped, a part madvise(MADV_DONTNEED)'d (reads back
 *     zero), written again;
 *   - in the main thread, passes over a HEAP/4 malloc'd array, each checking the previous
 *     generation and writing the next. One third in, it forks: the child checks the
 *     array is the generation of the fork moment while the parent overwrites it, checks
 *     again once the parent has overwritten all of it, uses malloc itself, and exits 42.
 *     (malloc in the child of a multithreaded fork is what glibc supports and programs
 *     like Redis rely on; AddressSanitizer's allocator can deadlock there.) Two thirds
 *     in, it runs /bin/true from a forked child and through posix_spawn.
 *
 * Usage: torture [--heap SIZE] [--threads N] [--seconds S] [--seed N]
 *   SIZE takes K, M or G. Defaults: --heap 256M --threads 8 --seconds 5.
 * Any mismatch prints one "torture: FAIL: ..." line on stderr and exits 1; success ends
 * with "torture: ok" on stdout. A watchdog fails the run if it is still going
 * 10 * S + 300 seconds after the start.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread torture.c -o torture
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define PAGE 4096

/* ---- configuration ---- */

static size_t opt_heap = 256 * MIB;
static int opt_threads = 8;
static double opt_seconds = 5.0;
static uint64_t opt_seed = 1;

static double t_start;
static double t_deadline;

/* ---- failing ---- */

static atomic_int failed;
/* In the fork child: where fail() sends its message, for the parent to print. */
static int child_report_fd = -1;
/* In the parent: the fork child, killed if the parent fails so it cannot linger. */
static volatile pid_t snapshot_pid;

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    if (atomic_exchange(&failed, 1)) {
        /* Another thread is already failing: let it print its one line and exit. */
        for (;;)
            pause();
    }
    char buf[600];
    int n = 0;
    if (child_report_fd < 0)
        n = snprintf(buf, sizeof buf, "torture: FAIL: ");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    int fd = child_report_fd >= 0 ? child_report_fd : 2;
    ssize_t w = write(fd, buf, (size_t)n);
    (void)w;
    if (snapshot_pid > 0)
        kill(snapshot_pid, SIGKILL);
    _exit(1);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "torture: FAIL: still running long after --seconds (hung?)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    if (snapshot_pid > 0)
        kill(snapshot_pid, SIGKILL);
    _exit(1);
}

/* A crash still ends with one FAIL line, then dies of the signal. SIGBUS is left alone:
 * farmem's in-thread fault path (sigbus mode) owns it. */
static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    char buf[200];
    int n = snprintf(buf, sizeof buf,
                     "torture: FAIL: SIGSEGV at address %p (a wild or dangling pointer, or "
                     "memory unmapped under the program)\n",
                     si->si_addr);
    ssize_t w = write(2, buf, (size_t)n);
    (void)w;
    if (snapshot_pid > 0)
        kill(snapshot_pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* ---- small helpers ---- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int past_deadline(void) { return now() >= t_deadline || atomic_load(&failed); }

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t rnd(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ULL;
    return mix64(*s);
}

static uint64_t rnd_below(uint64_t *s, uint64_t n) { return rnd(s) % n; }

/* The pattern of a block: word i (at byte 8i) is mix64(tag + i), little-endian bytes;
 * a partial last word holds that word's first bytes. Any prefix of a block is a prefix
 * of the same pattern, so realloc can be checked against it. */
static void fill_from(void *p, size_t from, size_t len, uint64_t tag)
{
    unsigned char *b = p;
    size_t w = from / 8, words = len / 8;
    for (; w < words; w++) {
        uint64_t v = mix64(tag + w);
        memcpy(b + 8 * w, &v, 8);
    }
    if (len % 8) {
        uint64_t v = mix64(tag + words);
        memcpy(b + 8 * words, &v, len % 8);
    }
}

static void fill(void *p, size_t len, uint64_t tag) { fill_from(p, 0, len, tag); }

/* Offset of the first byte that differs from the pattern, or SIZE_MAX. */
static size_t check(const void *p, size_t len, uint64_t tag)
{
    const unsigned char *b = p;
    size_t words = len / 8;
    for (size_t w = 0; w < words; w++) {
        uint64_t v = mix64(tag + w), got;
        memcpy(&got, b + 8 * w, 8);
        if (got != v)
            return 8 * w;
    }
    if (len % 8) {
        uint64_t v = mix64(tag + words);
        if (memcmp(b + 8 * words, &v, len % 8) != 0)
            return 8 * words;
    }
    return SIZE_MAX;
}

static size_t first_nonzero(const void *p, size_t len)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        if (b[i])
            return i;
    return SIZE_MAX;
}

/* A byte stream: byte k is byte k%8 of mix64(salt + k/8). */
static void stream_fill(unsigned char *b, size_t len, uint64_t off, uint64_t salt)
{
    uint64_t cw = UINT64_MAX, v = 0;
    for (size_t i = 0; i < len; i++) {
        uint64_t k = off + i;
        if (k / 8 != cw) {
            cw = k / 8;
            v = mix64(salt + cw);
        }
        b[i] = (unsigned char)(v >> (8 * (k % 8)));
    }
}

static size_t stream_check(const unsigned char *b, size_t len, uint64_t off, uint64_t salt)
{
    uint64_t cw = UINT64_MAX, v = 0;
    for (size_t i = 0; i < len; i++) {
        uint64_t k = off + i;
        if (k / 8 != cw) {
            cw = k / 8;
            v = mix64(salt + cw);
        }
        if (b[i] != (unsigned char)(v >> (8 * (k % 8))))
            return i;
    }
    return SIZE_MAX;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        fail("malloc(%zu) returned NULL", n);
    return p;
}

static void xpthread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int e = pthread_create(t, NULL, fn, arg);
    if (e)
        fail("pthread_create: %s", strerror(e));
}

static uint64_t next_tag(void)
{
    static atomic_uint_fast64_t tags;
    return mix64(opt_seed ^ 0x5bd1e995) + (atomic_fetch_add(&tags, 1) << 32);
}

/* ---- malloc workers ---- */

struct block {
    unsigned char *p;
    size_t size;
    uint64_t tag;
};

#define SLOTS 1024
#define MAILBOX 64

static atomic_size_t live_bytes;
static size_t worker_target;

static struct {
    pthread_mutex_t mu;
    struct block b[MAILBOX];
    int n;
} mailbox = {.mu = PTHREAD_MUTEX_INITIALIZER};

static atomic_uint_fast64_t n_allocs, n_reallocs, n_frees, n_handoffs, n_entry[8];

static const char *entry_name[8] = {
    "malloc", "calloc", "realloc(NULL)", "memalign",
    "posix_memalign", "aligned_alloc", "valloc", "pvalloc",
};

/* 16 B to 4 MiB, most of them small. */
static size_t rand_size(uint64_t *s)
{
    uint64_t r = rnd_below(s, 100);
    if (r < 55)
        return 16 + rnd_below(s, 241);
    if (r < 80)
        return 257 + rnd_below(s, 4 * KIB - 257);
    if (r < 93)
        return 4 * KIB + rnd_below(s, 60 * KIB);
    if (r < 99)
        return 64 * KIB + rnd_below(s, 960 * KIB);
    return MIB + rnd_below(s, 3 * MIB + 1);
}

static void check_block(const struct block *b, const char *when)
{
    size_t bad = check(b->p, b->size, b->tag);
    if (bad != SIZE_MAX)
        fail("%s: block %p of %zu bytes differs from its pattern at offset %zu", when,
             (void *)b->p, b->size, bad);
    size_t usable = malloc_usable_size(b->p);
    if (usable < b->size)
        fail("%s: malloc_usable_size(%p) = %zu, below the %zu bytes allocated", when,
             (void *)b->p, usable, b->size);
}

static void check_aligned(const void *p, size_t align, const char *what, size_t size)
{
    if ((uintptr_t)p % align)
        fail("%s(%zu) returned %p, not aligned to %zu", what, size, p, align);
}

static struct block alloc_block(uint64_t *s, size_t size)
{
    int kind = (int)rnd_below(s, 8);
    size_t align = (size_t)1 << (4 + rnd_below(s, 13)); /* 16 B to 64 KiB */
    size_t need = size; /* what malloc_usable_size must cover */
    void *p = NULL;
    switch (kind) {
    case 0:
        p = malloc(size);
        align = 16;
        break;
    case 1:
        p = size % 16 == 0 ? calloc(size / 16, 16) : calloc(size, 1);
        align = 16;
        break;
    case 2:
        p = realloc(NULL, size);
        align = 16;
        break;
    case 3:
        p = memalign(align, size);
        break;
    case 4: {
        int e = posix_memalign(&p, align, size);
        if (e)
            fail("posix_memalign(%zu, %zu) failed: %s", align, size, strerror(e));
        break;
    }
    case 5:
        /* C11 wants the size to be a multiple of the alignment. */
        size = (size + align - 1) / align * align;
        need = size;
        p = aligned_alloc(align, size);
        break;
    case 6:
        p = valloc(size);
        align = PAGE;
        break;
    case 7:
        p = pvalloc(size);
        align = PAGE;
        need = (size + PAGE - 1) / PAGE * PAGE;
        break;
    }
    if (!p)
        fail("%s(%zu) returned NULL", entry_name[kind], size);
    check_aligned(p, align, entry_name[kind], size);
    if (kind == 1) {
        size_t nz = first_nonzero(p, size);
        if (nz != SIZE_MAX)
            fail("calloc(%zu) returned memory with a nonzero byte at offset %zu", size, nz);
    }
    size_t usable = malloc_usable_size(p);
    if (usable < need)
        fail("malloc_usable_size after %s(%zu) is %zu", entry_name[kind], need, usable);
    struct block b = {.p = p, .size = size, .tag = next_tag()};
    fill(b.p, b.size, b.tag);
    atomic_fetch_add(&live_bytes, size);
    atomic_fetch_add(&n_allocs, 1);
    atomic_fetch_add(&n_entry[kind], 1);
    return b;
}

static void free_block(struct block *b, const char *when)
{
    check_block(b, when);
    free(b->p);
    atomic_fetch_sub(&live_bytes, b->size);
    atomic_fetch_add(&n_frees, 1);
    b->p = NULL;
}

static void realloc_block(uint64_t *s, struct block *b)
{
    check_block(b, "before realloc");
    size_t old = b->size, n;
    if (old < 4 * MIB && rnd_below(s, 2))
        n = old + 1 + rnd_below(s, old < 2 * MIB ? old : 4 * MIB - old); /* grow, to 4 MiB */
    else
        n = 16 + rnd_below(s, old > 16 ? old - 16 : 1); /* shrink */
    if (n > old && atomic_load(&live_bytes) + (n - old) > worker_target)
        n = old / 2 < 16 ? 16 : old / 2;
    unsigned char *q = realloc(b->p, n);
    if (!q)
        fail("realloc(%zu -> %zu) returned NULL", old, n);
    check_aligned(q, 16, "realloc", n);
    size_t keep = old < n ? old : n;
    size_t bad = check(q, keep, b->tag);
    if (bad != SIZE_MAX)
        fail("realloc(%zu -> %zu) did not keep the contents: offset %zu differs", old, n, bad);
    if (malloc_usable_size(q) < n)
        fail("malloc_usable_size after realloc to %zu is %zu", n, malloc_usable_size(q));
    fill_from(q, keep / 8 * 8, n, b->tag);
    b->p = q;
    b->size = n;
    if (n > old)
        atomic_fetch_add(&live_bytes, n - old);
    else
        atomic_fetch_sub(&live_bytes, old - n);
    atomic_fetch_add(&n_reallocs, 1);
}

static void *worker(void *arg)
{
    uint64_t s = opt_seed * 1000003 + (uint64_t)(uintptr_t)arg;
    struct block *slots = calloc(SLOTS, sizeof *slots);
    if (!slots)
        fail("calloc(%d, %zu) returned NULL", SLOTS, sizeof *slots);
    unsigned ops = 0;
    while ((ops++ & 15) || !past_deadline()) {
        struct block *b = &slots[rnd_below(&s, SLOTS)];
        if (rnd_below(&s, 16) == 0) {
            /* Adopt a block another thread handed over. */
            struct block got = {0};
            pthread_mutex_lock(&mailbox.mu);
            if (mailbox.n > 0)
                got = mailbox.b[--mailbox.n];
            pthread_mutex_unlock(&mailbox.mu);
            if (got.p) {
                check_block(&got, "block handed over from another thread");
                if (b->p)
                    free_block(&got, "adopted block");
                else
                    *b = got;
            }
            continue;
        }
        if (!b->p) {
            size_t size = rand_size(&s);
            if (atomic_load(&live_bytes) + size <= worker_target)
                *b = alloc_block(&s, size);
            continue;
        }
        switch (rnd_below(&s, 10)) {
        case 0:
        case 1:
        case 2:
            realloc_block(&s, b);
            break;
        case 3:
        case 4:
        case 5:
            free_block(b, "before free");
            break;
        case 6: {
            check_block(b, "before handing over");
            int sent = 0;
            pthread_mutex_lock(&mailbox.mu);
            if (mailbox.n < MAILBOX) {
                mailbox.b[mailbox.n++] = *b;
                sent = 1;
            }
            pthread_mutex_unlock(&mailbox.mu);
            if (sent) {
                b->p = NULL;
                atomic_fetch_add(&n_handoffs, 1);
            }
            break;
        }
        default:
            check_block(b, "before rewrite");
            b->tag = next_tag();
            fill(b->p, b->size, b->tag);
        }
    }
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].p)
            free_block(&slots[i], "at the end");
    free(slots);
    return NULL;
}

/* Requests no allocator may grant, and arguments it must refuse. */
static void malloc_edge_cases(void)
{
    volatile size_t huge = SIZE_MAX - 2 * PAGE;
    void *p = malloc(huge);
    if (p)
        fail("malloc(SIZE_MAX - 8192) returned %p instead of NULL", p);
    volatile size_t half = SIZE_MAX / 2 + 2;
    p = calloc(half, 4);
    if (p)
        fail("calloc(SIZE_MAX/2, 4) overflows but returned %p instead of NULL", p);
    if (errno != ENOMEM)
        fail("calloc overflow set errno %d, not ENOMEM", errno);
    volatile size_t bad_align = 24;
    int e = posix_memalign(&p, bad_align, 64);
    if (e != EINVAL)
        fail("posix_memalign with alignment 24 returned %d, not EINVAL", e);
    p = malloc(0);
    free(p); /* NULL or a unique pointer; either may be freed */
    free(NULL);
    p = realloc(NULL, 0);
    free(p);
}

/* ---- byte streams and datagrams through the kernel ---- */

struct stream {
    const char *name;
    int wfd, rfd;
    int is_socket;
    int is_dgram;
    uint64_t salt;
    uint64_t sent, received; /* bytes, or messages for datagrams */
    pthread_t sender, receiver;
};

/* Writes all of `len` bytes (in one, two or three malloc'd pieces). */
static void send_all(struct stream *st, unsigned char *buf, size_t len, int method)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n;
        if (method == 0) {
            n = write(st->wfd, buf + done, len - done);
        } else if (method == 1) {
            n = send(st->wfd, buf + done, len - done, MSG_NOSIGNAL);
        } else {
            /* writev or sendmsg from two iovecs over the rest of the buffer. */
            size_t rest = len - done, cut = rest / 3;
            struct iovec iov[2] = {{buf + done, cut}, {buf + done + cut, rest - cut}};
            if (method == 2) {
                n = writev(st->wfd, iov, 2);
            } else {
                struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
                n = sendmsg(st->wfd, &m, MSG_NOSIGNAL);
            }
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("%s: writing %zu bytes from a malloc'd buffer: %s", st->name, len - done,
                 strerror(errno));
        }
        done += (size_t)n;
    }
}

static void *stream_sender(void *arg)
{
    struct stream *st = arg;
    uint64_t s = st->salt, off = 0;
    while (!past_deadline()) {
        size_t len = 1 + rnd_below(&s, rnd_below(&s, 4) ? 4 * KIB : 256 * KIB);
        unsigned char *buf = xmalloc(len);
        stream_fill(buf, len, off, st->salt);
        int method = (int)rnd_below(&s, st->is_socket ? 4 : 3);
        if (!st->is_socket && method == 1)
            method = 0;
        send_all(st, buf, len, method);
        free(buf);
        off += len;
    }
    st->sent = off;
    if (st->is_socket)
        shutdown(st->wfd, SHUT_WR);
    close(st->wfd);
    return NULL;
}

static void *stream_receiver(void *arg)
{
    struct stream *st = arg;
    uint64_t s = st->salt ^ 0xabcdef, off = 0;
    for (;;) {
        size_t cap = 1 + rnd_below(&s, 256 * KIB);
        unsigned char *buf = xmalloc(cap);
        int method = (int)rnd_below(&s, st->is_socket ? 4 : 3);
        if (!st->is_socket && method == 1)
            method = 0;
        ssize_t n;
        if (method == 0) {
            n = read(st->rfd, buf, cap);
        } else if (method == 1) {
            n = recv(st->rfd, buf, cap, 0);
        } else {
            size_t cut = cap / 2;
            struct iovec iov[2] = {{buf, cut}, {buf + cut, cap - cut}};
            if (method == 2) {
                n = readv(st->rfd, iov, 2);
            } else {
                struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
                n = recvmsg(st->rfd, &m, 0);
            }
        }
        if (n < 0) {
            free(buf);
            if (errno == EINTR)
                continue;
            fail("%s: reading into a malloc'd buffer of %zu bytes: %s", st->name, cap,
                 strerror(errno));
        }
        if (n == 0) {
            free(buf);
            break;
        }
        size_t bad = stream_check(buf, (size_t)n, off, st->salt);
        if (bad != SIZE_MAX)
            fail("%s: byte %llu of the stream arrived wrong", st->name,
                 (unsigned long long)(off + bad));
        off += (uint64_t)n;
        free(buf);
    }
    st->received = off;
    close(st->rfd);
    return NULL;
}

/* Datagrams: a 16-byte header (sequence number, length) and a body from the stream
 * function salted with the sequence number. Sequence UINT64_MAX ends the run. */
static void *dgram_sender(void *arg)
{
    struct stream *st = arg;
    uint64_t s = st->salt, seq = 0;
    for (int last = 0; !last;) {
        last = past_deadline();
        size_t len = 16 + (last ? 0 : rnd_below(&s, 32 * KIB));
        uint64_t hdr[2] = {last ? UINT64_MAX : seq, len};
        ssize_t n;
        if (rnd_below(&s, 2)) {
            unsigned char *buf = xmalloc(len);
            memcpy(buf, hdr, 16);
            stream_fill(buf + 16, len - 16, 0, st->salt + seq);
            do
                n = send(st->wfd, buf, len, MSG_NOSIGNAL);
            while (n < 0 && errno == EINTR);
            free(buf);
        } else {
            unsigned char *h = xmalloc(16), *body = xmalloc(len - 16 + 1);
            memcpy(h, hdr, 16);
            stream_fill(body, len - 16, 0, st->salt + seq);
            struct iovec iov[2] = {{h, 16}, {body, len - 16}};
            struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
            do
                n = sendmsg(st->wfd, &m, MSG_NOSIGNAL);
            while (n < 0 && errno == EINTR);
            free(h);
            free(body);
        }
        if (n != (ssize_t)len)
            fail("%s: sending a %zu-byte datagram from malloc'd memory returned %zd (%s)",
                 st->name, len, n, n < 0 ? strerror(errno) : "short");
        if (!last)
            seq++;
    }
    st->sent = seq;
    close(st->wfd);
    return NULL;
}

static void *dgram_receiver(void *arg)
{
    struct stream *st = arg;
    uint64_t s = st->salt ^ 0x1234, expect = 0;
    for (;;) {
        size_t cap = 64 * KIB;
        unsigned char *buf = xmalloc(cap);
        ssize_t n;
        if (rnd_below(&s, 2)) {
            n = recv(st->rfd, buf, cap, 0);
        } else {
            struct iovec iov[2] = {{buf, 5000}, {buf + 5000, cap - 5000}};
            struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
            n = recvmsg(st->rfd, &m, 0);
        }
        if (n < 0 && errno == EINTR) {
            free(buf);
            continue;
        }
        if (n < 16)
            fail("%s: receiving a datagram into malloc'd memory returned %zd (%s)", st->name,
                 n, n < 0 ? strerror(errno) : "too short");
        uint64_t hdr[2];
        memcpy(hdr, buf, 16);
        if (hdr[0] == UINT64_MAX) {
            free(buf);
            break;
        }
        if (hdr[0] != expect || hdr[1] != (uint64_t)n)
            fail("%s: got datagram %llu of %zd bytes, expected datagram %llu of %llu bytes",
                 st->name, (unsigned long long)hdr[0], n, (unsigned long long)expect,
                 (unsigned long long)hdr[1]);
        size_t bad = stream_check(buf + 16, (size_t)n - 16, 0, st->salt + expect);
        if (bad != SIZE_MAX)
            fail("%s: datagram %llu differs at byte %zu", st->name,
                 (unsigned long long)expect, 16 + bad);
        expect++;
        free(buf);
    }
    st->received = expect;
    close(st->rfd);
    return NULL;
}

static void tcp_pair(int fds[2])
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        fail("socket(AF_INET): %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &alen))
        fail("TCP listen on 127.0.0.1: %s", strerror(errno));
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
        fail("TCP connect to 127.0.0.1:%d: %s", ntohs(a.sin_port), strerror(errno));
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        fail("TCP accept: %s", strerror(errno));
    close(l);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fds[0] = s; /* read end */
    fds[1] = c; /* write end */
}

#define NSTREAMS 4
static struct stream streams[NSTREAMS];

static void start_streams(void)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC))
        fail("pipe: %s", strerror(errno));
    streams[0] = (struct stream){.name = "pipe", .rfd = fds[0], .wfd = fds[1]};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds))
        fail("socketpair(AF_UNIX, SOCK_STREAM): %s", strerror(errno));
    streams[1] = (struct stream){
        .name = "unix stream socketpair", .rfd = fds[0], .wfd = fds[1], .is_socket = 1};
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds))
        fail("socketpair(AF_UNIX, SOCK_DGRAM): %s", strerror(errno));
    streams[2] = (struct stream){.name = "unix datagram socketpair",
                                 .rfd = fds[0],
                                 .wfd = fds[1],
                                 .is_socket = 1,
                                 .is_dgram = 1};
    tcp_pair(fds);
    streams[3] = (struct stream){
        .name = "TCP loopback", .rfd = fds[0], .wfd = fds[1], .is_socket = 1};
    for (int i = 0; i < NSTREAMS; i++) {
        struct stream *st = &streams[i];
        st->salt = mix64(opt_seed + 77 * (uint64_t)(i + 1));
        xpthread_create(&st->sender, st->is_dgram ? dgram_sender : stream_sender, st);
        xpthread_create(&st->receiver, st->is_dgram ? dgram_receiver : stream_receiver, st);
    }
}

static void finish_streams(void)
{
    for (int i = 0; i < NSTREAMS; i++) {
        struct stream *st = &streams[i];
        pthread_join(st->sender, NULL);
        pthread_join(st->receiver, NULL);
        if (st->sent != st->received)
            fail("%s: sent %llu %s but received %llu", st->name,
                 (unsigned long long)st->sent, st->is_dgram ? "datagrams" : "bytes",
                 (unsigned long long)st->received);
    }
}

/* ---- pread/pwrite on a temp file ---- */

#define FILE_SIZE (4 * MIB)
static uint64_t file_ops;

static void *file_thread(void *arg)
{
    (void)arg;
    const char *dir = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/torture.XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        fail("mkstemp(%s): %s", path, strerror(errno));
    unlink(path);
    if (ftruncate(fd, FILE_SIZE))
        fail("ftruncate temp file: %s", strerror(errno));
    unsigned char *shadow = calloc(FILE_SIZE, 1);
    if (!shadow)
        fail("calloc(%zu) returned NULL", FILE_SIZE);
    uint64_t s = opt_seed ^ 0xf11e;
    while (!past_deadline()) {
        /* Write a piece, then read another back and compare with the shadow. */
        size_t off = rnd_below(&s, FILE_SIZE), len = 1 + rnd_below(&s, 256 * KIB);
        if (len > FILE_SIZE - off)
            len = FILE_SIZE - off;
        unsigned char *buf = xmalloc(len);
        stream_fill(buf, len, off, rnd(&s));
        ssize_t n;
        if (rnd_below(&s, 2)) {
            n = pwrite(fd, buf, len, (off_t)off);
        } else {
            struct iovec iov[2] = {{buf, len / 2}, {buf + len / 2, len - len / 2}};
            n = pwritev(fd, iov, 2, (off_t)off);
        }
        if (n != (ssize_t)len)
            fail("pwrite of %zu bytes from malloc'd memory returned %zd (%s)", len, n,
                 n < 0 ? strerror(errno) : "short");
        memcpy(shadow + off, buf, len);
        free(buf);

        off = rnd_below(&s, FILE_SIZE);
        len = 1 + rnd_below(&s, 256 * KIB);
        if (len > FILE_SIZE - off)
            len = FILE_SIZE - off;
        buf = xmalloc(len);
        if (rnd_below(&s, 2)) {
            n = pread(fd, buf, len, (off_t)off);
        } else {
            struct iovec iov[2] = {{buf, len / 3}, {buf + len / 3, len - len / 3}};
            n = preadv(fd, iov, 2, (off_t)off);
        }
        if (n != (ssize_t)len)
            fail("pread of %zu bytes into malloc'd memory returned %zd (%s)", len, n,
                 n < 0 ? strerror(errno) : "short");
        for (size_t i = 0; i < len; i++)
            if (buf[i] != shadow[off + i])
                fail("temp file: byte %zu read back 0x%02x, wrote 0x%02x", off + i, buf[i],
                     shadow[off + i]);
        free(buf);
        file_ops++;
    }
    free(shadow);
    close(fd);
    return NULL;
}

/* ---- producer/consumer queue with its mutex and condvars on the heap ---- */

#define QCAP 32
#define PRODUCERS 2
#define CONSUMERS 2

struct queue {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    unsigned char *items[QCAP];
    size_t head, count;
    int producers_left;
    uint64_t produced, consumed, sum_in, sum_out;
};

static struct queue *q;

static void *producer(void *arg)
{
    uint64_t s = opt_seed * 31 + (uint64_t)(uintptr_t)arg;
    while (!past_deadline()) {
        size_t len = 16 + rnd_below(&s, 4 * KIB);
        unsigned char *m = xmalloc(len);
        uint64_t tag = next_tag();
        memcpy(m, &len, 8);
        memcpy(m + 8, &tag, 8);
        fill(m + 16, len - 16, tag);
        pthread_mutex_lock(&q->mu);
        while (q->count == QCAP)
            pthread_cond_wait(&q->not_full, &q->mu);
        q->items[(q->head + q->count) % QCAP] = m;
        q->count++;
        q->produced++;
        q->sum_in += tag;
        pthread_cond_signal(&q->not_empty);
        pthread_mutex_unlock(&q->mu);
    }
    pthread_mutex_lock(&q->mu);
    q->producers_left--;
    pthread_cond_broadcast(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->count == 0 && q->producers_left > 0)
            pthread_cond_wait(&q->not_empty, &q->mu);
        if (q->count == 0) {
            pthread_mutex_unlock(&q->mu);
            return NULL;
        }
        unsigned char *m = q->items[q->head];
        q->head = (q->head + 1) % QCAP;
        q->count--;
        pthread_cond_signal(&q->not_full);
        pthread_mutex_unlock(&q->mu);

        uint64_t len, tag;
        memcpy(&len, m, 8);
        memcpy(&tag, m + 8, 8);
        if (len < 16 || len > 16 + 4 * KIB)
            fail("queue: message header says %llu bytes", (unsigned long long)len);
        size_t bad = check(m + 16, len - 16, tag);
        if (bad != SIZE_MAX)
            fail("queue: message of %llu bytes differs at offset %zu",
                 (unsigned long long)len, 16 + bad);
        free(m);
        pthread_mutex_lock(&q->mu);
        q->consumed++;
        q->sum_out += tag;
        pthread_mutex_unlock(&q->mu);
    }
}

/* ---- large anonymous mmaps ---- */

#define MAP_SIZE (16 * MIB)
static uint64_t mmap_rounds;

static void check_range(const unsigned char *base, size_t from, size_t to, uint64_t tag,
                        const char *when)
{
    /* The pattern of the whole mapping, checked over [from, to) (multiples of 8). */
    for (size_t w = from / 8; w < to / 8; w++) {
        uint64_t got;
        memcpy(&got, base + 8 * w, 8);
        if (got != mix64(tag + w))
            fail("anonymous mmap: %s: byte %zu of %zu differs", when, 8 * w, (size_t)MAP_SIZE);
    }
}

static void *mmap_thread(void *arg)
{
    (void)arg;
    do {
        unsigned char *p =
            mmap(NULL, MAP_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            fail("mmap(%zu, MAP_PRIVATE|MAP_ANONYMOUS): %s", (size_t)MAP_SIZE, strerror(errno));
        check_aligned(p, PAGE, "mmap", MAP_SIZE);
        for (size_t off = 0; off < MAP_SIZE; off += PAGE)
            if (p[off] || p[off + PAGE - 1])
                fail("anonymous mmap: fresh page at offset %zu is not zero", off);
        uint64_t tag = next_tag();
        fill(p, MAP_SIZE, tag);
        check_range(p, 0, MAP_SIZE, tag, "after writing");

        /* Unmap a quarter in the middle; the rest must be untouched. */
        size_t hole = MAP_SIZE / 4, hole_len = MAP_SIZE / 8;
        if (munmap(p + hole, hole_len))
            fail("munmap of part of an anonymous mapping: %s", strerror(errno));
        check_range(p, 0, hole, tag, "after munmap of a part");
        check_range(p, hole + hole_len, MAP_SIZE, tag, "after munmap of a part");

        /* MADV_DONTNEED on private anonymous memory: reads back zero. */
        size_t dn = MAP_SIZE / 2 + PAGE, dn_len = MAP_SIZE / 8;
        if (madvise(p + dn, dn_len, MADV_DONTNEED))
            fail("madvise(MADV_DONTNEED): %s", strerror(errno));
        size_t nz = first_nonzero(p + dn, dn_len);
        if (nz != SIZE_MAX)
            fail("anonymous mmap: byte %zu reads nonzero after MADV_DONTNEED", dn + nz);
        check_range(p, 0, hole, tag, "after MADV_DONTNEED of another part");
        check_range(p, hole + hole_len, dn, tag, "after MADV_DONTNEED of another part");
        check_range(p, dn + dn_len, MAP_SIZE, tag, "after MADV_DONTNEED of another part");

        /* The dropped range is ordinary memory again. */
        fill_from(p, dn, dn + dn_len, tag);
        check_range(p, dn, dn + dn_len, tag, "written again after MADV_DONTNEED");
        /* Not munmap(p, MAP_SIZE): another thread may have been given the hole since. */
        if (munmap(p, hole) || munmap(p + hole + hole_len, MAP_SIZE - hole - hole_len))
            fail("munmap of the rest of an anonymous mapping: %s", strerror(errno));
        mmap_rounds++;
    } while (!past_deadline());
    return NULL;
}

/* ---- fork with a snapshot, and exec ---- */

static uint64_t gen_word(uint64_t gen, size_t i) { return mix64((gen << 40) ^ i); }

static void write_gen(uint64_t *a, size_t words, uint64_t gen)
{
    for (size_t i = 0; i < words; i++)
        a[i] = gen_word(gen, i);
}

static void check_gen(const uint64_t *a, size_t words, uint64_t gen, const char *who)
{
    for (size_t i = 0; i < words; i++)
        if (a[i] != gen_word(gen, i))
            fail("%s: word %zu of the %zu-byte array is not generation %llu", who, i,
                 words * 8, (unsigned long long)gen);
}

struct forked {
    pid_t pid;
    int go_fd;     /* parent writes a byte once it has overwritten the array */
    int report_fd; /* the child's fail() message */
};

static struct forked fork_snapshot_child(uint64_t *a, size_t words, uint64_t gen)
{
    int go[2], report[2];
    if (pipe2(go, O_CLOEXEC) || pipe2(report, O_CLOEXEC))
        fail("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        close(go[1]);
        close(report[0]);
        child_report_fd = report[1];
        snapshot_pid = 0;
        check_gen(a, words, gen, "fork child, while the parent overwrites");
        char c;
        if (read(go[0], &c, 1) != 1)
            fail("fork child: the parent did not say it had overwritten the array");
        check_gen(a, words, gen, "fork child, after the parent overwrote the array");
        /* malloc works in the child, and the child's writes are its own. */
        unsigned char *m = xmalloc(3 * MIB);
        fill(m, 3 * MIB, 99);
        if (check(m, 3 * MIB, 99) != SIZE_MAX)
            fail("fork child: a block malloc'd in the child does not hold what was written");
        free(m);
        write_gen(a, words, 0xc41d);
        check_gen(a, words, 0xc41d, "fork child, its own copy");
        _exit(42);
    }
    close(go[0]);
    close(report[1]);
    snapshot_pid = pid;
    return (struct forked){.pid = pid, .go_fd = go[1], .report_fd = report[0]};
}

static void reap_snapshot_child(struct forked *f, int block)
{
    int status;
    pid_t r = waitpid(f->pid, &status, block ? 0 : WNOHANG);
    if (r == 0)
        return;
    if (r < 0)
        fail("waitpid: %s", strerror(errno));
    snapshot_pid = 0; /* reaped: the pid may be reused */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 42) {
        char msg[600] = "";
        ssize_t n = read(f->report_fd, msg, sizeof msg - 1);
        if (n > 0) {
            msg[n] = 0;
            msg[strcspn(msg, "\n")] = 0;
            fail("%s", msg);
        }
        if (WIFSIGNALED(status))
            fail("fork child died of signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
        fail("fork child exited with status %d, not 42", WEXITSTATUS(status));
    }
    close(f->report_fd);
    f->pid = 0;
}

static void check_true_exit(pid_t pid, const char *how)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        fail("waitpid for /bin/true (%s): %s", how, strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("/bin/true run by %s ended with wait status 0x%x", how, status);
}

static void exec_true(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    check_true_exit(pid, "fork and exec");
    char *argv[] = {"true", NULL};
    int e = posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ);
    if (e)
        fail("posix_spawn(/bin/true): %s", strerror(e));
    check_true_exit(pid, "posix_spawn");
}

/* ---- main ---- */

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    size_t mult = 1;
    if (*end && strchr("kK", *end))
        mult = KIB;
    else if (*end && strchr("mM", *end))
        mult = MIB;
    else if (*end && strchr("gG", *end))
        mult = 1024 * MIB;
    if (mult > 1) {
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "B"))
            end += strlen(end);
    }
    if (*end || !(v > 0))
        return 0;
    return (size_t)(v * (double)mult);
}

static void usage(void)
{
    fprintf(stderr, "usage: torture [--heap SIZE] [--threads N] [--seconds S] [--seed N]\n"
                    "  defaults: --heap 256M --threads 8 --seconds 5 --seed 1\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--heap"))
            opt_heap = parse_size(v);
        else if (!strcmp(a, "--threads"))
            opt_threads = atoi(v);
        else if (!strcmp(a, "--seconds"))
            opt_seconds = atof(v);
        else if (!strcmp(a, "--seed"))
            opt_seed = strtoull(v, NULL, 0);
        else
            usage();
        i++;
    }
    if (opt_heap < 16 * MIB || opt_threads < 1 || opt_threads > 1024 || !(opt_seconds > 0))
        usage();

    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO | SA_RESETHAND};
    sigaction(SIGSEGV, &sa, NULL);
    alarm((unsigned)(opt_seconds * 10) + 300);

    t_start = now();
    t_deadline = t_start + opt_seconds;
    size_t fork_bytes = opt_heap / 4 / PAGE * PAGE, words = fork_bytes / 8;
    worker_target = opt_heap / 2;
    printf("torture: heap %zu MiB (blocks %zu MiB, fork array %zu MiB), %d threads, %.1f s, "
           "seed %llu\n",
           opt_heap >> 20, worker_target >> 20, fork_bytes >> 20, opt_threads, opt_seconds,
           (unsigned long long)opt_seed);
    fflush(stdout);

    malloc_edge_cases();
    uint64_t *arr = xmalloc(fork_bytes);
    uint64_t gen = 1;
    write_gen(arr, words, gen);

    q = xmalloc(sizeof *q + 64 * KIB);
    memset(q, 0, sizeof *q);
    if (pthread_mutex_init(&q->mu, NULL) || pthread_cond_init(&q->not_empty, NULL) ||
        pthread_cond_init(&q->not_full, NULL))
        fail("initialising the queue's mutex and condvars");
    q->producers_left = PRODUCERS;

    pthread_t *workers = xmalloc(sizeof(pthread_t) * (size_t)opt_threads);
    for (int i = 0; i < opt_threads; i++)
        xpthread_create(&workers[i], worker, (void *)(uintptr_t)i);
    start_streams();
    pthread_t prod[PRODUCERS], cons[CONSUMERS], file_t, mmap_t;
    for (int i = 0; i < PRODUCERS; i++)
        xpthread_create(&prod[i], producer, (void *)(uintptr_t)i);
    for (int i = 0; i < CONSUMERS; i++)
        xpthread_create(&cons[i], consumer, NULL);
    xpthread_create(&file_t, file_thread, NULL);
    xpthread_create(&mmap_t, mmap_thread, NULL);

    /* The main thread: array generations, the fork snapshot and the exec. */
    struct forked child = {0};
    int forked = 0, execd = 0, told_child = 0;
    for (;;) {
        double el = now() - t_start;
        int late = past_deadline();
        if (!forked && (el >= opt_seconds / 3 || late)) {
            child = fork_snapshot_child(arr, words, gen);
            forked = 1;
        }
        if (!execd && (el >= 2 * opt_seconds / 3 || late)) {
            exec_true();
            execd = 1;
        }
        if (child.pid)
            reap_snapshot_child(&child, 0);
        if (late && forked && execd && !child.pid)
            break;
        check_gen(arr, words, gen, "main thread, before overwriting");
        write_gen(arr, words, ++gen);
        if (forked && !told_child) {
            if (write(child.go_fd, "g", 1) != 1)
                fail("writing to the fork child's pipe: %s", strerror(errno));
            close(child.go_fd);
            told_child = 1;
        }
        if (late && child.pid)
            reap_snapshot_child(&child, 1);
    }
    check_gen(arr, words, gen, "main thread, after the fork child exited");

    for (int i = 0; i < opt_threads; i++)
        pthread_join(workers[i], NULL);
    while (mailbox.n > 0)
        free_block(&mailbox.b[--mailbox.n], "left in the mailbox");
    finish_streams();
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    for (int i = 0; i < CONSUMERS; i++)
        pthread_join(cons[i], NULL);
    if (q->produced != q->consumed || q->sum_in != q->sum_out)
        fail("queue: %llu messages produced, %llu consumed",
             (unsigned long long)q->produced, (unsigned long long)q->consumed);
    pthread_join(file_t, NULL);
    pthread_join(mmap_t, NULL);
    if (atomic_load(&live_bytes) != 0)
        fail("%zu bytes still counted live after every block was freed",
             atomic_load(&live_bytes));

    printf("torture: %llu allocations (", (unsigned long long)n_allocs);
    for (int k = 0; k < 8; k++)
        printf("%s%s %llu", k ? ", " : "", entry_name[k], (unsigned long long)n_entry[k]);
    printf("), %llu reallocs, %llu frees, %llu handed between threads\n",
           (unsigned long long)n_reallocs, (unsigned long long)n_frees,
           (unsigned long long)n_handoffs);
    for (int i = 0; i < NSTREAMS; i++)
        printf("torture: %s: %llu %s\n", streams[i].name,
               (unsigned long long)streams[i].received,
               streams[i].is_dgram ? "datagrams" : "bytes");
    printf("torture: %llu queue messages, %llu temp-file rounds, %llu mmap rounds, "
           "%llu array generations, fork snapshot and exec checked in %.1f s\n",
           (unsigned long long)q->consumed, (unsigned long long)file_ops,
           (unsigned long long)mmap_rounds, (unsigned long long)gen, now() - t_start);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    free(q);
    free(arr);
    free(workers);
    printf("torture: ok\n");
    return 0;
}
