/*
 * bench_upsert.c - `quiverbench upsert`: write throughput and the latency
 * of each acknowledgement against a running quiverd (libquiver over TCP).
 *
 * --clients C threads, each with its own connection, send UPSERTs of
 * --batch B new rows of --dim D (ids disjoint per thread, vectors from a
 * fixed-seed generator) back to back for --seconds S into collection
 * --name (FLAT, created when missing).  Each UPSERT's acknowledgement
 * latency (send to answer: under [storage] sync = always that includes
 * the WAL's fdatasync) goes into one list; printed: vectors/s, upserts/s,
 * p50 / p99 / p999 / max of the acknowledgement, and with --json one
 * object (keys vectors_per_s, upserts_per_s, p50_us, p99_us, p999_us,
 * max_us).  The collection is dropped at the end unless --keep.
 */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "quiver/client.h"

const char qv__bench_upsert_usage[] =
    "usage: quiverbench upsert --server HOST:UDP_PORT:TCP_PORT [--name NAME] [--dim D]\n"
    "                          [--batch B] [--clients C] [--seconds S] [--keep] [--json]\n"
    "  write throughput and acknowledgement latency of UPSERTs (defaults: name\n"
    "  upsert_bench, dim 128, batch 64, clients 4, seconds 5)\n";

struct up_thread {
    pthread_t th;
    unsigned idx;
    char host[256];
    uint16_t up, tp;
    uint64_t coll;
    uint32_t dim, batch;
    double seconds;
    double *lat;                /* us */
    size_t nlat, cap;
    uint64_t rows;
    char err[256];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *up_run(void *arg)
{
    struct up_thread *t = arg;
    struct qv_client *c = qv_client_connect(t->host, t->up, t->tp, NULL);
    if (!c) {
        snprintf(t->err, sizeof t->err, "%s", qv_client_connect_errmsg());
        return NULL;
    }
    uint64_t *ids = malloc(t->batch * sizeof *ids);
    float *v = malloc((size_t)t->batch * t->dim * sizeof *v);
    uint64_t x = 0x9E3779B97F4A7C15ull * (t->idx + 1), next = (uint64_t)t->idx << 40;
    double end = now_s() + t->seconds;
    while (ids && v && now_s() < end) {
        for (uint32_t i = 0; i < t->batch; i++)
            ids[i] = next++;
        for (size_t i = 0; i < (size_t)t->batch * t->dim; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v[i] = (float)(x >> 40) / (float)(1 << 24);
        }
        struct qv_client_rows r = { .n = t->batch, .dim = t->dim, .ids = ids, .vectors = v };
        double t0 = now_s();
        if (qv_client_upsert(c, t->coll, &r, NULL, NULL, NULL)) {
            snprintf(t->err, sizeof t->err, "%s", qv_client_errmsg(c));
            break;
        }
        if (t->nlat == t->cap) {
            t->cap = t->cap ? 2 * t->cap : 4096;
            t->lat = realloc(t->lat, t->cap * sizeof *t->lat);
        }
        t->lat[t->nlat++] = (now_s() - t0) * 1e6;
        t->rows += t->batch;
    }
    free(ids);
    free(v);
    qv_client_close(c);
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int qv__bench_upsert_main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "server", required_argument, NULL, 's' },
        { "name", required_argument, NULL, 'n' },
        { "dim", required_argument, NULL, 'd' },
        { "batch", required_argument, NULL, 'b' },
        { "clients", required_argument, NULL, 'c' },
        { "seconds", required_argument, NULL, 'S' },
        { "keep", no_argument, NULL, 'k' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *server = NULL, *name = "upsert_bench";
    unsigned dim = 128, batch = 64, clients = 4;
    double seconds = 5;
    int keep = 0, json = 0, o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (o) {
        case 's': server = optarg; break;
        case 'n': name = optarg; break;
        case 'd': dim = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'b': batch = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'c': clients = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'S': seconds = atof(optarg); break;
        case 'k': keep = 1; break;
        case 'j': json = 1; break;
        case 'h': fputs(qv__bench_upsert_usage, stdout); return 0;
        default: return qv__bench_usage("upsert", qv__bench_upsert_usage, "unknown flag");
        }
    }
    char host[256];
    unsigned up = 0, tp = 0;
    if (!server || sscanf(server, "%255[^:]:%u:%u", host, &up, &tp) != 3 || !up || !tp ||
        up > 65535 || tp > 65535)
        return qv__bench_usage("upsert", qv__bench_upsert_usage,
                               "--server HOST:UDP_PORT:TCP_PORT is required");
    if (dim < 1 || dim > 4096 || batch < 1 || batch > 65536 || clients < 1 || clients > 64 ||
        !(seconds > 0))
        return qv__bench_usage("upsert", qv__bench_upsert_usage,
                               "--dim 1..4096, --batch 1..65536, --clients 1..64, --seconds > 0");
    struct qv_client *c = qv_client_connect(host, (uint16_t)up, (uint16_t)tp, NULL);
    if (!c) {
        fprintf(stderr, "quiverbench upsert: %s\n", qv_client_connect_errmsg());
        return 1;
    }
    struct qv_client_create cr = { .name = name, .dim = dim, .metric = QV_CLIENT_L2,
                                   .index = QV_CLIENT_FLAT };
    uint64_t coll = 0;
    int rc = qv_client_create(c, &cr, &coll);
    if (rc == QV_CLIENT_EEXISTS)
        rc = qv_client_lookup(c, name, &coll);
    if (rc) {
        fprintf(stderr, "quiverbench upsert: create %s: %s\n", name, qv_client_errmsg(c));
        qv_client_close(c);
        return 1;
    }
    struct up_thread *t = calloc(clients, sizeof *t);
    double t0 = now_s();
    for (unsigned i = 0; i < clients; i++) {
        t[i].idx = i;
        snprintf(t[i].host, sizeof t[i].host, "%s", host);
        t[i].up = (uint16_t)up;
        t[i].tp = (uint16_t)tp;
        t[i].coll = coll;
        t[i].dim = dim;
        t[i].batch = batch;
        t[i].seconds = seconds;
        pthread_create(&t[i].th, NULL, up_run, &t[i]);
    }
    size_t n = 0;
    uint64_t rows = 0;
    for (unsigned i = 0; i < clients; i++) {
        pthread_join(t[i].th, NULL);
        n += t[i].nlat;
        rows += t[i].rows;
        if (t[i].err[0])
            fprintf(stderr, "quiverbench upsert: client %u: %s\n", i, t[i].err);
    }
    double secs = now_s() - t0;
    double *all = malloc((n ? n : 1) * sizeof *all);
    size_t k = 0;
    for (unsigned i = 0; i < clients; i++) {
        memcpy(all + k, t[i].lat, t[i].nlat * sizeof *all);
        k += t[i].nlat;
        free(t[i].lat);
    }
    qsort(all, n, sizeof *all, cmp_d);
#define PCT(p) (n ? all[(size_t)((p) * (double)(n - 1) + 0.5)] : 0.0)
    if (json)
        printf("{\"dim\": %u, \"batch\": %u, \"clients\": %u, \"seconds\": %.2f, \"upserts\": %zu, "
               "\"vectors_per_s\": %.0f, \"upserts_per_s\": %.0f, \"p50_us\": %.1f, "
               "\"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n", dim, batch, clients,
               secs, n, (double)rows / secs, (double)n / secs, PCT(0.5), PCT(0.99), PCT(0.999),
               n ? all[n - 1] : 0.0);
    else
        printf("quiverbench upsert: %u clients x batches of %u rows of dim %u for %.1f s: "
               "%.0f vectors/s (%.0f upserts/s); acknowledgement p50 %.1f us, p99 %.1f us, "
               "p999 %.1f us, max %.1f us\n", clients, batch, dim, secs, (double)rows / secs,
               (double)n / secs, PCT(0.5), PCT(0.99), PCT(0.999), n ? all[n - 1] : 0.0);
#undef PCT
    free(all);
    int failed = 0;
    for (unsigned i = 0; i < clients; i++)
        failed |= t[i].err[0] != 0;
    free(t);
    if (!keep && qv_client_drop(c, coll))
        fprintf(stderr, "quiverbench upsert: drop: %s\n", qv_client_errmsg(c));
    qv_client_close(c);
    return failed || n == 0 ? 1 : 0;
}
