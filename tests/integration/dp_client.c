/*
 * dp_client.c - the client side of tests/integration/dpdk.sh: run inside
 * the network namespace, against a quiverd that serves UDP both through
 * its DPDK dataplane (--dp) and through kernel sockets (--kernel, which
 * also carries TCP).  Exit 0 when every check holds, 1 (ASSERT, check.h: the
 * failed condition on stderr) when one fails, 2 on a usage error.
 *
 *   1. create a FLAT collection and load siftsmall over TCP (kernel);
 *   2. search the 100 queries over UDP through the dataplane and through
 *      the kernel: the same ids in the same order, recall@10 > 0.999;
 *   3. latency, sequential (one query in flight), --latency-queries per
 *      path in alternating blocks of 250: p50 / p99 of each path printed
 *      (a figure, never checked);
 *   4. --queries queries through the dataplane, --inflight at a time
 *      (asynchronous): every one answered OK (retries allowed, counted);
 *   5. drop the collection.
 *
 * usage: dp_client --dp IP:PORT --kernel IP:UDP:TCP --data DIR
 *                  [--queries N] [--inflight N] [--latency-queries N]
 *                  [--busy-poll]   (the client spins instead of sleeping)
 *                  [--keep]        (leave the collection dp_sift loaded)
 *                  [--load-only]   (create and load dp_sift, nothing else)
 *        dp_client ... --latency-only dp|kernel [--latency-queries N]
 *                  one path's sequential round trips over the kept
 *                  collection: "latency PATH MODE n N p50 X p99 Y mean Z"
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "quiver/client.h"
#include "quiver/vecio.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
    qsort(v, n, sizeof *v, cmp_d);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

struct async_state {
    uint64_t ok, failed;
    char last_err[256];
};

static void on_done(void *arg, int rc, const struct qv_client_hits *hits, const char *errmsg)
{
    struct async_state *st = arg;
    if (rc == 0 && hits && hits->n == 10) {
        st->ok++;
    } else {
        st->failed++;
        snprintf(st->last_err, sizeof st->last_err, "%s", errmsg ? errmsg : "short answer");
    }
}

int main(int argc, char **argv)
{
    check_prog = "dp_client";
    static const struct option lo[] = {
        { "dp", required_argument, NULL, 'd' },
        { "kernel", required_argument, NULL, 'k' },
        { "data", required_argument, NULL, 'D' },
        { "queries", required_argument, NULL, 'q' },
        { "inflight", required_argument, NULL, 'i' },
        { "latency-queries", required_argument, NULL, 'l' },
        { "busy-poll", no_argument, NULL, 'b' },
        { "keep", no_argument, NULL, 'K' },
        { "load-only", no_argument, NULL, 'O' },
        { "latency-only", required_argument, NULL, 'L' },
        { NULL, 0, NULL, 0 },
    };
    char dp_ip[64] = "", k_ip[64] = "", dir[4096] = "";
    unsigned dp_port = 0, k_udp = 0, k_tcp = 0, inflight = 64, lat_n = 2000;
    unsigned long nq_total = 100000;
    int o, busy = 0, keep = 0, load_only = 0;
    const char *lat_only = NULL;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'd':
            if (sscanf(optarg, "%63[^:]:%u", dp_ip, &dp_port) != 2)
                return 2;
            break;
        case 'k':
            if (sscanf(optarg, "%63[^:]:%u:%u", k_ip, &k_udp, &k_tcp) != 3)
                return 2;
            break;
        case 'D':
            snprintf(dir, sizeof dir, "%s", optarg);
            break;
        case 'q':
            nq_total = strtoul(optarg, NULL, 10);
            break;
        case 'i':
            inflight = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'l':
            lat_n = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'b':
            busy = 1;
            break;
        case 'K':
            keep = 1;
            break;
        case 'O':
            load_only = 1;
            break;
        case 'L':
            lat_only = optarg;
            if (strcmp(lat_only, "dp") && strcmp(lat_only, "kernel"))
                return 2;
            break;
        default:
            return 2;
        }
    }
    if (!dp_port || !k_udp || !k_tcp || !dir[0] || inflight < 1 || lat_n < 500) {
        fprintf(stderr, "usage: dp_client --dp IP:PORT --kernel IP:UDP:TCP --data DIR "
                "[--queries N] [--inflight N] [--latency-queries N>=500]\n");
        return 2;
    }

    struct qv_vecfile B, Q, G;
    char path[4200];
    snprintf(path, sizeof path, "%s/base.fvecs", dir);
    ASSERT(qv_vecfile_open(&B, path, QV_VEC_FVECS) == 0, "open %s", path);
    snprintf(path, sizeof path, "%s/query.fvecs", dir);
    ASSERT(qv_vecfile_open(&Q, path, QV_VEC_FVECS) == 0, "open %s", path);
    snprintf(path, sizeof path, "%s/groundtruth.ivecs", dir);
    ASSERT(qv_vecfile_open(&G, path, QV_VEC_IVECS) == 0, "open %s", path);

    struct qv_client_opts ko, dpo;
    qv_client_opts_default(&ko);
    qv_client_opts_default(&dpo);
    dpo.tcp_host = k_ip;
    ko.busy_poll = dpo.busy_poll = busy;
    dpo.max_inflight = inflight > 1024 ? inflight : 1024;
    struct qv_client *kc = qv_client_connect(k_ip, (uint16_t)k_udp, (uint16_t)k_tcp, &ko);
    ASSERT(kc != NULL, "connect (kernel): %s", qv_client_connect_errmsg());
    struct qv_client *dc = qv_client_connect(dp_ip, (uint16_t)dp_port, (uint16_t)k_tcp, &dpo);
    ASSERT(dc != NULL, "connect (dataplane): %s", qv_client_connect_errmsg());

    if (lat_only) {
        /* the collection of an earlier --keep run; one path; one line */
        uint64_t id;
        struct qv_client *c = strcmp(lat_only, "dp") == 0 ? dc : kc;
        ASSERT(qv_client_lookup(kc, "dp_sift", &id) == 0, "lookup dp_sift (load it first with "
              "--keep): %s", qv_client_errmsg(kc));
        double *l = malloc(lat_n * sizeof *l), sum = 0;
        ASSERT(l != NULL, "malloc");
        for (unsigned i = 0; i < lat_n; i++) {
            uint64_t r[10];
            uint32_t got;
            double t0 = now_us();
            ASSERT(qv_client_search(c, id, qv_vecfile_row(&Q, i % Q.n), Q.dim, 10, NULL, r,
                                   NULL, &got) == 0 && got == 10,
                  "search %u: %s", i, qv_client_errmsg(c));
            l[i] = now_us() - t0;
            sum += l[i];
        }
        printf("latency %s %s n %u p50 %.1f p99 %.1f mean %.1f\n", lat_only,
               busy ? "spinning" : "blocking", lat_n, pct(l, lat_n, 0.5), pct(l, lat_n, 0.99),
               sum / lat_n);
        free(l);
        qv_client_close(dc);
        qv_client_close(kc);
        return 0;
    }

    /* 1. create and load over TCP */
    struct qv_client_create cr = { .name = "dp_sift", .dim = B.dim, .metric = QV_CLIENT_L2,
                                   .index = QV_CLIENT_FLAT };
    uint64_t coll = 0;
    ASSERT(qv_client_create(kc, &cr, &coll) == 0, "create: %s", qv_client_errmsg(kc));
    uint64_t *ids = malloc(B.n * sizeof *ids);
    float *vec = malloc((size_t)B.n * B.dim * sizeof *vec);
    ASSERT(ids && vec, "malloc");
    for (uint64_t i = 0; i < B.n; i++)
        ids[i] = i;
    qv_vecfile_read_f32(&B, 0, B.n, vec);
    struct qv_client_rows rows = { .n = B.n, .dim = B.dim, .ids = ids, .vectors = vec };
    ASSERT(qv_client_upsert(kc, coll, &rows, NULL, NULL, NULL) == 0, "upsert: %s",
          qv_client_errmsg(kc));
    printf("dp_client: loaded %llu vectors over TCP (kernel, %s:%u)\n",
           (unsigned long long)B.n, k_ip, k_tcp);
    if (load_only)
        return 0;

    /* 2. the same answers both ways */
    unsigned nq = Q.n < 100 ? (unsigned)Q.n : 100, same = 0, hits = 0;
    for (unsigned i = 0; i < nq; i++) {
        uint64_t a[10], b[10];
        uint32_t na = 0, nb = 0;
        const float *q = qv_vecfile_row(&Q, i);
        ASSERT(qv_client_search(dc, coll, q, Q.dim, 10, NULL, a, NULL, &na) == 0,
              "search (dataplane): %s", qv_client_errmsg(dc));
        ASSERT(qv_client_search(kc, coll, q, Q.dim, 10, NULL, b, NULL, &nb) == 0,
              "search (kernel): %s", qv_client_errmsg(kc));
        same += na == 10 && nb == 10 && memcmp(a, b, sizeof a) == 0;
        const int32_t *gt = qv_vecfile_row(&G, i);
        for (unsigned j = 0; j < na; j++)
            for (unsigned t = 0; t < 10; t++)
                hits += a[j] == (uint64_t)gt[t];
    }
    double recall = hits / (10.0 * nq);
    printf("dp_client: %u queries: dataplane = kernel answers %u/%u, recall@10 %.4f\n", nq,
           same, nq, recall);
    ASSERT(same == nq, "the dataplane's answers differ from the kernel transport's in %u "
          "of %u queries", nq - same, nq);
    ASSERT(recall > 0.999, "recall@10 of FLAT over the dataplane is %.4f, not 1", recall);

    /* 3. latency, one query in flight, alternating blocks */
    double *ld = malloc(lat_n * sizeof *ld), *lk = malloc(lat_n * sizeof *lk);
    ASSERT(ld && lk, "malloc");
    unsigned nd = 0, nk = 0;
    for (unsigned blk = 0; nd < lat_n || nk < lat_n; blk++) {
        int use_dp = blk % 2 == 0;
        struct qv_client *c = use_dp ? dc : kc;
        for (unsigned j = 0; j < 250; j++) {
            unsigned *n = use_dp ? &nd : &nk;
            if (*n >= lat_n)
                break;
            uint64_t r[10];
            uint32_t got;
            double t0 = now_us();
            ASSERT(qv_client_search(c, coll, qv_vecfile_row(&Q, (*n) % nq), Q.dim, 10, NULL,
                                   r, NULL, &got) == 0 && got == 10,
                  "latency search: %s", qv_client_errmsg(c));
            (use_dp ? ld : lk)[(*n)++] = now_us() - t0;
        }
    }
    printf("dp_client: round trip, one in flight, %s client, %u each: dataplane p50 %.1f us "
           "p99 %.1f us | kernel p50 %.1f us p99 %.1f us\n", busy ? "spinning" : "blocking",
           lat_n, pct(ld, nd, 0.5), pct(ld, nd, 0.99), pct(lk, nk, 0.5), pct(lk, nk, 0.99));

    /* 4. many queries, async */
    struct async_state st = { 0 };
    struct qv_client_stats s0, s1;
    qv_client_stats(dc, &s0);
    double t0 = now_us();
    unsigned long sent = 0;
    /* a 2 s deadline: this checks the dataplane's answers and mbufs, not
     * latency (on a 2-CPU machine the server's dispatcher shares CPU 0
     * with this client and the kernel while CPU 1 polls) */
    struct qv_client_search_params bulk = { .deadline_us = 2000000 };
    while (nq_total && st.ok + st.failed < nq_total) {
        while (sent < nq_total && qv_client_inflight(dc) < inflight) {
            int rc = qv_client_search_async(dc, coll, qv_vecfile_row(&Q, sent % nq), Q.dim,
                                            10, &bulk, on_done, &st);
            if (rc == -ENOSPC)
                break;
            ASSERT(rc == 0, "search_async: %s", qv_client_errmsg(dc));
            sent++;
        }
        ASSERT(qv_client_poll(dc, 100) >= 0, "poll: %s", qv_client_errmsg(dc));
    }
    double secs = (now_us() - t0) / 1e6 + 1e-9;
    qv_client_stats(dc, &s1);
    printf("dp_client: %lu queries through the dataplane, %u in flight: %llu ok, %llu failed, "
           "%llu retries, %.0f QPS\n", nq_total, inflight, (unsigned long long)st.ok,
           (unsigned long long)st.failed,
           (unsigned long long)(s1.udp_retries - s0.udp_retries), (double)nq_total / secs);
    ASSERT(st.failed == 0 && st.ok == nq_total, "%llu of %lu queries failed through the "
          "dataplane: %s", (unsigned long long)st.failed, nq_total, st.last_err);

    /* 5. drop */
    ASSERT(keep || qv_client_drop(kc, coll) == 0, "drop: %s", qv_client_errmsg(kc));
    qv_client_close(dc);
    qv_client_close(kc);
    free(ids);
    free(vec);
    free(ld);
    free(lk);
    qv_vecfile_close(&B);
    qv_vecfile_close(&Q);
    qv_vecfile_close(&G);
    printf("dp_client: ok\n");
    return 0;
}
