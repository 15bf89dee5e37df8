/*
 * countserver.c: a tiny TCP server and its client, for the server-mode tests of
 * `farmem bench-cmd` (crates/farmem-cli/tests/bench_cmd.rs).
 *
 * Server: countserver PORT [--hold MIB] [--count-file PATH] [--die-after N]
 *                          [--ignore-term] [--exit-now STATUS]
 *   Touches MIB MiB of heap (so that its RSS is known), listens on 127.0.0.1:PORT and
 *   answers every line it reads with "ok N\n", N the requests served so far (all
 *   connections together). On SIGTERM it appends "served N" to PATH, prints it, and
 *   exits 0 through exit(). --die-after N: exits with status 3 after N requests.
 *   --ignore-term: SIGTERM is ignored. --exit-now STATUS: exits before listening.
 *
 * Client: countserver --client PORT N
 *   Sends N requests on one connection, one at a time, checks every reply, and prints
 *   "client: sent N requests in S s" and "client: last count M" (M: the server's count
 *   in the last reply). Exits 1 if a reply is missing or malformed.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror countserver.c -o countserver
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 64

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "countserver: %s: %s\n", what, strerror(errno));
    exit(2);
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int client(int port, long n)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = loopback(port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect");
    FILE *in = fdopen(dup(fd), "r");
    if (!in)
        die("fdopen");
    double t0 = now();
    long last = -1;
    char line[128];
    for (long i = 0; i < n; i++) {
        if (write(fd, "inc\n", 4) != 4)
            die("write");
        if (!fgets(line, sizeof line, in) || sscanf(line, "ok %ld", &last) != 1) {
            fprintf(stderr, "countserver: client: no reply to request %ld\n", i + 1);
            return 1;
        }
    }
    printf("client: sent %ld requests in %.3f s\n", n, now() - t0);
    printf("client: last count %ld\n", last);
    fclose(in);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "--client") == 0)
        return client(atoi(argv[2]), atol(argv[3]));
    if (argc < 2) {
        fprintf(stderr, "usage: countserver PORT [options] | countserver --client PORT N\n");
        return 2;
    }
    int port = atoi(argv[1]);
    long hold_mib = 0, die_after = -1;
    const char *count_file = NULL;
    int ignore_term = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--hold") == 0 && i + 1 < argc)
            hold_mib = atol(argv[++i]);
        else if (strcmp(argv[i], "--count-file") == 0 && i + 1 < argc)
            count_file = argv[++i];
        else if (strcmp(argv[i], "--die-after") == 0 && i + 1 < argc)
            die_after = atol(argv[++i]);
        else if (strcmp(argv[i], "--ignore-term") == 0)
            ignore_term = 1;
        else if (strcmp(argv[i], "--exit-now") == 0 && i + 1 < argc) {
            fprintf(stderr, "countserver: exiting at once, as asked\n");
            return atoi(argv[++i]);
        } else {
            fprintf(stderr, "countserver: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    size_t hold = (size_t)hold_mib << 20;
    /* volatile: the stores must happen, though nothing reads them. */
    volatile char *heap = hold ? malloc(hold) : NULL;
    if (hold && !heap)
        die("malloc");
    for (size_t off = 0; off < hold; off += 4096)
        heap[off] = (char)(off >> 12 | 1);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ignore_term ? SIG_IGN : on_term;
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(port);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0)
        die("bind");
    if (listen(lfd, 16) != 0)
        die("listen");
    printf("countserver: listening on 127.0.0.1:%d, holding %ld MiB\n", port, hold_mib);
    fflush(stdout);

    struct pollfd fds[MAX_CONNS + 1];
    int n = 1;
    fds[0].fd = lfd;
    fds[0].events = POLLIN;
    long served = 0;
    char buf[4096];
    while (!stop) {
        int r = poll(fds, (nfds_t)n, 100);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die("poll");
        if ((fds[0].revents & POLLIN) && n <= MAX_CONNS) {
            int c = accept(lfd, NULL, NULL);
            if (c >= 0) {
                fds[n].fd = c;
                fds[n].events = POLLIN;
                fds[n].revents = 0;
                n++;
            }
        }
        for (int i = 1; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t got = read(fds[i].fd, buf, sizeof buf);
            if (got <= 0) {
                close(fds[i].fd);
                fds[i] = fds[n - 1];
                n--;
                i--;
                continue;
            }
            for (ssize_t k = 0; k < got; k++) {
                if (buf[k] != '\n')
                    continue;
                served++;
                char reply[64];
                int len = snprintf(reply, sizeof reply, "ok %ld\n", served);
                if (write(fds[i].fd, reply, (size_t)len) != len)
                    break;
                if (die_after >= 0 && served >= die_after) {
                    fprintf(stderr, "countserver: dying after %ld requests, as asked\n", served);
                    exit(3);
                }
            }
        }
    }
    printf("countserver: served %ld\n", served);
    if (count_file) {
        FILE *f = fopen(count_file, "a");
        if (!f)
            die("open the count file");
        fprintf(f, "served %ld\n", served);
        fclose(f);
    }
    exit(0);
}
