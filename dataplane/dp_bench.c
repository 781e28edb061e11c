/*
 * dp_bench.c - qv-dpbench: the dataplane's own cost per query, over an
 * in-memory net_ring port (no NIC, no kernel), with a null engine.
 *
 *   generator (main lcore)                     worker lcore (the loop, dp.c)
 *   alloc + copy a SEARCH frame ──rx ring──►  rx burst, classify, slot,
 *                                              decode (the real codec),
 *                                              null engine: k results now,
 *                                              encode, headers, checksums
 *   free the answer            ◄──tx ring──   tx burst
 *
 * The null engine answers every SEARCH at once with k ids 0..k-1 at
 * distance 0: what is measured is everything the dataplane does per query
 * (rx, parse and validate Ethernet / IPv4 / UDP with checksum, the
 * protocol decode of a dim-float query, the answer's encode, headers and
 * checksums, tx), not the search.  The generator keeps the rx ring full,
 * so the worker lcore is saturated; it runs on its own CPU.
 *
 * Prints, after a warm-up: answers per second (= packets per second per
 * lcore, one request in, one answer out), TSC cycles and ns per query
 * from the lcore's busy cycles, and its busy share.
 *
 * usage: qv-dpbench [--seconds S] [--dim D] [--k K] [--lcore CPU]
 *                   [--main-lcore CPU] [--burst B] [--json]
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include "dp_pkt.h"
#include "quiver/dataplane.h"
#include "quiver/errors.h"
#include "quiver/proto.h"
#include "quiver/timeutil.h"

static uint32_t bench_k = 10;

/* The null engine: decode with the real codec, answer k results now. */
static enum qv_udp_verdict null_datagram(void *arg, struct qv_udp_slot *slot)
{
    static const uint64_t ids[QV_PROTO_UDP_MAX_K] = { 0 };
    static const float dist[QV_PROTO_UDP_MAX_K] = { 0 };
    struct qv_proto_rx rx = { .carrier = QV_PROTO_UDP, .scratch = slot->user,
                              .scratch_cap = QV_PROTO_SCRATCH_UDP };
    struct qv_proto_req r;
    struct qv_proto_err err;
    int64_t n;

    (void)arg;
    if (qv_proto_decode_request(slot->rx, slot->rx_len, &rx, &r, &err) != 0)
        n = qv_proto_encode_err(slot->tx, slot->tx_cap, &r.hdr, &err);
    else
        n = qv_proto_encode_search_resp(slot->tx, slot->tx_cap, &r.hdr,
                                        r.u.search.k < bench_k ? r.u.search.k : bench_k, 0,
                                        ids, dist);
    slot->tx_len = n > 0 ? (uint32_t)n : 0;
    return n > 0 ? QV_UDP_REPLY : QV_UDP_DROP;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "seconds", required_argument, NULL, 's' },
        { "dim", required_argument, NULL, 'd' },
        { "k", required_argument, NULL, 'k' },
        { "lcore", required_argument, NULL, 'l' },
        { "main-lcore", required_argument, NULL, 'm' },
        { "burst", required_argument, NULL, 'b' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 },
    };
    double seconds = 5;
    unsigned dim = 128, lcore = 1, main_lcore = 0, burst = 32;
    int json = 0, o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 's': seconds = atof(optarg); break;
        case 'd': dim = (unsigned)atoi(optarg); break;
        case 'k': bench_k = (uint32_t)atoi(optarg); break;
        case 'l': lcore = (unsigned)atoi(optarg); break;
        case 'm': main_lcore = (unsigned)atoi(optarg); break;
        case 'b': burst = (unsigned)atoi(optarg); break;
        case 'j': json = 1; break;
        default:
            fprintf(stderr, "usage: qv-dpbench [--seconds S] [--dim D] [--k K] [--lcore CPU] "
                    "[--main-lcore CPU] [--burst B] [--json]\n");
            return 2;
        }
    }
    if (seconds <= 0 || dim < 1 || dim > 300 || bench_k < 1 || bench_k > QV_PROTO_UDP_MAX_K ||
        burst < 1 || burst > 64 || lcore == main_lcore) {
        fprintf(stderr, "qv-dpbench: --seconds > 0, --dim 1..300 (one datagram), --k 1..%u, "
                "--burst 1..64, --lcore != --main-lcore\n", QV_PROTO_UDP_MAX_K);
        return 2;
    }

    struct qv_dp_opts opt;
    qv_dp_opts_default(&opt);
    opt.main_lcore = main_lcore;
    opt.nlcores = 1;
    opt.lcores[0] = lcore;
    opt.hugepages = 2;
    opt.ip = inet_addr("10.99.0.1");
    opt.udp_port = 7700;
    opt.burst = burst;
    opt.user_size = QV_PROTO_SCRATCH_UDP;
    snprintf(opt.file_prefix, sizeof opt.file_prefix, "qv-dpbench-%d", (int)getpid());
    int no_huge = 0;
    if (qv_dp_eal_init(&opt, &no_huge) != 0) {
        fprintf(stderr, "qv-dpbench: %s\n", qv_errmsg());
        return 1;
    }
    /* the ring port: we feed its rx ring and drain its tx ring */
    struct rte_ring *rxr = rte_ring_create("qvb_rx", 4096, (int)rte_socket_id(),
                                           RING_F_SP_ENQ | RING_F_SC_DEQ);
    struct rte_ring *txr = rte_ring_create("qvb_tx", 4096, (int)rte_socket_id(),
                                           RING_F_SP_ENQ | RING_F_SC_DEQ);
    struct rte_mempool *gp = rte_pktmbuf_pool_create("qvb_gen", 16383, 256, 0,
                                                     RTE_MBUF_DEFAULT_BUF_SIZE,
                                                     (int)rte_socket_id());
    if (!rxr || !txr || !gp) {
        fprintf(stderr, "qv-dpbench: rings / pool: %s\n", rte_strerror(rte_errno));
        return 1;
    }
    int port = rte_eth_from_rings("qvb_ring0", &rxr, 1, &txr, 1, rte_socket_id());
    if (port < 0) {
        fprintf(stderr, "qv-dpbench: rte_eth_from_rings: %s\n", rte_strerror(rte_errno));
        return 1;
    }
    opt.nports_given = 1;
    opt.ports_given[0] = (uint16_t)port;
    opt.devices[0] = '\0';
    struct qv_udp_handler h = { .on_datagram = null_datagram, .arg = NULL };
    struct qv_dp *dp = qv_dp_start(&opt, &h);
    if (!dp) {
        fprintf(stderr, "qv-dpbench: %s\n", qv_errmsg());
        return 1;
    }
    struct rte_ether_addr pmac;
    rte_eth_macaddr_get((uint16_t)port, &pmac);

    /* the request frame: a client's SEARCH of a dim-float query */
    uint8_t frame[2048];
    float *q = calloc(dim, sizeof *q);
    for (unsigned i = 0; i < dim; i++)
        q[i] = (float)i * 0.25f;
    struct qv_proto_search s = { .dim = dim, .k = bench_k, .nq = 1, .queries = q };
    struct qv_dp_flow to_server = { .peer_ip = opt.ip, .peer_port = htons(opt.udp_port) };
    memcpy(to_server.peer_mac, pmac.addr_bytes, 6);
    struct qv_dp_self client = { .mac = { 0x02, 0, 0, 0, 0, 0x02 },
                                 .ip = inet_addr("10.99.0.2"), .udp_port = htons(40000) };
    uint32_t hl = qv_dp_answer_hdr_len(&to_server);
    int64_t plen = qv_proto_encode_search(frame + hl, sizeof frame - hl, 1, 1, &s);
    if (plen <= 0) {
        fprintf(stderr, "qv-dpbench: encode: %s\n", qv_errmsg());
        return 1;
    }
    uint32_t flen = qv_dp_write_answer(frame, &to_server, &client, (uint32_t)plen, 0, 1);

    uint64_t tsc_hz = rte_get_tsc_hz(), answers = 0, bad = 0;
    struct qv_dp_lcore_stats st0, st1;
    int64_t t_warm = qv_now_ns() + 500000000, t_end = 0, t_start = 0;
    int measuring = 0;
    struct rte_mbuf *m[64];
    for (;;) {
        int64_t now = qv_now_ns();
        if (!measuring && now >= t_warm) {
            measuring = 1;
            answers = 0;
            qv_dp_lcore_stats(dp, 0, &st0);
            t_start = now;
            t_end = now + (int64_t)(seconds * 1e9);
        }
        if (measuring && now >= t_end)
            break;
        if (rte_ring_free_count(rxr) >= burst &&
            rte_pktmbuf_alloc_bulk(gp, m, burst) == 0) {
            for (unsigned i = 0; i < burst; i++) {
                memcpy(rte_pktmbuf_mtod(m[i], void *), frame, flen);
                m[i]->data_len = (uint16_t)flen;
                m[i]->pkt_len = flen;
            }
            unsigned e = rte_ring_sp_enqueue_burst(rxr, (void **)m, burst, NULL);
            if (e < burst)
                rte_pktmbuf_free_bulk(m + e, burst - e);
        }
        unsigned d = rte_ring_sc_dequeue_burst(txr, (void **)m, 64, NULL);
        for (unsigned i = 0; i < d; i++) {
            /* an answer: header status OK, right length */
            const uint8_t *a = rte_pktmbuf_mtod(m[i], const uint8_t *);
            bad += m[i]->pkt_len < hl + 32 || a[hl + 6] != 0 || a[hl + 7] != 0;
        }
        if (d)
            rte_pktmbuf_free_bulk(m, d);
        answers += d;
    }
    double secs = (double)(qv_now_ns() - t_start) / 1e9;
    qv_dp_lcore_stats(dp, 0, &st1);
    uint64_t req = st1.requests - st0.requests;
    uint64_t busy = st1.busy_cycles - st0.busy_cycles, idle = st1.idle_cycles - st0.idle_cycles;
    double cyc = req ? (double)busy / (double)req : 0, ns = cyc * 1e9 / (double)tsc_hz;
    double pps = (double)answers / secs, share = busy + idle ? (double)busy / (double)(busy + idle)
                                                               : 0;
    if (json)
        printf("{\"dim\": %u, \"k\": %u, \"burst\": %u, \"seconds\": %.2f, \"answers\": %" PRIu64
               ", \"pps\": %.0f, \"cycles_per_query\": %.0f, \"ns_per_query\": %.1f, "
               "\"busy_share\": %.3f, \"tsc_hz\": %" PRIu64 ", \"bad_answers\": %" PRIu64
               ", \"no_huge\": %d}\n", dim, bench_k, burst, secs, answers, pps, cyc, ns, share,
               tsc_hz, bad, no_huge);
    else
        printf("qv-dpbench: net_ring, null engine, dim %u, k %u, burst %u, %s: %" PRIu64
               " answers in %.2f s = %.0f queries/s on one lcore; %.0f cycles = %.1f ns per "
               "query (busy %.1f%% of the lcore; TSC %.2f GHz); %" PRIu64 " bad answers\n",
               dim, bench_k, burst, no_huge ? "no huge pages" : "huge pages", answers, secs, pps,
               cyc, ns, share * 100, (double)tsc_hz / 1e9, bad);
    unsigned left = qv_dp_stop(dp);
    return bad || left || answers == 0 ? 1 : 0;
}
