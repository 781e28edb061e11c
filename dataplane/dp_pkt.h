/*
 * dp_pkt.h - the dataplane's packet code: parse and validate Ethernet /
 * 802.1Q VLAN / IPv4 / UDP frames in place, answer ARP and ICMP echo for
 * the appliance's address in place, and write the headers of a UDP answer.
 *
 * Plain C over byte buffers (no DPDK types), so that every rule below is
 * unit-tested without an EAL (tests/unit/test_dp_pkt.c) and the same code
 * runs on mbuf data in the lcore loop (dp_loop.c).  Every function is
 * O(header bytes) except the UDP checksum (O(payload)), allocates
 * nothing, takes no lock, makes no system call, and may run on any thread
 * (no state but its arguments).
 *
 * What is accepted (anything else is dropped with exactly one reason:
 * the first rule that fails, checked in the order listed; ICMP and UDP
 * first need their 8-byte header inside the IP payload):
 *   Ethernet II, destination = our MAC or broadcast (ARP only) [or any
 *     MAC when self->promisc], source unicast (a multicast or broadcast
 *     source is never answered: QV_DP_DROP_MAC);
 *   at most one 802.1Q / 802.1ad tag (TPID 0x8100 or 0x88a8): its TCI is
 *     kept and echoed in answers; a second tag is QV_DP_DROP_VLAN;
 *   ARP: Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4), op
 *     REQUEST, target protocol address = our IP -> a REPLY in place;
 *     other ARP (replies, requests for other hosts, gratuitous) is
 *     QV_DP_DROP_ARP_OTHER (counted, not an error);
 *   IPv4: version 4, IHL 5..15 (options are skipped, never interpreted),
 *     total length >= IHL*4 and <= the bytes in the frame (Ethernet
 *     padding after it is ignored), header checksum valid, not a fragment
 *     (MF set or offset != 0: the protocol is one datagram per request,
 *     PROTOCOL.md), destination = our IP;
 *   ICMP echo request (type 8 code 0), ICMP checksum valid -> an echo
 *     reply in place (same id, sequence and data);
 *   UDP to our port: UDP length >= 8 and <= the IP payload (bytes after
 *     it are ignored), checksum 0 (none), or valid, or - when
 *     self->accept_partial_csum - exactly the "partial" value a Linux
 *     sender with checksum offload leaves (the folded pseudo-header sum,
 *     not complemented: veth and virtio deliver these, FIELD-NOTES.md).
 * The payload of an accepted UDP datagram is the protocol request; it is
 * NOT validated here (the request codec does that).
 *
 * Byte order: addresses and ports in the structs below are in network
 * byte order (as on the wire), so they are copied, never swapped.
 */
#ifndef QV_DP_PKT_H
#define QV_DP_PKT_H

#include <stddef.h>
#include <stdint.h>

#define QV_DP_ETH_HLEN      14u
#define QV_DP_VLAN_HLEN     4u
#define QV_DP_IP_HLEN       20u     /* without options */
#define QV_DP_UDP_HLEN      8u
/* Ethernet + VLAN + IPv4 (no options) + UDP: the most an answer needs. */
#define QV_DP_MAX_HDR       (QV_DP_ETH_HLEN + QV_DP_VLAN_HLEN + QV_DP_IP_HLEN + QV_DP_UDP_HLEN)

/* The appliance's own address, as the parser and the writers need it. */
struct qv_dp_self {
    uint8_t mac[6];
    uint32_t ip;                    /* network order */
    uint16_t udp_port;              /* network order */
    int promisc;                    /* 1: accept any destination MAC */
    int accept_partial_csum;        /* 1: see above */
};

/* Why a frame was dropped.  Counted per lcore; the names (qv_dp_drop_name)
 * are the values of the "reason" label in /metrics. */
enum qv_dp_drop {
    QV_DP_DROP_SHORT = 0,           /* shorter than its headers claim */
    QV_DP_DROP_MAC,                 /* not to our MAC (nor broadcast ARP),
                                       or from a multicast source MAC */
    QV_DP_DROP_ETHERTYPE,           /* not IPv4, ARP or one VLAN tag */
    QV_DP_DROP_VLAN,                /* more than one VLAN tag */
    QV_DP_DROP_ARP_BAD,             /* malformed ARP (htype/ptype/lengths) */
    QV_DP_DROP_ARP_OTHER,           /* ARP not asking for our IP, or a reply */
    QV_DP_DROP_IP_VERSION,          /* version != 4 */
    QV_DP_DROP_IP_HLEN,             /* IHL < 5 or header past the frame */
    QV_DP_DROP_IP_LEN,              /* total length < IHL*4 or > the frame */
    QV_DP_DROP_IP_CSUM,             /* header checksum wrong */
    QV_DP_DROP_IP_FRAG,             /* MF set or fragment offset != 0 */
    QV_DP_DROP_IP_DST,              /* not to our IP */
    QV_DP_DROP_IP_PROTO,            /* neither UDP nor ICMP */
    QV_DP_DROP_ICMP_BAD,            /* too short, or checksum wrong */
    QV_DP_DROP_ICMP_OTHER,          /* ICMP other than echo request */
    QV_DP_DROP_UDP_LEN,             /* UDP length < 8 or > the IP payload */
    QV_DP_DROP_UDP_CSUM,            /* UDP checksum wrong */
    QV_DP_DROP_UDP_PORT,            /* not to our port */
    QV_DP_DROP__COUNT
};

/* "short", "mac", ... (lower case, no spaces); "unknown" past the end. */
const char *qv_dp_drop_name(enum qv_dp_drop r);

enum qv_dp_kind {
    QV_DP_UDP = 0,                  /* a request: see flow */
    QV_DP_ARP_REPLY,                /* the frame is now our ARP reply */
    QV_DP_ICMP_REPLY,               /* the frame is now our echo reply */
    QV_DP_DROPPED,                  /* see *drop */
};

/* What an accepted UDP datagram came from, enough to answer it. */
struct qv_dp_flow {
    uint8_t peer_mac[6];            /* the sender's (answers go there) */
    uint16_t vlan_tci;              /* network order; valid when has_vlan */
    uint16_t vlan_tpid;             /* network order; valid when has_vlan */
    uint8_t has_vlan;
    uint8_t ttl_unused;
    uint32_t peer_ip;               /* network order */
    uint16_t peer_port;             /* network order */
    uint32_t payload_off;           /* the UDP payload: frame + payload_off */
    uint32_t payload_len;           /* UDP length - 8 */
};

/*
 * qv_dp_classify - parse frame[0..len) (an Ethernet frame as received,
 * FCS stripped).  Returns:
 *   QV_DP_UDP         a datagram to our IP and port; *flow filled; the
 *                     frame is unchanged;
 *   QV_DP_ARP_REPLY   an ARP request for our IP: the frame was rewritten
 *                     in place into our reply (same length); send it;
 *   QV_DP_ICMP_REPLY  an echo request to our IP: rewritten in place into
 *                     the echo reply (same length; MACs and IPs swapped,
 *                     type 0, ICMP and IP checksums updated, TTL 64);
 *   QV_DP_DROPPED     *drop says why; the frame is unchanged.
 * frame must be writable for the two replies.  flow and drop must not be
 * NULL.  Cannot fail otherwise.
 */
enum qv_dp_kind qv_dp_classify(uint8_t *frame, uint32_t len, const struct qv_dp_self *self,
                               struct qv_dp_flow *flow, enum qv_dp_drop *drop);

/*
 * qv_dp_classify_rx - qv_dp_classify, told by rx_flags which checksums
 * the NIC already verified as good (the port's rx checksum offload:
 * RTE_MBUF_F_RX_IP_CKSUM_GOOD / RTE_MBUF_F_RX_L4_CKSUM_GOOD): those are
 * not computed again.  Only a GOOD verdict is trusted; a checksum the NIC
 * calls bad or did not check is verified in software by the rules above
 * (so a partial checksum the NIC calls bad is still accepted when
 * accept_partial_csum).  ICMP checksums are always verified here.
 */
#define QV_DP_RX_IP_CSUM_GOOD   1u
#define QV_DP_RX_L4_CSUM_GOOD   2u
enum qv_dp_kind qv_dp_classify_rx(uint8_t *frame, uint32_t len, const struct qv_dp_self *self,
                                  unsigned rx_flags, struct qv_dp_flow *flow,
                                  enum qv_dp_drop *drop);

/* The header bytes an answer to flow needs before its payload
 * (42, or 46 with a VLAN tag). */
uint32_t qv_dp_answer_hdr_len(const struct qv_dp_flow *flow);

/*
 * qv_dp_write_answer - the Ethernet (+ the flow's VLAN tag) / IPv4 / UDP
 * headers of our answer to flow into out[0..qv_dp_answer_hdr_len(flow)),
 * where out + hdr_len holds payload_len bytes of payload already (the
 * encoder wrote them there): destination = the flow's peer MAC, IP and
 * port; source = self; IPv4 id ip_id (network order as given), DF set,
 * TTL 64; IPv4 header checksum filled; UDP checksum filled when
 * udp_csum, else 0 (no checksum, legal on IPv4; a port with UDP checksum
 * offload fills it).  Returns the frame length (header + payload_len).
 * payload_len must be <= 65507.
 */
uint32_t qv_dp_write_answer(uint8_t *out, const struct qv_dp_flow *flow,
                            const struct qv_dp_self *self, uint32_t payload_len,
                            uint16_t ip_id, int udp_csum);

/* The Internet checksum (RFC 1071) of buf[0..len) added to sum (start
 * with 0), not folded, not complemented: the building block of the three
 * checksums above.  Exposed for the tests.  Sums are host integers whose
 * value is the sum of buf's 16-bit words read big-endian (network order):
 * qv_dp_csum_fold gives the checksum as a host uint16_t, stored on the
 * wire high byte first.  An odd last byte counts as the high byte of a
 * word padded with zero, so in a chain of calls only the last buf may have
 * an odd length. */
uint32_t qv_dp_csum_add(uint32_t sum, const void *buf, size_t len);

/* Tests: 1 = the AVX2 bulk sum where the CPU has it (the default), 0 =
 * the scalar loop only.  Not thread-safe with checksums in flight. */
void qv__dp_csum_use_avx2(int on);

/* Fold a 32-bit partial sum to 16 bits (not complemented). */
uint16_t qv_dp_csum_fold(uint32_t sum);

#endif
