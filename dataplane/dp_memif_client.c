/*
 * dp_memif_client.c - qv-dpmemif: a DPDK process on the other end of a
 * net_memif link to quiverd's dataplane (tests/integration/dpdk.sh).
 *
 * It starts its own EAL (one lcore, no huge pages, no PCI) with a memif
 * port in the client role on SOCKET, waits for the link, resolves IP with
 * an ARP request (the dataplane's reply gives its MAC), then sends N PING
 * requests of the protocol to IP:PORT one at a time and checks that each
 * answer is a PING answer with status OK and its request's id.  Prints
 * the round trips (p50 / p99) and exits 0, or 1 with the reason.
 *
 * usage: qv-dpmemif SOCKET IP PORT [N]
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

#include "dp_pkt.h"
#include "quiver/proto.h"
#include "quiver/timeutil.h"

static const uint8_t my_mac[6] = { 0x02, 0x51, 0x56, 0x00, 0x00, 0x02 };

static int fail(const char *why)
{
    fprintf(stderr, "qv-dpmemif: FAIL: %s\n", why);
    return 1;
}

static int send_frame(uint16_t port, struct rte_mempool *mp, const uint8_t *f, uint32_t len)
{
    struct rte_mbuf *m = rte_pktmbuf_alloc(mp);
    if (!m)
        return -1;
    memcpy(rte_pktmbuf_mtod(m, void *), f, len);
    m->data_len = (uint16_t)len;
    m->pkt_len = len;
    if (rte_eth_tx_burst(port, 0, &m, 1) != 1) {
        rte_pktmbuf_free(m);
        return -1;
    }
    return 0;
}

/* Wait (timeout_ms) for a frame accepted by want(); copy it to out. */
static int recv_frame(uint16_t port, uint8_t *out, uint32_t *len, int timeout_ms,
                      int (*want)(const uint8_t *, uint32_t, void *), void *arg)
{
    int64_t end = qv_now_ns() + (int64_t)timeout_ms * 1000000;
    struct rte_mbuf *m[8];
    while (qv_now_ns() < end) {
        uint16_t n = rte_eth_rx_burst(port, 0, m, 8);
        int got = 0;
        for (uint16_t i = 0; i < n; i++) {
            const uint8_t *d = rte_pktmbuf_mtod(m[i], const uint8_t *);
            if (!got && want(d, m[i]->data_len, arg)) {
                memcpy(out, d, m[i]->data_len);
                *len = m[i]->data_len;
                got = 1;
            }
            rte_pktmbuf_free(m[i]);
        }
        if (got)
            return 0;
    }
    return -1;
}

static int is_arp_reply(const uint8_t *f, uint32_t len, void *arg)
{
    uint32_t ip = *(const uint32_t *)arg;
    return len >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[20] == 0 && f[21] == 2 &&
           memcmp(f + 28, &ip, 4) == 0;
}

struct want_ping {
    uint64_t id;
};

static int is_answer(const uint8_t *f, uint32_t len, void *arg)
{
    const struct want_ping *w = arg;
    uint64_t id;
    if (len < 42 + QV_PROTO_HDR_SIZE || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17)
        return 0;
    memcpy(&id, f + 42 + 8, 8);
    return id == w->id;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: qv-dpmemif SOCKET IP PORT [N]\n");
        return 2;
    }
    const char *sock = argv[1];
    uint32_t ip = inet_addr(argv[2]);
    uint16_t uport = (uint16_t)atoi(argv[3]);
    int n = argc > 4 ? atoi(argv[4]) : 1000;
    char vdev[512], prefix[64];
    snprintf(vdev, sizeof vdev, "net_memif0,role=client,socket=%s,"
             "mac=02:51:56:00:00:02", sock);
    snprintf(prefix, sizeof prefix, "--file-prefix=qvmc%d", (int)getpid());
    char *eal[] = { "qv-dpmemif", "-l", "0", "--no-huge", "-m", "128", "--no-pci", prefix,
                    "--vdev", vdev, "--log-level=*:warning", NULL };
    if (rte_eal_init((int)(sizeof eal / sizeof eal[0]) - 1, eal) < 0)
        return fail(rte_strerror(rte_errno));
    uint16_t port = 0;
    if (rte_eth_dev_get_port_by_name("net_memif0", &port) != 0)
        return fail("no memif port");
    struct rte_mempool *mp = rte_pktmbuf_pool_create("qvmc", 2047, 64, 0,
                                                     RTE_MBUF_DEFAULT_BUF_SIZE,
                                                     (int)rte_socket_id());
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    if (!mp || rte_eth_dev_configure(port, 1, 1, &conf) != 0 ||
        rte_eth_rx_queue_setup(port, 0, 512, (unsigned)rte_socket_id(), NULL, mp) != 0 ||
        rte_eth_tx_queue_setup(port, 0, 512, (unsigned)rte_socket_id(), NULL) != 0 ||
        rte_eth_dev_start(port) != 0)
        return fail("memif port setup");
    struct rte_eth_link link;
    for (int i = 0; i < 500; i++) {
        if (rte_eth_link_get_nowait(port, &link) == 0 && link.link_status)
            break;
        rte_delay_ms(10);
    }
    if (!link.link_status)
        return fail("the memif link to quiverd did not come up in 5 s");

    /* ARP */
    uint8_t f[2048], r[2048];
    uint32_t rlen = 0;
    memset(f, 0, 42);
    memset(f, 0xff, 6);
    memcpy(f + 6, my_mac, 6);
    f[12] = 0x08, f[13] = 0x06;
    f[14] = 0, f[15] = 1, f[16] = 0x08, f[17] = 0, f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1;
    memcpy(f + 22, my_mac, 6);
    uint32_t my_ip = inet_addr("10.78.0.2");
    memcpy(f + 28, &my_ip, 4);
    memcpy(f + 38, &ip, 4);
    uint8_t peer[6] = { 0 };
    int resolved = 0;
    for (int t = 0; t < 5 && !resolved; t++) {
        if (send_frame(port, mp, f, 60) == 0 &&
            recv_frame(port, r, &rlen, 400, is_arp_reply, &ip) == 0) {
            memcpy(peer, r + 22, 6);
            resolved = 1;
        }
    }
    if (!resolved)
        return fail("no ARP reply for the dataplane's address over memif");
    printf("qv-dpmemif: ARP %s is at %02x:%02x:%02x:%02x:%02x:%02x\n", argv[2], peer[0],
           peer[1], peer[2], peer[3], peer[4], peer[5]);

    /* PINGs */
    struct qv_dp_flow to = { .peer_ip = ip, .peer_port = htons(uport) };
    memcpy(to.peer_mac, peer, 6);
    struct qv_dp_self me = { .ip = my_ip, .udp_port = htons(40001) };
    memcpy(me.mac, my_mac, 6);
    uint32_t hl = qv_dp_answer_hdr_len(&to);
    double *rtt = malloc((size_t)n * sizeof *rtt);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        struct want_ping w = { .id = 1000 + (uint64_t)i };
        int64_t plen = qv_proto_encode_empty_req(f + hl, sizeof f - hl, QV_PROTO_OP_PING,
                                                 w.id, 0);
        uint32_t flen = qv_dp_write_answer(f, &to, &me, (uint32_t)plen, 0, 1);
        int64_t t0 = qv_now_ns();
        if (send_frame(port, mp, f, flen) != 0 ||
            recv_frame(port, r, &rlen, 1000, is_answer, &w) != 0)
            continue;
        rtt[ok] = (double)(qv_now_ns() - t0) / 1e3;
        uint16_t status;
        memcpy(&status, r + 42 + 6, 2);
        ok += status == 0 && r[42 + 3] == QV_PROTO_OP_PING;
    }
    if (ok != n) {
        fprintf(stderr, "qv-dpmemif: %d of %d PINGs answered OK\n", ok, n);
        return 1;
    }
    qsort(rtt, (size_t)ok, sizeof *rtt, cmp_d);
    printf("qv-dpmemif: %d PINGs over memif answered OK, round trip p50 %.1f us p99 %.1f us\n",
           ok, rtt[ok / 2], rtt[(size_t)(0.99 * (ok - 1))]);
    free(rtt);
    rte_eth_dev_stop(port);
    rte_eal_cleanup();
    return 0;
}
