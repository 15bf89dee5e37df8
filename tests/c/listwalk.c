/*
 * listwalk.c: walks pointer structures that live in the heap, checking every node.
 *
 * Builds a singly linked list of N nodes of NODE bytes each (separate mallocs), linked
 * in a shuffled order so that consecutive nodes are far apart in memory, and a binary
 * search tree over the same keys (nodes of 48 bytes, inserted in a shuffled order). Then
 * PASSES times: walks the whole list (checking each node's key and payload), and looks
 * up Q random keys in the tree. Under farmem run with a small local budget, every step
 * of a walk may be a fault on a far node: the case pointer-chasing prefetch
 * (`--prefetch readahead,pointer`) is for.
 *
 * Usage: listwalk [--nodes N] [--node-size BYTES] [--passes P] [--lookups Q] [--seed S]
 * Defaults: 100000 nodes of 1024 bytes, 3 passes, 100000 lookups.
 * Prints "listwalk: list S s tree S s" per pass (seconds), then "listwalk: ok"; on any
 * mismatch, one "listwalk: FAIL: ..." line on stderr and exit status 1.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror listwalk.c -o listwalk
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("listwalk: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct node {
    struct node *next;
    uint64_t key;
    uint64_t payload[]; /* (size - 16) / 8 words, each key ^ index */
};

struct tnode {
    struct tnode *left, *right;
    uint64_t key;
    uint64_t check; /* key * 3 + 1 */
    uint64_t pad[2];
};

static uint64_t word(uint64_t key, size_t i)
{
    return key * 0x2545f4914f6cdd1dULL ^ i;
}

static void shuffle(uint64_t *a, size_t n, uint64_t *seed)
{
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = splitmix64(seed) % (i + 1);
        uint64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static unsigned long arg(int argc, char **argv, const char *name, unsigned long def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return strtoul(argv[i + 1], NULL, 10);
    return def;
}

int main(int argc, char **argv)
{
    size_t n = arg(argc, argv, "--nodes", 100000);
    size_t size = arg(argc, argv, "--node-size", 1024);
    unsigned passes = arg(argc, argv, "--passes", 3);
    size_t lookups = arg(argc, argv, "--lookups", 100000);
    uint64_t seed = arg(argc, argv, "--seed", 7);
    if (n < 2 || size < sizeof(struct node) + 8)
        fail("need at least 2 nodes of at least %zu bytes", sizeof(struct node) + 8);
    size_t words = (size - sizeof(struct node)) / 8;

    /* Nodes allocated in key order, linked in a shuffled one. */
    struct node **nodes = malloc(n * sizeof *nodes);
    uint64_t *order = malloc(n * sizeof *order);
    if (!nodes || !order)
        fail("out of memory for the index");
    for (size_t i = 0; i < n; i++) {
        nodes[i] = malloc(size);
        if (!nodes[i])
            fail("out of memory at node %zu", i);
        nodes[i]->key = i;
        for (size_t w = 0; w < words; w++)
            nodes[i]->payload[w] = word(i, w);
        order[i] = i;
    }
    shuffle(order, n, &seed);
    for (size_t i = 0; i < n; i++)
        nodes[order[i]]->next = i + 1 < n ? nodes[order[i + 1]] : NULL;
    struct node *head = nodes[order[0]];
    free(nodes);

    /* A binary search tree of the keys, inserted in a shuffled order. */
    shuffle(order, n, &seed);
    struct tnode *root = NULL;
    for (size_t i = 0; i < n; i++) {
        struct tnode *t = malloc(sizeof *t);
        if (!t)
            fail("out of memory at tree node %zu", i);
        *t = (struct tnode){.key = order[i], .check = order[i] * 3 + 1};
        struct tnode **at = &root;
        while (*at)
            at = order[i] < (*at)->key ? &(*at)->left : &(*at)->right;
        *at = t;
    }

    for (unsigned p = 0; p < passes; p++) {
        double t0 = now();
        size_t seen = 0;
        for (struct node *x = head; x; x = x->next, seen++) {
            if (x->key != order[0] && x->key >= n)
                fail("pass %u: node %zu has key %llu", p, seen, (unsigned long long)x->key);
            for (size_t w = 0; w < words; w += 61)
                if (x->payload[w] != word(x->key, w))
                    fail("pass %u: node %llu word %zu is wrong", p, (unsigned long long)x->key, w);
        }
        if (seen != n)
            fail("pass %u: walked %zu nodes, not %zu", p, seen, n);
        double t1 = now();
        for (size_t q = 0; q < lookups; q++) {
            uint64_t k = splitmix64(&seed) % n;
            struct tnode *t = root;
            while (t && t->key != k)
                t = k < t->key ? t->left : t->right;
            if (!t || t->check != k * 3 + 1)
                fail("pass %u: key %llu not found or wrong", p, (unsigned long long)k);
        }
        printf("listwalk: list %.3f s tree %.3f s\n", t1 - t0, now() - t1);
    }
    free(order);
    puts("listwalk: ok");
    return 0;
}
