/*
 * dataplane.h - the DPDK query path of quiverd: UDP requests from the NIC
 * to the request handler and back without the kernel (dataplane/).
 *
 *   NIC rx queue q ──► lcore q: rx burst ─► qv_dp_classify (dp_pkt.h)
 *        ARP request for us / ICMP echo ─► rewritten in place ─► tx
 *        UDP to us ─► a slot: rx mbuf held, tx mbuf taken, the payload
 *          handed IN PLACE to the handler (struct qv_udp_handler, the
 *          same code the kernel UDP transport calls: handler.h)
 *            REPLY  ─► headers written before the answer ─► tx
 *            ASYNC  ─► the service searches; the completion (any thread)
 *                      enqueues the slot on lcore q's completion ring;
 *                      the loop dequeues it ─► headers ─► tx
 *        anything else ─► dropped, counted by reason
 *
 * One lcore per rx/tx queue pair of each port, RSS on the UDP 5-tuple
 * where the port supports it (a port with one queue gets one lcore).
 * The loop is run-to-completion and never blocks: no malloc (mbufs from
 * the port's mempool, slots from the lcore's preallocated stack), no
 * lock (the completion ring is a DPDK multi-producer / single-consumer
 * ring), no system call per packet (qv_now_ns is the vDSO clock).
 *
 * Zero copy.  The request is decoded where it lies in the rx mbuf, which
 * is held until its answer is sent; the answer is encoded straight into
 * the tx mbuf after the room its headers need.  One exception, measured
 * and documented in docs/DATAPLANE.md: the protocol's float arrays are
 * read in place only when 4-byte aligned, and with DPDK's 128-byte mbuf
 * headroom a UDP payload always starts at 2 mod 4 (14 + 20 + 8 bytes of
 * headers), so the codec copies the query vector (only it) into the
 * slot's aligned scratch (proto.h, "Alignment").
 *
 * Addresses.  The dataplane answers ARP for opts.ip with the port's MAC
 * (or opts.mac), answers ICMP echo, and serves the protocol on
 * opts.udp_port.  It never originates traffic: answers go to the MAC,
 * IP and port the request came from, so no routing table or ARP cache
 * is needed.  TCP (bulk loads, admin) stays on the kernel stack
 * ([server] bind): a DPDK port has no TCP.
 *
 * Threads.  qv_dp_start initialises the EAL on the calling thread (it
 * becomes the main lcore, then gets its former CPU affinity back, so the
 * threads quiverd starts later are not confined to that CPU), starts the
 * ports and launches one worker lcore per queue.  qv_dp_stop from the
 * same thread.  Only one dataplane per process (the EAL is global).
 */
#ifndef QUIVER_DATAPLANE_H
#define QUIVER_DATAPLANE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/udp.h"

#define QV_DP_MAX_LCORES 16u
#define QV_DP_MAX_PORTS 4u

struct qv_config;

struct qv_dp_opts {
    /* EAL */
    unsigned main_lcore;                /* the calling thread's lcore */
    unsigned nlcores;                   /* worker lcores (one per queue) */
    unsigned lcores[QV_DP_MAX_LCORES];  /* their CPU ids */
    uint64_t memory;                    /* bytes of DPDK memory (-m) */
    int hugepages;                      /* 0 off (--no-huge), 1 on, 2 auto */
    char huge_dir[256];                 /* "" = any hugetlbfs mount */
    char file_prefix[64];               /* "" = quiver-<pid> */
    char devices[1024];                 /* ';'-separated: PCI addresses
                                           (-a) or vdev specs (--vdev) */
    char eal_args[512];                 /* extra EAL arguments, space-separated */
    /* Ports already created by the caller (rte_eth_from_rings in the
     * benchmark), used as well as `devices`; the EAL must then be up
     * (qv_dp_eal_init).  0 = none. */
    unsigned nports_given;
    uint16_t ports_given[QV_DP_MAX_PORTS];
    /* addresses */
    uint32_t ip;                        /* network order; required */
    uint8_t mac[6];                     /* used when mac_set */
    int mac_set;                        /* 0: the port's own MAC */
    uint16_t udp_port;                  /* host order */
    int promisc;                        /* accept any destination MAC */
    int accept_partial_csum;            /* dp_pkt.h */
    int udp_csum;                       /* fill UDP checksums of answers */
    /* sizes */
    unsigned mbufs;                     /* per port (2^n - 1 is best) */
    unsigned mbuf_cache;                /* per-lcore mempool cache */
    unsigned rx_desc, tx_desc;          /* per queue */
    unsigned burst;                     /* packets per rx / tx burst, <= 64 */
    unsigned slots;                     /* per lcore, power of two, > burst */
    size_t user_size;                   /* the handler's per-slot area */
    unsigned drain_ms;                  /* qv_dp_stop's wait for ASYNC slots */
};

/* Defaults: main lcore 0, one worker on CPU 1, 256 MiB, hugepages auto,
 * udp_port 7700, accept_partial_csum 1, udp_csum 1, mbufs 8191, cache
 * 256, 1024 descriptors, burst 32, 1024 slots, drain 5000 ms. */
void qv_dp_opts_default(struct qv_dp_opts *o);

/*
 * qv_dp_opts_from_config - the [dataplane] keys into *o.  Returns 0, or
 * QV_ECONFIG with a message naming the key and the fix (an unparsable
 * lcore list or address, a CPU that does not exist, the main lcore in the
 * worker list, no ip, no devices).  Call only when [dataplane] mode is
 * dpdk.
 */
int qv_dp_opts_from_config(const struct qv_config *cfg, struct qv_dp_opts *o);

/*
 * qv_dp_eal_init - build the EAL argument list from o (printed at info
 * level) and run rte_eal_init, falling back from huge pages to --no-huge
 * when hugepages is auto and none can be had (logged, with why).  Called
 * by qv_dp_start unless the EAL is up already; exposed for the benchmark,
 * which creates its ring ports between the two.  0 or QV_EIO with the
 * EAL's reason.  *no_huge (may be NULL) tells whether it runs without
 * huge pages.
 */
int qv_dp_eal_init(const struct qv_dp_opts *o, int *no_huge);

struct qv_dp;

/*
 * qv_dp_start - start the dataplane: EAL (unless up), every device and
 * given port (queues = nlcores, RSS when > 1 queue, mempool on the port's
 * NUMA socket), the lcores.  h is called on the lcores for every UDP
 * request to us (borrowed: must outlive qv_dp_stop); its slots carry
 * user_size bytes of area.  NULL with qv_errno QV_EINVAL / QV_EIO /
 * QV_ENOMEM and a message naming the port or key.
 */
struct qv_dp *qv_dp_start(const struct qv_dp_opts *o, const struct qv_udp_handler *h);

/*
 * qv_dp_stop - stop receiving, wait up to drain_ms for the ASYNC slots
 * (their answers are still sent), stop the lcores and the ports, free
 * the dataplane's memory and clean up the EAL.  Returns the number of
 * ASYNC slots that did not complete in time.  NULL: no-op, 0.
 */
unsigned qv_dp_stop(struct qv_dp *dp);

/* Counters of one lcore (and of the whole dataplane when summed). */
struct qv_dp_lcore_stats {
    uint64_t rx, tx;                    /* packets */
    uint64_t requests;                  /* UDP datagrams to the handler */
    uint64_t replies_now, replies_async;
    uint64_t handler_drops;             /* the handler said DROP */
    uint64_t arp_replies, icmp_replies;
    uint64_t drops[32];                 /* by enum qv_dp_drop (dp_pkt.h) */
    uint64_t no_slot;                   /* every slot busy: dropped */
    uint64_t no_mbuf;                   /* tx mbuf allocation failed */
    uint64_t tx_full;                   /* the tx queue refused: freed */
    uint64_t busy_cycles, idle_cycles;  /* TSC cycles in loops with and
                                           without work */
    uint64_t inflight;                  /* ASYNC slots now */
};

/* Sum of the lcores (or lcore i's when i < nlcores); relaxed reads. */
void qv_dp_lcore_stats(const struct qv_dp *dp, int i, struct qv_dp_lcore_stats *out);

/* Free mbufs in port p's pool now, and its size. */
void qv_dp_mempool_count(const struct qv_dp *dp, unsigned p, unsigned *avail, unsigned *size);

/* Worker lcores and ports in use; TSC frequency (Hz). */
unsigned qv_dp_nlcores(const struct qv_dp *dp);
unsigned qv_dp_nports(const struct qv_dp *dp);
uint64_t qv_dp_tsc_hz(const struct qv_dp *dp);

/*
 * qv_dp_render_metrics - Prometheus text of the dataplane into buf (cap
 * bytes): per lcore rx/tx/requests/drops{reason}/busy and idle cycles,
 * per port the NIC's counters (ipackets, opackets, imissed, ierrors,
 * oerrors, rx_nombuf), per queue (q_ipackets, q_opackets, q_errors: what
 * the driver reports) and the mempool's free mbufs.  *len gets the
 * length (or, when cap is too small, the length needed, and QV_ENOSPC is
 * returned).  Thread-safe against the lcores (relaxed reads).
 */
int qv_dp_render_metrics(const struct qv_dp *dp, char *buf, size_t cap, size_t *len);

#endif
