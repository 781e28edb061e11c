/*
 * dp_pkt.c - the dataplane's packet code (contract: dp_pkt.h).
 *
 * One pass over the headers, front to back.  Each check reads only bytes
 * that the checks before it proved to be inside the frame, so a frame of
 * any length and content is safe to hand in, and the first check that
 * fails names the drop reason.  The checks, in order:
 *
 *   Ethernet   frame >= 14 bytes                                  SHORT
 *              source MAC unicast (bit 0 of byte 0 clear)         MAC
 *              destination = our MAC, or promisc, or broadcast    MAC
 *   802.1Q     a tag (TPID 0x8100 / 0x88a8): 4 more bytes         SHORT
 *              broadcast destination and ethertype != ARP         MAC
 *              a second tag                                       VLAN
 *              ethertype neither ARP nor IPv4                     ETHERTYPE
 *   ARP        28 bytes                                           SHORT
 *              htype 1, ptype 0x0800, hlen 6, plen 4              ARP_BAD
 *              op REQUEST, target IP ours, not gratuitous         ARP_OTHER
 *   IPv4       20 bytes                                           SHORT
 *              version 4                                          IP_VERSION
 *              IHL >= 5, IHL*4 bytes in the frame                 IP_HLEN
 *              IHL*4 <= total length <= bytes in the frame        IP_LEN
 *              header checksum (over IHL*4 bytes)                 IP_CSUM
 *              MF clear, fragment offset 0                        IP_FRAG
 *              destination = our IP                               IP_DST
 *              protocol UDP or ICMP                               IP_PROTO
 *   ICMP       8 bytes of IP payload                              ICMP_BAD
 *              type 8 code 0                                      ICMP_OTHER
 *              checksum over the IP payload                       ICMP_BAD
 *   UDP        8 bytes of IP payload                              UDP_LEN
 *              destination port = ours                            UDP_PORT
 *              8 <= UDP length <= IP payload                      UDP_LEN
 *              checksum 0, valid, or (opt-in) partial             UDP_CSUM
 *
 * The port is checked before the checksum so that datagrams for other
 * ports never cost a pass over their payload; the UDP checksum is the one
 * O(payload) step of an accepted request.  Ethernet padding after the IP
 * total length, and IP payload after the UDP length, are ignored.
 *
 * Broadcast is accepted for ARP only, which is known only after the tag;
 * so a broadcast frame is judged MAC there (a truncated one is SHORT
 * first).  The ARP reply goes to the Ethernet source of the request (the
 * station that sent it, proven unicast above); its target hardware
 * address is the request's sender hardware address.
 *
 * Checksums.  qv_dp_csum_add keeps sums as host integers whose value is
 * the sum of 16-bit big-endian (network order) words; qv_dp_csum_fold of
 * such a sum is the checksum as a host uint16_t, stored high byte first
 * (st16).  Inside, qv_dp_csum_add sums 32-bit native-order words into a
 * 64-bit accumulator (no carries to track, and the compiler vectorises
 * it) and converts at its ends: by RFC 1071's byte-order independence the
 * fold of a native little-endian sum is the byte swap of the fold of the
 * big-endian one.  A checksummed region is valid when the fold of its sum
 * (checksum field included) is 0xffff.
 *
 * Partial UDP checksums: a Linux sender with transmit checksum offload
 * leaves in the field fold(pseudo-header sum) - not complemented - and
 * expects the NIC to finish it; veth delivers it as is.  With
 * self->accept_partial_csum that exact value is accepted without reading
 * the payload (it says nothing about the payload).
 *
 * Replies in place.  ICMP: type 8 -> 0 changes the first 16-bit word of
 * the message from 0x0800 to 0x0000; the checksum is updated per RFC 1624
 * eqn. 3, HC' = ~(~HC + ~m + m'), which is exact for any message length
 * since the word changed is the first.  The IP header keeps its options,
 * id and flags; addresses swap, TTL becomes 64, and its checksum is
 * recomputed over IHL*4 bytes.
 */
#include "dp_pkt.h"

#include <stdlib.h>
#include <string.h>

#define ETHERTYPE_IPV4  0x0800u
#define ETHERTYPE_ARP   0x0806u
#define ETHERTYPE_VLAN  0x8100u
#define ETHERTYPE_QINQ  0x88a8u

#define IPPROTO_ICMP_   1u
#define IPPROTO_UDP_    17u

#define ARP_LEN         28u
#define ARP_OP_REQUEST  1u
#define ARP_OP_REPLY    2u

#define IP_TTL_OURS     64u
#define IP_DF           0x4000u
#define IP_MF_OFFSET    0x3fffu     /* MF and the fragment offset */

#define ICMP_ECHO_REPLY   0u
#define ICMP_ECHO_REQUEST 8u

/* ---- byte access (frames sit at any offset) ----------------------------- */

static inline uint16_t ld16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline void st16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline int is_broadcast(const uint8_t *mac)
{
    return (mac[0] & mac[1] & mac[2] & mac[3] & mac[4] & mac[5]) == 0xff;
}

/* ---- checksums ----------------------------------------------------------- */

static inline uint16_t bswap16_if_le(uint16_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return v;
#else
    return (uint16_t)(v << 8 | v >> 8);
#endif
}

uint16_t qv_dp_csum_fold(uint32_t sum)
{
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)sum;
}

static inline uint16_t fold64(uint64_t acc)
{
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    return qv_dp_csum_fold((uint32_t)acc);
}

/* The AVX2 bulk sum (dp_csum_avx2.c): 32-byte blocks, native 32-bit
 * words into 64 bits, as the loop below.  Chosen once, from CPUID. */
uint64_t qv__dp_csum_bulk_avx2(const uint8_t *p, size_t nblocks);
static int csum_avx2;

__attribute__((constructor)) static void csum_pick(void)
{
#if defined(__x86_64__)
    csum_avx2 = __builtin_cpu_supports("avx2");
#endif
    if (getenv("QV_DP_CSUM_SCALAR"))        /* tests compare the two */
        csum_avx2 = 0;
}

void qv__dp_csum_use_avx2(int on)
{
#if defined(__x86_64__)
    csum_avx2 = on && __builtin_cpu_supports("avx2");
#else
    (void)on;
#endif
}

/* Cost: O(len), one pass; cannot fail.  From 128 bytes on, the 32-byte
 * blocks go to the AVX2 bulk sum where the CPU has it. */
uint32_t qv_dp_csum_add(uint32_t sum, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint64_t acc = bswap16_if_le(qv_dp_csum_fold(sum));
    uint64_t acc2 = 0;

    if (csum_avx2 && len >= 128) {
        size_t nb = len / 32;
        acc += qv__dp_csum_bulk_avx2(p, nb);
        p += 32 * nb;
        len -= 32 * nb;
    }

    for (; len >= 8; len -= 8, p += 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        acc += a;
        acc2 += b;
    }
    acc += acc2;
    if (len >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        acc += a;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        acc += h;
        p += 2;
        len -= 2;
    }
    if (len) {
        /* the high byte (first on the wire) of a zero-padded word */
        uint8_t last[2] = { p[0], 0 };
        uint16_t h;
        memcpy(&h, last, 2);
        acc += h;
    }
    return bswap16_if_le(fold64(acc));
}

/* The pseudo-header sum of UDP over IPv4: src, dst (wire bytes), zero,
 * protocol 17, UDP length. */
static inline uint32_t udp_pseudo_sum(const uint8_t *src4, const uint8_t *dst4, uint16_t ulen)
{
    uint32_t sum = (uint32_t)ld16(src4) + ld16(src4 + 2) + ld16(dst4) + ld16(dst4 + 2);
    return sum + IPPROTO_UDP_ + ulen;
}

/* ---- names --------------------------------------------------------------- */

static const char *const drop_names[QV_DP_DROP__COUNT] = {
    [QV_DP_DROP_SHORT] = "short",
    [QV_DP_DROP_MAC] = "mac",
    [QV_DP_DROP_ETHERTYPE] = "ethertype",
    [QV_DP_DROP_VLAN] = "vlan",
    [QV_DP_DROP_ARP_BAD] = "arp_bad",
    [QV_DP_DROP_ARP_OTHER] = "arp_other",
    [QV_DP_DROP_IP_VERSION] = "ip_version",
    [QV_DP_DROP_IP_HLEN] = "ip_hlen",
    [QV_DP_DROP_IP_LEN] = "ip_len",
    [QV_DP_DROP_IP_CSUM] = "ip_csum",
    [QV_DP_DROP_IP_FRAG] = "ip_frag",
    [QV_DP_DROP_IP_DST] = "ip_dst",
    [QV_DP_DROP_IP_PROTO] = "ip_proto",
    [QV_DP_DROP_ICMP_BAD] = "icmp_bad",
    [QV_DP_DROP_ICMP_OTHER] = "icmp_other",
    [QV_DP_DROP_UDP_LEN] = "udp_len",
    [QV_DP_DROP_UDP_CSUM] = "udp_csum",
    [QV_DP_DROP_UDP_PORT] = "udp_port",
};

const char *qv_dp_drop_name(enum qv_dp_drop r)
{
    if ((unsigned)r >= QV_DP_DROP__COUNT)
        return "unknown";
    return drop_names[r];
}

/* ---- ARP ----------------------------------------------------------------- */

/* arp = frame + l2 (28 bytes readable); rewrites the frame into our reply. */
static enum qv_dp_kind arp_in(uint8_t *frame, uint8_t *arp, const struct qv_dp_self *self,
                              enum qv_dp_drop *drop)
{
    if (ld16(arp) != 1 || ld16(arp + 2) != ETHERTYPE_IPV4 || arp[4] != 6 || arp[5] != 4) {
        *drop = QV_DP_DROP_ARP_BAD;
        return QV_DP_DROPPED;
    }
    /* op 2, sha 8, spa 14, tha 18, tpa 24 */
    if (ld16(arp + 6) != ARP_OP_REQUEST || memcmp(arp + 24, &self->ip, 4) != 0 ||
        memcmp(arp + 14, arp + 24, 4) == 0) {
        *drop = QV_DP_DROP_ARP_OTHER;
        return QV_DP_DROPPED;
    }
    /* Ethernet first: in the other order GCC 12 with -fsanitize=address
     * gives a false -Warray-bounds on the first line. */
    memcpy(frame, frame + 6, 6);            /* to the station that asked */
    memcpy(frame + 6, self->mac, 6);
    st16(arp + 6, ARP_OP_REPLY);
    memcpy(arp + 18, arp + 8, 6);           /* tha = requester's sha */
    memcpy(arp + 24, arp + 14, 4);          /* tpa = requester's spa */
    memcpy(arp + 8, self->mac, 6);
    memcpy(arp + 14, &self->ip, 4);
    return QV_DP_ARP_REPLY;
}

/* ---- ICMP ---------------------------------------------------------------- */

/* ip = the IPv4 header (hlen bytes, checked), icmp_len bytes of message
 * after it; rewrites the frame into the echo reply. */
static enum qv_dp_kind icmp_in(uint8_t *frame, uint8_t *ip, uint32_t hlen, uint32_t icmp_len,
                               const struct qv_dp_self *self, enum qv_dp_drop *drop)
{
    uint8_t *icmp = ip + hlen;

    if (icmp_len < 8) {
        *drop = QV_DP_DROP_ICMP_BAD;
        return QV_DP_DROPPED;
    }
    if (icmp[0] != ICMP_ECHO_REQUEST || icmp[1] != 0) {
        *drop = QV_DP_DROP_ICMP_OTHER;
        return QV_DP_DROPPED;
    }
    if (qv_dp_csum_fold(qv_dp_csum_add(0, icmp, icmp_len)) != 0xffff) {
        *drop = QV_DP_DROP_ICMP_BAD;
        return QV_DP_DROPPED;
    }

    /* type 8 -> 0: RFC 1624 eqn. 3 with m = 0x0800, m' = 0 */
    uint16_t hc = ld16(icmp + 2);
    uint32_t sum = (uint32_t)(uint16_t)~hc + (uint16_t)~(ICMP_ECHO_REQUEST << 8);
    icmp[0] = ICMP_ECHO_REPLY;
    st16(icmp + 2, (uint16_t)~qv_dp_csum_fold(sum));

    uint8_t a[4];
    memcpy(a, ip + 12, 4);
    memcpy(ip + 12, ip + 16, 4);
    memcpy(ip + 16, a, 4);
    ip[8] = IP_TTL_OURS;
    ip[10] = ip[11] = 0;
    st16(ip + 10, (uint16_t)~qv_dp_csum_fold(qv_dp_csum_add(0, ip, hlen)));

    memcpy(frame, frame + 6, 6);
    memcpy(frame + 6, self->mac, 6);
    return QV_DP_ICMP_REPLY;
}

/* ---- UDP ----------------------------------------------------------------- */

/* ip = the IPv4 header (hlen bytes, checked), ip_pay bytes after it. */
static enum qv_dp_kind udp_in(const uint8_t *frame, const uint8_t *ip, uint32_t hlen,
                              uint32_t ip_pay, const struct qv_dp_self *self,
                              unsigned rx_flags, struct qv_dp_flow *flow,
                              enum qv_dp_drop *drop)
{
    const uint8_t *udp = ip + hlen;

    if (ip_pay < QV_DP_UDP_HLEN) {
        *drop = QV_DP_DROP_UDP_LEN;
        return QV_DP_DROPPED;
    }
    if (memcmp(udp + 2, &self->udp_port, 2) != 0) {
        *drop = QV_DP_DROP_UDP_PORT;
        return QV_DP_DROPPED;
    }
    uint16_t ulen = ld16(udp + 4);
    if (ulen < QV_DP_UDP_HLEN || ulen > ip_pay) {
        *drop = QV_DP_DROP_UDP_LEN;
        return QV_DP_DROPPED;
    }
    uint16_t field = ld16(udp + 6);
    if (field != 0 && !(rx_flags & QV_DP_RX_L4_CSUM_GOOD)) {
        uint32_t pseudo = udp_pseudo_sum(ip + 12, ip + 16, ulen);
        if (!(self->accept_partial_csum && field == qv_dp_csum_fold(pseudo)) &&
            qv_dp_csum_fold(qv_dp_csum_add(pseudo, udp, ulen)) != 0xffff) {
            *drop = QV_DP_DROP_UDP_CSUM;
            return QV_DP_DROPPED;
        }
    }

    memcpy(flow->peer_mac, frame + 6, 6);
    flow->ttl_unused = 0;
    memcpy(&flow->peer_ip, ip + 12, 4);
    memcpy(&flow->peer_port, udp, 2);
    flow->payload_off = (uint32_t)(udp - frame) + QV_DP_UDP_HLEN;
    flow->payload_len = ulen - QV_DP_UDP_HLEN;
    return QV_DP_UDP;
}

/* ---- classify ------------------------------------------------------------ */

/* Cost: O(header bytes), plus one pass over the ICMP message or the UDP
 * datagram (when its checksum is set) of a frame that passed every other
 * check.  Cannot fail. */
enum qv_dp_kind qv_dp_classify(uint8_t *frame, uint32_t len, const struct qv_dp_self *self,
                               struct qv_dp_flow *flow, enum qv_dp_drop *drop)
{
    return qv_dp_classify_rx(frame, len, self, 0, flow, drop);
}

/* As qv_dp_classify; rx_flags (QV_DP_RX_*) say which checksums the NIC
 * found good: those are not computed again. */
enum qv_dp_kind qv_dp_classify_rx(uint8_t *frame, uint32_t len, const struct qv_dp_self *self,
                                  unsigned rx_flags, struct qv_dp_flow *flow,
                                  enum qv_dp_drop *drop)
{
    enum qv_dp_drop why;

    if (len < QV_DP_ETH_HLEN) {
        why = QV_DP_DROP_SHORT;
        goto dropped;
    }
    int to_us = self->promisc || memcmp(frame, self->mac, 6) == 0;
    if ((frame[6] & 1) || (!to_us && !is_broadcast(frame))) {
        why = QV_DP_DROP_MAC;
        goto dropped;
    }

    uint32_t l2 = QV_DP_ETH_HLEN;
    uint16_t type = ld16(frame + 12);
    flow->has_vlan = 0;
    if (type == ETHERTYPE_VLAN || type == ETHERTYPE_QINQ) {
        if (len < QV_DP_ETH_HLEN + QV_DP_VLAN_HLEN) {
            why = QV_DP_DROP_SHORT;
            goto dropped;
        }
        memcpy(&flow->vlan_tpid, frame + 12, 2);
        memcpy(&flow->vlan_tci, frame + 14, 2);
        flow->has_vlan = 1;
        type = ld16(frame + 16);
        l2 += QV_DP_VLAN_HLEN;
    }
    if (!to_us && type != ETHERTYPE_ARP) {     /* broadcast: ARP only */
        why = QV_DP_DROP_MAC;
        goto dropped;
    }
    if (type == ETHERTYPE_VLAN || type == ETHERTYPE_QINQ) {
        why = QV_DP_DROP_VLAN;
        goto dropped;
    }
    if (type == ETHERTYPE_ARP) {
        if (len - l2 < ARP_LEN) {
            why = QV_DP_DROP_SHORT;
            goto dropped;
        }
        return arp_in(frame, frame + l2, self, drop);
    }
    if (type != ETHERTYPE_IPV4) {
        why = QV_DP_DROP_ETHERTYPE;
        goto dropped;
    }

    uint8_t *ip = frame + l2;
    uint32_t avail = len - l2;
    if (avail < QV_DP_IP_HLEN) {
        why = QV_DP_DROP_SHORT;
        goto dropped;
    }
    if (ip[0] >> 4 != 4) {
        why = QV_DP_DROP_IP_VERSION;
        goto dropped;
    }
    uint32_t hlen = (uint32_t)(ip[0] & 0x0f) * 4;
    if (hlen < QV_DP_IP_HLEN || hlen > avail) {
        why = QV_DP_DROP_IP_HLEN;
        goto dropped;
    }
    uint32_t tot = ld16(ip + 2);
    if (tot < hlen || tot > avail) {
        why = QV_DP_DROP_IP_LEN;
        goto dropped;
    }
    if (!(rx_flags & QV_DP_RX_IP_CSUM_GOOD) &&
        qv_dp_csum_fold(qv_dp_csum_add(0, ip, hlen)) != 0xffff) {
        why = QV_DP_DROP_IP_CSUM;
        goto dropped;
    }
    if (ld16(ip + 6) & IP_MF_OFFSET) {
        why = QV_DP_DROP_IP_FRAG;
        goto dropped;
    }
    if (memcmp(ip + 16, &self->ip, 4) != 0) {
        why = QV_DP_DROP_IP_DST;
        goto dropped;
    }
    if (ip[9] == IPPROTO_UDP_)
        return udp_in(frame, ip, hlen, tot - hlen, self, rx_flags, flow, drop);
    if (ip[9] == IPPROTO_ICMP_)
        return icmp_in(frame, ip, hlen, tot - hlen, self, drop);
    why = QV_DP_DROP_IP_PROTO;

dropped:
    *drop = why;
    return QV_DP_DROPPED;
}

/* ---- the answer ---------------------------------------------------------- */

uint32_t qv_dp_answer_hdr_len(const struct qv_dp_flow *flow)
{
    return QV_DP_ETH_HLEN + (flow->has_vlan ? QV_DP_VLAN_HLEN : 0) + QV_DP_IP_HLEN +
           QV_DP_UDP_HLEN;
}

/* The sum of the two big-endian words at p (4 bytes, e.g. an address). */
static inline uint32_t sum4(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)ld16(b) + ld16(b + 2);
}

/* Cost: O(header bytes), plus one pass over the payload when udp_csum.
 * The header sums come from the values, not from re-reading the bytes
 * just stored (that would stall on store forwarding).  Cannot fail. */
uint32_t qv_dp_write_answer(uint8_t *out, const struct qv_dp_flow *flow,
                            const struct qv_dp_self *self, uint32_t payload_len,
                            uint16_t ip_id, int udp_csum)
{
    uint8_t *p = out;

    memcpy(p, flow->peer_mac, 6);
    memcpy(p + 6, self->mac, 6);
    p += 12;
    if (flow->has_vlan) {
        memcpy(p, &flow->vlan_tpid, 2);
        memcpy(p + 2, &flow->vlan_tci, 2);
        p += 4;
    }
    st16(p, ETHERTYPE_IPV4);
    p += 2;

    uint8_t *ip = p;
    uint16_t ulen = (uint16_t)(QV_DP_UDP_HLEN + payload_len);
    uint16_t tot = (uint16_t)(QV_DP_IP_HLEN + ulen);
    uint32_t addrs = sum4(&self->ip) + sum4(&flow->peer_ip);
    uint32_t ipsum = 0x4500u + tot + ld16((const uint8_t *)&ip_id) + IP_DF +
                     (IP_TTL_OURS << 8 | IPPROTO_UDP_) + addrs;
    ip[0] = 0x45;
    ip[1] = 0;
    st16(ip + 2, tot);
    memcpy(ip + 4, &ip_id, 2);
    st16(ip + 6, IP_DF);
    ip[8] = IP_TTL_OURS;
    ip[9] = IPPROTO_UDP_;
    st16(ip + 10, (uint16_t)~qv_dp_csum_fold(ipsum));
    memcpy(ip + 12, &self->ip, 4);
    memcpy(ip + 16, &flow->peer_ip, 4);

    uint8_t *udp = ip + QV_DP_IP_HLEN;
    uint16_t c = 0;
    if (udp_csum) {
        /* pseudo-header + header (checksum 0) + payload */
        uint32_t sum = addrs + IPPROTO_UDP_ + ulen + ld16((const uint8_t *)&self->udp_port) +
                       ld16((const uint8_t *)&flow->peer_port) + ulen;
        c = (uint16_t)~qv_dp_csum_fold(qv_dp_csum_add(sum, udp + QV_DP_UDP_HLEN, payload_len));
        c = c ? c : 0xffff;
    }
    memcpy(udp, &self->udp_port, 2);
    memcpy(udp + 2, &flow->peer_port, 2);
    st16(udp + 4, ulen);
    st16(udp + 6, c);
    return (uint32_t)(udp - out) + ulen;
}
