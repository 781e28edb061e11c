/*
 * test_dp_pkt.c - the dataplane's packet code (dataplane/dp_pkt.h).
 *
 * Frames are built by a small builder here, with checksums from a
 * straightforward reference routine of this file (never from the code
 * under test), and every classify runs on an exact-size heap copy at a
 * rotating misalignment so that AddressSanitizer sees any read past the
 * frame and UBSan any misaligned load.  Covered: the checksum primitives
 * (RFC 1071's example, random buffers at every offset, chains); accepted
 * UDP requests (VLAN tags, IP options, Ethernet padding, short UDP length)
 * and their flows; UDP checksums (none, full, computed 0 sent as 0xffff,
 * partial only when allowed, a corrupted byte anywhere); the answer
 * headers (known-answer bytes computed with Python, field by field,
 * independent checksums, read back by classify); ARP and ICMP replies
 * (known-answer bytes, odd data lengths, every ICMP checksum value);
 * every drop reason, and the order of the checks when several fail; every
 * truncation of valid frames; the MAC rules; the reason names; a fuzz run
 * of 200k mutated frames; and the classify cost of a 618-byte request
 * (printed).
 */
#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dp_pkt.h"
#include "quiver/timeutil.h"

#define FCAP (QV_DP_MAX_HDR + 65536u + 256u)

static _Alignas(64) uint8_t g_f[FCAP];      /* the frame being built */
static _Alignas(64) uint8_t g_out[FCAP];    /* what classify left / an answer */
static _Alignas(64) uint8_t g_exp[FCAP];    /* the expected bytes */

static const uint8_t SELF_MAC[6] = { 0x02, 0, 0, 0, 0, 0x01 };
static const uint8_t PEER_MAC[6] = { 0x02, 0, 0, 0, 0, 0x02 };
static const uint8_t OTHER_MAC[6] = { 0x02, 0, 0, 0, 0, 0x09 };
static const uint8_t BCAST_MAC[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const uint8_t MCAST_MAC[6] = { 0x01, 0x00, 0x5e, 0x00, 0x00, 0x01 };
static const uint8_t ZERO_MAC[6] = { 0 };
static const uint8_t SELF_IP[4] = { 10, 0, 0, 1 };
static const uint8_t PEER_IP[4] = { 10, 0, 0, 2 };
static const uint8_t OTHER_IP[4] = { 10, 0, 0, 9 };
static const uint8_t BCAST_IP[4] = { 255, 255, 255, 255 };
#define SELF_PORT 7000u
#define PEER_PORT 40000u

static void wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint8_t pattern(uint32_t i)
{
    return (uint8_t)(i * 7u + 3u);
}

static struct qv_dp_self self_of(int promisc, int partial)
{
    struct qv_dp_self s;
    memset(&s, 0, sizeof s);
    memcpy(s.mac, SELF_MAC, 6);
    memcpy(&s.ip, SELF_IP, 4);
    s.udp_port = htons(SELF_PORT);
    s.promisc = promisc;
    s.accept_partial_csum = partial;
    return s;
}

/* ---- the reference checksum: 16-bit big-endian words, one at a time ----- */

static uint32_t ref_sum(uint32_t s, const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i + 1 < n; i += 2)
        s += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1)
        s += (uint32_t)p[n - 1] << 8;
    return s;
}

static uint16_t ref_fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

static uint16_t ref_csum(uint32_t start, const uint8_t *p, size_t n)
{
    return (uint16_t)~ref_fold(ref_sum(start, p, n));
}

static int ref_ok(uint32_t start, const uint8_t *p, size_t n)
{
    return ref_fold(ref_sum(start, p, n)) == 0xffff;
}

static uint32_t ref_pseudo(const uint8_t *src, const uint8_t *dst, uint32_t ulen)
{
    uint8_t ph[12];
    memcpy(ph, src, 4);
    memcpy(ph + 4, dst, 4);
    ph[8] = 0;
    ph[9] = 17;
    wr16(ph + 10, ulen);
    return ref_sum(0, ph, 12);
}

/* ---- the frame builder --------------------------------------------------- */

enum l4 { L4_UDP, L4_ICMP, L4_RAW };
enum csmode { CS_FULL, CS_ZERO, CS_PARTIAL, CS_BAD };

struct spec {
    uint8_t dst_mac[6], src_mac[6];
    uint16_t tpid, tci;             /* tpid 0: untagged */
    uint16_t tpid2, tci2;           /* a second tag when tpid2 */
    uint16_t ethertype;
    uint8_t version, ihl;           /* ihl >= 5: the header has ihl*4 bytes */
    uint16_t frag;
    uint8_t ttl, proto;
    uint8_t src_ip[4], dst_ip[4];
    int tot_delta;                  /* added to the right total length */
    int bad_ip_csum;
    enum l4 l4;
    uint16_t sport, dport;          /* host order */
    int ulen_delta;                 /* added to the right UDP length */
    enum csmode csum;
    uint8_t icmp_type, icmp_code;
    uint16_t icmp_id, icmp_seq;
    int bad_icmp_csum;
    uint32_t plen;                  /* payload (UDP) or data (ICMP) bytes */
    uint32_t pad;                   /* Ethernet padding after the packet */
};

static struct spec udp_spec(uint32_t plen)
{
    struct spec s;
    memset(&s, 0, sizeof s);
    memcpy(s.dst_mac, SELF_MAC, 6);
    memcpy(s.src_mac, PEER_MAC, 6);
    s.ethertype = 0x0800;
    s.version = 4;
    s.ihl = 5;
    s.frag = 0x4000;
    s.ttl = 64;
    s.proto = 17;
    memcpy(s.src_ip, PEER_IP, 4);
    memcpy(s.dst_ip, SELF_IP, 4);
    s.l4 = L4_UDP;
    s.sport = PEER_PORT;
    s.dport = SELF_PORT;
    s.csum = CS_FULL;
    s.plen = plen;
    return s;
}

static struct spec icmp_spec(uint32_t dlen)
{
    struct spec s = udp_spec(dlen);
    s.l4 = L4_ICMP;
    s.proto = 1;
    s.frag = 0;
    s.ttl = 55;
    s.icmp_type = 8;
    s.icmp_id = 0x4242;
    s.icmp_seq = 7;
    return s;
}

/* The L2 header (and tags) of s; returns its length. */
static uint32_t build_l2(uint8_t *f, const struct spec *s)
{
    uint8_t *p = f;
    memcpy(p, s->dst_mac, 6);
    memcpy(p + 6, s->src_mac, 6);
    p += 12;
    if (s->tpid) {
        wr16(p, s->tpid);
        wr16(p + 2, s->tci);
        p += 4;
    }
    if (s->tpid2) {
        wr16(p, s->tpid2);
        wr16(p + 2, s->tci2);
        p += 4;
    }
    wr16(p, s->ethertype);
    return (uint32_t)(p + 2 - f);
}

static uint32_t hdr_len_of(const struct spec *s)
{
    return s->ihl >= 5 ? s->ihl * 4u : 20u;
}

/* Builds s into f; returns the frame length. */
static uint32_t build(uint8_t *f, const struct spec *s)
{
    uint32_t l2 = build_l2(f, s);
    uint8_t *ip = f + l2;
    uint32_t hlen = hdr_len_of(s);
    uint8_t *l4 = ip + hlen;
    uint32_t l4len = 8 + s->plen;

    for (uint32_t i = 0; i < s->plen; i++)
        l4[8 + i] = pattern(i);
    if (s->l4 == L4_UDP) {
        uint32_t ulen = (uint32_t)((int)l4len + s->ulen_delta);
        wr16(l4, s->sport);
        wr16(l4 + 2, s->dport);
        wr16(l4 + 4, ulen);
        wr16(l4 + 6, 0);
        uint32_t pseudo = ref_pseudo(s->src_ip, s->dst_ip, ulen & 0xffff);
        uint16_t full = ref_csum(pseudo, l4, ulen <= l4len ? ulen : l4len);
        uint16_t v = 0;
        switch (s->csum) {
        case CS_FULL: v = full ? full : 0xffff; break;
        case CS_ZERO: v = 0; break;
        case CS_PARTIAL: v = ref_fold(pseudo); break;
        case CS_BAD: v = (uint16_t)(full + 1); v = v ? v : 2; break;
        }
        wr16(l4 + 6, v);
    } else if (s->l4 == L4_ICMP) {
        l4[0] = s->icmp_type;
        l4[1] = s->icmp_code;
        wr16(l4 + 2, 0);
        wr16(l4 + 4, s->icmp_id);
        wr16(l4 + 6, s->icmp_seq);
        uint16_t c = ref_csum(0, l4, l4len);
        wr16(l4 + 2, s->bad_icmp_csum ? (uint16_t)(c ^ 0x0100) : c);
    } else {
        memset(l4, 0, 8);
    }

    ip[0] = (uint8_t)(s->version << 4 | (s->ihl & 15));
    ip[1] = 0;
    wr16(ip + 2, (uint32_t)((int)(hlen + l4len) + s->tot_delta));
    wr16(ip + 4, 0x0777);
    wr16(ip + 6, s->frag);
    ip[8] = s->ttl;
    ip[9] = s->proto;
    wr16(ip + 10, 0);
    memcpy(ip + 12, s->src_ip, 4);
    memcpy(ip + 16, s->dst_ip, 4);
    for (uint32_t i = 20; i < hlen; i++)
        ip[i] = (uint8_t)(i == hlen - 1 ? 0x00 : 0x01);    /* NOPs, then EOL */
    uint16_t c = ref_csum(0, ip, hlen);
    wr16(ip + 10, s->bad_ip_csum ? (uint16_t)(c ^ 0x0040) : c);

    uint32_t len = l2 + hlen + l4len;
    memset(f + len, 0xee, s->pad);
    return len + s->pad;
}

struct arp_spec {
    uint8_t dst_mac[6], src_mac[6];
    uint16_t tpid, tci;
    uint16_t htype, ptype;
    uint8_t hlen, plen;
    uint16_t op;
    uint8_t sha[6], spa[4], tha[6], tpa[4];
    uint32_t pad;
};

static struct arp_spec arp_spec(void)
{
    struct arp_spec a;
    memset(&a, 0, sizeof a);
    memcpy(a.dst_mac, BCAST_MAC, 6);
    memcpy(a.src_mac, PEER_MAC, 6);
    a.htype = 1;
    a.ptype = 0x0800;
    a.hlen = 6;
    a.plen = 4;
    a.op = 1;
    memcpy(a.sha, PEER_MAC, 6);
    memcpy(a.spa, PEER_IP, 4);
    memcpy(a.tpa, SELF_IP, 4);
    a.pad = 18;                     /* to the 60-byte minimum */
    return a;
}

static uint32_t build_arp(uint8_t *f, const struct arp_spec *a)
{
    uint8_t *p = f;
    memcpy(p, a->dst_mac, 6);
    memcpy(p + 6, a->src_mac, 6);
    p += 12;
    if (a->tpid) {
        wr16(p, a->tpid);
        wr16(p + 2, a->tci);
        p += 4;
    }
    wr16(p, 0x0806);
    p += 2;
    wr16(p, a->htype);
    wr16(p + 2, a->ptype);
    p[4] = a->hlen;
    p[5] = a->plen;
    wr16(p + 6, a->op);
    memcpy(p + 8, a->sha, 6);
    memcpy(p + 14, a->spa, 4);
    memcpy(p + 18, a->tha, 6);
    memcpy(p + 24, a->tpa, 4);
    p += 28;
    memset(p, 0xee, a->pad);
    return (uint32_t)(p - f) + a->pad;
}

/* ---- running classify on an exact-size, misaligned heap copy ------------ */

static unsigned g_rot;

/* Classifies a copy of f[0..len); the bytes it leaves go to result (when
 * not NULL).  A dropped frame must come back unchanged. */
static enum qv_dp_kind run(const uint8_t *f, uint32_t len, const struct qv_dp_self *self,
                           struct qv_dp_flow *flow, enum qv_dp_drop *drop, uint8_t *result)
{
    size_t off = g_rot++ % 4;
    static uint8_t dummy[4];
    uint8_t *m = len + off ? malloc(len + off) : dummy;
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    memcpy(m + off, f, len);
    memset(flow, 0xa5, sizeof *flow);
    *drop = QV_DP_DROP__COUNT;
    enum qv_dp_kind k = qv_dp_classify(m + off, len, self, flow, drop);
    if (k == QV_DP_DROPPED)
        CU_ASSERT(memcmp(m + off, f, len) == 0);
    if (result)
        memcpy(result, m + off, len);
    if (m != dummy)
        free(m);
    return k;
}

static int g_seen[QV_DP_DROP__COUNT];

static void check_drop(const char *name, const uint8_t *f, uint32_t len,
                       const struct qv_dp_self *self, enum qv_dp_drop want)
{
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    enum qv_dp_kind k = run(f, len, self, &flow, &drop, NULL);
    int ok = k == QV_DP_DROPPED && drop == want;
    CU_ASSERT(ok);
    if (!ok)
        printf("\n  %s: kind %d drop %s, want %s ", name, (int)k, qv_dp_drop_name(drop),
               qv_dp_drop_name(want));
    g_seen[want]++;
}

/* ---- the checksum primitives --------------------------------------------- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t xorshift(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static void test_csum(void)
{
    /* RFC 1071 section 3's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 */
    static const uint8_t rfc[8] = { 0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7 };
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0, rfc, 8)), 0xddf2);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(qv_dp_csum_add(0, rfc, 4), rfc + 4, 4)),
                    0xddf2);
    /* odd: the last byte is a high byte */
    static const uint8_t three[3] = { 0x12, 0x34, 0x56 };
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0, three, 3)), 0x1234 + 0x5600);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0, three, 1)), 0x1200);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0x0102, three, 0)), 0x0102);

    CU_ASSERT_EQUAL(qv_dp_csum_fold(0), 0);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(0xffff), 0xffff);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(0x1fffe), 0xffff);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(0xffffffffu), 0xffff);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(0x12345678u), 0x68ac);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(0x0001ffffu), 0x0001);

    /* random buffers at every offset and length, with a starting sum,
     * and split into a chain at every even point */
    static uint8_t buf[512 + 8];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)xorshift();
    int bad = 0;
    for (size_t off = 0; off < 8; off++) {
        for (size_t n = 0; n <= 512; n++) {
            const uint8_t *p = buf + off;
            uint32_t start = (uint32_t)(xorshift() & 0xffffff);
            if (qv_dp_csum_fold(qv_dp_csum_add(0, p, n)) != ref_fold(ref_sum(0, p, n)))
                bad++;
            if (qv_dp_csum_fold(qv_dp_csum_add(start, p, n)) != ref_fold(ref_sum(start, p, n)))
                bad++;
            size_t k = (size_t)(xorshift() % (n + 1)) & ~(size_t)1;
            uint32_t chained = qv_dp_csum_add(qv_dp_csum_add(start, p, k), p + k, n - k);
            if (qv_dp_csum_fold(chained) != ref_fold(ref_sum(start, p, n)))
                bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);

    /* extremes: all ones (every carry) over the largest datagram, zeros */
    static uint8_t big[65536];
    memset(big, 0xff, sizeof big);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0, big, sizeof big)), 0xffff);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0xffffffffu, big, 65535)), 0xff00);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0xffffffffu, big, 65535)),
                    ref_fold(ref_fold(0xffffffffu) + ref_sum(0, big, 65535)));
    memset(big, 0, sizeof big);
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0, big, sizeof big)), 0);
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)xorshift();
    CU_ASSERT_EQUAL(qv_dp_csum_fold(qv_dp_csum_add(0, big + 1, 65535)),
                    ref_fold(ref_sum(0, big + 1, 65535)));
}

/* ---- accepted UDP requests ----------------------------------------------- */

static void check_udp_flow(const struct spec *s, uint32_t len, const struct qv_dp_self *self,
                           uint32_t want_plen)
{
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    memcpy(g_exp, g_f, len);
    enum qv_dp_kind k = run(g_f, len, self, &flow, &drop, g_out);
    CU_ASSERT_EQUAL_FATAL(k, QV_DP_UDP);
    CU_ASSERT(memcmp(g_out, g_exp, len) == 0);          /* unchanged */
    CU_ASSERT(memcmp(flow.peer_mac, s->src_mac, 6) == 0);
    CU_ASSERT_EQUAL(flow.has_vlan, s->tpid ? 1 : 0);
    if (s->tpid) {
        CU_ASSERT_EQUAL(flow.vlan_tpid, htons(s->tpid));
        CU_ASSERT_EQUAL(flow.vlan_tci, htons(s->tci));
    }
    CU_ASSERT(memcmp(&flow.peer_ip, s->src_ip, 4) == 0);
    CU_ASSERT_EQUAL(flow.peer_port, htons(s->sport));
    uint32_t off = 14 + (s->tpid ? 4 : 0) + hdr_len_of(s) + 8;
    CU_ASSERT_EQUAL(flow.payload_off, off);
    CU_ASSERT_EQUAL(flow.payload_len, want_plen);
    CU_ASSERT_FATAL(flow.payload_off + flow.payload_len <= len);
    int same = 1;
    for (uint32_t i = 0; i < want_plen; i++)
        same &= g_f[flow.payload_off + i] == pattern(i);
    CU_ASSERT(same);
}

static void test_udp_accept(void)
{
    static const uint16_t tpids[3] = { 0, 0x8100, 0x88a8 };
    static const uint16_t tcis[3] = { 0, 0x2007, 0x0fff };
    static const uint8_t ihls[4] = { 5, 6, 7, 15 };
    static const uint32_t pads[3] = { 0, 1, 17 };
    static const uint32_t plens[6] = { 0, 1, 5, 64, 576, 1472 };
    struct qv_dp_self self = self_of(0, 0);
    for (int v = 0; v < 3; v++)
        for (int h = 0; h < 4; h++)
            for (int p = 0; p < 3; p++)
                for (int l = 0; l < 6; l++) {
                    struct spec s = udp_spec(plens[l]);
                    s.tpid = tpids[v];
                    s.tci = tcis[v];
                    s.ihl = ihls[h];
                    s.pad = pads[p];
                    uint32_t len = build(g_f, &s);
                    check_udp_flow(&s, len, &self, plens[l]);
                }

    /* IP payload longer than the UDP length: the rest is ignored */
    struct spec s = udp_spec(40);
    s.ulen_delta = -3;
    uint32_t len = build(g_f, &s);
    check_udp_flow(&s, len, &self, 37);
    /* DF clear, a reserved flag, a different TTL and source port */
    s = udp_spec(9);
    s.frag = 0;
    s.ttl = 1;
    s.sport = 1;
    len = build(g_f, &s);
    check_udp_flow(&s, len, &self, 9);
}

/* The AVX2 bulk sum equals the scalar loop and the reference at every
 * length to 4 KiB and every offset, chained or not (where AVX2 exists). */
static void test_csum_avx2(void)
{
    static uint8_t buf[4096 + 64];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)xorshift();
    unsigned bad = 0, runs = 0;
    for (size_t off = 0; off < 8; off++) {
        for (size_t n = 0; n <= 4096; n += (n < 300 ? 1 : 37)) {
            uint32_t start = (uint32_t)xorshift() & 0xffff;
            qv__dp_csum_use_avx2(1);
            uint16_t v = qv_dp_csum_fold(qv_dp_csum_add(start, buf + off, n));
            uint16_t c = qv_dp_csum_fold(qv_dp_csum_add(qv_dp_csum_add(start, buf + off, n / 2 & ~(size_t)1),
                                                        buf + off + (n / 2 & ~(size_t)1),
                                                        n - (n / 2 & ~(size_t)1)));
            qv__dp_csum_use_avx2(0);
            uint16_t sc = qv_dp_csum_fold(qv_dp_csum_add(start, buf + off, n));
            uint16_t r = ref_fold(ref_sum(start, buf + off, n));
            bad += v != r || sc != r || c != r;
            runs++;
        }
    }
    qv__dp_csum_use_avx2(1);
    CU_ASSERT_EQUAL(bad, 0);
    /* and the figure: ns per 600-byte checksum, each way (printed only) */
    double ns[2];
    for (int way = 0; way < 2; way++) {
        qv__dp_csum_use_avx2(way == 0);
        struct timespec t0, t1;
        uint32_t acc = 0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 200000; i++)
            acc += qv_dp_csum_add((uint32_t)i & 0xff, buf + (i & 7), 600);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ns[way] = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) /
                  200000;
        CU_ASSERT(acc != 1);        /* keep the loop */
    }
    qv__dp_csum_use_avx2(1);
    printf("\n    %u cases equal; 600-byte checksum %.1f ns (AVX2 where present) vs %.1f ns "
           "scalar ", runs, ns[0], ns[1]);
}

/* The NIC's checksum verdicts (qv_dp_classify_rx): a GOOD one is trusted
 * (the software check is skipped), no verdict means the software check. */
static void test_rx_csum_flags(void)
{
    struct qv_dp_self strict = self_of(0, 0);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    struct spec s = udp_spec(100);
    s.csum = CS_FULL;
    uint32_t len = build(g_f, &s);
    /* a wrong UDP checksum: dropped unless the NIC said L4 good */
    g_f[len - 1] ^= 0x40;
    CU_ASSERT_EQUAL(qv_dp_classify_rx(g_f, len, &strict, 0, &flow, &drop), QV_DP_DROPPED);
    CU_ASSERT_EQUAL(drop, QV_DP_DROP_UDP_CSUM);
    CU_ASSERT_EQUAL(qv_dp_classify_rx(g_f, len, &strict, QV_DP_RX_IP_CSUM_GOOD, &flow, &drop),
                    QV_DP_DROPPED);
    CU_ASSERT_EQUAL(qv_dp_classify_rx(g_f, len, &strict, QV_DP_RX_L4_CSUM_GOOD, &flow, &drop),
                    QV_DP_UDP);
    CU_ASSERT_EQUAL(flow.payload_len, 100);
    /* a wrong IP header checksum: dropped unless the NIC said IP good */
    len = build(g_f, &s);
    g_f[14 + 10] ^= 0x01;
    CU_ASSERT_EQUAL(qv_dp_classify_rx(g_f, len, &strict, QV_DP_RX_L4_CSUM_GOOD, &flow, &drop),
                    QV_DP_DROPPED);
    CU_ASSERT_EQUAL(drop, QV_DP_DROP_IP_CSUM);
    CU_ASSERT_EQUAL(qv_dp_classify_rx(g_f, len, &strict,
                                      QV_DP_RX_IP_CSUM_GOOD | QV_DP_RX_L4_CSUM_GOOD, &flow,
                                      &drop), QV_DP_UDP);
    /* the flags skip only checksums: lengths and ports are still checked */
    len = build(g_f, &s);
    g_f[14 + 20 + 2] ^= 0xff;           /* another port */
    CU_ASSERT_EQUAL(qv_dp_classify_rx(g_f, len, &strict,
                                      QV_DP_RX_IP_CSUM_GOOD | QV_DP_RX_L4_CSUM_GOOD, &flow,
                                      &drop), QV_DP_DROPPED);
    CU_ASSERT_EQUAL(drop, QV_DP_DROP_UDP_PORT);
}

static void test_udp_csum(void)
{
    struct qv_dp_self strict = self_of(0, 0), lax = self_of(0, 1);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;

    /* none (0): accepted either way */
    struct spec s = udp_spec(100);
    s.csum = CS_ZERO;
    uint32_t len = build(g_f, &s);
    CU_ASSERT_EQUAL(run(g_f, len, &strict, &flow, &drop, NULL), QV_DP_UDP);
    CU_ASSERT_EQUAL(run(g_f, len, &lax, &flow, &drop, NULL), QV_DP_UDP);

    /* full: accepted either way */
    s.csum = CS_FULL;
    len = build(g_f, &s);
    CU_ASSERT_EQUAL(run(g_f, len, &strict, &flow, &drop, NULL), QV_DP_UDP);
    CU_ASSERT_EQUAL(run(g_f, len, &lax, &flow, &drop, NULL), QV_DP_UDP);

    /* partial: only with accept_partial_csum.  Known answer: 10.0.0.2 ->
     * 10.0.0.1, UDP length 584: 0a00+0002+0a00+0001+0011+0248 = 165c */
    s = udp_spec(576);
    s.csum = CS_PARTIAL;
    len = build(g_f, &s);
    CU_ASSERT_EQUAL(g_f[40], 0x16);
    CU_ASSERT_EQUAL(g_f[41], 0x5c);
    CU_ASSERT_EQUAL(run(g_f, len, &lax, &flow, &drop, NULL), QV_DP_UDP);
    CU_ASSERT_EQUAL(flow.payload_len, 576);
    check_drop("partial, not accepted", g_f, len, &strict, QV_DP_DROP_UDP_CSUM);
    /* the partial value with a VLAN and options (same pseudo-header) */
    s.tpid = 0x8100;
    s.ihl = 8;
    len = build(g_f, &s);
    CU_ASSERT_EQUAL(run(g_f, len, &lax, &flow, &drop, NULL), QV_DP_UDP);
    /* one off the partial value: neither partial nor valid */
    uint8_t *ck = g_f + 18 + 32 + 6;
    wr16(ck, rd16(ck) + 1u);
    check_drop("partial + 1", g_f, len, &lax, QV_DP_DROP_UDP_CSUM);

    /* a corrupted byte anywhere in the UDP header or payload */
    s = udp_spec(61);
    len = build(g_f, &s);
    int bad = 0;
    for (uint32_t i = 34; i < len; i++) {
        if (i == 36 || i == 37)
            continue;                   /* the port: checked first */
        memcpy(g_exp, g_f, len);
        g_exp[i] ^= 0x5a;
        enum qv_dp_kind k = run(g_exp, len, &lax, &flow, &drop, NULL);
        uint32_t ulen = rd16(g_exp + 38);   /* a changed length may still fit */
        enum qv_dp_drop want = ulen < 8 || ulen > 69 ? QV_DP_DROP_UDP_LEN : QV_DP_DROP_UDP_CSUM;
        if (k != QV_DP_DROPPED || drop != want) {
            bad++;
            printf("\n  corrupt byte %u: kind %d drop %s ", i, (int)k, qv_dp_drop_name(drop));
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    g_seen[QV_DP_DROP_UDP_CSUM]++;

    /* a computed checksum of 0 travels as 0xffff: make the payload's last
     * word cancel the rest, then send 0xffff */
    s = udp_spec(10);
    s.csum = CS_ZERO;
    len = build(g_f, &s);
    uint8_t *udp = g_f + 34;
    wr16(udp + 8 + 8, 0);
    uint16_t rest = ref_fold(ref_sum(ref_pseudo(PEER_IP, SELF_IP, 18), udp, 18));
    wr16(udp + 8 + 8, (uint16_t)~rest);
    CU_ASSERT_EQUAL(ref_csum(ref_pseudo(PEER_IP, SELF_IP, 18), udp, 18), 0);
    wr16(udp + 6, 0xffff);
    CU_ASSERT_EQUAL_FATAL(run(g_f, len, &strict, &flow, &drop, NULL), QV_DP_UDP);
    /* the answer to it has the same pseudo-header and header sums
     * (addresses and ports swap): its checksum is 0, sent as 0xffff */
    uint32_t hl = qv_dp_answer_hdr_len(&flow);
    memcpy(g_out + hl, g_f + flow.payload_off, flow.payload_len);
    CU_ASSERT_EQUAL(qv_dp_write_answer(g_out, &flow, &strict, flow.payload_len, 0, 1), len);
    CU_ASSERT_EQUAL(rd16(g_out + 40), 0xffff);
    CU_ASSERT(ref_ok(ref_pseudo(SELF_IP, PEER_IP, 18), g_out + 34, 18));
}

/* ---- the answer ---------------------------------------------------------- */

/* 10.0.0.1:7000 (02:..:01) -> 10.0.0.2:40000 (02:..:02), "hello", id
 * 0x1234, computed with Python (struct + a 16-bit word sum): IP checksum
 * 0x1496 (4500+0021+1234+4000+4011+0a00+0001+0a00+0002 = eb69), UDP 0xf066. */
static const uint8_t KA_ANSWER[47] = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
    0x45, 0x00, 0x00, 0x21, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x14, 0x96, 0x0a, 0x00,
    0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, 0x1b, 0x58, 0x9c, 0x40, 0x00, 0x0d, 0xf0, 0x66,
    0x68, 0x65, 0x6c, 0x6c, 0x6f
};
/* the same with an 802.1Q tag, TCI 0x2007 */
static const uint8_t KA_ANSWER_VLAN[51] = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00,
    0x20, 0x07, 0x08, 0x00, 0x45, 0x00, 0x00, 0x21, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11,
    0x14, 0x96, 0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, 0x1b, 0x58, 0x9c, 0x40,
    0x00, 0x0d, 0xf0, 0x66, 0x68, 0x65, 0x6c, 0x6c, 0x6f
};

static struct qv_dp_flow peer_flow(uint16_t tpid, uint16_t tci)
{
    struct qv_dp_flow f;
    memset(&f, 0, sizeof f);
    memcpy(f.peer_mac, PEER_MAC, 6);
    f.has_vlan = tpid != 0;
    f.vlan_tpid = htons(tpid);
    f.vlan_tci = htons(tci);
    memcpy(&f.peer_ip, PEER_IP, 4);
    f.peer_port = htons(PEER_PORT);
    return f;
}

static void test_answer_known(void)
{
    struct qv_dp_self self = self_of(0, 0);

    /* from a flow that classify filled */
    struct spec s = udp_spec(3);
    uint32_t len = build(g_f, &s);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    CU_ASSERT_EQUAL_FATAL(run(g_f, len, &self, &flow, &drop, NULL), QV_DP_UDP);
    CU_ASSERT_EQUAL(qv_dp_answer_hdr_len(&flow), 42);
    memset(g_out, 0xcc, 64);
    memcpy(g_out + 42, "hello", 5);
    CU_ASSERT_EQUAL(qv_dp_write_answer(g_out, &flow, &self, 5, htons(0x1234), 1), 47);
    CU_ASSERT(memcmp(g_out, KA_ANSWER, 47) == 0);
    CU_ASSERT_EQUAL(g_out[47], 0xcc);                   /* nothing past it */

    s.tpid = 0x8100;
    s.tci = 0x2007;
    len = build(g_f, &s);
    CU_ASSERT_EQUAL_FATAL(run(g_f, len, &self, &flow, &drop, NULL), QV_DP_UDP);
    CU_ASSERT_EQUAL(qv_dp_answer_hdr_len(&flow), 46);
    memset(g_out, 0xcc, 64);
    memcpy(g_out + 46, "hello", 5);
    CU_ASSERT_EQUAL(qv_dp_write_answer(g_out, &flow, &self, 5, htons(0x1234), 1), 51);
    CU_ASSERT(memcmp(g_out, KA_ANSWER_VLAN, 51) == 0);
    CU_ASSERT_EQUAL(g_out[51], 0xcc);

    /* without the UDP checksum: the same but 0 in its field */
    memcpy(g_out + 46, "hello", 5);
    qv_dp_write_answer(g_out, &flow, &self, 5, htons(0x1234), 0);
    CU_ASSERT(memcmp(g_out, KA_ANSWER_VLAN, 44) == 0);
    CU_ASSERT_EQUAL(rd16(g_out + 44), 0);
    CU_ASSERT(memcmp(g_out + 46, KA_ANSWER_VLAN + 46, 5) == 0);
}

static void test_answer_fields(void)
{
    static const uint32_t plens[8] = { 0, 1, 2, 7, 576, 1472, 9000, 65507 };
    static const uint16_t tpids[3] = { 0, 0x8100, 0x88a8 };
    struct qv_dp_self self = self_of(0, 0);
    struct qv_dp_self peer = self_of(0, 0);             /* the answer's receiver */
    memcpy(peer.mac, PEER_MAC, 6);
    memcpy(&peer.ip, PEER_IP, 4);
    peer.udp_port = htons(PEER_PORT);

    for (int v = 0; v < 3; v++)
        for (int l = 0; l < 8; l++)
            for (int c = 0; c < 2; c++) {
                uint32_t plen = plens[l];
                struct qv_dp_flow flow = peer_flow(tpids[v], 0x0123);
                uint32_t hl = qv_dp_answer_hdr_len(&flow);
                CU_ASSERT_EQUAL(hl, tpids[v] ? 46u : 42u);
                for (uint32_t i = 0; i < plen; i++)
                    g_out[hl + i] = pattern(i);
                uint16_t id = htons((uint16_t)(0xbeef + l));
                uint32_t n = qv_dp_write_answer(g_out, &flow, &self, plen, id, c);
                CU_ASSERT_EQUAL_FATAL(n, hl + plen);

                const uint8_t *p = g_out;
                CU_ASSERT(memcmp(p, PEER_MAC, 6) == 0);
                CU_ASSERT(memcmp(p + 6, SELF_MAC, 6) == 0);
                p += 12;
                if (tpids[v]) {
                    CU_ASSERT_EQUAL(rd16(p), tpids[v]);
                    CU_ASSERT_EQUAL(rd16(p + 2), 0x0123);
                    p += 4;
                }
                CU_ASSERT_EQUAL(rd16(p), 0x0800);
                const uint8_t *ip = p + 2;
                CU_ASSERT_EQUAL(ip[0], 0x45);
                CU_ASSERT_EQUAL(ip[1], 0);
                CU_ASSERT_EQUAL(rd16(ip + 2), 28 + plen);
                CU_ASSERT_EQUAL(rd16(ip + 4), 0xbeef + l);
                CU_ASSERT_EQUAL(rd16(ip + 6), 0x4000);
                CU_ASSERT_EQUAL(ip[8], 64);
                CU_ASSERT_EQUAL(ip[9], 17);
                CU_ASSERT(memcmp(ip + 12, SELF_IP, 4) == 0);
                CU_ASSERT(memcmp(ip + 16, PEER_IP, 4) == 0);
                CU_ASSERT(ref_ok(0, ip, 20));
                const uint8_t *udp = ip + 20;
                CU_ASSERT_EQUAL(rd16(udp), SELF_PORT);
                CU_ASSERT_EQUAL(rd16(udp + 2), PEER_PORT);
                CU_ASSERT_EQUAL(rd16(udp + 4), 8 + plen);
                if (c) {
                    CU_ASSERT(rd16(udp + 6) != 0);
                    CU_ASSERT(ref_ok(ref_pseudo(SELF_IP, PEER_IP, 8 + plen), udp, 8 + plen));
                } else {
                    CU_ASSERT_EQUAL(rd16(udp + 6), 0);
                }
                int same = 1;
                for (uint32_t i = 0; i < plen; i++)
                    same &= udp[8 + i] == pattern(i);
                CU_ASSERT(same);

                /* and the peer's classify takes it */
                struct qv_dp_flow back;
                enum qv_dp_drop drop;
                CU_ASSERT_EQUAL(run(g_out, n, &peer, &back, &drop, NULL), QV_DP_UDP);
                CU_ASSERT(memcmp(back.peer_mac, SELF_MAC, 6) == 0);
                CU_ASSERT(memcmp(&back.peer_ip, SELF_IP, 4) == 0);
                CU_ASSERT_EQUAL(back.peer_port, htons(SELF_PORT));
                CU_ASSERT_EQUAL(back.payload_off, hl);
                CU_ASSERT_EQUAL(back.payload_len, plen);
                CU_ASSERT_EQUAL(back.has_vlan, tpids[v] ? 1 : 0);
            }
}

/* ---- ARP ----------------------------------------------------------------- */

/* who-has 10.0.0.1 tell 10.0.0.2 (02:..:02), broadcast, no padding */
static const uint8_t KA_ARP_REQ[42] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06,
    0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x02,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01
};
/* 10.0.0.1 is-at 02:..:01, to 02:..:02 */
static const uint8_t KA_ARP_REP[42] = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06,
    0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x01,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x02
};

static void test_arp(void)
{
    struct qv_dp_self self = self_of(0, 0);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;

    CU_ASSERT_EQUAL(run(KA_ARP_REQ, 42, &self, &flow, &drop, g_out), QV_DP_ARP_REPLY);
    CU_ASSERT(memcmp(g_out, KA_ARP_REP, 42) == 0);

    /* padded, tagged, unicast to us; and any MAC when promisc */
    static const uint16_t tpids[3] = { 0, 0x8100, 0x88a8 };
    for (int v = 0; v < 3; v++)
        for (int d = 0; d < 3; d++) {
            struct arp_spec a = arp_spec();
            a.tpid = tpids[v];
            a.tci = 0x0064;
            memcpy(a.tha, d == 2 ? OTHER_MAC : ZERO_MAC, 6);
            memcpy(a.dst_mac, d == 0 ? BCAST_MAC : d == 1 ? SELF_MAC : OTHER_MAC, 6);
            uint32_t len = build_arp(g_f, &a);
            struct qv_dp_self me = self_of(d == 2, 0);
            CU_ASSERT_EQUAL(run(g_f, len, &me, &flow, &drop, g_out), QV_DP_ARP_REPLY);
            struct arp_spec r = a;
            memcpy(r.dst_mac, PEER_MAC, 6);
            memcpy(r.src_mac, SELF_MAC, 6);
            r.op = 2;
            memcpy(r.sha, SELF_MAC, 6);
            memcpy(r.spa, SELF_IP, 4);
            memcpy(r.tha, PEER_MAC, 6);
            memcpy(r.tpa, PEER_IP, 4);
            CU_ASSERT_EQUAL(build_arp(g_exp, &r), len);
            CU_ASSERT(memcmp(g_out, g_exp, len) == 0);
        }

    struct arp_spec a = arp_spec();
    memcpy(a.tpa, OTHER_IP, 4);
    uint32_t len = build_arp(g_f, &a);
    check_drop("arp for another IP", g_f, len, &self, QV_DP_DROP_ARP_OTHER);
    a = arp_spec();
    a.op = 2;
    memcpy(a.dst_mac, SELF_MAC, 6);
    len = build_arp(g_f, &a);
    check_drop("arp reply", g_f, len, &self, QV_DP_DROP_ARP_OTHER);
    a.op = 3;
    len = build_arp(g_f, &a);
    check_drop("rarp request", g_f, len, &self, QV_DP_DROP_ARP_OTHER);
    a = arp_spec();
    memcpy(a.spa, SELF_IP, 4);
    len = build_arp(g_f, &a);
    check_drop("gratuitous arp for our IP", g_f, len, &self, QV_DP_DROP_ARP_OTHER);
    a = arp_spec();
    memcpy(a.spa, PEER_IP, 4);
    memcpy(a.tpa, PEER_IP, 4);
    len = build_arp(g_f, &a);
    check_drop("gratuitous arp", g_f, len, &self, QV_DP_DROP_ARP_OTHER);

    for (int m = 0; m < 4; m++) {
        a = arp_spec();
        if (m == 0) a.htype = 6;
        if (m == 1) a.ptype = 0x86dd;
        if (m == 2) a.hlen = 8;
        if (m == 3) a.plen = 16;
        len = build_arp(g_f, &a);
        check_drop("malformed arp", g_f, len, &self, QV_DP_DROP_ARP_BAD);
    }
    a = arp_spec();
    a.htype = 6;
    a.op = 2;
    len = build_arp(g_f, &a);
    check_drop("malformed arp reply: bad first", g_f, len, &self, QV_DP_DROP_ARP_BAD);

    a = arp_spec();
    memcpy(a.dst_mac, OTHER_MAC, 6);
    len = build_arp(g_f, &a);
    check_drop("arp to another MAC", g_f, len, &self, QV_DP_DROP_MAC);
    a = arp_spec();
    memcpy(a.src_mac, MCAST_MAC, 6);
    len = build_arp(g_f, &a);
    check_drop("arp from a multicast MAC", g_f, len, &self, QV_DP_DROP_MAC);
    a = arp_spec();
    a.pad = 0;
    len = build_arp(g_f, &a);
    check_drop("arp of 27 bytes", g_f, len - 1, &self, QV_DP_DROP_SHORT);
}

/* ---- ICMP ---------------------------------------------------------------- */

/* echo request 10.0.0.2 -> 10.0.0.1, TTL 55, id 0x4242 seq 1, "abc"; and
 * its reply (Python) */
static const uint8_t KA_ECHO_REQ[45] = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
    0x45, 0x00, 0x00, 0x1f, 0x07, 0x77, 0x00, 0x00, 0x37, 0x01, 0x68, 0x65, 0x0a, 0x00,
    0x00, 0x02, 0x0a, 0x00, 0x00, 0x01, 0x08, 0x00, 0xf1, 0x59, 0x42, 0x42, 0x00, 0x01,
    0x61, 0x62, 0x63
};
static const uint8_t KA_ECHO_REP[45] = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
    0x45, 0x00, 0x00, 0x1f, 0x07, 0x77, 0x00, 0x00, 0x40, 0x01, 0x5f, 0x65, 0x0a, 0x00,
    0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, 0x00, 0x00, 0xf9, 0x59, 0x42, 0x42, 0x00, 0x01,
    0x61, 0x62, 0x63
};

/* The echo reply in out to the request in req (both len bytes). */
static int echo_reply_ok(const uint8_t *req, const uint8_t *out, uint32_t len, uint32_t l2)
{
    const uint8_t *qi = req + l2, *ri = out + l2;
    uint32_t hlen = (qi[0] & 15u) * 4u, tot = rd16(qi + 2);
    int ok = 1;
    ok &= memcmp(out, req + 6, 6) == 0;
    ok &= memcmp(out + 6, SELF_MAC, 6) == 0;
    ok &= memcmp(out + 12, req + 12, l2 - 12) == 0;     /* tag, ethertype */
    ok &= memcmp(ri, qi, 8) == 0;                       /* ver .. frag */
    ok &= ri[8] == 64 && ri[9] == 1;
    ok &= memcmp(ri + 12, qi + 16, 4) == 0 && memcmp(ri + 16, qi + 12, 4) == 0;
    ok &= memcmp(ri + 20, qi + 20, hlen - 20) == 0;     /* options */
    ok &= ref_ok(0, ri, hlen);
    ok &= ri[hlen] == 0 && ri[hlen + 1] == 0;
    ok &= memcmp(ri + hlen + 4, qi + hlen + 4, tot - hlen - 4) == 0;
    ok &= ref_ok(0, ri + hlen, tot - hlen);
    ok &= memcmp(out + l2 + tot, req + l2 + tot, len - l2 - tot) == 0;   /* padding */
    return ok;
}

static void test_icmp(void)
{
    struct qv_dp_self self = self_of(0, 0);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;

    CU_ASSERT_EQUAL(run(KA_ECHO_REQ, 45, &self, &flow, &drop, g_out), QV_DP_ICMP_REPLY);
    CU_ASSERT(memcmp(g_out, KA_ECHO_REP, 45) == 0);

    static const uint32_t dlens[7] = { 0, 1, 3, 56, 57, 1000, 1473 };
    static const uint8_t ihls[3] = { 5, 7, 15 };
    int bad = 0;
    for (int l = 0; l < 7; l++)
        for (int h = 0; h < 3; h++)
            for (int v = 0; v < 2; v++)
                for (int p = 0; p < 2; p++) {
                    struct spec s = icmp_spec(dlens[l]);
                    s.ihl = ihls[h];
                    s.tpid = v ? 0x8100 : 0;
                    s.tci = 5;
                    s.pad = p ? 7 : 0;
                    s.frag = p ? 0x4000 : 0;
                    uint32_t len = build(g_f, &s);
                    enum qv_dp_kind k = run(g_f, len, &self, &flow, &drop, g_out);
                    if (k != QV_DP_ICMP_REPLY || !echo_reply_ok(g_f, g_out, len, v ? 18 : 14))
                        bad++;
                }
    CU_ASSERT_EQUAL(bad, 0);

    /* every value of the request's checksum (through the id), so that the
     * incremental update meets 0x0000 and 0xffff */
    bad = 0;
    for (uint32_t id = 0; id < 65536; id++) {
        struct spec s = icmp_spec(id & 1 ? 5 : 0);
        s.icmp_id = (uint16_t)id;
        uint32_t len = build(g_f, &s);
        memcpy(g_out, g_f, len);
        enum qv_dp_kind k = qv_dp_classify(g_out, len, &self, &flow, &drop);
        if (k != QV_DP_ICMP_REPLY || !echo_reply_ok(g_f, g_out, len, 14))
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
}

/* ---- every drop reason, and their order --------------------------------- */

static void test_drops(void)
{
    struct qv_dp_self self = self_of(0, 0), promisc = self_of(1, 0);
    struct spec s;
    uint32_t n;
    uint8_t *ip = g_f + 14;

#define DROP(name, want) check_drop(name, g_f, n, &self, QV_DP_DROP_##want)
#define BUILD(...) do { s = __VA_ARGS__; n = build(g_f, &s); } while (0)

    /* Ethernet */
    BUILD(udp_spec(32));
    n = 13;
    DROP("13 bytes", SHORT);
    n = 0;
    DROP("0 bytes", SHORT);
    BUILD(udp_spec(32));
    memcpy(g_f, OTHER_MAC, 6);
    DROP("to another MAC", MAC);
    memcpy(g_f, MCAST_MAC, 6);
    DROP("to a multicast MAC", MAC);
    memcpy(g_f, BCAST_MAC, 6);
    DROP("broadcast UDP", MAC);
    memcpy(g_f, SELF_MAC, 6);
    memcpy(g_f + 6, MCAST_MAC, 6);
    DROP("from a multicast MAC", MAC);
    check_drop("from a multicast MAC, promisc", g_f, n, &promisc, QV_DP_DROP_MAC);
    memcpy(g_f + 6, BCAST_MAC, 6);
    DROP("from the broadcast MAC", MAC);
    BUILD(icmp_spec(8));
    memcpy(g_f, BCAST_MAC, 6);
    DROP("broadcast ICMP", MAC);
    s = udp_spec(8);
    memcpy(s.dst_mac, BCAST_MAC, 6);
    s.tpid = 0x8100;
    n = build(g_f, &s);
    DROP("broadcast tagged UDP", MAC);
    s.ethertype = 0x86dd;
    n = build(g_f, &s);
    DROP("broadcast IPv6", MAC);
    s.tpid2 = 0x8100;
    s.ethertype = 0x0806;
    n = build(g_f, &s);
    DROP("broadcast, two tags (then ARP)", MAC);

    /* tags and ethertypes */
    BUILD(udp_spec(8));
    g_f[12] = 0x81;
    g_f[13] = 0x00;
    n = 17;
    DROP("a tag cut short", SHORT);
    s = udp_spec(8);
    s.tpid = 0x8100;
    s.tpid2 = 0x8100;
    n = build(g_f, &s);
    DROP("two 802.1Q tags", VLAN);
    s.tpid = 0x88a8;
    n = build(g_f, &s);
    DROP("802.1ad then 802.1Q", VLAN);
    s.tpid2 = 0x88a8;
    n = build(g_f, &s);
    DROP("two 802.1ad tags", VLAN);
    s = udp_spec(8);
    s.ethertype = 0x86dd;
    n = build(g_f, &s);
    DROP("IPv6", ETHERTYPE);
    s.tpid = 0x8100;
    n = build(g_f, &s);
    DROP("tagged IPv6", ETHERTYPE);
    s = udp_spec(8);
    s.ethertype = 0x88cc;
    n = build(g_f, &s);
    DROP("LLDP", ETHERTYPE);
    s.ethertype = 0x0000;
    n = build(g_f, &s);
    DROP("802.3 length 0", ETHERTYPE);
    s.ethertype = 0x9100;
    n = build(g_f, &s);
    DROP("old QinQ TPID", ETHERTYPE);
    memcpy(g_f + 6, MCAST_MAC, 6);
    DROP("multicast source and IPv6: MAC first", MAC);

    /* IPv4 header */
    BUILD(udp_spec(8));
    n = 14 + 19;
    DROP("19 bytes of IP", SHORT);
    BUILD(udp_spec(8));
    ip[0] = 0x65;
    DROP("version 6", IP_VERSION);
    ip[0] = 0x55;
    DROP("version 5", IP_VERSION);
    ip[0] = 0x64;
    DROP("version 6, IHL 4: version first", IP_VERSION);
    BUILD(udp_spec(8));
    ip[0] = 0x44;
    DROP("IHL 4", IP_HLEN);
    ip[0] = 0x40;
    DROP("IHL 0", IP_HLEN);
    ip[0] = 0x4f;
    DROP("IHL 15, 28 bytes of IP", IP_HLEN);
    BUILD(udp_spec(32));
    ip[0] = 0x4f;
    n = 14 + 59;
    DROP("IHL 15, 59 bytes of IP", IP_HLEN);
    s = udp_spec(8);
    s.ihl = 4;
    s.tot_delta = 1000;
    n = build(g_f, &s);
    DROP("IHL 4, total too big: IHL first", IP_HLEN);
    s = udp_spec(8);
    s.tot_delta = 1;
    n = build(g_f, &s);
    DROP("total length past the frame", IP_LEN);
    s.tot_delta = 1;
    s.bad_ip_csum = 1;
    n = build(g_f, &s);
    DROP("total length past the frame, bad checksum: length first", IP_LEN);
    s = udp_spec(8);
    s.tot_delta = -17;
    n = build(g_f, &s);
    DROP("total length 19", IP_LEN);
    s = udp_spec(8);
    s.ihl = 6;
    s.tot_delta = -17;
    n = build(g_f, &s);
    DROP("total length 23, IHL 6", IP_LEN);
    s = udp_spec(8);
    s.tot_delta = -36;
    n = build(g_f, &s);
    DROP("total length 0", IP_LEN);
    s = udp_spec(8);
    s.tot_delta = 65535 - 36;
    n = build(g_f, &s);
    DROP("total length 65535", IP_LEN);
    s = udp_spec(8);
    s.bad_ip_csum = 1;
    n = build(g_f, &s);
    DROP("bad IP checksum", IP_CSUM);
    s.ihl = 9;
    n = build(g_f, &s);
    DROP("bad IP checksum with options", IP_CSUM);
    s = udp_spec(8);
    s.ihl = 9;
    n = build(g_f, &s);
    ip[25] ^= 0x10;                     /* an option byte */
    DROP("an option byte changed", IP_CSUM);
    s = udp_spec(8);
    memcpy(s.dst_ip, OTHER_IP, 4);
    s.bad_ip_csum = 1;
    n = build(g_f, &s);
    DROP("bad checksum and another IP: checksum first", IP_CSUM);
    static const uint16_t frags[5] = { 0x2000, 0x6000, 0x0001, 0x1fff, 0x2001 };
    for (int i = 0; i < 5; i++) {
        s = udp_spec(8);
        s.frag = frags[i];
        n = build(g_f, &s);
        DROP("a fragment", IP_FRAG);
    }
    s = icmp_spec(8);
    s.frag = 0x2000;
    n = build(g_f, &s);
    DROP("an ICMP fragment", IP_FRAG);
    s = udp_spec(8);
    s.frag = 0x0010;
    memcpy(s.dst_ip, OTHER_IP, 4);
    n = build(g_f, &s);
    DROP("a fragment to another IP: fragment first", IP_FRAG);
    s = udp_spec(8);
    memcpy(s.dst_ip, OTHER_IP, 4);
    n = build(g_f, &s);
    DROP("another IP", IP_DST);
    check_drop("another IP, promisc", g_f, n, &promisc, QV_DP_DROP_IP_DST);
    memcpy(s.dst_ip, BCAST_IP, 4);
    n = build(g_f, &s);
    DROP("the broadcast IP", IP_DST);
    memcpy(s.dst_ip, OTHER_IP, 4);
    s.proto = 6;
    n = build(g_f, &s);
    DROP("TCP to another IP: IP first", IP_DST);
    static const uint8_t protos[5] = { 6, 0, 2, 58, 255 };
    for (int i = 0; i < 5; i++) {
        s = udp_spec(8);
        s.l4 = L4_RAW;
        s.proto = protos[i];
        n = build(g_f, &s);
        DROP("not UDP nor ICMP", IP_PROTO);
    }

    /* ICMP */
    s = icmp_spec(8);
    s.tot_delta = -12;
    n = build(g_f, &s);
    DROP("4 bytes of ICMP", ICMP_BAD);
    s.tot_delta = -16;
    n = build(g_f, &s);
    DROP("no ICMP", ICMP_BAD);
    s = icmp_spec(9);
    s.bad_icmp_csum = 1;
    n = build(g_f, &s);
    DROP("bad ICMP checksum", ICMP_BAD);
    s = icmp_spec(9);
    s.tot_delta = -1;                   /* the checksum covers 1 byte more */
    s.pad = 1;
    n = build(g_f, &s);
    DROP("ICMP checksum over a byte past the IP total", ICMP_BAD);
    static const uint8_t types[4][2] = { { 0, 0 }, { 13, 0 }, { 8, 1 }, { 3, 3 } };
    for (int i = 0; i < 4; i++) {
        s = icmp_spec(8);
        s.icmp_type = types[i][0];
        s.icmp_code = types[i][1];
        n = build(g_f, &s);
        DROP("ICMP other than echo request", ICMP_OTHER);
        s.bad_icmp_csum = 1;
        n = build(g_f, &s);
        DROP("ICMP other, bad checksum: type first", ICMP_OTHER);
    }

    /* UDP */
    s = udp_spec(8);
    s.tot_delta = -12;
    n = build(g_f, &s);
    DROP("4 bytes of UDP", UDP_LEN);
    s.tot_delta = -16;
    n = build(g_f, &s);
    DROP("no UDP", UDP_LEN);
    s = udp_spec(8);
    s.ulen_delta = -9;
    n = build(g_f, &s);
    DROP("UDP length 7", UDP_LEN);
    s.ulen_delta = -16;
    n = build(g_f, &s);
    DROP("UDP length 0", UDP_LEN);
    s.ulen_delta = 1;
    n = build(g_f, &s);
    DROP("UDP length past the IP payload", UDP_LEN);
    s.pad = 10;
    n = build(g_f, &s);
    DROP("UDP length into the Ethernet padding", UDP_LEN);
    s = udp_spec(8);
    s.ulen_delta = 1;
    s.csum = CS_BAD;
    n = build(g_f, &s);
    DROP("UDP length and checksum bad: length first", UDP_LEN);
    s = udp_spec(8);
    s.csum = CS_BAD;
    n = build(g_f, &s);
    DROP("bad UDP checksum", UDP_CSUM);
    s.dport = SELF_PORT + 1;
    n = build(g_f, &s);
    DROP("another port, bad checksum: port first", UDP_PORT);
    s.ulen_delta = -9;
    n = build(g_f, &s);
    DROP("another port, UDP length 7: port first", UDP_PORT);
    s = udp_spec(8);
    s.dport = 0x581b;                   /* 7000 byte-swapped */
    n = build(g_f, &s);
    DROP("another port", UDP_PORT);
    s.dport = SELF_PORT;
    s.sport = SELF_PORT;
    s.l4 = L4_UDP;
    n = build(g_f, &s);
    g_f[36] = 0x00;
    g_f[37] = 0x00;
    DROP("port 0", UDP_PORT);

#undef DROP
#undef BUILD

    for (int r = 0; r < QV_DP_DROP__COUNT; r++) {
        CU_ASSERT(g_seen[r] > 0);
        if (!g_seen[r])
            printf("\n  no case for %s ", qv_dp_drop_name((enum qv_dp_drop)r));
    }
}

/* ---- every truncation of valid frames ------------------------------------ */

static void truncate_all(const uint8_t *f, uint32_t len, uint32_t l2, int is_arp)
{
    struct qv_dp_self self = self_of(0, 0);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    uint32_t hlen = is_arp ? 0 : (f[l2] & 15u) * 4u;
    int bad = 0;
    for (uint32_t n = 0; n < len; n++) {
        enum qv_dp_drop want;
        if (n < l2 || is_arp || n < l2 + 20)
            want = QV_DP_DROP_SHORT;
        else if (n < l2 + hlen)
            want = QV_DP_DROP_IP_HLEN;
        else
            want = QV_DP_DROP_IP_LEN;
        enum qv_dp_kind k = run(f, n, &self, &flow, &drop, NULL);
        if (k != QV_DP_DROPPED || drop != want) {
            bad++;
            printf("\n  cut to %u of %u: kind %d drop %s ", n, len, (int)k,
                   qv_dp_drop_name(drop));
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_NOT_EQUAL(run(f, len, &self, &flow, &drop, NULL), QV_DP_DROPPED);
}

static void test_truncation(void)
{
    struct spec s = udp_spec(40);
    uint32_t len = build(g_f, &s);
    truncate_all(g_f, len, 14, 0);
    s.tpid = 0x8100;
    s.ihl = 6;
    len = build(g_f, &s);
    truncate_all(g_f, len, 18, 0);
    s.ihl = 15;
    len = build(g_f, &s);
    truncate_all(g_f, len, 18, 0);
    s = icmp_spec(11);
    len = build(g_f, &s);
    truncate_all(g_f, len, 14, 0);
    struct arp_spec a = arp_spec();
    a.pad = 0;
    len = build_arp(g_f, &a);
    truncate_all(g_f, len, 14, 1);
    a.tpid = 0x8100;
    len = build_arp(g_f, &a);
    truncate_all(g_f, len, 18, 1);
}

/* ---- the MAC rules that accept ------------------------------------------- */

static void test_mac_accept(void)
{
    struct qv_dp_self promisc = self_of(1, 0);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    const uint8_t *dsts[4] = { SELF_MAC, OTHER_MAC, MCAST_MAC, BCAST_MAC };
    for (int d = 0; d < 4; d++) {
        struct spec s = udp_spec(16);
        memcpy(s.dst_mac, dsts[d], 6);
        uint32_t len = build(g_f, &s);
        CU_ASSERT_EQUAL(run(g_f, len, &promisc, &flow, &drop, NULL), QV_DP_UDP);
        CU_ASSERT(memcmp(flow.peer_mac, PEER_MAC, 6) == 0);
        s = icmp_spec(16);
        memcpy(s.dst_mac, dsts[d], 6);
        len = build(g_f, &s);
        CU_ASSERT_EQUAL(run(g_f, len, &promisc, &flow, &drop, g_out), QV_DP_ICMP_REPLY);
        CU_ASSERT(memcmp(g_out, PEER_MAC, 6) == 0);     /* to the sender */
        CU_ASSERT(memcmp(g_out + 6, SELF_MAC, 6) == 0); /* from us */
    }
}

/* ---- names ---------------------------------------------------------------- */

static void test_names(void)
{
    for (int r = 0; r < QV_DP_DROP__COUNT; r++) {
        const char *a = qv_dp_drop_name((enum qv_dp_drop)r);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a);
        CU_ASSERT(a[0] != '\0');
        CU_ASSERT(strcmp(a, "unknown") != 0);
        int clean = 1;
        for (const char *c = a; *c; c++)
            clean &= (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_';
        CU_ASSERT(clean);
        for (int q = 0; q < r; q++)
            CU_ASSERT(strcmp(a, qv_dp_drop_name((enum qv_dp_drop)q)) != 0);
    }
    CU_ASSERT_STRING_EQUAL(qv_dp_drop_name(QV_DP_DROP_SHORT), "short");
    CU_ASSERT_STRING_EQUAL(qv_dp_drop_name(QV_DP_DROP_UDP_CSUM), "udp_csum");
    CU_ASSERT_STRING_EQUAL(qv_dp_drop_name(QV_DP_DROP__COUNT), "unknown");
    CU_ASSERT_STRING_EQUAL(qv_dp_drop_name((enum qv_dp_drop)1000), "unknown");
    CU_ASSERT_STRING_EQUAL(qv_dp_drop_name((enum qv_dp_drop)-1), "unknown");
}

/* ---- fuzz ----------------------------------------------------------------- */

static void test_fuzz(void)
{
    enum { NBASE = 9, ITERS = 200000, EXTRA = 48 };
    static uint8_t base[NBASE][1600];
    uint32_t blen[NBASE];
    struct spec s = udp_spec(64);
    blen[0] = build(base[0], &s);
    s.tpid = 0x8100;
    s.ihl = 6;
    s.pad = 5;
    blen[1] = build(base[1], &s);
    s = udp_spec(20);
    s.csum = CS_ZERO;
    blen[2] = build(base[2], &s);
    s.csum = CS_PARTIAL;
    blen[3] = build(base[3], &s);
    s = icmp_spec(13);
    blen[4] = build(base[4], &s);
    s.tpid = 0x88a8;
    s.ihl = 7;
    blen[5] = build(base[5], &s);
    struct arp_spec a = arp_spec();
    blen[6] = build_arp(base[6], &a);
    a.tpid = 0x8100;
    blen[7] = build_arp(base[7], &a);
    s = udp_spec(576);
    blen[8] = build(base[8], &s);

    static uint8_t f[1600 + EXTRA];
    unsigned kinds[4] = { 0 };
    int reasons[QV_DP_DROP__COUNT] = { 0 };
    int bad = 0;
    for (int it = 0; it < ITERS; it++) {
        int b = (int)(xorshift() % NBASE);
        uint32_t len = blen[b];
        memcpy(f, base[b], len);
        int muts = 1 + (int)(xorshift() % 4);
        for (int m = 0; m < muts; m++) {
            uint64_t r = xorshift();
            switch (r % 8) {
            case 0: case 1: case 2:         /* a header byte flipped */
                if (len)
                    f[(r >> 8) % (len < 64 ? len : 64)] ^= (uint8_t)(1u << ((r >> 40) % 8));
                break;
            case 3: case 4:                 /* a random byte, anywhere */
                if (len)
                    f[(r >> 8) % len] = (uint8_t)(r >> 40);
                break;
            case 5:                         /* a header byte set to an edge value */
                if (len)
                    f[(r >> 8) % (len < 48 ? len : 48)] = (r >> 40) & 1 ? 0xff : 0x00;
                break;
            case 6:                         /* truncated */
                len = (uint32_t)((r >> 8) % (len + 1));
                break;
            case 7:                         /* extended with random bytes */
                for (uint32_t e = (uint32_t)((r >> 8) % EXTRA); e; e--)
                    if (len < sizeof f)
                        f[len++] = (uint8_t)xorshift();
                break;
            }
        }
        uint64_t r = xorshift();
        struct qv_dp_self self = self_of((int)(r & 1), (int)((r >> 1) & 1));
        struct qv_dp_flow flow;
        enum qv_dp_drop drop;
        uint8_t *copy = g_out;
        enum qv_dp_kind k = run(f, len, &self, &flow, &drop, copy);
        int ok = 1;
        switch (k) {
        case QV_DP_UDP:
            ok = flow.payload_off >= 42 && flow.payload_off + flow.payload_len <= len &&
                 memcmp(copy, f, len) == 0;
            break;
        case QV_DP_ARP_REPLY:
        case QV_DP_ICMP_REPLY:
            ok = len >= 42 && memcmp(copy + 6, SELF_MAC, 6) == 0 && !(copy[0] & 1);
            break;
        case QV_DP_DROPPED:
            ok = (unsigned)drop < QV_DP_DROP__COUNT;
            if (ok)
                reasons[drop]++;
            break;
        default:
            ok = 0;
        }
        if ((unsigned)k < 4)
            kinds[k]++;
        if (!ok) {
            if (bad < 5)
                printf("\n  fuzz %d: base %d len %u kind %d ", it, b, len, (int)k);
            bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* the fuzz reaches every outcome and most reasons */
    for (int k = 0; k < 4; k++)
        CU_ASSERT(kinds[k] > 1000);
    int nreasons = 0;
    for (int r = 0; r < QV_DP_DROP__COUNT; r++)
        nreasons += reasons[r] > 0;
    CU_ASSERT(nreasons >= QV_DP_DROP__COUNT - 2);
    printf("\n  fuzz: %u requests, %u ARP, %u ICMP, %u dropped (%d reasons) ", kinds[0],
           kinds[1], kinds[2], kinds[3], nreasons);
}

/* ---- cost ----------------------------------------------------------------- */

static void test_cost(void)
{
    struct qv_dp_self self = self_of(0, 0);
    struct qv_dp_flow flow;
    enum qv_dp_drop drop;
    /* a 128-d SEARCH request: 64 bytes of header and 512 of vector */
    struct spec s = udp_spec(576);
    uint32_t len = build(g_f + 2, &s);  /* the IP header 4-byte aligned, as in an mbuf */
    uint8_t *f = g_f + 2;
    CU_ASSERT_EQUAL_FATAL(len, 618);
    CU_ASSERT_EQUAL_FATAL(qv_dp_classify(f, len, &self, &flow, &drop), QV_DP_UDP);
    enum { REPS = 500000 };
    uint64_t sum = 0;
    int64_t t0 = qv_now_ns();
    for (int i = 0; i < REPS; i++)
        sum += qv_dp_classify(f, len, &self, &flow, &drop) + flow.payload_len;
    double full = (double)(qv_now_ns() - t0) / REPS;
    CU_ASSERT_EQUAL(sum, (uint64_t)REPS * 576);

    s.csum = CS_ZERO;
    build(f, &s);
    CU_ASSERT_EQUAL_FATAL(qv_dp_classify(f, len, &self, &flow, &drop), QV_DP_UDP);
    sum = 0;
    t0 = qv_now_ns();
    for (int i = 0; i < REPS; i++)
        sum += qv_dp_classify(f, len, &self, &flow, &drop) + flow.payload_len;
    double none = (double)(qv_now_ns() - t0) / REPS;
    CU_ASSERT_EQUAL(sum, (uint64_t)REPS * 576);

    uint32_t hl = qv_dp_answer_hdr_len(&flow);
    memcpy(g_out + 2 + hl, f + flow.payload_off, 576);
    sum = 0;
    t0 = qv_now_ns();
    for (int i = 0; i < REPS; i++)
        sum += qv_dp_write_answer(g_out + 2, &flow, &self, 576, (uint16_t)i, 1);
    double answer = (double)(qv_now_ns() - t0) / REPS;
    CU_ASSERT_EQUAL(sum, (uint64_t)REPS * 618);
    printf("\n  classify of a 618-byte request: %.1f ns with the UDP checksum, %.1f ns "
           "without; an answer's headers + UDP checksum (576 bytes): %.1f ns ",
           full, none, answer);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("dp_pkt", NULL, NULL);
    CU_add_test(s, "checksum primitives: RFC 1071, offsets, chains", test_csum);
    CU_add_test(s, "checksum: AVX2 bulk sum = scalar = reference", test_csum_avx2);
    CU_add_test(s, "the NIC's rx checksum verdicts", test_rx_csum_flags);
    CU_add_test(s, "UDP requests: tags, options, padding, flows", test_udp_accept);
    CU_add_test(s, "UDP checksums: none, full, 0xffff, partial, corrupt", test_udp_csum);
    CU_add_test(s, "answer headers: known-answer bytes", test_answer_known);
    CU_add_test(s, "answer headers: fields, checksums, read back", test_answer_fields);
    CU_add_test(s, "ARP: replies, others, malformed", test_arp);
    CU_add_test(s, "ICMP echo: replies, odd lengths, every checksum", test_icmp);
    CU_add_test(s, "every drop reason, checks in order", test_drops);
    CU_add_test(s, "every truncation of valid frames", test_truncation);
    CU_add_test(s, "promiscuous MAC rules", test_mac_accept);
    CU_add_test(s, "drop reason names", test_names);
    CU_add_test(s, "fuzz: 200k mutated frames", test_fuzz);
    CU_add_test(s, "classify cost of a 128-d request (printed)", test_cost);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
