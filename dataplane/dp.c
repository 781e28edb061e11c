/*
 * dp.c - the DPDK dataplane: options, EAL, ports, the lcore loop, drain,
 * statistics and metrics (quiver/dataplane.h has the design, dp_int.h
 * the structures and their threads; packet rules are dp_pkt.c).
 *
 * The loop of worker lcore i (queue i of every port):
 *
 *   for (;;) {
 *       for each port: rx burst (unless draining); each packet:
 *           not one linear segment          -> drop (not_linear)
 *           qv_dp_classify:
 *             ARP / ICMP reply (in place)   -> tx queue of that port
 *             dropped                       -> free, count the reason
 *             UDP request                   -> slot (rx mbuf + new tx mbuf),
 *                                              handler: REPLY -> answer,
 *                                              DROP -> free, ASYNC -> held
 *       completion ring: dequeue a burst    -> answer each
 *       flush every port's tx queue (what the NIC refuses is freed)
 *       TSC cycles of this turn -> busy (any work) or idle
 *   }
 *
 * "answer": qv_dp_write_answer puts Ethernet / VLAN / IPv4 / UDP headers
 * in front of the payload the handler encoded into the tx mbuf; the tx
 * mbuf's data offset was chosen at receive so that the payload is 8-byte
 * aligned (the encoders write 8-byte arrays).  Checksums: IPv4 and UDP by
 * the port when it offers the offloads, else in software.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>

#include "dp_int.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/timeutil.h"

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

void qv_dp_opts_default(struct qv_dp_opts *o)
{
    memset(o, 0, sizeof *o);
    o->main_lcore = 0;
    o->nlcores = 1;
    o->lcores[0] = 1;
    o->memory = 256u << 20;
    o->hugepages = 2;
    o->udp_port = 7700;
    o->accept_partial_csum = 1;
    o->udp_csum = 1;
    o->mbufs = 8191;
    o->mbuf_cache = 256;
    o->rx_desc = 1024;
    o->tx_desc = 1024;
    o->burst = 32;
    o->slots = 1024;
    o->drain_ms = 5000;
}

static int parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    char tail;
    if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &tail) != 6)
        return -1;
    for (int i = 0; i < 6; i++) {
        if (v[i] > 255)
            return -1;
        mac[i] = (uint8_t)v[i];
    }
    if (mac[0] & 1)
        return -1;                      /* a multicast address is no host's */
    return 0;
}

int qv_dp_opts_from_config(const struct qv_config *cfg, struct qv_dp_opts *o)
{
    long ncpu = sysconf(_SC_NPROCESSORS_CONF);
    const char *s;

    qv_dp_opts_default(o);
    o->main_lcore = (unsigned)qv_config_int(cfg, "dataplane", "main_lcore");
    if ((long)o->main_lcore >= ncpu)
        return qv_seterr(QV_ECONFIG, "[dataplane] main_lcore = %u: only %ld CPUs exist "
                         "(0..%ld)", o->main_lcore, ncpu, ncpu - 1);
    /* lcores: "1" or "2,3" */
    s = qv_config_string(cfg, "dataplane", "lcores");
    o->nlcores = 0;
    for (const char *p = s; *p;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || (*end != ',' && *end != '\0'))
            return qv_seterr(QV_ECONFIG, "[dataplane] lcores = %s: expected CPU numbers "
                             "separated by commas (e.g. 1 or 2,3)", s);
        if (v >= ncpu)
            return qv_seterr(QV_ECONFIG, "[dataplane] lcores = %s: CPU %ld does not exist: "
                             "only %ld CPUs (0..%ld)", s, v, ncpu, ncpu - 1);
        if ((unsigned)v == o->main_lcore)
            return qv_seterr(QV_ECONFIG, "[dataplane] lcores = %s: CPU %ld is the main "
                             "lcore ([dataplane] main_lcore): give the workers other CPUs",
                             s, v);
        for (unsigned i = 0; i < o->nlcores; i++)
            if (o->lcores[i] == (unsigned)v)
                QV_WARN("[dataplane] lcores = %s: CPU %ld runs two worker lcores: each "
                        "gets half of it (for tests; give each its own CPU in production)",
                        s, v);
        if (o->nlcores == QV_DP_MAX_LCORES)
            return qv_seterr(QV_ECONFIG, "[dataplane] lcores = %s: at most %u worker "
                             "lcores", s, QV_DP_MAX_LCORES);
        o->lcores[o->nlcores++] = (unsigned)v;
        p = *end ? end + 1 : end;
    }
    if (o->nlcores == 0)
        return qv_seterr(QV_ECONFIG, "[dataplane] lcores is empty: give at least one CPU");
    s = qv_config_string(cfg, "dataplane", "devices");
    if (strcmp(s, "none") == 0 || !*s)
        return qv_seterr(QV_ECONFIG, "[dataplane] devices = none: mode = dpdk needs a port "
                         "(a PCI address bound to vfio-pci, or a vdev such as "
                         "net_af_packet0,iface=eth1)");
    if (strlen(s) >= sizeof o->devices)
        return qv_seterr(QV_ECONFIG, "[dataplane] devices: longer than %zu bytes",
                         sizeof o->devices - 1);
    snprintf(o->devices, sizeof o->devices, "%s", s);
    s = qv_config_string(cfg, "dataplane", "ip");
    struct in_addr a;
    if (strcmp(s, "none") == 0)
        return qv_seterr(QV_ECONFIG, "[dataplane] ip = none: mode = dpdk needs the "
                         "appliance's IPv4 address on its ports");
    if (inet_pton(AF_INET, s, &a) != 1 || a.s_addr == 0 || a.s_addr == 0xffffffffu ||
        (ntohl(a.s_addr) >> 28) == 0xe)
        return qv_seterr(QV_ECONFIG, "[dataplane] ip = %s: expected a unicast IPv4 address "
                         "(a.b.c.d)", s);
    o->ip = a.s_addr;
    s = qv_config_string(cfg, "dataplane", "mac");
    if (strcmp(s, "auto") != 0) {
        if (parse_mac(s, o->mac))
            return qv_seterr(QV_ECONFIG, "[dataplane] mac = %s: expected a unicast MAC "
                             "(aa:bb:cc:dd:ee:ff) or auto", s);
        o->mac_set = 1;
    }
    o->udp_port = (uint16_t)qv_config_int(cfg, "dataplane", "udp_port");
    o->promisc = qv_config_bool(cfg, "dataplane", "promisc");
    o->accept_partial_csum = qv_config_bool(cfg, "dataplane", "accept_partial_csum");
    o->udp_csum = qv_config_bool(cfg, "dataplane", "udp_checksum");
    o->memory = qv_config_size(cfg, "dataplane", "memory");
    o->hugepages = qv_config_enum(cfg, "dataplane", "hugepages") == 0 ? 2
                   : qv_config_enum(cfg, "dataplane", "hugepages") == 1 ? 1 : 0;
    s = qv_config_string(cfg, "dataplane", "huge_dir");
    if (strcmp(s, "auto") != 0)
        snprintf(o->huge_dir, sizeof o->huge_dir, "%s", s);
    s = qv_config_string(cfg, "dataplane", "file_prefix");
    if (strcmp(s, "auto") != 0)
        snprintf(o->file_prefix, sizeof o->file_prefix, "%s", s);
    s = qv_config_string(cfg, "dataplane", "eal_args");
    if (strcmp(s, "none") != 0)
        snprintf(o->eal_args, sizeof o->eal_args, "%s", s);
    o->mbufs = (unsigned)qv_config_int(cfg, "dataplane", "mbufs");
    o->mbuf_cache = (unsigned)qv_config_int(cfg, "dataplane", "mbuf_cache");
    o->rx_desc = (unsigned)qv_config_int(cfg, "dataplane", "rx_desc");
    o->tx_desc = (unsigned)qv_config_int(cfg, "dataplane", "tx_desc");
    o->burst = (unsigned)qv_config_int(cfg, "dataplane", "burst");
    o->slots = (unsigned)qv_config_int(cfg, "dataplane", "slots");
    return 0;
}

static int check_opts(const struct qv_dp_opts *o)
{
    if (o->nlcores < 1 || o->nlcores > QV_DP_MAX_LCORES)
        return qv_seterr(QV_EINVAL, "dataplane: %u worker lcores: expected 1..%u",
                         o->nlcores, QV_DP_MAX_LCORES);
    if (o->burst < 1 || o->burst > DP_MAX_BURST)
        return qv_seterr(QV_EINVAL, "dataplane: burst = %u: expected 1..%u", o->burst,
                         DP_MAX_BURST);
    if (o->slots <= o->burst || (o->slots & (o->slots - 1)) || o->slots > 65536)
        return qv_seterr(QV_EINVAL, "dataplane: slots = %u: expected a power of two above "
                         "burst (%u), at most 65536", o->slots, o->burst);
    if (o->ip == 0)
        return qv_seterr(QV_EINVAL, "dataplane: no IPv4 address ([dataplane] ip)");
    if (o->udp_port == 0)
        return qv_seterr(QV_EINVAL, "dataplane: udp_port is 0");
    if (o->nports_given > QV_DP_MAX_PORTS)
        return qv_seterr(QV_EINVAL, "dataplane: %u given ports: at most %u", o->nports_given,
                         QV_DP_MAX_PORTS);
    return 0;
}

/* ------------------------------------------------------------------ */
/* EAL                                                                 */
/* ------------------------------------------------------------------ */

#define DP_MAX_ARGS 96

/* rte_eal_init ran in this process (it runs once: the EAL is global). */
static int eal_up;

struct eal_argv {
    int argc;
    char *argv[DP_MAX_ARGS];
    char buf[4096];
    size_t used;
};

static int eal_add(struct eal_argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int eal_add(struct eal_argv *a, const char *fmt, ...)
{
    va_list ap;
    if (a->argc >= DP_MAX_ARGS - 1 || a->used >= sizeof a->buf)
        return -1;
    va_start(ap, fmt);
    int n = vsnprintf(a->buf + a->used, sizeof a->buf - a->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof a->buf - a->used)
        return -1;
    a->argv[a->argc++] = a->buf + a->used;
    a->argv[a->argc] = NULL;
    a->used += (size_t)n + 1;
    return 0;
}

/* A PCI address (DDDD:BB:DD.F or BB:DD.F)? */
static int is_pci(const char *s, size_t n)
{
    unsigned d, b, dv, f;
    char tmp[64];
    int used = 0;
    if (n == 0 || n >= sizeof tmp)
        return 0;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (sscanf(tmp, "%x:%x:%x.%x%n", &d, &b, &dv, &f, &used) == 4 && (size_t)used == n)
        return 1;
    return sscanf(tmp, "%x:%x.%x%n", &b, &dv, &f, &used) == 3 && (size_t)used == n;
}

/* The first hugetlbfs mount, and whether it has free pages for bytes. */
static int find_hugetlbfs(char *dir, size_t cap, uint64_t bytes, char *why, size_t wcap)
{
    FILE *f = fopen("/proc/mounts", "r");
    char dev[256], mnt[256], type[64];
    int found = 0;
    if (!f) {
        snprintf(why, wcap, "cannot read /proc/mounts");
        return 0;
    }
    while (fscanf(f, "%255s %255s %63s %*[^\n]", dev, mnt, type) == 3) {
        if (strcmp(type, "hugetlbfs") == 0 && (!dir[0] || strcmp(dir, mnt) == 0)) {
            snprintf(dir, cap, "%s", mnt);
            found = 1;
            break;
        }
    }
    fclose(f);
    if (!found) {
        snprintf(why, wcap, "no hugetlbfs is mounted%s%s (mount -t hugetlbfs nodev "
                 "/dev/hugepages)", dir[0] ? " at " : "", dir);
        return 0;
    }
    f = fopen("/proc/meminfo", "r");
    unsigned long freep = 0, size_kb = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "HugePages_Free: %lu", &freep);
        sscanf(line, "Hugepagesize: %lu kB", &size_kb);
    }
    if (f)
        fclose(f);
    if ((uint64_t)freep * size_kb * 1024 < bytes) {
        snprintf(why, wcap, "%lu free huge pages of %lu kB < %" PRIu64 " MiB of [dataplane] "
                 "memory (echo N > /proc/sys/vm/nr_hugepages)", freep, size_kb, bytes >> 20);
        return 0;
    }
    return 1;
}

int qv_dp_eal_init(const struct qv_dp_opts *o, int *no_huge)
{
    struct eal_argv *a = qv_calloc(1, sizeof *a, QV_MEM_SERVER);
    char list[512], hdir[256], why[512] = "";
    size_t len = 0;
    int nh = 0, rc = 0;

    if (!a)
        return qv_seterr(QV_ENOMEM, "dataplane: no memory for the EAL arguments");
    /* lcore 0 = the main one on main_lcore's CPU; worker i = lcore i + 1
     * on CPU lcores[i] (two workers may share a CPU) */
    len += (size_t)snprintf(list, sizeof list, "0@%u", o->main_lcore);
    for (unsigned i = 0; i < o->nlcores && len < sizeof list; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, ",%u@%u", i + 1, o->lcores[i]);
    eal_add(a, "quiverd");
    eal_add(a, "--lcores=%s", list);
    eal_add(a, "--main-lcore=0");
    eal_add(a, "-m");
    eal_add(a, "%" PRIu64, o->memory >> 20);
    if (o->file_prefix[0])
        eal_add(a, "--file-prefix=%s", o->file_prefix);
    else
        eal_add(a, "--file-prefix=quiver-%d", (int)getpid());
    snprintf(hdir, sizeof hdir, "%s", o->huge_dir);
    if (o->hugepages == 0) {
        nh = 1;
    } else if (!find_hugetlbfs(hdir, sizeof hdir, o->memory, why, sizeof why)) {
        if (o->hugepages == 1) {
            rc = qv_seterr(QV_EIO, "dataplane: [dataplane] hugepages = on, but %s", why);
            goto out;
        }
        nh = 1;
        QV_WARN("dataplane: running without huge pages (--no-huge): %s", why);
    }
    if (nh) {
        eal_add(a, "--no-huge");
    } else {
        eal_add(a, "--huge-dir=%s", hdir);
        eal_add(a, "--huge-unlink");
    }
    /* devices: PCI -> -a; anything else -> --vdev; no PCI at all: --no-pci */
    int pci = 0;
    for (const char *p = o->devices; *p;) {
        const char *e = strchr(p, ';');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && *p == ' ')
            p++, n--;
        while (n && p[n - 1] == ' ')
            n--;
        if (n) {
            if (is_pci(p, n)) {
                eal_add(a, "-a");
                pci = 1;
            } else {
                eal_add(a, "--vdev");
            }
            eal_add(a, "%.*s", (int)n, p);
        }
        p = e ? e + 1 : p + strlen(p);
    }
    if (!pci)
        eal_add(a, "--no-pci");
    /* extra arguments, split on spaces */
    char extra[sizeof o->eal_args];
    snprintf(extra, sizeof extra, "%s", o->eal_args);
    for (char *save = NULL, *t = strtok_r(extra, " ", &save); t; t = strtok_r(NULL, " ", &save))
        eal_add(a, "%s", t);

    char shown[2048];
    size_t sl = 0;
    for (int i = 0; i < a->argc && sl < sizeof shown; i++)
        sl += (size_t)snprintf(shown + sl, sizeof shown - sl, "%s%s", i ? " " : "", a->argv[i]);
    QV_INFO("dataplane: EAL %s", shown);

    cpu_set_t saved;
    int have_saved = sched_getaffinity(0, sizeof saved, &saved) == 0;
    /* rte_eal_init permutes argv: hand it a copy of the pointers */
    char *argv[DP_MAX_ARGS];
    memcpy(argv, a->argv, sizeof argv);
    if (rte_eal_init(a->argc, argv) < 0) {
        rc = qv_seterr(QV_EIO, "dataplane: rte_eal_init failed: %s (arguments: %s)",
                       rte_strerror(rte_errno), shown);
        goto out;
    }
    /* the main thread gets its CPUs back: threads started later inherit them */
    if (have_saved)
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    eal_up = 1;
    if (no_huge)
        *no_huge = nh;
out:
    qv_free(a);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Counters                                                            */
/* ------------------------------------------------------------------ */

static inline void ctr_add(dp_ctr *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t ctr_get(const dp_ctr *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */
/* ------------------------------------------------------------------ */

static void dp_complete(struct qv_udp_slot *slot);

static inline void tx_push(struct dp_lcore *lc, unsigned p, struct rte_mbuf *m);

static void tx_flush(struct dp_lcore *lc, unsigned p)
{
    struct dp_txq *q = &lc->txq[p];
    uint16_t sent = 0;
    if (q->n == 0)
        return;
    while (sent < q->n) {
        uint16_t k = rte_eth_tx_burst(lc->dp->ports[p].port_id, (uint16_t)lc->idx,
                                      q->m + sent, (uint16_t)(q->n - sent));
        if (k == 0)
            break;
        sent = (uint16_t)(sent + k);
    }
    if (sent < q->n) {
        rte_pktmbuf_free_bulk(q->m + sent, q->n - sent);
        ctr_add(&lc->c.tx_full, q->n - sent);
    }
    ctr_add(&lc->c.tx, sent);
    q->n = 0;
}

static inline void tx_push(struct dp_lcore *lc, unsigned p, struct rte_mbuf *m)
{
    struct dp_txq *q = &lc->txq[p];
    q->m[q->n++] = m;
    if (q->n == DP_TXBUF)
        tx_flush(lc, p);
}

/* The payload of a tx mbuf starts 8-byte aligned after hdr bytes of
 * headers: the data offset that gives that, within the headroom. */
static inline uint16_t tx_data_off(uint32_t hdr)
{
    uint32_t off = RTE_PKTMBUF_HEADROOM - ((RTE_PKTMBUF_HEADROOM + hdr) & 7u);
    return (uint16_t)off;
}

/* Send the slot's answer (tx_len bytes of payload; 0 = none) and free it. */
static void slot_finish(struct dp_lcore *lc, struct dp_slot *s)
{
    struct qv_dp *dp = lc->dp;
    struct dp_port *P = &dp->ports[s->port];
    struct rte_mbuf *m = s->txm;
    uint32_t plen = s->pub.tx_len;

    if (plen > 0 && plen <= s->pub.tx_cap) {
        uint32_t hl = qv_dp_answer_hdr_len(&s->flow);
        uint8_t *frame = rte_pktmbuf_mtod(m, uint8_t *);
        int sw_udp = dp->o.udp_csum && !P->tx_udp_csum;
        uint32_t flen = qv_dp_write_answer(frame, &s->flow, &P->self, plen,
                                           rte_cpu_to_be_16(lc->ip_id++), sw_udp);
        m->data_len = (uint16_t)flen;
        m->pkt_len = flen;
        if (P->tx_ip_csum || (P->tx_udp_csum && dp->o.udp_csum)) {
            struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(frame + hl - 28);
            m->l2_len = hl - 28;
            m->l3_len = 20;
            m->ol_flags |= RTE_MBUF_F_TX_IPV4;
            if (P->tx_ip_csum) {
                ip->hdr_checksum = 0;
                m->ol_flags |= RTE_MBUF_F_TX_IP_CKSUM;
            }
            if (P->tx_udp_csum && dp->o.udp_csum) {
                struct rte_udp_hdr *u = (struct rte_udp_hdr *)(frame + hl - 8);
                m->ol_flags |= RTE_MBUF_F_TX_UDP_CKSUM;
                u->dgram_cksum = rte_ipv4_phdr_cksum(ip, m->ol_flags);
            }
        }
        tx_push(lc, s->port, m);
    } else {
        rte_pktmbuf_free(m);
    }
    rte_pktmbuf_free(s->rxm);
    s->rxm = s->txm = NULL;
    lc->free_stack[lc->nfree++] = s->idx;
}

/* One UDP request to us: a slot, a tx mbuf, the handler. */
static void on_request(struct dp_lcore *lc, unsigned p, struct rte_mbuf *m,
                       const struct qv_dp_flow *flow)
{
    struct qv_dp *dp = lc->dp;
    uint32_t inflight = dp->o.slots - lc->nfree;

    if (lc->nfree == 0) {
        ctr_add(&lc->c.no_slot, 1);
        rte_pktmbuf_free(m);
        return;
    }
    struct rte_mbuf *t = rte_pktmbuf_alloc(dp->ports[p].pool);
    if (t == NULL) {
        ctr_add(&lc->c.no_mbuf, 1);
        rte_pktmbuf_free(m);
        return;
    }
    struct dp_slot *s = &lc->slots[lc->free_stack[--lc->nfree]];
    uint32_t hl = qv_dp_answer_hdr_len(flow);
    t->data_off = tx_data_off(hl);
    uint32_t room = (uint32_t)(t->buf_len - t->data_off) - hl;
    s->rxm = m;
    s->txm = t;
    s->port = (uint16_t)p;
    s->flow = *flow;
    s->pub.rx = rte_pktmbuf_mtod_offset(m, const uint8_t *, flow->payload_off);
    s->pub.rx_len = flow->payload_len;
    s->pub.truncated = 0;
    if (s->pub.rx_len > QV_DP_MAX_DATAGRAM) {
        s->pub.rx_len = QV_DP_MAX_DATAGRAM;
        s->pub.truncated = 1;
    }
    s->pub.async_ok = inflight + dp->o.burst < dp->o.slots;
    s->pub.tx = rte_pktmbuf_mtod_offset(t, uint8_t *, hl);
    s->pub.tx_cap = room < QV_DP_MAX_DATAGRAM ? room : QV_DP_MAX_DATAGRAM;
    s->pub.tx_len = 0;
    s->pub.rx_ns = qv_now_ns();
    struct sockaddr_in *sin = (struct sockaddr_in *)&s->pub.peer;
    sin->sin_family = AF_INET;
    sin->sin_port = flow->peer_port;
    sin->sin_addr.s_addr = flow->peer_ip;
    s->pub.peer_len = sizeof *sin;
    ctr_add(&lc->c.requests, 1);

    switch (dp->h.on_datagram(dp->h.arg, &s->pub)) {
    case QV_UDP_ASYNC:
        ctr_add(&lc->c.inflight, 1);
        return;
    case QV_UDP_REPLY:
        ctr_add(&lc->c.replies_now, 1);
        slot_finish(lc, s);
        return;
    case QV_UDP_DROP:
    default:
        ctr_add(&lc->c.handler_drops, 1);
        s->pub.tx_len = 0;
        slot_finish(lc, s);
        return;
    }
}

static void on_packet(struct dp_lcore *lc, unsigned p, struct rte_mbuf *m)
{
    struct qv_dp_flow flow;
    enum qv_dp_drop why = QV_DP_DROP_SHORT;

    if (unlikely(m->nb_segs != 1 || m->pkt_len != m->data_len)) {
        ctr_add(&lc->c.not_linear, 1);
        rte_pktmbuf_free(m);
        return;
    }
    unsigned rx = 0;
    if (lc->dp->ports[p].rx_csum) {
        if ((m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK) == RTE_MBUF_F_RX_IP_CKSUM_GOOD)
            rx |= QV_DP_RX_IP_CSUM_GOOD;
        if ((m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_GOOD)
            rx |= QV_DP_RX_L4_CSUM_GOOD;
    }
    switch (qv_dp_classify_rx(rte_pktmbuf_mtod(m, uint8_t *), m->data_len,
                              &lc->dp->ports[p].self, rx, &flow, &why)) {
    case QV_DP_UDP:
        on_request(lc, p, m, &flow);
        return;
    case QV_DP_ARP_REPLY:
        ctr_add(&lc->c.arp_replies, 1);
        m->ol_flags = 0;
        tx_push(lc, p, m);
        return;
    case QV_DP_ICMP_REPLY:
        ctr_add(&lc->c.icmp_replies, 1);
        m->ol_flags = 0;
        tx_push(lc, p, m);
        return;
    case QV_DP_DROPPED:
    default:
        ctr_add(&lc->c.drops[(unsigned)why < QV_DP_DROP__COUNT ? why : 0], 1);
        rte_pktmbuf_free(m);
        return;
    }
}

static int lcore_main(void *arg)
{
    struct dp_lcore *lc = arg;
    struct qv_dp *dp = lc->dp;
    struct rte_mbuf *pkts[DP_MAX_BURST];
    void *done[DP_MAX_BURST];
    const uint16_t burst = (uint16_t)dp->o.burst;

    atomic_store(&lc->tid, (int)gettid());
    while (!atomic_load_explicit(&dp->quit, memory_order_relaxed)) {
        uint64_t t0 = rte_rdtsc();
        unsigned work = 0;
        if (!atomic_load_explicit(&dp->rx_off, memory_order_relaxed)) {
            for (unsigned p = 0; p < dp->nports; p++) {
                uint16_t n = rte_eth_rx_burst(dp->ports[p].port_id, (uint16_t)lc->idx, pkts,
                                              burst);
                if (n == 0)
                    continue;
                ctr_add(&lc->c.rx, n);
                work += n;
                for (uint16_t i = 0; i < n; i++) {
                    if (i + 1 < n)
                        rte_prefetch0(rte_pktmbuf_mtod(pkts[i + 1], void *));
                    on_packet(lc, p, pkts[i]);
                }
            }
        }
        unsigned nd = rte_ring_sc_dequeue_burst(lc->ring, done, burst, NULL);
        if (nd) {
            work += nd;
            ctr_add(&lc->c.replies_async, nd);
            atomic_store_explicit(&lc->c.inflight, ctr_get(&lc->c.inflight) - nd,
                                  memory_order_relaxed);
            for (unsigned i = 0; i < nd; i++)
                slot_finish(lc, done[i]);
        }
        for (unsigned p = 0; p < dp->nports; p++)
            tx_flush(lc, p);
        uint64_t dt = rte_rdtsc() - t0;
        ctr_add(work ? &lc->c.busy_cycles : &lc->c.idle_cycles, dt);
    }
    return 0;
}

/* slot->complete of the dataplane's slots: any thread. */
static void dp_complete(struct qv_udp_slot *slot)
{
    struct dp_slot *s = (struct dp_slot *)slot;
    /* the ring holds every slot: it cannot be full */
    while (rte_ring_mp_enqueue(s->lc->ring, s) != 0)
        rte_pause();
}

/* ------------------------------------------------------------------ */
/* Ports                                                               */
/* ------------------------------------------------------------------ */

static int port_setup(struct qv_dp *dp, struct dp_port *P, unsigned idx)
{
    const struct qv_dp_opts *o = &dp->o;
    struct rte_eth_dev_info info;
    struct rte_eth_conf conf;
    uint16_t nq = (uint16_t)dp->nlcores, nrx = (uint16_t)o->rx_desc,
             ntx = (uint16_t)o->tx_desc;
    int rc, socket = rte_eth_dev_socket_id(P->port_id);
    char name[RTE_MEMPOOL_NAMESIZE];

    if (socket < 0)
        socket = (int)rte_socket_id();
    rte_eth_dev_get_name_by_port(P->port_id, P->name);
    if ((rc = rte_eth_dev_info_get(P->port_id, &info)) != 0)
        return qv_seterr(QV_EIO, "dataplane: port %s: dev_info: %s", P->name, rte_strerror(-rc));
    if (nq > info.max_rx_queues || nq > info.max_tx_queues)
        return qv_seterr(QV_EINVAL, "dataplane: port %s has %u rx / %u tx queues, %u worker "
                         "lcores need one each: list fewer in [dataplane] lcores (or give "
                         "the vdev more queues, e.g. qpairs=%u for af_packet)", P->name,
                         info.max_rx_queues, info.max_tx_queues, nq, nq);
    memset(&conf, 0, sizeof conf);
    if (nq > 1) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = (RTE_ETH_RSS_NONFRAG_IPV4_UDP | RTE_ETH_RSS_IPV4) &
                                           info.flow_type_rss_offloads;
        if (conf.rx_adv_conf.rss_conf.rss_hf == 0) {
            conf.rxmode.mq_mode = RTE_ETH_MQ_RX_NONE;
            QV_WARN("dataplane: port %s has no RSS on UDP/IPv4: its queues are filled as the "
                    "driver spreads them", P->name);
        }
    }
    if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) {
        conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_IPV4_CKSUM;
        P->tx_ip_csum = 1;
    }
    if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_UDP_CKSUM) {
        conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_UDP_CKSUM;
        P->tx_udp_csum = 1;
    }
    const uint64_t rxc = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM;
    if ((info.rx_offload_capa & rxc) == rxc) {
        conf.rxmode.offloads |= rxc;
        P->rx_csum = 1;
    }
    if ((rc = rte_eth_dev_configure(P->port_id, nq, nq, &conf)) != 0)
        return qv_seterr(QV_EIO, "dataplane: port %s: configure %u queues: %s", P->name, nq,
                         rte_strerror(-rc));
    rte_eth_dev_adjust_nb_rx_tx_desc(P->port_id, &nrx, &ntx);
    snprintf(name, sizeof name, "qv_pool_%u", idx);
    P->pool = rte_pktmbuf_pool_create(name, o->mbufs, o->mbuf_cache, 0,
                                      RTE_MBUF_DEFAULT_BUF_SIZE, socket);
    if (!P->pool)
        return qv_seterr(QV_ENOMEM, "dataplane: port %s: mempool of %u mbufs on socket %d: "
                         "%s (raise [dataplane] memory)", P->name, o->mbufs, socket,
                         rte_strerror(rte_errno));
    for (uint16_t q = 0; q < nq; q++) {
        if ((rc = rte_eth_rx_queue_setup(P->port_id, q, nrx, (unsigned)socket, NULL,
                                         P->pool)) != 0)
            return qv_seterr(QV_EIO, "dataplane: port %s: rx queue %u: %s", P->name, q,
                             rte_strerror(-rc));
        struct rte_eth_txconf txc = info.default_txconf;
        txc.offloads = conf.txmode.offloads;
        if ((rc = rte_eth_tx_queue_setup(P->port_id, q, ntx, (unsigned)socket, &txc)) != 0)
            return qv_seterr(QV_EIO, "dataplane: port %s: tx queue %u: %s", P->name, q,
                             rte_strerror(-rc));
    }
    if ((rc = rte_eth_dev_start(P->port_id)) != 0)
        return qv_seterr(QV_EIO, "dataplane: port %s: start: %s", P->name, rte_strerror(-rc));
    P->started = 1;
    if (o->promisc)
        rte_eth_promiscuous_enable(P->port_id);
    struct rte_ether_addr mac;
    if (o->mac_set) {
        memcpy(P->self.mac, o->mac, 6);
    } else if (rte_eth_macaddr_get(P->port_id, &mac) == 0) {
        memcpy(P->self.mac, mac.addr_bytes, 6);
    }
    P->self.ip = o->ip;
    P->self.udp_port = htons(o->udp_port);
    P->self.promisc = o->promisc;
    P->self.accept_partial_csum = o->accept_partial_csum;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &o->ip, ip, sizeof ip);
    QV_INFO("dataplane: port %s: %u queue%s, %u/%u descriptors, socket %d, mac "
            "%02x:%02x:%02x:%02x:%02x:%02x, serving %s udp %u%s%s%s", P->name, nq,
            nq == 1 ? "" : "s", nrx, ntx, socket, P->self.mac[0], P->self.mac[1],
            P->self.mac[2], P->self.mac[3], P->self.mac[4], P->self.mac[5], ip, o->udp_port,
            P->tx_ip_csum ? ", tx ip csum offload" : "",
            P->tx_udp_csum ? ", tx udp csum offload" : "",
            P->rx_csum ? ", rx csum offload" : "");
    return 0;
}

/* The port id of every device in o->devices (after the EAL probed them). */
static int find_ports(struct qv_dp *dp)
{
    const struct qv_dp_opts *o = &dp->o;
    for (unsigned i = 0; i < o->nports_given; i++) {
        if (!rte_eth_dev_is_valid_port(o->ports_given[i]))
            return qv_seterr(QV_EINVAL, "dataplane: given port %u is not a valid port",
                             o->ports_given[i]);
        dp->ports[dp->nports].port_id = o->ports_given[i];
        dp->ports[dp->nports++].given = 1;
    }
    for (const char *p = o->devices; *p;) {
        const char *e = strchr(p, ';');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char name[RTE_ETH_NAME_MAX_LEN];
        while (n && *p == ' ')
            p++, n--;
        const char *comma = memchr(p, ',', n);
        size_t nl = comma ? (size_t)(comma - p) : n;
        while (nl && p[nl - 1] == ' ')
            nl--;
        if (nl) {
            uint16_t id;
            if (nl >= sizeof name)
                return qv_seterr(QV_ECONFIG, "[dataplane] devices: '%.*s' is too long",
                                 (int)n, p);
            memcpy(name, p, nl);
            name[nl] = '\0';
            if (rte_eth_dev_get_port_by_name(name, &id) != 0) {
                /* a PCI name may be spelled without the domain */
                char full[RTE_ETH_NAME_MAX_LEN + 8];
                snprintf(full, sizeof full, "0000:%.*s", RTE_ETH_NAME_MAX_LEN - 6, name);
                if (rte_eth_dev_get_port_by_name(full, &id) != 0)
                    return qv_seterr(QV_EIO, "[dataplane] devices: no port '%s' after the "
                                     "EAL's probe: is the device bound to vfio-pci / does "
                                     "the interface of the vdev exist? (EAL log above)",
                                     name);
            }
            if (dp->nports == QV_DP_MAX_PORTS)
                return qv_seterr(QV_ECONFIG, "[dataplane] devices: at most %u ports",
                                 QV_DP_MAX_PORTS);
            dp->ports[dp->nports++].port_id = id;
        }
        p = e ? e + 1 : p + strlen(p);
    }
    if (dp->nports == 0)
        return qv_seterr(QV_ECONFIG, "[dataplane] devices: no port given");
    return 0;
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */
/* ------------------------------------------------------------------ */

static int lcores_init(struct qv_dp *dp)
{
    const struct qv_dp_opts *o = &dp->o;
    size_t usz = (o->user_size + 63) & ~(size_t)63;

    dp->lc = rte_zmalloc("qv_dp_lcores", dp->nlcores * sizeof *dp->lc, DP_CACHELINE);
    if (!dp->lc)
        return qv_seterr(QV_ENOMEM, "dataplane: no memory for %u lcores", dp->nlcores);
    if (usz) {
        dp->user = qv_calloc((size_t)dp->nlcores * o->slots, usz, QV_MEM_SERVER);
        if (!dp->user)
            return qv_seterr(QV_ENOMEM, "dataplane: no memory for %u x %u slot areas",
                             dp->nlcores, o->slots);
    }
    for (unsigned i = 0; i < dp->nlcores; i++) {
        struct dp_lcore *lc = &dp->lc[i];
        char name[RTE_RING_NAMESIZE];
        lc->dp = dp;
        lc->idx = i;
        lc->lcore_id = i + 1;
        lc->cpu = o->lcores[i];
        snprintf(name, sizeof name, "qv_done_%u", i);
        lc->ring = rte_ring_create(name, o->slots, (int)rte_lcore_to_socket_id(lc->lcore_id),
                                   RING_F_SC_DEQ | RING_F_EXACT_SZ);
        lc->slots = rte_zmalloc("qv_dp_slots", o->slots * sizeof *lc->slots, DP_CACHELINE);
        lc->free_stack = rte_malloc("qv_dp_free", o->slots * sizeof(uint32_t), 0);
        if (!lc->ring || !lc->slots || !lc->free_stack)
            return qv_seterr(QV_ENOMEM, "dataplane: lcore %u: no memory for %u slots (raise "
                             "[dataplane] memory)", lc->lcore_id, o->slots);
        for (uint32_t s = 0; s < o->slots; s++) {
            struct dp_slot *sl = &lc->slots[s];
            sl->lc = lc;
            sl->idx = s;
            sl->pub.worker = i;
            sl->pub.complete = dp_complete;
            sl->pub.user = usz ? (char *)dp->user + ((size_t)i * o->slots + s) * usz : NULL;
            lc->free_stack[s] = o->slots - 1 - s;
        }
        lc->nfree = o->slots;
    }
    return 0;
}

static void dp_free(struct qv_dp *dp)
{
    for (unsigned p = 0; p < dp->nports; p++) {
        struct dp_port *P = &dp->ports[p];
        if (P->started) {
            rte_eth_dev_stop(P->port_id);
            if (!P->given)
                rte_eth_dev_close(P->port_id);
        }
    }
    if (dp->lc) {
        for (unsigned i = 0; i < dp->nlcores; i++) {
            struct dp_lcore *lc = &dp->lc[i];
            /* slots still held (drain timed out) keep their mbufs: the
             * pools go with the EAL */
            rte_ring_free(lc->ring);
            rte_free(lc->slots);
            rte_free(lc->free_stack);
        }
        rte_free(dp->lc);
    }
    for (unsigned p = 0; p < dp->nports; p++)
        rte_mempool_free(dp->ports[p].pool);
    qv_free(dp->user);
    int ours = dp->eal_ours;
    qv_free(dp);
    if (ours) {
        rte_eal_cleanup();
        /* eal_up stays set: DPDK cannot initialise twice in a process */
    }
}

/*
 * A worker lcore spins on its CPU: any other thread scheduled there only
 * steals time slices from it (and waits milliseconds for its own).  So
 * once the loops run, every other thread of the process (the daemon's
 * pool, dispatcher, transports, the EAL's service threads, and this one,
 * whose children inherit it) gets the CPUs it had minus the lcores'.
 * A thread whose CPUs were all lcores' (e.g. a pool worker pinned there
 * by [workers] pin) is moved to the CPUs left, with a warning.  Nothing
 * is changed when no CPU would be left.
 */
static void isolate_lcores(struct qv_dp *dp)
{
    cpu_set_t lc, all;
    CPU_ZERO(&lc);
    for (unsigned i = 0; i < dp->nlcores; i++)
        CPU_SET(dp->lc[i].cpu, &lc);
    if (sched_getaffinity(0, sizeof all, &all) != 0)
        return;
    cpu_set_t rest;
    CPU_XOR(&rest, &all, &lc);
    CPU_AND(&rest, &rest, &all);
    if (CPU_COUNT(&rest) == 0) {
        QV_WARN("dataplane: every CPU of the process is a worker lcore's: other threads "
                "share them (expect latency spikes; leave a CPU out of [dataplane] lcores)");
        return;
    }
    /* wait (1 s at most) for the loops to say which threads they are */
    for (int t = 0; t < 1000; t++) {
        unsigned up = 0;
        for (unsigned i = 0; i < dp->nlcores; i++)
            up += atomic_load(&dp->lc[i].tid) != 0;
        if (up == dp->nlcores)
            break;
        rte_delay_us_sleep(1000);
    }
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    unsigned moved = 0, forced = 0;
    while (d && (e = readdir(d)) != NULL) {
        int tid = atoi(e->d_name), mine = 0;
        if (tid <= 0)
            continue;
        for (unsigned i = 0; i < dp->nlcores; i++)
            mine |= atomic_load(&dp->lc[i].tid) == tid;
        if (mine)
            continue;
        cpu_set_t cur, want;
        if (sched_getaffinity(tid, sizeof cur, &cur) != 0)
            continue;
        CPU_AND(&want, &cur, &rest);
        if (CPU_COUNT(&want) == 0) {
            want = rest;
            forced++;
        }
        if (!CPU_EQUAL(&want, &cur) && sched_setaffinity(tid, sizeof want, &want) == 0)
            moved++;
    }
    if (d)
        closedir(d);
    QV_INFO("dataplane: %u thread%s moved off the worker lcores' CPUs%s", moved,
            moved == 1 ? "" : "s", forced ? " (some were pinned there only: [workers] pin)"
                                          : "");
}

struct qv_dp *qv_dp_start(const struct qv_dp_opts *o, const struct qv_udp_handler *h)
{
    struct qv_dp *dp;
    int rc;

    if (!o || !h || !h->on_datagram) {
        qv_seterr(QV_EINVAL, "dataplane: options and a handler are required");
        return NULL;
    }
    if ((rc = check_opts(o)) != 0) {
        qv_errno = rc;
        return NULL;
    }
    dp = qv_calloc(1, sizeof *dp, QV_MEM_SERVER);
    if (!dp) {
        qv_seterr(QV_ENOMEM, "dataplane: no memory");
        return NULL;
    }
    dp->o = *o;
    dp->h = *h;
    dp->nlcores = o->nlcores;
    atomic_init(&dp->rx_off, 0);
    atomic_init(&dp->quit, 0);
    if (!eal_up) {
        if (qv_dp_eal_init(o, NULL) != 0)
            goto fail;
        dp->eal_ours = 1;
    }
    dp->tsc_hz = rte_get_tsc_hz();
    for (unsigned i = 0; i < o->nlcores; i++) {
        if (!rte_lcore_is_enabled(i + 1) || i + 1 == rte_get_main_lcore()) {
            qv_seterr(QV_ECONFIG, "[dataplane] lcores: lcore %u (CPU %u) is not a worker "
                      "lcore of the EAL (main lcore %u; EAL arguments of eal_args may "
                      "have changed the mapping)", i + 1, o->lcores[i],
                      rte_get_main_lcore());
            goto fail;
        }
    }
    if (find_ports(dp) != 0 || lcores_init(dp) != 0)
        goto fail;
    for (unsigned p = 0; p < dp->nports; p++)
        if (port_setup(dp, &dp->ports[p], p) != 0)
            goto fail;
    for (unsigned i = 0; i < dp->nlcores; i++) {
        if ((rc = rte_eal_remote_launch(lcore_main, &dp->lc[i], dp->lc[i].lcore_id)) != 0) {
            qv_seterr(QV_EIO, "dataplane: launching lcore %u: %s", dp->lc[i].lcore_id,
                      rte_strerror(-rc));
            atomic_store(&dp->quit, 1);
            rte_eal_mp_wait_lcore();
            goto fail;
        }
    }
    dp->launched = 1;
    isolate_lcores(dp);
    return dp;
fail:
    rc = qv_errno ? qv_errno : QV_EIO;
    {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", qv_errmsg());
        dp_free(dp);
        qv_seterr(rc, "%s", msg);
    }
    return NULL;
}

unsigned qv_dp_stop(struct qv_dp *dp)
{
    unsigned left = 0;
    if (!dp)
        return 0;
    if (dp->launched) {
        atomic_store(&dp->rx_off, 1);
        int64_t until = qv_now_ns() + (int64_t)dp->o.drain_ms * 1000000;
        for (;;) {
            left = 0;
            for (unsigned i = 0; i < dp->nlcores; i++)
                left += (unsigned)ctr_get(&dp->lc[i].c.inflight);
            if (left == 0 || qv_now_ns() > until)
                break;
            rte_delay_us_sleep(1000);
        }
        atomic_store(&dp->quit, 1);
        rte_eal_mp_wait_lcore();
    }
    dp_free(dp);
    return left;
}

/* ------------------------------------------------------------------ */
/* Statistics and metrics                                              */
/* ------------------------------------------------------------------ */

static void lcore_add(const struct dp_lcore *lc, struct qv_dp_lcore_stats *s)
{
    const struct dp_lcore_ctr *c = &lc->c;
    s->rx += ctr_get(&c->rx);
    s->tx += ctr_get(&c->tx);
    s->requests += ctr_get(&c->requests);
    s->replies_now += ctr_get(&c->replies_now);
    s->replies_async += ctr_get(&c->replies_async);
    s->handler_drops += ctr_get(&c->handler_drops);
    s->arp_replies += ctr_get(&c->arp_replies);
    s->icmp_replies += ctr_get(&c->icmp_replies);
    for (unsigned r = 0; r < QV_DP_DROP__COUNT && r < 32; r++)
        s->drops[r] += ctr_get(&c->drops[r]);
    s->no_slot += ctr_get(&c->no_slot);
    s->no_mbuf += ctr_get(&c->no_mbuf);
    s->tx_full += ctr_get(&c->tx_full);
    s->busy_cycles += ctr_get(&c->busy_cycles);
    s->idle_cycles += ctr_get(&c->idle_cycles);
    s->inflight += ctr_get(&c->inflight);
}

void qv_dp_lcore_stats(const struct qv_dp *dp, int i, struct qv_dp_lcore_stats *out)
{
    memset(out, 0, sizeof *out);
    if (i >= 0 && (unsigned)i < dp->nlcores) {
        lcore_add(&dp->lc[i], out);
        return;
    }
    for (unsigned k = 0; k < dp->nlcores; k++)
        lcore_add(&dp->lc[k], out);
}

void qv_dp_mempool_count(const struct qv_dp *dp, unsigned p, unsigned *avail, unsigned *size)
{
    if (p >= dp->nports || !dp->ports[p].pool) {
        *avail = *size = 0;
        return;
    }
    *avail = rte_mempool_avail_count(dp->ports[p].pool);
    *size = dp->ports[p].pool->size;
}

unsigned qv_dp_nlcores(const struct qv_dp *dp)
{
    return dp->nlcores;
}

unsigned qv_dp_nports(const struct qv_dp *dp)
{
    return dp->nports;
}

uint64_t qv_dp_tsc_hz(const struct qv_dp *dp)
{
    return dp->tsc_hz;
}

struct out {
    char *buf;
    size_t cap, len;
};

static void put(struct out *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->len < w->cap ? w->buf + w->len : NULL,
                      w->len < w->cap ? w->cap - w->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        w->len += (size_t)n;
}

int qv_dp_render_metrics(const struct qv_dp *dp, char *buf, size_t cap, size_t *len)
{
    struct out w = { buf, buf ? cap : 0, 0 };
    static const struct {
        const char *name, *help;
        size_t off;
    } ctr[] = {
#define C(f, h) { #f, h, offsetof(struct qv_dp_lcore_stats, f) }
        C(rx, "packets received"),
        C(tx, "packets sent"),
        C(requests, "UDP requests handed to the handler"),
        C(replies_now, "requests answered at once"),
        C(replies_async, "requests answered after a search"),
        C(handler_drops, "requests the handler dropped"),
        C(arp_replies, "ARP requests answered"),
        C(icmp_replies, "ICMP echo requests answered"),
        C(no_slot, "requests dropped: every slot busy"),
        C(no_mbuf, "requests dropped: no mbuf for the answer"),
        C(tx_full, "packets the tx queue refused (freed)"),
        C(busy_cycles, "TSC cycles in loop turns with work"),
        C(idle_cycles, "TSC cycles in loop turns without work"),
#undef C
    };
    struct qv_dp_lcore_stats st[QV_DP_MAX_LCORES];

    for (unsigned i = 0; i < dp->nlcores; i++)
        qv_dp_lcore_stats(dp, (int)i, &st[i]);
    for (size_t c = 0; c < sizeof ctr / sizeof ctr[0]; c++) {
        put(&w, "# HELP quiver_dataplane_%s_total %s\n# TYPE quiver_dataplane_%s_total "
            "counter\n", ctr[c].name, ctr[c].help, ctr[c].name);
        for (unsigned i = 0; i < dp->nlcores; i++)
            put(&w, "quiver_dataplane_%s_total{lcore=\"%u\"} %" PRIu64 "\n", ctr[c].name,
                dp->lc[i].lcore_id, *(const uint64_t *)((const char *)&st[i] + ctr[c].off));
    }
    put(&w, "# HELP quiver_dataplane_drops_total frames dropped, by reason\n"
        "# TYPE quiver_dataplane_drops_total counter\n");
    for (unsigned i = 0; i < dp->nlcores; i++)
        for (unsigned r = 0; r < QV_DP_DROP__COUNT; r++)
            put(&w, "quiver_dataplane_drops_total{lcore=\"%u\",reason=\"%s\"} %" PRIu64 "\n",
                dp->lc[i].lcore_id, qv_dp_drop_name((enum qv_dp_drop)r), st[i].drops[r]);
    put(&w, "# HELP quiver_dataplane_inflight requests held by the handler\n"
        "# TYPE quiver_dataplane_inflight gauge\n");
    for (unsigned i = 0; i < dp->nlcores; i++)
        put(&w, "quiver_dataplane_inflight{lcore=\"%u\"} %" PRIu64 "\n", dp->lc[i].lcore_id,
            st[i].inflight);
    put(&w, "# HELP quiver_dataplane_tsc_hz TSC frequency of the cycle counters\n"
        "# TYPE quiver_dataplane_tsc_hz gauge\nquiver_dataplane_tsc_hz %" PRIu64 "\n",
        dp->tsc_hz);
    static const char *const pn[] = { "ipackets", "opackets", "ibytes", "obytes", "imissed",
                                      "ierrors", "oerrors", "rx_nombuf" };
    struct rte_eth_stats es[QV_DP_MAX_PORTS];
    for (unsigned p = 0; p < dp->nports; p++)
        if (rte_eth_stats_get(dp->ports[p].port_id, &es[p]) != 0)
            memset(&es[p], 0, sizeof es[p]);
    for (size_t k = 0; k < sizeof pn / sizeof pn[0]; k++) {
        put(&w, "# HELP quiver_dataplane_port_%s_total the port's %s\n# TYPE "
            "quiver_dataplane_port_%s_total counter\n", pn[k], pn[k], pn[k]);
        for (unsigned p = 0; p < dp->nports; p++) {
            const struct rte_eth_stats *e = &es[p];
            uint64_t v = k == 0 ? e->ipackets : k == 1 ? e->opackets : k == 2 ? e->ibytes
                       : k == 3 ? e->obytes : k == 4 ? e->imissed : k == 5 ? e->ierrors
                       : k == 6 ? e->oerrors : e->rx_nombuf;
            put(&w, "quiver_dataplane_port_%s_total{port=\"%s\"} %" PRIu64 "\n", pn[k],
                dp->ports[p].name, v);
        }
    }
    /* per queue (the first RTE_ETHDEV_QUEUE_STAT_CNTRS; queue i = lcore i's) */
    static const char *const qn[] = { "q_ipackets", "q_opackets", "q_errors" };
    for (size_t k = 0; k < sizeof qn / sizeof qn[0]; k++) {
        put(&w, "# HELP quiver_dataplane_port_%s_total the port's %s, per queue\n# TYPE "
            "quiver_dataplane_port_%s_total counter\n", qn[k], qn[k], qn[k]);
        for (unsigned p = 0; p < dp->nports; p++)
            for (unsigned q = 0; q < dp->nlcores && q < RTE_ETHDEV_QUEUE_STAT_CNTRS; q++) {
                const struct rte_eth_stats *e = &es[p];
                uint64_t v = k == 0 ? e->q_ipackets[q] : k == 1 ? e->q_opackets[q]
                                                                : e->q_errors[q];
                put(&w, "quiver_dataplane_port_%s_total{port=\"%s\",queue=\"%u\"} %" PRIu64
                    "\n", qn[k], dp->ports[p].name, q, v);
            }
    }
    put(&w, "# HELP quiver_dataplane_mempool_free mbufs free in the port's pool\n"
        "# TYPE quiver_dataplane_mempool_free gauge\n");
    for (unsigned p = 0; p < dp->nports; p++) {
        unsigned a, s;
        qv_dp_mempool_count(dp, p, &a, &s);
        put(&w, "quiver_dataplane_mempool_free{port=\"%s\",size=\"%u\"} %u\n",
            dp->ports[p].name, s, a);
    }
    *len = w.len;
    if (!buf || w.len >= cap)
        return buf ? QV_ENOSPC : 0;
    return 0;
}
