/*
 * config.c - INI configuration validated against a schema (config.h).
 *
 * The schema
 * ----------
 * qv_conf_schema[] below is the only list of keys Quiver knows.  A key's
 * entry gives its type, default (as it would be written in the file),
 * range or choices and help; conf/quiver.conf documents the same keys and
 * tests/unit/test_common.c checks that the two agree.  A few keys need a
 * rule the schema row cannot express (segment_capacity must be a multiple
 * of 16); those live in extra_checks[], next to the schema.
 *
 * A configuration is an array of values parallel to the schema.  Each
 * value keeps its text (NULL: the schema default), its parsed form and its
 * origin string "path:line" (NULL: "default"; the static "override" for
 * qv_config_set), so every value can say where it came from.
 *
 * Parsing and line numbers
 * ------------------------
 * inih reports only the first failing line and calls the handler without a
 * line number, so the text is fed to ini_parse_stream() through our own
 * reader, one line per call: while inih runs the handler for a line, the
 * reader's counter is that line's number.  The reader also
 *   - strips leading blanks, so an indented "key = value" is an ordinary
 *     key and never an inih multi-line continuation (Quiver has none);
 *   - checks section headers, so an unknown section is reported at its
 *     header even when it holds no keys;
 *   - refuses lines longer than inih's buffer instead of letting inih split
 *     them into two lines.
 * The first error wins, whichever of reader, handler or inih found it:
 * inih's return value is the first line it saw fail (a syntax error or a
 * handler refusal), and the context remembers the first line we refused
 * ourselves; the smaller line is reported.
 *
 * Memory: everything is qv_malloc'd under QV_MEM_CONFIG; a failed load
 * frees all it took.  Readers of a loaded configuration never write it, so
 * concurrent getters are safe.
 */
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"

#define QV_CONF_MAX_FILE ((size_t)1 << 20)  /* a config file is small */
#define KIB 1024.0
#define MIB (1024.0 * 1024.0)
#define GIB (1024.0 * 1024.0 * 1024.0)

const struct qv_conf_key qv_conf_schema[] = {
    { "log", "level", QV_CONF_ENUM, "info", 0, 0, "error|warn|info|debug",
      "messages at this level and more severe are logged" },
    { "simd", "level", QV_CONF_ENUM, "auto", 0, 0, "auto|ref|avx2|avx512",
      "cap on the SIMD kernels; auto: the best this CPU supports" },
    { "memory", "hugepages", QV_CONF_ENUM, "auto", 0, 0, "auto|off|on|thp",
      "vector memory pages: auto = hugetlb, else THP, else plain; on = "
      "hugetlb or fail; thp = transparent huge pages; off = plain" },
    { "memory", "numa_node", QV_CONF_INT, "-1", -1, 1023, NULL,
      "NUMA node to bind vector memory to; -1 = no binding" },
    { "memory", "arena_chunk", QV_CONF_SIZE, "64M", 2 * MIB, 64 * GIB, NULL,
      "bytes mapped at a time for vector memory (K, M, G suffixes)" },
    { "workers", "threads", QV_CONF_INT, "0", 0, 1024, NULL,
      "worker threads; 0 = one per CPU of the affinity mask" },
    { "workers", "pin", QV_CONF_BOOL, "true", 0, 0, NULL,
      "pin each worker thread to its own CPU" },
    { "flat", "segment_capacity", QV_CONF_INT, "65536", 16, 16777216, NULL,
      "vectors per segment of the flat index; a multiple of 16" },
    { "flat", "prefetch_groups", QV_CONF_INT, "0", 0, 64, NULL,
      "software prefetch distance of single-query scans, in groups of 16 "
      "vectors; 0 leaves it to the hardware prefetcher" },
    { "opencl", "platform", QV_CONF_STRING, "any", 0, 0, NULL,
      "OpenCL platform: a case-insensitive substring of its name (clinfo -l); "
      "any = the first with a matching device" },
    { "opencl", "device_type", QV_CONF_ENUM, "all", 0, 0, "all|cpu|gpu|accelerator",
      "OpenCL device type to use" },
    { "opencl", "device_index", QV_CONF_INT, "0", 0, 255, NULL,
      "which of the matching devices, counted over platforms in order" },
    { "opencl", "cache_dir", QV_CONF_STRING, "auto", 0, 0, NULL,
      "program binary cache directory; auto = $XDG_CACHE_HOME/quiver/opencl, "
      "else ~/.cache/quiver/opencl, else /var/cache/quiver/opencl; off = none" },
    { "opencl", "binary", QV_CONF_STRING, "none", 0, 0, NULL,
      "prebuilt program binary (FPGA offline compilers); none = build the "
      "embedded source" },
    { "opencl", "local_size", QV_CONF_INT, "0", 0, 1024, NULL,
      "work-items per work-group of the scan kernels; a power of two, or 0 "
      "= auto (16 on CPU devices, 64 elsewhere)" },
    { "opencl", "max_alloc", QV_CONF_SIZE, "0", 0, 1024 * GIB, NULL,
      "largest device buffer; 0 = the device's CL_DEVICE_MAX_MEM_ALLOC_SIZE" },
    { "opencl", "resident_bytes", QV_CONF_SIZE, "0", 0, 1024 * GIB, NULL,
      "device memory for resident list copies (devices without shared "
      "memory), LRU-evicted; 0 = half the device's memory" },
    { "fpga", "mode", QV_CONF_ENUM, "off", 0, 0, "off|thread|process",
      "the FPGA card: off = none; thread = a simulated card in this process; "
      "process = connect to the running qv-fpga-sim (or card) named `name`" },
    { "fpga", "name", QV_CONF_STRING, "0", 0, 0, NULL,
      "card name: the shm object /quiver-fpga-<name> holds its BAR0" },
    { "fpga", "ring_entries", QV_CONF_INT, "256", 16, 4096, NULL,
      "entries of the driver's submission and completion rings; a power of two" },
    { "fpga", "timeout_ms", QV_CONF_INT, "2000", 1, 3600000, NULL,
      "a work unit that makes no progress this long is a fault (reset)" },
    { "fpga", "watchdog_ms", QV_CONF_INT, "250", 1, 60000, NULL,
      "the card's HEARTBEAT must change within this while units are in flight" },
    { "fpga", "reset_timeout_ms", QV_CONF_INT, "1000", 1, 60000, NULL,
      "a card reset must complete within this, else the card is down" },
    { "fpga", "hbm_budget", QV_CONF_SIZE, "0", 0, 1024 * GIB, NULL,
      "card memory for resident lists, LRU-evicted; 0 = all of HBM_BYTES" },
    { "fpga", "hbm_bytes", QV_CONF_SIZE, "16G", 1 * MIB, 1024 * GIB, NULL,
      "simulated card: device memory (an Alveo U55C has 16 GiB of HBM2e)" },
    { "fpga", "clock_mhz", QV_CONF_INT, "300", 1, 10000, NULL,
      "simulated card, timing model: kernel clock in MHz" },
    { "fpga", "lanes", QV_CONF_INT, "2048", 1, 1048576, NULL,
      "simulated card, timing model: distance operations per cycle" },
    { "fpga", "hbm_mbps", QV_CONF_INT, "460000", 1, 100000000, NULL,
      "simulated card, timing model: HBM bandwidth in 10^6 bytes/s" },
    { "fpga", "pcie_mbps", QV_CONF_INT, "12000", 1, 10000000, NULL,
      "simulated card, timing model: PCIe DMA bandwidth in 10^6 bytes/s" },
    { "fpga", "launch_ns", QV_CONF_INT, "5000", 0, 1000000000, NULL,
      "simulated card, timing model: fixed cost per descriptor in ns" },
    { "fpga", "sim_opencl", QV_CONF_BOOL, "true", 0, 0, NULL,
      "simulated card: run the scans with the OpenCL kernels (POCL) when an "
      "OpenCL device exists, else on the CPU" },
    { "fpga", "sim_pace", QV_CONF_BOOL, "false", 0, 0, NULL,
      "simulated card: complete no earlier than the modelled device time" },
    { "router", "engines", QV_CONF_STRING, "cpu,opencl,fpga", 0, 0, NULL,
      "engines the router dispatches to, a comma list of cpu, opencl, fpga; "
      "those that fail to open are left out" },
    { "router", "calibrate", QV_CONF_BOOL, "true", 0, 0, NULL,
      "measure each engine's cost parameters at start (under 2 s; cached)" },
    { "router", "calibration_dir", QV_CONF_STRING, "auto", 0, 0, NULL,
      "calibration cache directory; auto = $XDG_CACHE_HOME/quiver/router, else "
      "~/.cache/quiver/router, else /var/cache/quiver/router; off = none" },
    { "router", "ewma_alpha", QV_CONF_DOUBLE, "0.2", 0, 1, NULL,
      "weight of each completion in the observed/predicted correction" },
    { "router", "breaker_failures", QV_CONF_INT, "3", 1, 1000000, NULL,
      "consecutive failures of an engine that open its circuit breaker" },
    { "router", "breaker_cooldown_ms", QV_CONF_INT, "1000", 1, 3600000, NULL,
      "time an open breaker waits before letting one probe unit through" },
    { "router", "split", QV_CONF_BOOL, "true", 0, 0, NULL,
      "split a big unit by lists over several engines" },
    { "router", "split_min_ns", QV_CONF_INT, "200000", 0, 1000000000000, NULL,
      "predicted ns on the best engine below which a unit is never split" },
    { "batcher", "batching", QV_CONF_BOOL, "true", 0, 0, NULL,
      "batch queries dynamically; false = every query is its own batch" },
    { "batcher", "max_batch", QV_CONF_INT, "64", 1, 4096, NULL,
      "largest batch (1 = no batching)" },
    { "batcher", "queue_capacity", QV_CONF_INT, "1024", 1, 1048576, NULL,
      "queries queued per collection and class before offers get EBUSY" },
    { "batcher", "interactive_budget_us", QV_CONF_INT, "10000", 1, 3600000000LL, NULL,
      "latency budget of an interactive query without its own deadline" },
    { "batcher", "bulk_budget_us", QV_CONF_INT, "1000000", 1, 3600000000LL, NULL,
      "latency budget of a bulk query without its own deadline" },
    { "batcher", "margin_us", QV_CONF_INT, "200", 0, 3600000000LL, NULL,
      "safety margin a batch is flushed ahead of its earliest deadline" },
    { "batcher", "interactive_inflight", QV_CONF_INT, "2", 1, 1024, NULL,
      "interactive batches in flight per collection" },
    { "batcher", "bulk_inflight", QV_CONF_INT, "1", 1, 1024, NULL,
      "bulk batches in flight per collection" },
    { "batcher", "interactive_workers", QV_CONF_INT, "4", 1, 65536, NULL,
      "interactive batches in flight over all collections" },
    { "batcher", "bulk_workers", QV_CONF_INT, "2", 1, 65536, NULL,
      "bulk batches in flight over all collections" },
    { "batcher", "ewma_alpha", QV_CONF_DOUBLE, "0.125", 0.001, 1, NULL,
      "weight of each new inter-arrival gap in the arrival-rate estimate" },
    { "batcher", "max_collections", QV_CONF_INT, "64", 1, 65536, NULL,
      "collections the batcher can register" },
    { "batcher", "idle_flush", QV_CONF_BOOL, "true", 0, 0, NULL,
      "flush at once while the dispatcher is idle and arrivals are sparse" },
    { "cache", "policy", QV_CONF_ENUM, "lru", 0, 0, "lru|lfu",
      "eviction policy of the result cache" },
    { "cache", "entries", QV_CONF_INT, "100000", 0, 1000000000, NULL,
      "result cache capacity in entries; 0 = no result cache" },
    { "cache", "bytes", QV_CONF_SIZE, "256M", 0, 1024 * GIB, NULL,
      "result cache capacity in bytes" },
    { "cache", "ttl_ms", QV_CONF_INT, "0", 0, 1000000000, NULL,
      "result cache entry lifetime in ms; 0 = no expiry" },
    { "cache", "semantic_entries", QV_CONF_INT, "1024", 0, 1000000000, NULL,
      "entries of the semantic (near-duplicate query) cache; 0 = off" },
    { "cache", "bitmap_bytes", QV_CONF_SIZE, "64M", 0, 1024 * GIB, NULL,
      "memory for cached filter bitmaps" },
    { "service", "max_k", QV_CONF_INT, "1024", 1, 100000, NULL,
      "largest k a request may ask for (sizes the dispatcher's result buffer)" },
    { "service", "cost_alpha", QV_CONF_DOUBLE, "0.1", 0.001, 1, NULL,
      "weight of each observed search in the cost model's correction" },
    { "server", "max_collections", QV_CONF_INT, "64", 1, 65536, NULL,
      "collections the node holds at once" },
    { "server", "seal_rows", QV_CONF_INT, "65536", 16, 1073741824, NULL,
      "rows at which a growing segment is sealed and its index built" },
    { "server", "compact_ratio", QV_CONF_DOUBLE, "0.5", 0, 1, NULL,
      "deleted share of a sealed segment that rebuilds it; 0 = never" },
    { "server", "build_share", QV_CONF_DOUBLE, "1", 0.01, 1, NULL,
      "share of one CPU the background index builds and compactions may use" },
    { "server", "bind", QV_CONF_STRING, "127.0.0.1", 0, 0, NULL,
      "address the UDP and TCP transports listen on" },
    { "server", "udp_port", QV_CONF_INT, "7700", 0, 65535, NULL,
      "UDP port of the protocol (0 = any free port)" },
    { "server", "tcp_port", QV_CONF_INT, "7701", 0, 65535, NULL,
      "TCP port of the protocol (0 = any free port)" },
    { "server", "admin_bind", QV_CONF_STRING, "127.0.0.1", 0, 0, NULL,
      "address of the admin HTTP API" },
    { "server", "admin_port", QV_CONF_INT, "7780", 0, 65535, NULL,
      "port of the admin HTTP API (0 = any free port)" },
    { "server", "udp_workers", QV_CONF_INT, "2", 1, 64, NULL,
      "UDP receive threads, one SO_REUSEPORT socket each" },
    { "server", "tcp_workers", QV_CONF_INT, "1", 1, 64, NULL,
      "TCP threads" },
    { "server", "auth_key_file", QV_CONF_STRING, "none", 0, 0, NULL,
      "file holding the HMAC key requests must be signed with; none = no auth" },
    { "server", "replay_entries", QV_CONF_INT, "65536", 1, 16777216, NULL,
      "write answers kept to answer a retried write without applying it again" },
    { "server", "replay_bytes", QV_CONF_SIZE, "16M", 4096, 64 * GIB, NULL,
      "memory for the kept write answers" },
    { "server", "replay_ttl_ms", QV_CONF_INT, "30000", 1, 86400000, NULL,
      "how long a write's answer is kept for its retries, in ms" },
    { "storage", "data_dir", QV_CONF_STRING, "none", 0, 0, NULL,
      "directory of the WALs; none = collections live in memory only" },
    { "storage", "sync", QV_CONF_ENUM, "always", 0, 0, "always|interval|never",
      "when a logged write is made durable before it is acknowledged" },
    { "storage", "sync_interval_ms", QV_CONF_INT, "10", 1, 60000, NULL,
      "sync = interval: fdatasync period in ms" },
    { "storage", "wal_segment_bytes", QV_CONF_SIZE, "64M", 65536, 64 * GIB, NULL,
      "WAL segment files roll at this size" },
    { "storage", "snapshot_wal_bytes", QV_CONF_SIZE, "256M", 0, 1024 * GIB, NULL,
      "snapshot a collection once its WAL holds this much; 0 = on request only" },
    { "dataplane", "mode", QV_CONF_ENUM, "off", 0, 0, "off|dpdk",
      "off = UDP on kernel sockets only; dpdk = also serve UDP through DPDK" },
    { "dataplane", "main_lcore", QV_CONF_INT, "0", 0, 1023, NULL,
      "CPU of the EAL's main lcore (the daemon's main thread, no packet work)" },
    { "dataplane", "lcores", QV_CONF_STRING, "1", 0, 0, NULL,
      "CPUs of the worker lcores (lcore 1, 2, ...), comma-separated; one queue pair each" },
    { "dataplane", "devices", QV_CONF_STRING, "none", 0, 0, NULL,
      "ports: PCI addresses or vdev specs, separated by ;" },
    { "dataplane", "ip", QV_CONF_STRING, "none", 0, 0, NULL,
      "the appliance's IPv4 address on the DPDK ports" },
    { "dataplane", "mac", QV_CONF_STRING, "auto", 0, 0, NULL,
      "the MAC answered for ip; auto = the port's own" },
    { "dataplane", "udp_port", QV_CONF_INT, "7700", 1, 65535, NULL,
      "UDP port of the protocol on the DPDK ports" },
    { "dataplane", "promisc", QV_CONF_BOOL, "false", 0, 0, NULL,
      "promiscuous ports: accept frames to any destination MAC" },
    { "dataplane", "accept_partial_csum", QV_CONF_BOOL, "true", 0, 0, NULL,
      "accept the partial UDP checksums of Linux senders with offload" },
    { "dataplane", "udp_checksum", QV_CONF_BOOL, "true", 0, 0, NULL,
      "fill UDP checksums of answers (false = 0, none)" },
    { "dataplane", "memory", QV_CONF_SIZE, "256M", 64 * MIB, 1024 * GIB, NULL,
      "DPDK memory (EAL -m)" },
    { "dataplane", "hugepages", QV_CONF_ENUM, "auto", 0, 0, "auto|on|off",
      "huge pages for DPDK memory; auto falls back to --no-huge" },
    { "dataplane", "huge_dir", QV_CONF_STRING, "auto", 0, 0, NULL,
      "hugetlbfs mount; auto = the first one in /proc/mounts" },
    { "dataplane", "file_prefix", QV_CONF_STRING, "auto", 0, 0, NULL,
      "EAL --file-prefix; auto = quiver-PID" },
    { "dataplane", "eal_args", QV_CONF_STRING, "none", 0, 0, NULL,
      "extra EAL arguments, space-separated" },
    { "dataplane", "mbufs", QV_CONF_INT, "8191", 1023, 16777215, NULL,
      "mbufs per port's mempool" },
    { "dataplane", "mbuf_cache", QV_CONF_INT, "256", 0, 512, NULL,
      "per-lcore mempool cache" },
    { "dataplane", "rx_desc", QV_CONF_INT, "1024", 64, 32768, NULL,
      "receive descriptors per queue" },
    { "dataplane", "tx_desc", QV_CONF_INT, "1024", 64, 32768, NULL,
      "transmit descriptors per queue" },
    { "dataplane", "burst", QV_CONF_INT, "32", 1, 64, NULL,
      "packets per rx / tx burst" },
    { "dataplane", "slots", QV_CONF_INT, "1024", 128, 65536, NULL,
      "requests in flight per lcore (a power of two)" },
    { NULL, NULL, 0, NULL, 0, 0, NULL, NULL },
};

#define NKEYS (sizeof(qv_conf_schema) / sizeof(qv_conf_schema[0]) - 1)

/* Rules beyond type and range.  check() returns 0, or -1 after writing why
 * the value is refused (and the fix) into why. */
struct extra_check {
    const char *section, *key;
    int (*check)(int64_t v, char *why, size_t len);
};

static int check_multiple_of_16(int64_t v, char *why, size_t len)
{
    int64_t lo = v / 16 * 16;

    if (v % 16 == 0)
        return 0;
    if (lo < 16)
        snprintf(why, len, "expected a multiple of 16 (the scan kernels "
                 "work on blocks of 16 vectors); try 16");
    else
        snprintf(why, len, "expected a multiple of 16 (the scan kernels "
                 "work on blocks of 16 vectors); try %lld or %lld",
                 (long long)lo, (long long)(lo + 16));
    return -1;
}

static int check_power_of_two(int64_t v, char *why, size_t len)
{
    int64_t lo = 1;

    if (v == 0 || (v & (v - 1)) == 0)      /* 0 = automatic */
        return 0;
    while (lo * 2 <= v)
        lo *= 2;
    snprintf(why, len, "expected a power of two (work-group sizes); try %lld or %lld",
             (long long)lo, (long long)(lo * 2));
    return -1;
}

static int check_ring_entries(int64_t v, char *why, size_t len)
{
    int64_t lo = 16;

    if ((v & (v - 1)) == 0)
        return 0;
    while (lo * 2 <= v)
        lo *= 2;
    snprintf(why, len, "expected a power of two (ring indices wrap by masking); try "
             "%lld or %lld", (long long)lo, (long long)(lo * 2));
    return -1;
}

static const struct extra_check extra_checks[] = {
    { "flat", "segment_capacity", check_multiple_of_16 },
    { "opencl", "local_size", check_power_of_two },
    { "fpga", "ring_entries", check_ring_entries },
    { "batcher", "queue_capacity", check_ring_entries },
    { "dataplane", "slots", check_ring_entries },
};

union conf_num {
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    int e;
};

struct conf_val {
    char *text;             /* owned; NULL: the schema default */
    char *origin;           /* owned "path:line"; NULL: see origin_static */
    const char *origin_static;  /* "default" or "override" */
    int line;               /* line in the loaded file; 0: not from it */
    union conf_num v;
};

struct qv_config {
    struct conf_val vals[NKEYS];
};

struct parse_ctx {
    struct qv_config *cfg;
    const char *name;       /* path, or the name given for a string */
    const char *pos;        /* next unread byte of the text */
    int line;               /* number of the line last handed to inih */
    int err;                /* first error we found ourselves; 0 none */
    int err_line;
};

/* ---- schema lookups --------------------------------------------------- */

static int find_key(const char *section, const char *key)
{
    size_t i;

    for (i = 0; i < NKEYS; i++)
        if (strcmp(qv_conf_schema[i].section, section) == 0 &&
            strcmp(qv_conf_schema[i].key, key) == 0)
            return (int)i;
    return -1;
}

static bool section_known(const char *section)
{
    size_t i;

    for (i = 0; i < NKEYS; i++)
        if (strcmp(qv_conf_schema[i].section, section) == 0)
            return true;
    return false;
}

/* "log, simd, memory, ..." in schema order, each once. */
static void list_sections(char *buf, size_t len)
{
    size_t i, j, used = 0;

    buf[0] = '\0';
    for (i = 0; i < NKEYS; i++) {
        for (j = 0; j < i; j++)
            if (strcmp(qv_conf_schema[j].section, qv_conf_schema[i].section) == 0)
                break;
        if (j < i)
            continue;
        used += (size_t)snprintf(buf + used, used < len ? len - used : 0,
                                 "%s%s", used ? ", " : "",
                                 qv_conf_schema[i].section);
    }
}

/* "threads, pin": the keys of one section. */
static void list_keys(const char *section, char *buf, size_t len)
{
    size_t i, used = 0;

    buf[0] = '\0';
    for (i = 0; i < NKEYS; i++)
        if (strcmp(qv_conf_schema[i].section, section) == 0)
            used += (size_t)snprintf(buf + used, used < len ? len - used : 0,
                                     "%s%s", used ? ", " : "",
                                     qv_conf_schema[i].key);
}

/* "auto|ref|avx2" -> index of value, or -1. */
static int choice_index(const char *choices, const char *value)
{
    size_t vlen = strlen(value);
    const char *p = choices;
    int idx = 0;

    for (;;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);

        if (n == vlen && memcmp(p, value, n) == 0)
            return idx;
        if (bar == NULL)
            return -1;
        p = bar + 1;
        idx++;
    }
}

/* "auto|ref|avx2" -> "auto, ref, avx2". */
static void list_choices(const char *choices, char *buf, size_t len)
{
    size_t used = 0;
    const char *c;

    for (c = choices; *c && used + 3 < len; c++) {
        if (*c == '|') {
            buf[used++] = ',';
            buf[used++] = ' ';
        } else {
            buf[used++] = *c;
        }
    }
    buf[used] = '\0';
}

/* 2097152 -> "2M"; sizes not a whole number of K are printed in bytes. */
static void fmt_size(double bytes, char *buf, size_t len)
{
    unsigned long long b = (unsigned long long)bytes;

    if (b != 0 && b % (1ULL << 30) == 0)
        snprintf(buf, len, "%lluG", b >> 30);
    else if (b != 0 && b % (1ULL << 20) == 0)
        snprintf(buf, len, "%lluM", b >> 20);
    else if (b != 0 && b % (1ULL << 10) == 0)
        snprintf(buf, len, "%lluK", b >> 10);
    else
        snprintf(buf, len, "%llu", b);
}

/* ---- value checking ----------------------------------------------------- */

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (*s == '\0')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s)
        return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, uint64_t *out)
{
    unsigned long long v, mul = 1;
    char *end;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    switch (*end) {
    case '\0':           break;
    case 'k': case 'K':  mul = 1ULL << 10; end++; break;
    case 'm': case 'M':  mul = 1ULL << 20; end++; break;
    case 'g': case 'G':  mul = 1ULL << 30; end++; break;
    default:             return -1;
    }
    if (*end != '\0' || v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };
    size_t i;

    for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Parse and range-check value for schema key k.  Returns 0, or -1 after
 * writing what was expected into why. */
static int check_value(const struct qv_conf_key *k, const char *value,
                       union conf_num *out, char *why, size_t len)
{
    char lo[32], hi[32], list[200];
    size_t i;

    switch (k->type) {
    case QV_CONF_INT:
        if (parse_int(value, &out->i) < 0 || out->i < (int64_t)k->min ||
            out->i > (int64_t)k->max) {
            snprintf(why, len, "expected an integer in %lld..%lld",
                     (long long)k->min, (long long)k->max);
            return -1;
        }
        break;
    case QV_CONF_SIZE:
        if (parse_size(value, &out->u) < 0 || (double)out->u < k->min ||
            (double)out->u > k->max) {
            fmt_size(k->min, lo, sizeof(lo));
            fmt_size(k->max, hi, sizeof(hi));
            snprintf(why, len, "expected a size in %s..%s (bytes, or a "
                     "whole number with a K, M or G suffix)", lo, hi);
            return -1;
        }
        break;
    case QV_CONF_DOUBLE: {
        char *end;

        errno = 0;
        out->d = strtod(value, &end);
        if (*value == '\0' || *end != '\0' || errno != 0 ||
            !isfinite(out->d) || out->d < k->min || out->d > k->max) {
            snprintf(why, len, "expected a number in %g..%g", k->min, k->max);
            return -1;
        }
        break;
    }
    case QV_CONF_BOOL:
        if (parse_bool(value, &out->b) < 0) {
            snprintf(why, len, "expected a boolean: true, false, yes, no, "
                     "on, off, 1 or 0");
            return -1;
        }
        break;
    case QV_CONF_STRING:
        break;
    case QV_CONF_ENUM:
        out->e = choice_index(k->choices, value);
        if (out->e < 0) {
            list_choices(k->choices, list, sizeof(list));
            snprintf(why, len, "expected one of %s", list);
            return -1;
        }
        break;
    }
    for (i = 0; i < sizeof(extra_checks) / sizeof(extra_checks[0]); i++)
        if (strcmp(extra_checks[i].section, k->section) == 0 &&
            strcmp(extra_checks[i].key, k->key) == 0 &&
            extra_checks[i].check(out->i, why, len) < 0)
            return -1;
    return 0;
}

/* ---- storing values ----------------------------------------------------- */

static void val_release(struct conf_val *v)
{
    qv_free(v->text);
    qv_free(v->origin);
    v->text = NULL;
    v->origin = NULL;
}

/* Replace value idx with text, parsed as num, from name:line (line 0:
 * origin_static).  On ENOMEM the old value is kept. */
static int store_value(struct qv_config *cfg, int idx, const char *text,
                       const union conf_num *num, const char *name, int line,
                       const char *origin_static)
{
    struct conf_val *v = &cfg->vals[idx];
    char *t, *o = NULL;
    size_t olen;

    t = qv_strdup(text, QV_MEM_CONFIG);
    if (t == NULL)
        goto fail_text;
    if (line > 0) {
        olen = strlen(name) + 16;
        o = qv_malloc(olen, QV_MEM_CONFIG);
        if (o == NULL)
            goto fail_origin;
        snprintf(o, olen, "%s:%d", name, line);
    }
    val_release(v);
    v->text = t;
    v->origin = o;
    v->origin_static = origin_static;
    v->line = line;
    v->v = *num;
    return 0;

fail_origin:
    qv_free(t);
fail_text:
    if (line > 0)
        return qv_seterr(QV_ENOMEM, "%s:%d: out of memory storing [%s] %s",
                         name, line, qv_conf_schema[idx].section,
                         qv_conf_schema[idx].key);
    return qv_seterr(QV_ENOMEM, "%s: out of memory storing [%s] %s", name,
                     qv_conf_schema[idx].section, qv_conf_schema[idx].key);
}

/* ---- parsing ------------------------------------------------------------ */

static int ctx_fail(struct parse_ctx *ctx, int code)
{
    if (ctx->err == 0) {
        ctx->err = code;
        ctx->err_line = ctx->line;
    }
    return code;
}

/* One line per call, leading blanks stripped; see the essay above. */
static char *conf_reader(char *str, int num, void *stream)
{
    struct parse_ctx *ctx = stream;
    const char *p = ctx->pos, *eol, *close;
    size_t len, copy;
    char known[256];

    if (*p == '\0')
        return NULL;
    ctx->line++;
    eol = strchr(p, '\n');
    len = eol ? (size_t)(eol - p) + 1 : strlen(p);
    ctx->pos = p + len;
    while (len > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        len--;
    }

    if (len + 1 > (size_t)num) {
        if (ctx->err == 0)
            ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: line is %zu bytes "
                     "long; lines are at most %d bytes", ctx->name,
                     ctx->line, len, num - 2));
        copy = 0;
        str[copy++] = '\n';
    } else {
        memcpy(str, p, len);
        copy = len;
    }
    str[copy] = '\0';

    /* "[name]": check the section at its header. */
    if (ctx->err == 0 && str[0] == '[' && (close = strchr(str, ']')) != NULL) {
        char sec[256];
        size_t n = (size_t)(close - str - 1);

        if (n >= sizeof(sec))
            n = sizeof(sec) - 1;
        memcpy(sec, str + 1, n);
        sec[n] = '\0';
        if (!section_known(sec)) {
            list_sections(known, sizeof(known));
            ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: unknown section "
                     "[%s]; known sections: %s", ctx->name, ctx->line, sec,
                     known));
        }
    }
    return str;
}

static int conf_handler(void *user, const char *section, const char *name,
                        const char *value)
{
    struct parse_ctx *ctx = user;
    const struct qv_conf_key *k;
    char why[512], known[256];
    union conf_num num;
    int idx;

    if (ctx->err != 0)
        return 0;
    if (section[0] == '\0') {
        list_sections(known, sizeof(known));
        ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: key %s is outside any "
                 "section; put it under its section, one of [%s]",
                 ctx->name, ctx->line, name, known));
        return 0;
    }
    if (!section_known(section)) {
        list_sections(known, sizeof(known));
        ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: unknown section [%s]; "
                 "known sections: %s", ctx->name, ctx->line, section, known));
        return 0;
    }
    idx = find_key(section, name);
    if (idx < 0) {
        list_keys(section, known, sizeof(known));
        ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: unknown key [%s] %s; "
                 "known keys in [%s]: %s", ctx->name, ctx->line, section,
                 name, section, known));
        return 0;
    }
    k = &qv_conf_schema[idx];
    if (ctx->cfg->vals[idx].line > 0) {
        ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: duplicate key [%s] %s: "
                 "already set at %s:%d; remove one of the two lines",
                 ctx->name, ctx->line, section, name, ctx->name,
                 ctx->cfg->vals[idx].line));
        return 0;
    }
    if (check_value(k, value, &num, why, sizeof(why)) < 0) {
        ctx_fail(ctx, qv_seterr(QV_ECONFIG, "%s:%d: [%s] %s = %s: %s",
                 ctx->name, ctx->line, section, name, value, why));
        return 0;
    }
    if (store_value(ctx->cfg, idx, value, &num, ctx->name, ctx->line,
                    NULL) < 0) {
        ctx_fail(ctx, QV_ENOMEM);
        return 0;
    }
    return 1;
}

/* The text of line `line` of text, for a syntax error message. */
static void copy_line(const char *text, int line, char *buf, size_t len)
{
    const char *p = text;
    size_t n;

    while (--line > 0 && (p = strchr(p, '\n')) != NULL)
        p++;
    if (p == NULL) {
        buf[0] = '\0';
        return;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    n = strcspn(p, "\r\n");
    if (n >= len)
        n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
}

struct qv_config *qv_config_parse(const char *text, const char *name)
{
    struct parse_ctx ctx;
    struct qv_config *cfg;
    char bad[128];
    int ret;

    if (name == NULL)
        name = "<string>";
    if (text == NULL)
        return qv_seterr(QV_EINVAL, "%s: no configuration text", name), NULL;
    cfg = qv_config_defaults();
    if (cfg == NULL)
        return NULL;

    memset(&ctx, 0, sizeof(ctx));
    ctx.cfg = cfg;
    ctx.name = name;
    ctx.pos = text;
    ret = ini_parse_stream(conf_reader, &ctx, conf_handler, &ctx);

    if (ctx.err != 0 && (ret <= 0 || ctx.err_line <= ret))
        goto fail;              /* our message is in place */
    if (ret == -2) {
        qv_seterr(QV_ENOMEM, "%s: out of memory in the INI parser", name);
        goto fail;
    }
    if (ret > 0) {
        copy_line(text, ret, bad, sizeof(bad));
        qv_seterr(QV_ECONFIG, "%s:%d: syntax error: %s; expected "
                  "[section], key = value, or a comment starting with # or ;",
                  name, ret, bad[0] == '[' ?
                  "a section header without its closing ]" :
                  "a line that is neither a section header nor key = value");
        goto fail;
    }
    if (ret < 0) {
        qv_seterr(QV_EIO, "%s: the INI parser failed (%d)", name, ret);
        goto fail;
    }
    return cfg;

fail:
    qv_config_free(cfg);
    return NULL;
}

struct qv_config *qv_config_load(const char *path)
{
    struct qv_config *cfg = NULL;
    struct stat st;
    char *text;
    size_t got = 0;
    ssize_t r;
    int fd, err;

    if (path == NULL)
        return qv_seterr(QV_EINVAL, "qv_config_load: path is NULL"), NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        return qv_seterr(err == ENOENT ? QV_ENOENT : QV_EIO, "%s: cannot open "
                         "the configuration: %s", path, strerror(err)), NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        qv_seterr(QV_EIO, "%s: not a regular file", path);
        goto fail_close;
    }
    if ((size_t)st.st_size > QV_CONF_MAX_FILE) {
        qv_seterr(QV_ECONFIG, "%s: %lld bytes is too large for a "
                  "configuration file (at most %zu)", path,
                  (long long)st.st_size, QV_CONF_MAX_FILE);
        goto fail_close;
    }
    text = qv_malloc((size_t)st.st_size + 1, QV_MEM_CONFIG);
    if (text == NULL)
        goto fail_close;
    while (got < (size_t)st.st_size) {
        r = read(fd, text + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            qv_seterr(QV_EIO, "%s: read failed: %s", path,
                      r < 0 ? strerror(errno) : "file shrank while reading");
            goto fail_text;
        }
        got += (size_t)r;
    }
    text[got] = '\0';
    if (memchr(text, '\0', got) != NULL) {
        qv_seterr(QV_ECONFIG, "%s: byte %zu is NUL: not a text file", path,
                  (size_t)((char *)memchr(text, '\0', got) - text));
        goto fail_text;
    }
    cfg = qv_config_parse(text, path);

fail_text:
    qv_free(text);
fail_close:
    close(fd);
    return cfg;
}

struct qv_config *qv_config_defaults(void)
{
    struct qv_config *cfg;
    char why[512];
    size_t i;

    cfg = qv_calloc(1, sizeof(*cfg), QV_MEM_CONFIG);
    if (cfg == NULL)
        return NULL;
    for (i = 0; i < NKEYS; i++) {
        if (check_value(&qv_conf_schema[i], qv_conf_schema[i].def,
                        &cfg->vals[i].v, why, sizeof(why)) < 0) {
            fprintf(stderr, "quiver: schema bug: default of [%s] %s = %s: "
                    "%s\n", qv_conf_schema[i].section, qv_conf_schema[i].key,
                    qv_conf_schema[i].def, why);
            abort();
        }
        cfg->vals[i].origin_static = "default";
    }
    return cfg;
}

void qv_config_free(struct qv_config *cfg)
{
    size_t i;

    if (cfg == NULL)
        return;
    for (i = 0; i < NKEYS; i++)
        val_release(&cfg->vals[i]);
    qv_free(cfg);
}

/* ---- getters ------------------------------------------------------------ */

static const char *type_name(enum qv_conf_type t)
{
    static const char *const names[] = {
        [QV_CONF_INT] = "int", [QV_CONF_SIZE] = "size",
        [QV_CONF_DOUBLE] = "double", [QV_CONF_BOOL] = "bool",
        [QV_CONF_STRING] = "string", [QV_CONF_ENUM] = "enum",
    };
    return (unsigned)t < sizeof(names) / sizeof(names[0]) ? names[t] : "?";
}

/* The value of section/key, which must exist with type want or want2
 * (want -1: any type). */
static const struct conf_val *get_val(const struct qv_config *cfg,
                                      const char *getter, const char *section,
                                      const char *key, int want, int want2)
{
    int idx = find_key(section ? section : "", key ? key : "");

    if (idx < 0) {
        fprintf(stderr, "quiver: %s(\"%s\", \"%s\"): no such key in the "
                "configuration schema (host/common/config.c)\n", getter,
                section ? section : "(null)", key ? key : "(null)");
        abort();
    }
    if (want >= 0 && (int)qv_conf_schema[idx].type != want &&
        (int)qv_conf_schema[idx].type != want2) {
        fprintf(stderr, "quiver: %s(\"%s\", \"%s\"): [%s] %s is a %s key\n",
                getter, section, key, section, key,
                type_name(qv_conf_schema[idx].type));
        abort();
    }
    if (cfg == NULL) {
        fprintf(stderr, "quiver: %s(\"%s\", \"%s\"): configuration is NULL\n",
                getter, section, key);
        abort();
    }
    return &cfg->vals[idx];
}

int64_t qv_config_int(const struct qv_config *cfg, const char *section, const char *key)
{
    return get_val(cfg, __func__, section, key, QV_CONF_INT, QV_CONF_INT)->v.i;
}

uint64_t qv_config_size(const struct qv_config *cfg, const char *section, const char *key)
{
    return get_val(cfg, __func__, section, key, QV_CONF_SIZE, QV_CONF_SIZE)->v.u;
}

double qv_config_double(const struct qv_config *cfg, const char *section, const char *key)
{
    return get_val(cfg, __func__, section, key, QV_CONF_DOUBLE, QV_CONF_DOUBLE)->v.d;
}

bool qv_config_bool(const struct qv_config *cfg, const char *section, const char *key)
{
    return get_val(cfg, __func__, section, key, QV_CONF_BOOL, QV_CONF_BOOL)->v.b;
}

const char *qv_config_string(const struct qv_config *cfg, const char *section, const char *key)
{
    const struct conf_val *v = get_val(cfg, __func__, section, key,
                                       QV_CONF_STRING, QV_CONF_ENUM);

    return v->text ? v->text : qv_conf_schema[v - cfg->vals].def;
}

int qv_config_enum(const struct qv_config *cfg, const char *section, const char *key)
{
    return get_val(cfg, __func__, section, key, QV_CONF_ENUM, QV_CONF_ENUM)->v.e;
}

int qv_config_format(const struct qv_config *cfg, const char *section, const char *key,
                     char *buf, size_t cap)
{
    const struct conf_val *v = get_val(cfg, __func__, section, key, -1, -1);
    const struct qv_conf_key *k = &qv_conf_schema[v - cfg->vals];

    switch (k->type) {
    case QV_CONF_INT:
        return snprintf(buf, cap, "%lld", (long long)v->v.i);
    case QV_CONF_SIZE:
        return snprintf(buf, cap, "%llu", (unsigned long long)v->v.u);
    case QV_CONF_DOUBLE:
        return snprintf(buf, cap, "%.17g", v->v.d);
    case QV_CONF_BOOL:
        return snprintf(buf, cap, "%s", v->v.b ? "true" : "false");
    case QV_CONF_STRING:
    case QV_CONF_ENUM:
        break;
    }
    return snprintf(buf, cap, "%s", v->text ? v->text : k->def);
}

const char *qv_config_origin(const struct qv_config *cfg, const char *section, const char *key)
{
    const struct conf_val *v = get_val(cfg, __func__, section, key, -1, -1);

    return v->origin ? v->origin : v->origin_static;
}

int qv_config_set(struct qv_config *cfg, const char *section, const char *key, const char *value)
{
    char why[512], known[256];
    union conf_num num;
    int idx;

    if (cfg == NULL || section == NULL || key == NULL || value == NULL)
        return qv_seterr(QV_EINVAL, "qv_config_set: NULL argument");
    if (!section_known(section)) {
        list_sections(known, sizeof(known));
        return qv_seterr(QV_ECONFIG, "override: unknown section [%s]; known "
                         "sections: %s", section, known);
    }
    idx = find_key(section, key);
    if (idx < 0) {
        list_keys(section, known, sizeof(known));
        return qv_seterr(QV_ECONFIG, "override: unknown key [%s] %s; known "
                         "keys in [%s]: %s", section, key, section, known);
    }
    if (check_value(&qv_conf_schema[idx], value, &num, why, sizeof(why)) < 0)
        return qv_seterr(QV_ECONFIG, "override: [%s] %s = %s: %s", section,
                         key, value, why);
    return store_value(cfg, idx, value, &num, "override", 0, "override");
}
