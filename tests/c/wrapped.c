/*
 * wrapped.c: every C library entry point that farmem wraps for the kernel's sake, on far
 * buffers evicted just before the call, each call made twice: through the C library (the
 * preload's wrapper pins and touches the buffers) and as the syscall instruction (the
 * syscall guard does). Both read one description of what each system call hands the
 * kernel (crates/farmem-preload/src/io/describe.rs). A buffer that description misses
 * meets EFAULT here, or its datagram is lost.
 *
 * Calls: read, write, pread, pwrite, readv, writev, preadv, pwritev (1.5 MiB, more than
 * one of the wrappers' pieces), open, openat, stat, lstat, fstat, access, rename, unlink,
 * mkdir, fread and fwrite; over UDP on loopback bind, getsockname, sendto, recvfrom,
 * connect, send, recv, sendmsg, recvmsg, getsockopt, setsockopt, epoll_ctl, epoll_wait,
 * epoll_pwait and poll; over TCP connect, accept, accept4 and getpeername; getrandom;
 * syscall(SYS_futex).
 *
 * Every buffer, path, socket address, length, iovec array and message header a call takes
 * is a page-aligned heap block of its own (far under `farmem run`), pushed out with
 * farmem_advise(FARMEM_ADVICE_DONTNEED) right before the call. Run it with prefetching
 * off (`--prefetch none --no-object-prefetch`), so that a page the kernel reads was
 * brought in for that call's description and not as some neighbour's. Without farmem the
 * advice does nothing and every call simply has to work.
 *
 * Usage: wrapped [--no-raw]
 *   --no-raw  only the C library half, for a run with `--no-syscall-guard` (the raw half
 *             would meet EFAULT there). Under farmem it first checks that one raw call on
 *             an evicted buffer does meet EFAULT: the evictions are real, so the wrappers
 *             alone brought every buffer in.
 * Prints "wrapped: ok"; on a failure, "wrapped: FAIL: ..." lines on stderr (an EFAULT is
 * named as such) and exit status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread -I include wrapped.c -o wrapped \
 *            -L DIR -lfarmem
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "farmem.h"

#define PAGE 4096

static int failures;
/* 1 for the C library half only, 2 for both halves. */
static int halves = 2;
static const char *const HALF[] = {"libc", "raw"};

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            int e_ = errno;                                                                \
            fprintf(stderr, "wrapped: FAIL: " __VA_ARGS__);                                \
            fprintf(stderr, " (%s)\n", e_ == EFAULT ? "EFAULT" : strerror(e_));           \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

/* The syscall instruction itself: no C library function, so no wrapper, in between. */
static long sys(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}
#define L(x) ((long)(x))

/* A zeroed heap block of n bytes on pages of its own. */
static void *far(size_t n)
{
    void *p = aligned_alloc(PAGE, (n + PAGE - 1) / PAGE * PAGE);
    if (!p) {
        fprintf(stderr, "wrapped: FAIL: aligned_alloc(%zu)\n", n);
        exit(1);
    }
    memset(p, 0, n);
    return p;
}

static char *far_str(const char *s)
{
    return strcpy(far(strlen(s) + 1), s);
}

/* Pushes [p, p+n) out of local memory (a no-op without farmem). */
static void out(const void *p, size_t n)
{
    if (farmem_advise(p, n, FARMEM_ADVICE_DONTNEED) != 0) {
        fprintf(stderr, "wrapped: FAIL: farmem_advise(DONTNEED) (%s)\n", strerror(errno));
        exit(1);
    }
}

static void files(void)
{
    enum { N = 3 << 19, PART = 5000 };
    char *data = far(N), *back = far(N);
    for (size_t i = 0; i < N; i++)
        data[i] = (char)(i * 7 + i / 4093);
    char name[64], name2[64], dname[64];
    snprintf(name, sizeof name, "/tmp/farmem-wrapped-%d", (int)getpid());
    snprintf(name2, sizeof name2, "/tmp/farmem-wrapped-%d.renamed", (int)getpid());
    snprintf(dname, sizeof dname, "/tmp/farmem-wrapped-%d.dir", (int)getpid());
    char *path = far_str(name), *path2 = far_str(name2), *dir = far_str(dname);
    size_t plen = strlen(name) + 1, plen2 = strlen(name2) + 1, dlen = strlen(dname) + 1;
    struct stat *st = far(sizeof *st), local;
    struct iovec *iov = far(3 * sizeof *iov), *riov = far(3 * sizeof *riov);
    const size_t at[3] = {0, 100000, N - PART};
    for (int k = 0; k < 3; k++) {
        iov[k] = (struct iovec){data + at[k], PART};
        riov[k] = (struct iovec){back + k * 2 * PAGE * 4, PART};
    }

    for (int h = 0; h < halves; h++) {
        const char *how = HALF[h];
        long r;
        out(path, plen);
        int fd = h ? (int)sys(SYS_open, L(path), O_CREAT | O_RDWR | O_TRUNC, 0600, 0, 0, 0)
                   : open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
        CHECK(fd >= 0, "%s open with the path in the heap", how);
        if (fd < 0)
            continue;

        out(data, N);
        r = h ? sys(SYS_write, fd, L(data), N, 0, 0, 0) : write(fd, data, N);
        CHECK(r == N, "%s write from the heap: %ld", how, r);
        out(data, N);
        r = h ? sys(SYS_pwrite64, fd, L(data), N, N, 0, 0) : pwrite(fd, data, N, N);
        CHECK(r == N, "%s pwrite from the heap: %ld", how, r);
        lseek(fd, 2 * N, SEEK_SET);
        out(iov, 3 * sizeof *iov);
        out(data, N);
        r = h ? sys(SYS_writev, fd, L(iov), 3, 0, 0, 0) : writev(fd, iov, 3);
        CHECK(r == 3 * PART, "%s writev from the heap: %ld", how, r);
        out(iov, 3 * sizeof *iov);
        out(data, N);
        r = h ? sys(SYS_pwritev, fd, L(iov), 3, 2 * N + 3 * PART, 0, 0)
              : pwritev(fd, iov, 3, 2 * N + 3 * PART);
        CHECK(r == 3 * PART, "%s pwritev from the heap: %ld", how, r);

        out(st, sizeof *st);
        r = h ? sys(SYS_fstat, fd, L(st), 0, 0, 0, 0) : fstat(fd, st);
        CHECK(r == 0 && st->st_size == 2 * N + 6 * PART, "%s fstat into the heap", how);
        CHECK(fstat(fd, &local) == 0, "fstat on the stack");

        lseek(fd, 0, SEEK_SET);
        out(back, N);
        r = h ? sys(SYS_read, fd, L(back), N, 0, 0, 0) : read(fd, back, N);
        CHECK(r == N && memcmp(back, data, N) == 0, "%s read into the heap: %ld", how, r);
        memset(back, 0, N);
        out(back, N);
        r = h ? sys(SYS_pread64, fd, L(back), N, N, 0, 0) : pread(fd, back, N, N);
        CHECK(r == N && memcmp(back, data, N) == 0, "%s pread into the heap: %ld", how, r);
        for (int pass = 0; pass < 2; pass++) {
            const char *call = pass ? "preadv" : "readv";
            memset(back, 0, N);
            lseek(fd, 2 * N, SEEK_SET);
            out(riov, 3 * sizeof *riov);
            out(back, N);
            long off = 2 * N + pass * 3 * PART;
            if (h)
                r = pass ? sys(SYS_preadv, fd, L(riov), 3, off, 0, 0)
                         : sys(SYS_readv, fd, L(riov), 3, 0, 0, 0);
            else
                r = pass ? preadv(fd, riov, 3, off) : readv(fd, riov, 3);
            int same = r == 3 * PART;
            for (int k = 0; k < 3 && same; k++)
                same = memcmp(riov[k].iov_base, data + at[k], PART) == 0;
            CHECK(same, "%s %s into the heap: %ld", how, call, r);
        }
        close(fd);

        out(path, plen);
        out(st, sizeof *st);
        r = h ? sys(SYS_stat, L(path), L(st), 0, 0, 0, 0) : stat(path, st);
        CHECK(r == 0 && st->st_ino == local.st_ino, "%s stat with path and result in the heap",
              how);
        out(path, plen);
        out(st, sizeof *st);
        r = h ? sys(SYS_lstat, L(path), L(st), 0, 0, 0, 0) : lstat(path, st);
        CHECK(r == 0 && st->st_ino == local.st_ino, "%s lstat with path and result in the heap",
              how);
        out(path, plen);
        r = h ? sys(SYS_access, L(path), R_OK, 0, 0, 0, 0) : access(path, R_OK);
        CHECK(r == 0, "%s access with the path in the heap", how);
        out(path, plen);
        out(path2, plen2);
        r = h ? sys(SYS_rename, L(path), L(path2), 0, 0, 0, 0) : rename(path, path2);
        CHECK(r == 0 && access(name2, F_OK) == 0, "%s rename with both paths in the heap", how);
        out(path2, plen2);
        r = h ? sys(SYS_unlink, L(path2), 0, 0, 0, 0, 0) : unlink(path2);
        CHECK(r == 0 && access(name2, F_OK) != 0, "%s unlink with the path in the heap", how);
        out(dir, dlen);
        r = h ? sys(SYS_mkdir, L(dir), 0700, 0, 0, 0, 0) : mkdir(dir, 0700);
        CHECK(r == 0 && rmdir(dname) == 0, "%s mkdir with the path in the heap", how);
        out(path, plen);
        fd = h ? (int)sys(SYS_openat, AT_FDCWD, L(path), O_CREAT | O_RDWR, 0600, 0, 0)
               : openat(AT_FDCWD, path, O_CREAT | O_RDWR, 0600);
        CHECK(fd >= 0, "%s openat with the path in the heap", how);
        if (fd >= 0)
            close(fd);
        unlink(name);
    }

    /* fread and fwrite are no system call of their own: the C library half only. */
    FILE *fp = fopen(name, "w+");
    CHECK(fp != NULL, "fopen");
    if (fp) {
        out(data, N);
        CHECK(fwrite(data, PAGE, N / PAGE, fp) == N / PAGE, "fwrite from the heap");
        CHECK(fflush(fp) == 0, "fflush");
        rewind(fp);
        memset(back, 0, N);
        out(back, N);
        CHECK(fread(back, 1, N, fp) == N && memcmp(back, data, N) == 0, "fread into the heap");
        fclose(fp);
    }
    unlink(name);
    free(data);
    free(back);
    free(path);
    free(path2);
    free(dir);
    free(st);
    free(iov);
    free(riov);
}

static in_port_t port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0, "getsockname on the stack");
    return a.sin_port;
}

static void udp(void)
{
    enum { M = 3000 };
    char *msg = far(M), *rbuf = far(M);
    for (int i = 0; i < M; i++)
        msg[i] = (char)(i * 13 + 1);
    struct sockaddr_in *addr = far(sizeof *addr), *from = far(sizeof *from);
    socklen_t *alen = far(sizeof *alen), *flen = far(sizeof *flen);
    struct iovec *iov = far(2 * sizeof *iov), *riov = far(2 * sizeof *riov);
    struct msghdr *mh = far(sizeof *mh), *rmh = far(sizeof *rmh);
    struct epoll_event *ev = far(sizeof *ev), *evs = far(4 * sizeof *evs);
    sigset_t *mask = far(sizeof *mask);
    struct pollfd *pfd = far(sizeof *pfd);
    int *val = far(sizeof *val);
    socklen_t *vlen = far(sizeof *vlen);
    const int SZ = (int)sizeof(struct sockaddr_in);

    for (int h = 0; h < halves; h++) {
        const char *how = HALF[h];
        long r;
        int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
        CHECK(u1 >= 0 && u2 >= 0, "UDP sockets");
        if (u1 < 0 || u2 < 0)
            return;
        *addr = (struct sockaddr_in){.sin_family = AF_INET,
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        out(addr, SZ);
        r = h ? sys(SYS_bind, u1, L(addr), SZ, 0, 0, 0) : bind(u1, (struct sockaddr *)addr, SZ);
        CHECK(r == 0, "%s bind with the address in the heap", how);
        *addr = (struct sockaddr_in){0};
        *alen = SZ;
        out(addr, SZ);
        out(alen, sizeof *alen);
        r = h ? sys(SYS_getsockname, u1, L(addr), L(alen), 0, 0, 0)
              : getsockname(u1, (struct sockaddr *)addr, alen);
        CHECK(r == 0 && *alen == (socklen_t)SZ && addr->sin_port == port_of(u1),
              "%s getsockname into the heap", how);

        /* sendto and recvfrom, with the addresses and the length in the heap. */
        out(msg, M);
        out(addr, SZ);
        r = h ? sys(SYS_sendto, u2, L(msg), M, 0, L(addr), SZ)
              : sendto(u2, msg, M, 0, (struct sockaddr *)addr, SZ);
        CHECK(r == M, "%s sendto from the heap: %ld", how, r);
        memset(rbuf, 0, M);
        *flen = SZ;
        out(rbuf, M);
        out(from, SZ);
        out(flen, sizeof *flen);
        r = h ? sys(SYS_recvfrom, u1, L(rbuf), M, MSG_DONTWAIT, L(from), L(flen))
              : recvfrom(u1, rbuf, M, MSG_DONTWAIT, (struct sockaddr *)from, flen);
        CHECK(r == M && memcmp(rbuf, msg, M) == 0 && *flen == (socklen_t)SZ &&
                  from->sin_port == port_of(u2),
              "%s recvfrom into the heap: %ld", how, r);

        /* connect, then send and recv (recvfrom and sendto without an address). */
        out(addr, SZ);
        r = h ? sys(SYS_connect, u2, L(addr), SZ, 0, 0, 0)
              : connect(u2, (struct sockaddr *)addr, SZ);
        CHECK(r == 0, "%s connect with the address in the heap", how);
        out(msg, M);
        r = h ? sys(SYS_sendto, u2, L(msg), M, 0, 0, 0) : send(u2, msg, M, 0);
        CHECK(r == M, "%s send from the heap: %ld", how, r);
        memset(rbuf, 0, M);
        out(rbuf, M);
        r = h ? sys(SYS_recvfrom, u1, L(rbuf), M, MSG_DONTWAIT, 0, 0)
              : recv(u1, rbuf, M, MSG_DONTWAIT);
        CHECK(r == M && memcmp(rbuf, msg, M) == 0, "%s recv into the heap: %ld", how, r);

        /* sendmsg and recvmsg: header, iovec array, buffers and name in the heap. */
        iov[0] = (struct iovec){msg, 1000};
        iov[1] = (struct iovec){msg + 1000, M - 1000};
        *mh = (struct msghdr){.msg_iov = iov, .msg_iovlen = 2};
        memset(rbuf, 0, M);
        riov[0] = (struct iovec){rbuf, 2000};
        riov[1] = (struct iovec){rbuf + 2000, M - 2000};
        *rmh = (struct msghdr){.msg_name = from, .msg_namelen = SZ, .msg_iov = riov,
                               .msg_iovlen = 2};
        out(mh, sizeof *mh);
        out(iov, 2 * sizeof *iov);
        out(msg, M);
        r = h ? sys(SYS_sendmsg, u2, L(mh), 0, 0, 0, 0) : sendmsg(u2, mh, 0);
        CHECK(r == M, "%s sendmsg from the heap: %ld", how, r);
        out(rmh, sizeof *rmh);
        out(riov, 2 * sizeof *riov);
        out(rbuf, M);
        out(from, SZ);
        r = h ? sys(SYS_recvmsg, u1, L(rmh), MSG_DONTWAIT, 0, 0, 0)
              : recvmsg(u1, rmh, MSG_DONTWAIT);
        CHECK(r == M && memcmp(rbuf, msg, M) == 0 && rmh->msg_namelen == (socklen_t)SZ &&
                  from->sin_port == port_of(u2),
              "%s recvmsg into the heap: %ld", how, r);

        /* epoll and poll, with a datagram waiting. */
        int ep = epoll_create1(0);
        CHECK(ep >= 0, "epoll_create1");
        *ev = (struct epoll_event){.events = EPOLLIN, .data.u64 = 42};
        out(ev, sizeof *ev);
        r = h ? sys(SYS_epoll_ctl, ep, EPOLL_CTL_ADD, u1, L(ev), 0, 0)
              : epoll_ctl(ep, EPOLL_CTL_ADD, u1, ev);
        CHECK(r == 0, "%s epoll_ctl with the event in the heap", how);
        CHECK(send(u2, "x", 1, 0) == 1, "send on the stack");
        memset(evs, 0, 4 * sizeof *evs);
        out(evs, 4 * sizeof *evs);
        r = h ? sys(SYS_epoll_wait, ep, L(evs), 4, 1000, 0, 0) : epoll_wait(ep, evs, 4, 1000);
        CHECK(r == 1 && evs[0].data.u64 == 42, "%s epoll_wait into the heap: %ld", how, r);
        memset(evs, 0, 4 * sizeof *evs);
        sigemptyset(mask);
        out(evs, 4 * sizeof *evs);
        out(mask, sizeof *mask);
        r = h ? sys(SYS_epoll_pwait, ep, L(evs), 4, 1000, L(mask), 8)
              : epoll_pwait(ep, evs, 4, 1000, mask);
        CHECK(r == 1 && evs[0].data.u64 == 42, "%s epoll_pwait into the heap: %ld", how, r);
        *pfd = (struct pollfd){.fd = u1, .events = POLLIN};
        out(pfd, sizeof *pfd);
        r = h ? sys(SYS_poll, L(pfd), 1, 1000, 0, 0, 0) : poll(pfd, 1, 1000);
        CHECK(r == 1 && (pfd->revents & POLLIN), "%s poll on the heap: %ld", how, r);
        char one;
        CHECK(recv(u1, &one, 1, MSG_DONTWAIT) == 1, "recv on the stack");
        close(ep);

        /* getsockopt and setsockopt, with the value and its length in the heap. */
        *val = 0;
        *vlen = sizeof *val;
        out(val, sizeof *val);
        out(vlen, sizeof *vlen);
        int before = 0;
        socklen_t blen = sizeof before;
        CHECK(getsockopt(u1, SOL_SOCKET, SO_RCVBUF, &before, &blen) == 0, "getsockopt");
        r = h ? sys(SYS_getsockopt, u1, SOL_SOCKET, SO_RCVBUF, L(val), L(vlen), 0)
              : getsockopt(u1, SOL_SOCKET, SO_RCVBUF, val, vlen);
        CHECK(r == 0 && *val == before && *vlen == sizeof *val,
              "%s getsockopt into the heap", how);
        *val = before / 2 + 4096 * (h + 1);
        int want = *val;
        out(val, sizeof *val);
        r = h ? sys(SYS_setsockopt, u1, SOL_SOCKET, SO_RCVBUF, L(val), sizeof *val, 0)
              : setsockopt(u1, SOL_SOCKET, SO_RCVBUF, val, sizeof *val);
        int after = 0;
        blen = sizeof after;
        CHECK(getsockopt(u1, SOL_SOCKET, SO_RCVBUF, &after, &blen) == 0, "getsockopt");
        /* The kernel doubles the value it is given. */
        CHECK(r == 0 && after == 2 * want, "%s setsockopt from the heap: %d, not %d", how,
              after, 2 * want);
        close(u1);
        close(u2);
    }
    free(msg);
    free(rbuf);
    free(addr);
    free(from);
    free(alen);
    free(flen);
    free(iov);
    free(riov);
    free(mh);
    free(rmh);
    free(ev);
    free(evs);
    free(mask);
    free(pfd);
    free(val);
    free(vlen);
}

static void tcp(void)
{
    struct sockaddr_in *addr = far(sizeof *addr), *peer = far(sizeof *peer);
    socklen_t *plen = far(sizeof *plen);
    const int SZ = (int)sizeof(struct sockaddr_in);

    for (int h = 0; h < halves; h++) {
        const char *how = HALF[h];
        long r;
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in la = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        CHECK(l >= 0 && bind(l, (struct sockaddr *)&la, sizeof la) == 0 && listen(l, 4) == 0,
              "TCP listener");
        *addr = la;
        addr->sin_port = port_of(l);

        int c = socket(AF_INET, SOCK_STREAM, 0);
        out(addr, SZ);
        r = h ? sys(SYS_connect, c, L(addr), SZ, 0, 0, 0)
              : connect(c, (struct sockaddr *)addr, SZ);
        CHECK(r == 0, "%s TCP connect with the address in the heap", how);
        *plen = SZ;
        out(peer, SZ);
        out(plen, sizeof *plen);
        int a = h ? (int)sys(SYS_accept, l, L(peer), L(plen), 0, 0, 0)
                  : accept(l, (struct sockaddr *)peer, plen);
        CHECK(a >= 0 && *plen == (socklen_t)SZ && peer->sin_port == port_of(c),
              "%s accept into the heap", how);

        int c2 = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in ta = la;
        ta.sin_port = port_of(l);
        CHECK(connect(c2, (struct sockaddr *)&ta, sizeof ta) == 0, "TCP connect on the stack");
        *plen = SZ;
        out(peer, SZ);
        out(plen, sizeof *plen);
        int a2 = h ? (int)sys(SYS_accept4, l, L(peer), L(plen), SOCK_CLOEXEC, 0, 0)
                   : accept4(l, (struct sockaddr *)peer, plen, SOCK_CLOEXEC);
        CHECK(a2 >= 0 && *plen == (socklen_t)SZ && peer->sin_port == port_of(c2) &&
                  (fcntl(a2, F_GETFD) & FD_CLOEXEC),
              "%s accept4 into the heap", how);

        *plen = SZ;
        out(peer, SZ);
        out(plen, sizeof *plen);
        r = h ? sys(SYS_getpeername, a, L(peer), L(plen), 0, 0, 0)
              : getpeername(a, (struct sockaddr *)peer, plen);
        CHECK(r == 0 && *plen == (socklen_t)SZ && peer->sin_port == port_of(c),
              "%s getpeername into the heap", how);
        close(a2);
        close(c2);
        close(a);
        close(c);
        close(l);
    }
    free(addr);
    free(peer);
    free(plen);
}

static void misc(void)
{
    unsigned char *rnd = far(PAGE);
    int *word = far(sizeof *word);
    for (int h = 0; h < halves; h++) {
        const char *how = HALF[h];
        out(rnd, PAGE);
        long r = h ? sys(SYS_getrandom, L(rnd), PAGE, 0, 0, 0, 0) : getrandom(rnd, PAGE, 0);
        CHECK(r == PAGE, "%s getrandom into the heap: %ld", how, r);
        /* A futex wait on a word that does not hold the value returns at once: EAGAIN
         * says the kernel read the word. */
        *word = 5;
        out(word, sizeof *word);
        r = h ? sys(SYS_futex, L(word), FUTEX_WAIT_PRIVATE, 6, 0, 0, 0)
              : syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, 6, NULL, NULL, 0);
        CHECK(r == -1 && errno == EAGAIN, "%s futex wait on a word in the heap", how);
    }
    free(rnd);
    free(word);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-raw") == 0) {
            halves = 1;
        } else {
            fprintf(stderr, "usage: wrapped [--no-raw]\n");
            return 2;
        }
    }
    if (halves == 1 && farmem_active()) {
        unsigned char *canary = far(PAGE);
        out(canary, PAGE);
        long r = sys(SYS_getrandom, L(canary), PAGE, 0, 0, 0, 0);
        if (!(r == -1 && errno == EFAULT)) {
            fprintf(stderr, "wrapped: FAIL: a raw getrandom into an evicted buffer returned "
                            "%ld, not EFAULT: the evictions do not work (is the syscall "
                            "guard on?), so the checks would prove nothing\n",
                    r);
            return 1;
        }
        free(canary);
    }
    files();
    udp();
    tcp();
    misc();
    if (failures) {
        fprintf(stderr, "wrapped: %d failures\n", failures);
        return 1;
    }
    printf("wrapped: ok\n");
    return 0;
}
