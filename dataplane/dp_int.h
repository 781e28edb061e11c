/*
 * dp_int.h - the dataplane's private structures (quiver/dataplane.h has
 * the design).
 *
 * Ownership and threads
 * ---------------------
 *   struct qv_dp        built by the main thread in qv_dp_start, read-only
 *                       afterwards but for `quit` / `rx_off` (atomics);
 *   struct dp_lcore     one per worker lcore, cache-line aligned; every
 *                       field is written by its lcore only, except the
 *                       completion ring (multi-producer: any thread that
 *                       completes an ASYNC slot) and the counters, which
 *                       other threads read relaxed (render, stats, stop);
 *   struct dp_slot      one per request in flight: on its lcore's free
 *                       stack, or held by the handler (ASYNC), or on the
 *                       completion ring.  The lcore alone pushes and pops
 *                       the free stack.
 *
 * A slot's life: popped at receive -> rx mbuf (the request, in place) and
 * a fresh tx mbuf attached -> handler: REPLY / DROP at once, or ASYNC ->
 * (another thread) qv_udp_complete -> dp_complete enqueues it on the
 * lcore's ring -> the loop dequeues it -> answer headers, tx -> rx mbuf
 * freed, slot pushed back.  At most slots - burst slots are ASYNC, so a
 * receive burst always finds slots (async_ok = 0 beyond: the handler
 * answers BUSY).
 */
#ifndef QV_DP_INT_H
#define QV_DP_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include <rte_mbuf.h>
#include <rte_ring.h>

#include "dp_pkt.h"
#include "quiver/dataplane.h"

#define DP_CACHELINE 64
#define DP_MAX_BURST 64u
#define DP_TXBUF (2 * DP_MAX_BURST)
/* The largest request or answer: one Ethernet frame's UDP payload without
 * IP fragments (PROTOCOL.md "Limits"). */
#define QV_DP_MAX_DATAGRAM 1472u

struct dp_lcore;

struct dp_slot {
    struct qv_udp_slot pub;         /* first: dp_complete casts back */
    struct dp_lcore *lc;
    struct rte_mbuf *rxm, *txm;
    struct qv_dp_flow flow;
    uint16_t port;                  /* index in dp->ports[] */
    uint32_t idx;
};

/* A counter written by one thread, read by others: relaxed load + store
 * by the owner (no locked instruction), relaxed load by the readers. */
typedef _Atomic uint64_t dp_ctr;

struct dp_lcore_ctr {
    dp_ctr rx, tx, requests, replies_now, replies_async, handler_drops;
    dp_ctr arp_replies, icmp_replies, no_slot, no_mbuf, tx_full, not_linear;
    dp_ctr busy_cycles, idle_cycles, inflight;
    dp_ctr drops[QV_DP_DROP__COUNT];
};

struct dp_txq {
    uint16_t n;
    struct rte_mbuf *m[DP_TXBUF];
};

struct dp_lcore {
    _Alignas(DP_CACHELINE) struct qv_dp *dp;
    unsigned idx;                   /* = its queue on every port */
    unsigned lcore_id;              /* idx + 1 (the main lcore is 0) */
    unsigned cpu;                   /* [dataplane] lcores entry */
    _Atomic int tid;                /* its thread, once the loop runs */
    struct rte_ring *ring;          /* completed ASYNC slots (MP / SC) */
    struct dp_slot *slots;
    uint32_t *free_stack;
    uint32_t nfree;
    uint16_t ip_id;
    struct dp_txq txq[QV_DP_MAX_PORTS];
    _Alignas(DP_CACHELINE) struct dp_lcore_ctr c;
};

struct dp_port {
    uint16_t port_id;
    char name[RTE_ETH_NAME_MAX_LEN];
    struct rte_mempool *pool;
    struct qv_dp_self self;         /* our MAC / IP / port on it */
    int tx_ip_csum, tx_udp_csum;    /* offloads enabled */
    int rx_csum;                    /* rx IPv4 + UDP checksum offload on */
    int started;
    int given;                      /* created by the caller: not closed */
};

struct qv_dp {
    struct qv_dp_opts o;
    struct qv_udp_handler h;
    unsigned nports;
    struct dp_port ports[QV_DP_MAX_PORTS];
    unsigned nlcores;
    struct dp_lcore *lc;            /* nlcores, cache-line aligned */
    void *user;                     /* slots x nlcores x user_size */
    uint64_t tsc_hz;
    int launched;
    int eal_ours;                   /* qv_dp_start ran rte_eal_init */
    _Atomic int rx_off;             /* stop receiving (drain) */
    _Atomic int quit;               /* leave the loop */
};

#endif
