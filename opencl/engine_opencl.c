/*
 * engine_opencl.c - the OpenCL engine: work units (quiver/engine.h) on any
 * OpenCL 1.2 device (POCL's CPU device, GPUs, FPGA boards).
 *
 * Device and program.  create() walks the ICD loader's platforms and
 * devices, keeps those matching opts (platform name substring, device
 * type) and takes the device_index-th.  It makes a context and one
 * in-order queue with profiling, then gets the program (kernels/quiver.cl,
 * embedded as strings by embed_cl.py):
 *   1. opts.binary set (FPGA offline compilers): that file, nothing else;
 *   2. else the binary cache: <cache_dir>/<device>-<hash>.bin where hash =
 *      FNV-1a 64 of (platform, device name, driver version, source, build
 *      options), so a driver update or an edited kernel misses the cache
 *      and never loads a stale binary;
 *   3. else the source (~2 s on POCL), whose binary is then written to the
 *      cache atomically (temp file + rename).  A cached binary the driver
 *      refuses is rebuilt from source and rewritten.
 * A build failure returns NULL + QV_EUNAVAIL with the build log in the
 * message; the caller stays on the CPU engine.
 *
 * Execution of a unit.  The CSR probes are inverted into list -> queries
 * (like the CPU engine's list-major mode); each distinct probed list is
 * one kernel launch scanning it for its group of queries:
 *   FLAT, F16, SQ8  (F16: FLAT's kernel loading float16 with
 *              vload_half16, half the bytes per entry)
 *              work-group = (chunk of the list, tile of QV_OCL_QT = 8
 *              queries of the group; 1 when only 1 or 2 queries probe the
 *              list).  The tile's queries sit in local memory.  FLAT: a
 *              work-item owns one group of 16 entries per step as a
 *              float16 (explicit SIMD: FQT float16 accumulators, one
 *              vload16 per dimension); for a list larger than half the
 *              device's global memory cache the work-group's tile is up
 *              to QV_OCL_TQ_MAX = 256 queries (tile_for: as many as local
 *              memory holds; smaller lists: FQT), run as register
 *              sub-tiles of FQT queries
 *              over the same 16 x dim entries, which stay in L1, so a
 *              batch streams the list from memory once per 256 queries,
 *              not once per 8 (POCL was memory-bound: 1000 queries on
 *              200k x 128 read 12.8 GB per batch).  FQT = 16 on CPU
 *              devices (16 of AVX-512's 32 registers), 8 elsewhere (a
 *              GPU work-item holding 16 x 16 floats would spill); GPUs
 *              with 48 KB of local memory and local size 64 get tiles of
 *              8, as before.  SQ8:
 *              a work-item owns QV_OCL_E entries per step, 8 accumulators.
 *              Local size: 16 on CPU devices (measured best on POCL), 64
 *              elsewhere ([opencl] local_size).
 *   PQ         work-group = (chunk of the list, one probe): the table is
 *              per (query, list) and goes to local memory first.
 * Top-k: each (query, chunk) keeps a sorted array of k (distance, entry)
 * pairs in local memory; after each step the work-item of a query merges
 * the step's distances by insertion (one compare rejects once full).  k is
 * at most QV_OPENCL_MAX_K = 256; larger k -> QV_ENOTSUP at submit.  Each
 * (query, chunk) writes k candidates; the host maps entries to ids and
 * pushes them into wu->heaps when the unit completes (in poll).  Chunks
 * are sized so that a launch has about 4 work-groups per compute unit but
 * at least 4 steps of entries: the candidates coming back are
 * O(nq * probes * chunks * k), never the n x nq matrix.
 *
 * Filter: the host turns wu->filter (a row bitmap without a length) and
 * each probed list's rows[] into a per-list entry bitmap (32-bit words),
 * O(n) per probed list per unit, uploaded with the unit; the kernels test
 * one bit per entry.  The bitmap itself never goes to the device.
 *
 * PQ tables.  4-bit: the host builds each probe's byte table with the CPU
 * kernels (lut_quantize4, as cpu_pq.c does: O(m * 16) per probe) so the
 * device's fast-scan sums are bit-identical to the CPU's.  8-bit: the
 * float table (m x 256) is built on the device in local memory from qtab
 * (+ ltab) or from the codebooks (no ltab), the bias per probe by the
 * host (one distance per probe).
 *
 * Buffers.  On devices that share host memory (CL_DEVICE_HOST_UNIFIED_
 * MEMORY, e.g. POCL) lists, queries and index tables are wrapped with
 * CL_MEM_USE_HOST_PTR: nothing is copied.  When a probe at create proves
 * that the device uses such memory in place (probe_inplace: POCL does;
 * the spec would allow a copy), the engine is "in place": wrappers are
 * cached by (pointer, bytes) (at most QV_OCL_WRAP_MAX, LRU), so rewritten
 * memory is still what a unit reads, and the per-slot staging arrays
 * are themselves USE_HOST_PTR buffers: a unit enqueues its kernels and
 * nothing else (no writes, no read of the candidates, whose host array
 * the last kernel's event makes valid).  This halved the round trip of a
 * tiny unit on POCL (about 60 -> 25 us median: each command costs POCL
 * a thread wake-up).  Otherwise the wrappers are per unit (released when
 * it completes) and the staging is written and read.  Elsewhere lists and index-wide tables (ltab, codebooks,
 * centroids) are copied once into resident device buffers keyed by
 * (host pointer, bytes), evicted least-recently-used when the resident
 * budget or an allocation failure says device memory is short; per-unit
 * data (queries, qtab) is copied per unit.  The unit's small arrays
 * (inverted probes, masks, tables, candidates) live in per-slot staging
 * arrays and device buffers that grow and are reused.
 *
 * Prefetch (devices without shared memory only; engine.h's
 * qv_engine_prefetch).  The lists of a unit that waits in a batcher are
 * written into resident buffers ahead of it: clEnqueueWriteBuffer non-
 * blocking on E->xfer, a second in-order queue of the same context, so a
 * copy overlaps the kernels of units already on E->queue and a unit that
 * needs none of those lists is not held behind them.  Each buffer joins
 * the resident table at once, with its write's event in ready.  A unit
 * that finds a resident buffer with ready set asks the event: complete ->
 * released, the buffer is plain resident; still running -> the launch
 * that reads it carries the event in its wait list (cross-queue order),
 * and nothing is copied again; failed -> the buffer is dropped and the
 * unit copies as usual.  The budget is the resident one: a prefetch
 * evicts least recently used copies (its own lists carry the newest
 * serial, so one list of the call never evicts another) and declines
 * with QV_ENOSPC what still does not fit; an allocation or enqueue
 * failure declines too (a hint never fails a query, and never makes the
 * engine unhealthy).  forget waits for a copy in flight, because the
 * write reads the host memory its owner is about to free; an eviction
 * does not (the memory stays valid; OpenCL keeps the buffer until the
 * write is done).  On in-place and other shared memory devices the lists
 * are read where they are: prefetch returns 0.
 *
 * Polling.  On a CPU device the device's threads run on the caller's
 * cores; a caller spinning on poll() took the cores from the kernels
 * (and contended for the event's lock: a third of POCL's time).  So
 * poll() with nothing completed on a CPU device, once the oldest unit
 * has run QV_OCL_POLL_SPIN_NS (50 us: short units keep their latency),
 * sleeps QV_OCL_POLL_BACKOFF_NS (20 us) before returning 0.  Other
 * devices: no sleep.
 *
 * Asynchrony.  submit() prepares the staging, enqueues writes, launches
 * and the one read of the candidates, flushes and returns; up to
 * QV_OCL_SLOTS units are in flight (then QV_EBUSY).  While the device
 * runs unit N the host prepares unit N + 1 into another slot's staging
 * (double buffering at unit granularity; one in-order queue, so a
 * transfer does not overlap a kernel of the same engine).  poll() checks
 * the oldest unit's read event, merges its candidates and reports
 * device_ns (sum of the kernels' profiled run times) and transfer_ns (the
 * writes and the read).
 *
 * Errors.  Every OpenCL status is reported by name (qv_opencl_strerror).
 * Allocation failures (CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_
 * RESOURCES, CL_OUT_OF_HOST_MEMORY, a buffer above max_alloc) fail the
 * unit with QV_ENOMEM and leave the engine healthy; any other failure
 * fails the unit with QV_EIO and makes the engine unhealthy (QV_EUNAVAIL).
 *
 * Thread-safety: one thread at a time per engine.
 */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "opencl_int.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/pq.h"
#include "quiver/sq8.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

/* FLAT and F16 share the blocked layout and the kernels' shape. */
static int is_flat(enum qv_wu_kind kind)
{
    return kind == QV_WU_FLAT || kind == QV_WU_F16;
}

static const char *const kernel_names[OCL_K__COUNT] = {
    [OCL_K_FLAT] = "qv_flat_scan",
    [OCL_K_FLAT1] = "qv_flat_scan1",
    [OCL_K_FLAT_F16] = "qv_flat_scan_f16",
    [OCL_K_FLAT1_F16] = "qv_flat_scan1_f16",
    [OCL_K_SQ8] = "qv_sq8_scan",
    [OCL_K_SQ81] = "qv_sq8_scan1",
    [OCL_K_PQ4] = "qv_pq4_scan",
    [OCL_K_PQ8] = "qv_pq8_scan",
    [OCL_K_NOP] = "qv_nop",
};

/* ------------------------------------------------------------------ */
/* Error names                                                          */
/* ------------------------------------------------------------------ */

const char *qv_opencl_strerror(int err)
{
    static char buf[48];
    switch (err) {
#define E(x) case x: return #x
    E(CL_SUCCESS); E(CL_DEVICE_NOT_FOUND); E(CL_DEVICE_NOT_AVAILABLE);
    E(CL_COMPILER_NOT_AVAILABLE); E(CL_MEM_OBJECT_ALLOCATION_FAILURE);
    E(CL_OUT_OF_RESOURCES); E(CL_OUT_OF_HOST_MEMORY);
    E(CL_PROFILING_INFO_NOT_AVAILABLE); E(CL_MEM_COPY_OVERLAP);
    E(CL_IMAGE_FORMAT_MISMATCH); E(CL_IMAGE_FORMAT_NOT_SUPPORTED);
    E(CL_BUILD_PROGRAM_FAILURE); E(CL_MAP_FAILURE);
    E(CL_MISALIGNED_SUB_BUFFER_OFFSET); E(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
    E(CL_COMPILE_PROGRAM_FAILURE); E(CL_LINKER_NOT_AVAILABLE); E(CL_LINK_PROGRAM_FAILURE);
    E(CL_DEVICE_PARTITION_FAILED); E(CL_KERNEL_ARG_INFO_NOT_AVAILABLE);
    E(CL_INVALID_VALUE); E(CL_INVALID_DEVICE_TYPE); E(CL_INVALID_PLATFORM);
    E(CL_INVALID_DEVICE); E(CL_INVALID_CONTEXT); E(CL_INVALID_QUEUE_PROPERTIES);
    E(CL_INVALID_COMMAND_QUEUE); E(CL_INVALID_HOST_PTR); E(CL_INVALID_MEM_OBJECT);
    E(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR); E(CL_INVALID_IMAGE_SIZE); E(CL_INVALID_SAMPLER);
    E(CL_INVALID_BINARY); E(CL_INVALID_BUILD_OPTIONS); E(CL_INVALID_PROGRAM);
    E(CL_INVALID_PROGRAM_EXECUTABLE); E(CL_INVALID_KERNEL_NAME);
    E(CL_INVALID_KERNEL_DEFINITION); E(CL_INVALID_KERNEL); E(CL_INVALID_ARG_INDEX);
    E(CL_INVALID_ARG_VALUE); E(CL_INVALID_ARG_SIZE); E(CL_INVALID_KERNEL_ARGS);
    E(CL_INVALID_WORK_DIMENSION); E(CL_INVALID_WORK_GROUP_SIZE);
    E(CL_INVALID_WORK_ITEM_SIZE); E(CL_INVALID_GLOBAL_OFFSET); E(CL_INVALID_EVENT_WAIT_LIST);
    E(CL_INVALID_EVENT); E(CL_INVALID_OPERATION); E(CL_INVALID_GL_OBJECT);
    E(CL_INVALID_BUFFER_SIZE); E(CL_INVALID_MIP_LEVEL); E(CL_INVALID_GLOBAL_WORK_SIZE);
    E(CL_INVALID_PROPERTY); E(CL_INVALID_IMAGE_DESCRIPTOR); E(CL_INVALID_COMPILER_OPTIONS);
    E(CL_INVALID_LINKER_OPTIONS); E(CL_INVALID_DEVICE_PARTITION_COUNT);
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
#undef E
    default:
        snprintf(buf, sizeof buf, "CL_UNKNOWN_ERROR(%d)", err);
        return buf;
    }
}

static int is_alloc_error(cl_int err)
{
    return err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_RESOURCES ||
           err == CL_OUT_OF_HOST_MEMORY || err == CL_INVALID_BUFFER_SIZE;
}

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

void qv_opencl_opts_default(struct qv_opencl_opts *o)
{
    memset(o, 0, sizeof *o);
    o->device_type = QV_OPENCL_DEV_ALL;
}

static const char *conf_str_or_null(const struct qv_config *cfg, const char *key,
                                    const char *unset)
{
    const char *s = qv_config_string(cfg, "opencl", key);
    return s && strcmp(s, unset) != 0 ? s : NULL;
}

int qv_opencl_opts_from_config(const struct qv_config *cfg, struct qv_opencl_opts *o)
{
    static const enum qv_opencl_devtype types[] = {
        QV_OPENCL_DEV_ALL, QV_OPENCL_DEV_CPU, QV_OPENCL_DEV_GPU, QV_OPENCL_DEV_ACCELERATOR,
    };
    qv_opencl_opts_default(o);
    o->platform = conf_str_or_null(cfg, "platform", "any");
    o->device_type = types[qv_config_enum(cfg, "opencl", "device_type")];
    o->device_index = (unsigned)qv_config_int(cfg, "opencl", "device_index");
    o->cache_dir = conf_str_or_null(cfg, "cache_dir", "auto");
    o->binary = conf_str_or_null(cfg, "binary", "none");
    o->local_size = (unsigned)qv_config_int(cfg, "opencl", "local_size");
    o->max_alloc = qv_config_size(cfg, "opencl", "max_alloc");
    o->resident_bytes = qv_config_size(cfg, "opencl", "resident_bytes");
    return 0;
}

/* ------------------------------------------------------------------ */
/* Device discovery                                                     */
/* ------------------------------------------------------------------ */

static cl_device_type cl_type(enum qv_opencl_devtype t)
{
    switch (t) {
    case QV_OPENCL_DEV_CPU: return CL_DEVICE_TYPE_CPU;
    case QV_OPENCL_DEV_GPU: return CL_DEVICE_TYPE_GPU;
    case QV_OPENCL_DEV_ACCELERATOR: return CL_DEVICE_TYPE_ACCELERATOR;
    default: return CL_DEVICE_TYPE_ALL;
    }
}

static int find_device(struct ocl_engine *E, const struct qv_opencl_opts *o)
{
    cl_platform_id plats[16];
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(16, plats, &np);
    if (err != CL_SUCCESS || np == 0)
        return qv_seterr(QV_EUNAVAIL, "opencl engine: no OpenCL platform (%s); install an "
                         "ICD such as pocl-opencl-icd, or set [engines] to use the cpu",
                         err != CL_SUCCESS ? qv_opencl_strerror(err) : "0 platforms");
    if (np > 16)
        np = 16;
    unsigned seen = 0;
    for (cl_uint p = 0; p < np; p++) {
        char pname[128] = "";
        clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
        if (o->platform && o->platform[0] && !strcasestr(pname, o->platform))
            continue;
        cl_device_id devs[16];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], cl_type(o->device_type), 16, devs, &nd) != CL_SUCCESS)
            continue;
        if (nd > 16)
            nd = 16;
        for (cl_uint d = 0; d < nd; d++, seen++) {
            if (seen != o->device_index)
                continue;
            E->platform = plats[p];
            E->device = devs[d];
            snprintf(E->info.platform, sizeof E->info.platform, "%s", pname);
            return 0;
        }
    }
    static const char *const tn[] = { "all", "cpu", "gpu", "accelerator" };
    return qv_seterr(QV_EUNAVAIL, "opencl engine: no device #%u of type %s on a platform "
                     "matching \"%s\" (%u matching devices on %u platforms); check "
                     "[opencl] platform, device_type, device_index (clinfo -l lists them)",
                     o->device_index, tn[o->device_type % 4],
                     o->platform ? o->platform : "", seen, np);
}

/* ------------------------------------------------------------------ */
/* Program: binary cache, build                                         */
/* ------------------------------------------------------------------ */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int mkdir_p(const char *dir)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

static void cache_path(struct ocl_engine *E, const struct qv_opencl_opts *o,
                       const char *options)
{
    char dir[400];
    const char *env;
    E->info.cache_path[0] = '\0';
    if (o->cache_dir && strcmp(o->cache_dir, "off") == 0)
        return;
    if (o->cache_dir && o->cache_dir[0])
        snprintf(dir, sizeof dir, "%s", o->cache_dir);
    else if ((env = getenv("XDG_CACHE_HOME")) && env[0])
        snprintf(dir, sizeof dir, "%s/quiver/opencl", env);
    else if ((env = getenv("HOME")) && env[0])
        snprintf(dir, sizeof dir, "%s/.cache/quiver/opencl", env);
    else
        snprintf(dir, sizeof dir, "/var/cache/quiver/opencl");
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, E->info.platform, strlen(E->info.platform) + 1);
    h = fnv1a(h, E->info.device, strlen(E->info.device) + 1);
    h = fnv1a(h, E->info.driver, strlen(E->info.driver) + 1);
    for (unsigned i = 0; i < qv__cl_nsources; i++)
        h = fnv1a(h, qv__cl_sources[i].text, qv__cl_sources[i].len);
    h = fnv1a(h, options, strlen(options) + 1);
    char dev[48];
    size_t j = 0;
    for (const char *s = E->info.device; *s && j < sizeof dev - 1; s++)
        dev[j++] = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                   (*s >= '0' && *s <= '9') ? *s : '_';
    dev[j] = '\0';
    snprintf(E->info.cache_path, sizeof E->info.cache_path, "%s/%s-%016llx.bin", dir, dev,
             (unsigned long long)h);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = qv_malloc((size_t)n, QV_MEM_KERNEL);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            qv_free(buf);
            buf = NULL;
        }
        *len = (size_t)n;
    }
    fclose(f);
    return buf;
}

static void write_cache(struct ocl_engine *E)
{
    size_t bsize = 0;
    if (!E->info.cache_path[0] ||
        clGetProgramInfo(E->program, CL_PROGRAM_BINARY_SIZES, sizeof bsize, &bsize, NULL) ||
        bsize == 0)
        return;
    unsigned char *bin = qv_malloc(bsize, QV_MEM_KERNEL);
    if (!bin)
        return;
    char dir[512], tmp[600];
    snprintf(dir, sizeof dir, "%s", E->info.cache_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", E->info.cache_path, (int)getpid());
    unsigned char *bins[1] = { bin };
    FILE *f;
    if (clGetProgramInfo(E->program, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) ==
            CL_SUCCESS &&
        mkdir_p(dir) == 0 && (f = fopen(tmp, "wb"))) {
        int ok = fwrite(bin, 1, bsize, f) == bsize;
        ok &= fclose(f) == 0;
        if (!ok || rename(tmp, E->info.cache_path) != 0) {
            unlink(tmp);
            QV_LOG(QV_LOG_WARN, "opencl engine: cannot write the binary cache %s: %s",
                   E->info.cache_path, strerror(errno));
        }
    } else {
        QV_LOG(QV_LOG_WARN, "opencl engine: cannot write the binary cache %s: %s",
               E->info.cache_path, strerror(errno));
    }
    qv_free(bin);
}

/* clBuildProgram, and on failure the log into the error message. */
static int build(struct ocl_engine *E, const char *options, const char *what)
{
    cl_int err = clBuildProgram(E->program, 1, &E->device, options, NULL, NULL);
    if (err == CL_SUCCESS)
        return 0;
    size_t n = 0;
    char log[4096] = "";
    clGetProgramBuildInfo(E->program, E->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n);
    if (n > sizeof log) {
        /* keep the end: compilers print the first error last-but-not-least,
         * but a log longer than the message is cut anyway */
        n = sizeof log;
    }
    char *full = NULL;
    size_t fn = 0;
    clGetProgramBuildInfo(E->program, E->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &fn);
    if (fn && (full = qv_malloc(fn + 1, QV_MEM_KERNEL)) &&
        clGetProgramBuildInfo(E->program, E->device, CL_PROGRAM_BUILD_LOG, fn, full, NULL) ==
            CL_SUCCESS) {
        full[fn] = '\0';
        snprintf(log, sizeof log, "%s", full);
    }
    qv_free(full);
    return qv_seterr(QV_EUNAVAIL, "opencl engine: building %s for %s failed with %s "
                     "(options \"%s\"); build log:\n%s", what, E->info.device,
                     qv_opencl_strerror(err), options, log);
}

static int load_program(struct ocl_engine *E, const struct qv_opencl_opts *o)
{
    char options[512];
    cl_int err;
    int64_t t0 = qv_now_ns();
    snprintf(options, sizeof options, "-cl-std=CL1.2 -DQV_QT=%u -DQV_FQT=%u -DQV_E=%u %s",
             QV_OCL_QT, E->flat_qt, QV_OCL_E, o->build_options ? o->build_options : "");

    if (o->binary && o->binary[0]) {
        size_t len = 0;
        unsigned char *bin = read_file(o->binary, &len);
        if (!bin)
            return qv_seterr(QV_EUNAVAIL, "opencl engine: cannot read the program binary "
                             "%s ([opencl] binary): %s", o->binary, strerror(errno));
        const unsigned char *bins[1] = { bin };
        cl_int bst;
        E->program = clCreateProgramWithBinary(E->ctx, 1, &E->device, &len, bins, &bst,
                                               &err);
        qv_free(bin);
        if (!E->program || err != CL_SUCCESS || bst != CL_SUCCESS)
            return qv_seterr(QV_EUNAVAIL, "opencl engine: %s refused the program binary %s "
                             "([opencl] binary): %s", E->info.device, o->binary,
                             qv_opencl_strerror(err != CL_SUCCESS ? err : bst));
        E->info.from_binary = 1;
        int rc = build(E, options, o->binary);
        E->info.build_ns = (uint64_t)(qv_now_ns() - t0);
        return rc;
    }

    cache_path(E, o, options);
    if (E->info.cache_path[0]) {
        size_t len = 0;
        unsigned char *bin = read_file(E->info.cache_path, &len);
        if (bin) {
            const unsigned char *bins[1] = { bin };
            cl_int bst = CL_SUCCESS;
            E->program = clCreateProgramWithBinary(E->ctx, 1, &E->device, &len, bins, &bst,
                                                   &err);
            qv_free(bin);
            if (E->program && err == CL_SUCCESS && bst == CL_SUCCESS &&
                clBuildProgram(E->program, 1, &E->device, options, NULL, NULL) ==
                    CL_SUCCESS) {
                E->info.cache_hit = 1;
                E->info.build_ns = (uint64_t)(qv_now_ns() - t0);
                return 0;
            }
            QV_LOG(QV_LOG_WARN, "opencl engine: cached binary %s refused; rebuilding",
                   E->info.cache_path);
            if (E->program)
                clReleaseProgram(E->program);
            E->program = NULL;
        }
    }

    const char *srcs[8];
    size_t lens[8];
    unsigned ns = qv__cl_nsources < 8 ? qv__cl_nsources : 8;
    for (unsigned i = 0; i < ns; i++) {
        srcs[i] = qv__cl_sources[i].text;
        lens[i] = qv__cl_sources[i].len;
    }
    E->program = clCreateProgramWithSource(E->ctx, ns, srcs, lens, &err);
    if (!E->program || err != CL_SUCCESS)
        return qv_seterr(err == CL_OUT_OF_HOST_MEMORY ? QV_ENOMEM : QV_EUNAVAIL,
                         "opencl engine: clCreateProgramWithSource: %s",
                         qv_opencl_strerror(err));
    int rc = build(E, options, "kernels/quiver.cl");
    E->info.build_ns = (uint64_t)(qv_now_ns() - t0);
    if (rc == 0)
        write_cache(E);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Buffers                                                              */
/* ------------------------------------------------------------------ */

/* Make sure b holds at least bytes (host and device).  0 or QV_ENOMEM. */
static int dbuf_reserve(struct ocl_engine *E, struct ocl_dbuf *b, size_t bytes,
                        cl_mem_flags flags, const char *what)
{
    if (bytes <= b->cap)
        return 0;
    if (bytes < 256)
        bytes = 256;
    bytes = bytes + bytes / 4;
    bytes = (bytes + 127) & ~(size_t)127;
    if (bytes > E->max_alloc)
        return qv_seterr(QV_ENOMEM, "opencl engine: the unit's %s needs %zu bytes, more than "
                         "the largest buffer allowed (%llu: CL_DEVICE_MAX_MEM_ALLOC_SIZE or "
                         "[opencl] max_alloc); split the unit", what, bytes,
                         (unsigned long long)E->max_alloc);
    void *h = qv_malloc(bytes, QV_MEM_KERNEL);
    if (!h)
        return qv_seterr(QV_ENOMEM, "opencl engine: no host memory for the unit's %s "
                         "(%zu bytes)", what, bytes);
    cl_int err;
    cl_mem m = E->inplace
               ? clCreateBuffer(E->ctx, flags | CL_MEM_USE_HOST_PTR, bytes, h, &err)
               : clCreateBuffer(E->ctx, flags, bytes, NULL, &err);
    if (!m || err != CL_SUCCESS) {
        qv_free(h);
        return qv_seterr(is_alloc_error(err) ? QV_ENOMEM : QV_EIO,
                         "opencl engine: clCreateBuffer(%zu bytes) for the unit's %s: %s",
                         bytes, what, qv_opencl_strerror(err));
    }
    qv_free(b->host);
    if (b->mem)
        clReleaseMemObject(b->mem);
    b->host = h;
    b->mem = m;
    b->cap = bytes;
    return 0;
}

static void dbuf_fini(struct ocl_dbuf *b)
{
    qv_free(b->host);
    if (b->mem)
        clReleaseMemObject(b->mem);
    memset(b, 0, sizeof *b);
}

static int slot_add_temp(struct ocl_slot *S, cl_mem m)
{
    if (S->ntemp == S->temp_cap) {
        size_t cap = S->temp_cap ? 2 * S->temp_cap : 32;
        cl_mem *t = qv_realloc(S->temp, cap * sizeof *t, QV_MEM_KERNEL);
        if (!t)
            return QV_ENOMEM;
        S->temp = t;
        S->temp_cap = cap;
    }
    S->temp[S->ntemp++] = m;
    return 0;
}

/* Record a transfer event (at most 15 per unit; the read takes the last). */
static cl_event *xev_slot(struct ocl_slot *S)
{
    return S->nxev < 15 ? &S->xev[S->nxev++] : NULL;
}

/* Release the prefetch events the slot's next launch was to wait on. */
static void slot_unwait(struct ocl_slot *S)
{
    for (unsigned i = 0; i < S->nwait; i++)
        clReleaseEvent(S->wait[i]);
    S->nwait = 0;
}

/* -- resident copies (devices without shared memory) -- */

static size_t res_hash(const void *p, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static struct ocl_resident *res_find(struct ocl_engine *E, const void *host)
{
    if (!E->res_cap)
        return NULL;
    for (size_t i = res_hash(host, E->res_cap);; i = (i + 1) & (E->res_cap - 1)) {
        if (E->res[i].host == host)
            return &E->res[i];
        if (!E->res[i].host)
            return NULL;
    }
}

/* Remove bucket i (backward-shift deletion keeps probes unbroken). */
static void res_remove(struct ocl_engine *E, size_t i)
{
    clReleaseMemObject(E->res[i].mem);
    if (E->res[i].ready)
        clReleaseEvent(E->res[i].ready);    /* the copy finishes regardless */
    E->res[i].ready = NULL;
    E->res_bytes -= E->res[i].bytes;
    E->res_n--;
    size_t mask = E->res_cap - 1;
    size_t j = i;
    for (;;) {
        E->res[i].host = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (!E->res[j].host)
                return;
            size_t h = res_hash(E->res[j].host, E->res_cap);
            /* move j into the hole at i when h is not cyclically in (i, j] */
            if (i <= j ? (h <= i || h > j) : (h <= i && h > j))
                break;
        }
        E->res[i] = E->res[j];
        i = j;
    }
}

static int res_insert(struct ocl_engine *E, const void *host, size_t bytes, cl_mem mem)
{
    if (2 * (E->res_n + 1) > E->res_cap) {
        size_t cap = E->res_cap ? 2 * E->res_cap : 64;
        struct ocl_resident *n = qv_calloc(cap, sizeof *n, QV_MEM_KERNEL);
        if (!n)
            return QV_ENOMEM;
        for (size_t i = 0; i < E->res_cap; i++)
            if (E->res[i].host) {
                size_t j = res_hash(E->res[i].host, cap);
                while (n[j].host)
                    j = (j + 1) & (cap - 1);
                n[j] = E->res[i];
            }
        qv_free(E->res);
        E->res = n;
        E->res_cap = cap;
    }
    size_t j = res_hash(host, E->res_cap);
    while (E->res[j].host)
        j = (j + 1) & (E->res_cap - 1);
    E->res[j] = (struct ocl_resident){ host, bytes, mem, E->serial, NULL };
    E->res_n++;
    E->res_bytes += bytes;
    return 0;
}

/* Evict the least recently used copy not used by the current unit.
 * Returns 1 when one was evicted.  O(buckets). */
static int res_evict_one(struct ocl_engine *E)
{
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < E->res_cap; i++)
        if (E->res[i].host && E->res[i].last_use < E->serial &&
            (best == SIZE_MAX || E->res[i].last_use < E->res[best].last_use))
            best = i;
    if (best == SIZE_MAX)
        return 0;
    res_remove(E, best);
    if (!E->inplace)
        E->st.evictions++;
    return 1;
}

/* A resident copy that a prefetch started (r->ready set), met by the unit
 * being built in slot S.  0: the copy is done (the event is released);
 * 1: still in flight, and the slot's next launch waits for it; -1: the
 * copy failed (the buffer is void).  O(1). */
static int res_ready(struct ocl_engine *E, struct ocl_slot *S, struct ocl_resident *r)
{
    cl_int st = CL_QUEUED;
    cl_int err = clGetEventInfo(r->ready, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof st, &st,
                                NULL);
    if (err != CL_SUCCESS || st < 0)
        return -1;
    if (st == CL_COMPLETE) {
        clReleaseEvent(r->ready);
        r->ready = NULL;
        return 0;
    }
    E->st.prefetch_waits++;
    if (S->nwait == QV_OCL_MAX_WAIT) {
        /* more pending copies than a wait list holds: wait here */
        err = clWaitForEvents(1, &r->ready);
        clReleaseEvent(r->ready);
        r->ready = NULL;
        return err == CL_SUCCESS ? 0 : -1;
    }
    clRetainEvent(r->ready);
    S->wait[S->nwait++] = r->ready;
    return 1;
}

/* Bytes of the codes of a list of n >= 1 entries, as a unit of wu's kind
 * reads them (the key of its resident copy together with the pointer). */
static size_t list_codes_bytes(const struct qv_work_unit *wu, uint32_t n)
{
    if (is_flat(wu->kind))
        return (size_t)(n + QV_BLOCK - 1) / QV_BLOCK * QV_BLOCK * wu->dim *
               (wu->kind == QV_WU_F16 ? 2 : 4);
    if (wu->kind == QV_WU_SQ8)
        return (size_t)(n - 1) * wu->code_size + wu->dim;
    const struct qv_pq *pq = ((const struct qv_pq_params *)wu->params)->pq;
    return pq->nbits == 4 ? qv_pq_fs_size(n, pq->m) : (size_t)n * pq->m;
}

/*
 * A device buffer holding bytes of host memory for the current unit:
 *   shared memory   a per-unit CL_MEM_USE_HOST_PTR wrapper (zero-copy);
 *   resident        a cached copy (uploaded on first use, LRU);
 *   otherwise       a per-unit device copy.
 * 0 with *out set, or QV_ENOMEM / QV_EIO with a message.
 */
static int host_buffer(struct ocl_engine *E, struct ocl_slot *S, const void *host,
                       size_t bytes, int resident, const char *what, cl_mem *out)
{
    cl_int err = CL_SUCCESS;
    cl_mem m;
    if (bytes == 0) {
        *out = E->dummy;
        return 0;
    }
    if (bytes > E->max_alloc)
        return qv_seterr(QV_ENOMEM, "opencl engine: %s of %zu bytes exceeds the largest "
                         "buffer allowed (%llu: CL_DEVICE_MAX_MEM_ALLOC_SIZE or [opencl] "
                         "max_alloc); the router should give this unit to the cpu", what,
                         bytes, (unsigned long long)E->max_alloc);
    if (E->inplace) {
        /* the wrapper is the host memory itself: cache it whatever it
         * holds (a list, queries), keyed by (pointer, bytes) */
        struct ocl_resident *r = res_find(E, host);
        if (r && r->bytes == bytes) {
            r->last_use = E->serial;
            *out = r->mem;
            return 0;
        }
        if (r)
            res_remove(E, (size_t)(r - E->res));
        while (E->res_n >= QV_OCL_WRAP_MAX && res_evict_one(E))
            ;
        m = clCreateBuffer(E->ctx, CL_MEM_READ_ONLY | CL_MEM_USE_HOST_PTR, bytes,
                           (void *)host, &err);
        if (!m || err != CL_SUCCESS)
            goto fail;
        if (res_insert(E, host, bytes, m)) {
            clReleaseMemObject(m);
            return qv_seterr(QV_ENOMEM, "opencl engine: no memory");
        }
        *out = m;
        return 0;
    }
    if (E->info.shared_memory) {
        m = clCreateBuffer(E->ctx, CL_MEM_READ_ONLY | CL_MEM_USE_HOST_PTR, bytes,
                           (void *)host, &err);
        if (!m || err != CL_SUCCESS)
            goto fail;
        if (slot_add_temp(S, m)) {
            clReleaseMemObject(m);
            return qv_seterr(QV_ENOMEM, "opencl engine: no memory");
        }
        *out = m;
        return 0;
    }
    if (resident) {
        struct ocl_resident *r = res_find(E, host);
        if (r && r->bytes == bytes && (!r->ready || res_ready(E, S, r) >= 0)) {
            r->last_use = E->serial;
            *out = r->mem;
            return 0;
        }
        if (r)
            res_remove(E, (size_t)(r - E->res));        /* stale, or its copy failed */
        while (E->res_bytes + bytes > E->resident_budget && res_evict_one(E))
            ;
    }
    for (;;) {
        m = clCreateBuffer(E->ctx, CL_MEM_READ_ONLY, bytes, NULL, &err);
        if (m && err == CL_SUCCESS) {
            cl_event *ev = xev_slot(S);
            err = clEnqueueWriteBuffer(E->queue, m, CL_FALSE, 0, bytes, host, 0, NULL, ev);
            if (err != CL_SUCCESS && ev)
                S->nxev--;
            if (err == CL_SUCCESS)
                break;
            clReleaseMemObject(m);
        }
        if (!(is_alloc_error(err) && resident && res_evict_one(E)))
            goto fail;
    }
    if (resident ? res_insert(E, host, bytes, m) : slot_add_temp(S, m)) {
        clReleaseMemObject(m);
        return qv_seterr(QV_ENOMEM, "opencl engine: no memory");
    }
    if (resident) {
        E->st.resident_copies++;
        E->st.resident_bytes += bytes;
    } else {
        E->st.staging_bytes += bytes;
    }
    *out = m;
    return 0;
fail:
    return qv_seterr(is_alloc_error(err) ? QV_ENOMEM : QV_EIO,
                     "opencl engine: device buffer for %s (%zu bytes): %s", what, bytes,
                     qv_opencl_strerror(err));
}

int qv_engine_opencl_forget(struct qv_engine *e, const void *host)
{
    struct ocl_engine *E = e->priv;
    if (!host)
        return 0;               /* NULL marks an empty bucket: never held */
    struct ocl_resident *r = res_find(E, host);
    if (!r)
        return 0;
    if (r->ready)
        clWaitForEvents(1, &r->ready);  /* the prefetch copy reads host */
    res_remove(E, (size_t)(r - E->res));
    return 1;
}

/* ------------------------------------------------------------------ */
/* Submission                                                           */
/* ------------------------------------------------------------------ */

static int grow_slot_host(struct ocl_slot *S, uint32_t nlists, uint32_t nlaunch)
{
    if (nlists > S->lists_cap) {
        uint32_t *o = qv_malloc((nlists + 1) * sizeof(uint32_t), QV_MEM_KERNEL);
        uint32_t *c = qv_malloc(nlists * sizeof(uint32_t), QV_MEM_KERNEL);
        uint32_t *m = qv_malloc(nlists * sizeof(uint32_t), QV_MEM_KERNEL);
        if (!o || !c || !m) {
            qv_free(o);
            qv_free(c);
            qv_free(m);
            return QV_ENOMEM;
        }
        qv_free(S->loff);
        qv_free(S->lcur);
        qv_free(S->mask_off);
        S->loff = o;
        S->lcur = c;
        S->mask_off = m;
        S->lists_cap = nlists;
    }
    if (nlaunch > S->launch_cap) {
        struct ocl_launch *l = qv_malloc(nlaunch * sizeof *l, QV_MEM_KERNEL);
        cl_event *k = qv_calloc(nlaunch, sizeof *k, QV_MEM_KERNEL);
        if (!l || !k) {
            qv_free(l);
            qv_free(k);
            return QV_ENOMEM;
        }
        qv_free(S->launch);
        qv_free(S->kev);
        S->launch = l;
        S->kev = k;
        S->launch_cap = nlaunch;
        S->kev_cap = nlaunch;
    }
    return 0;
}

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* Chunks of a list of n entries for ntiles tiles: about 4 work-groups
 * per compute unit per launch, each chunk at least 4 steps. */
static uint32_t chunks_for(const struct ocl_engine *E, uint32_t n, uint32_t ntiles,
                           uint32_t step)
{
    uint32_t target = 4 * E->info.compute_units;
    uint32_t want = (target + ntiles - 1) / ntiles;
    uint32_t maxc = (uint32_t)((n + step - 1) / step);
    if (want > maxc)
        want = maxc;
    return want ? want : 1;
}

/* Queries per work-group of a launch with a group of ng queries.  FLAT:
 * up to QV_OCL_TQ_MAX, a multiple of E->flat_qt (the register sub-tile),
 * as many as local memory holds, so each group of 16 entries loaded
 * serves up to 256 queries and a batch streams the list ng / 256 times,
 * not ng / 8 (POCL, 200k x 128, 1000 queries: 1509 QPS at 8 queries per
 * group, 1713 at 32, 2081 at 64, 2337 at 128, 2524 at 256).  GPUs with
 * 48 KB of local memory and local size 64 stay at 8.  SQ8: QV_OCL_QT.
 * Groups of 1 or 2: 1.  O(1). */
static uint32_t tile_for(const struct ocl_engine *E, enum qv_wu_kind kind, uint32_t ng,
                         uint32_t n, uint32_t dim, uint32_t k)
{
    if (ng <= 2)
        return 1;
    if (!is_flat(kind))
        return QV_OCL_QT;
    const uint32_t qt = E->flat_qt;
    const uint64_t esz = kind == QV_WU_F16 ? 2 : 4;
    /* a list that stays in half the device's global memory cache is not
     * streamed from memory: one sub-tile per group keeps the queries and
     * the distances of a step in L1 (siftsmall, 10k x 128, 100 queries:
     * 29k QPS with 112-query groups, see the header) */
    if ((uint64_t)n * dim * esz <= E->cache_bytes / 2)
        return qt;
    uint32_t tq = (ng + qt - 1) / qt * qt;
    if (tq > QV_OCL_TQ_MAX)
        tq = QV_OCL_TQ_MAX / qt * qt;
    size_t per_q = ((size_t)dim + 1 + (size_t)E->info.local_size * 16 + 2 * (size_t)k + 1) * 4;
    while (tq > qt && tq * per_q > E->info.local_mem)
        tq -= qt;
    return tq;
}

/* Local memory of one launch (bytes) and whether it fits. */
static size_t local_bytes(const struct ocl_engine *E, enum qv_wu_kind kind, uint32_t dim,
                          uint32_t k, const struct qv_pq *pq)
{
    size_t ls = E->info.local_size;
    if (kind == QV_WU_PQ) {
        size_t tab = pq->nbits == 4 ? ((pq->m + 1u) & ~1u) * 16u
                                    : (size_t)pq->m * 256 * 4 + (size_t)dim * 4;
        return tab + ls * 4 + (size_t)k * 8 + 16;
    }
    size_t step = is_flat(kind) ? ls * 16 : ls * QV_OCL_E;
    size_t qt = is_flat(kind) ? E->flat_qt : QV_OCL_QT;
    return qt * (dim + 1 + step + 2 * k + 1) * 4;
}

static int check_unit(const struct ocl_engine *E, const struct qv_work_unit *wu)
{
    if (E->health)
        return qv_seterr(QV_EUNAVAIL, "opencl engine: unhealthy after a device error");
    if ((unsigned)wu->kind >= QV_WU__COUNT)
        return qv_seterr(QV_ENOTSUP, "opencl engine: work unit kind %d is not supported",
                         (int)wu->kind);
    if (wu->metric != QV_METRIC_L2 && wu->metric != QV_METRIC_IP)
        return qv_seterr(QV_ENOTSUP, "opencl engine: metric %d; units carry l2 or ip",
                         (int)wu->metric);
    if (wu->dim == 0 || wu->dim > QV_OCL_MAX_DIM)
        return qv_seterr(QV_ENOTSUP, "opencl engine: dim %u is outside 1..%u", wu->dim,
                         QV_OCL_MAX_DIM);
    if (wu->nq == 0)
        return 0;
    if (!wu->probe_offsets || !wu->heaps || !wu->queries)
        return qv_seterr(QV_EINVAL, "opencl engine: unit without probes, heaps or queries");
    if (wu->metric == QV_METRIC_L2 && is_flat(wu->kind) && !wu->qnorms)
        return qv_seterr(QV_EINVAL, "opencl engine: L2 flat unit without query norms");
    uint32_t k = wu->heaps[0].k;
    if (k == 0 || k > QV_OPENCL_MAX_K)
        return qv_seterr(QV_ENOTSUP, "opencl engine: k = %u is outside 1..%u (the kernels' "
                         "local top-k); use the cpu engine", k, QV_OPENCL_MAX_K);
    const struct qv_pq *pq = NULL;
    if (wu->kind == QV_WU_PQ) {
        const struct qv_pq_params *pp = wu->params;
        if (!pp || !pp->pq || !pp->qtab || !pp->coarse)
            return qv_seterr(QV_EINVAL, "opencl engine: PQ unit without parameters");
        pq = pp->pq;
        if (pq->nbits != 4 && pq->nbits != 8)
            return qv_seterr(QV_ENOTSUP, "opencl engine: PQ with %u bits", pq->nbits);
    }
    if (wu->kind == QV_WU_SQ8 && (!wu->params || wu->code_size < wu->dim))
        return qv_seterr(QV_EINVAL, "opencl engine: SQ8 unit without parameters or with "
                         "code_size %u < dim %u", wu->code_size, wu->dim);
    size_t lb = local_bytes(E, wu->kind, wu->dim, k, pq);
    if (lb > E->info.local_mem)
        return qv_seterr(QV_ENOTSUP, "opencl engine: a work-group of this unit (dim %u, k "
                         "%u) needs %zu bytes of local memory; %s has %llu", wu->dim, k, lb,
                         E->info.device, (unsigned long long)E->info.local_mem);
    return 0;
}

#define SETARG(K, i, v) err |= clSetKernelArg(K, i, sizeof(v), &(v))
#define SETLOCAL(K, i, bytes) err |= clSetKernelArg(K, i, (bytes), NULL)

/* Host part of PQ: per probe table (4-bit) or bias (8-bit). */
static int prepare_pq(struct ocl_engine *E, struct ocl_slot *S, const struct qv_work_unit *wu,
                      uint32_t P)
{
    const struct qv_pq_params *pp = wu->params;
    const struct qv_pq *pq = pp->pq;
    const struct qv_dist_ops *ops = qv_kernels();
    const struct qv_pq_kernels *K = ops->pq;
    const uint32_t m = pq->m, mp = (m + 1u) & ~1u, ksub = pq->ksub, dim = pq->dim;
    const size_t tsz = (size_t)m * ksub;
    int rc;
    if ((rc = dbuf_reserve(E, &S->pbias, P * sizeof(float), CL_MEM_READ_ONLY, "PQ biases")))
        return rc;
    if (pq->nbits == 4) {
        if ((rc = dbuf_reserve(E, &S->tab, (size_t)P * mp * 16, CL_MEM_READ_ONLY,
                               "PQ tables")) ||
            (rc = dbuf_reserve(E, &S->pscale, P * sizeof(float), CL_MEM_READ_ONLY,
                               "PQ scales")))
            return rc;
        if (tsz > E->pq_scratch_cap) {
            float *l = qv_malloc(tsz * sizeof(float), QV_MEM_KERNEL);
            uint8_t *l8 = qv_malloc((size_t)mp * 16 + 64, QV_MEM_KERNEL);
            float *r = qv_malloc((size_t)dim * sizeof(float) + 64, QV_MEM_KERNEL);
            if (!l || !l8 || !r) {
                qv_free(l);
                qv_free(l8);
                qv_free(r);
                return qv_seterr(QV_ENOMEM, "opencl engine: no memory for PQ tables");
            }
            qv_free(E->pq_lut);
            qv_free(E->pq_lut8);
            qv_free(E->pq_resid);
            E->pq_lut = l;
            E->pq_lut8 = l8;
            E->pq_resid = r;
            E->pq_scratch_cap = tsz;
        }
    }
    const uint32_t *qidx = S->qidx.host;
    float *pbias = S->pbias.host, *pscale = S->pscale.host;
    uint8_t *tab = S->tab.host;
    for (uint32_t l = 0; l < S->nlaunch; l++) {
        const struct ocl_launch *L = &S->launch[l];
        const struct qv_wu_list *lst = &wu->lists[L->li];
        for (uint32_t g = 0; g < L->ng; g++) {
            uint32_t pos = L->gfirst + g, qi = qidx[pos];
            const float *t2, *t3;
            float bias;
            /* 8-bit: the device builds a missing table from the codebooks */
            qv_pq_probe(pp, wu->metric, wu->queries + (size_t)qi * dim, qi, lst->list_no,
                        pq->nbits == 4, E->pq_lut, E->pq_resid, &t2, &t3, &bias);
            if (pq->nbits == 4) {
                float qbias;
                K->lut_quantize4(t2, t3, m, E->pq_lut8, &pscale[pos], &qbias);
                memcpy(tab + (size_t)pos * mp * 16, E->pq_lut8, (size_t)mp * 16);
                bias += qbias;
            }
            pbias[pos] = bias;
        }
    }
    return 0;
}

/* Build and enqueue everything of one unit into slot S.  0, 1 when no
 * probed list has entries (nothing enqueued), or an error that fails the
 * unit (QV_ENOMEM, QV_EIO) with a message. */
static int enqueue_unit(struct ocl_engine *E, struct ocl_slot *S, struct qv_work_unit *wu)
{
    const uint32_t nq = wu->nq, dim = wu->dim, k = S->k;
    const uint32_t P = wu->probe_offsets[nq] - wu->probe_offsets[0];
    const uint32_t ls = E->info.local_size;
    cl_int err = CL_SUCCESS;
    int rc;

    /* invert the probes: list -> group of queries */
    if (grow_slot_host(S, wu->nlists, 1))
        return qv_seterr(QV_ENOMEM, "opencl engine: no memory for a unit of %u lists",
                         wu->nlists);
    memset(S->loff, 0, (wu->nlists + 1) * sizeof(uint32_t));
    for (uint32_t p = wu->probe_offsets[0]; p < wu->probe_offsets[nq]; p++)
        S->loff[wu->probe_lists[p] + 1]++;
    uint32_t nlaunch = 0;
    for (uint32_t l = 0; l < wu->nlists; l++) {
        nlaunch += S->loff[l + 1] && wu->lists[l].n;
        S->loff[l + 1] += S->loff[l];
    }
    if (grow_slot_host(S, wu->nlists, nlaunch ? nlaunch : 1))
        return qv_seterr(QV_ENOMEM, "opencl engine: no memory for %u launches", nlaunch);
    if ((rc = dbuf_reserve(E, &S->qidx, (size_t)P * 4, CL_MEM_READ_ONLY, "probe lists")))
        return rc;
    uint32_t *qidx = S->qidx.host;
    memcpy(S->lcur, S->loff, wu->nlists * sizeof(uint32_t));
    for (uint32_t q = 0; q < nq; q++)
        for (uint32_t p = wu->probe_offsets[q]; p < wu->probe_offsets[q + 1]; p++)
            qidx[S->lcur[wu->probe_lists[p]]++] = q;

    /* launches, output slots and filter masks */
    const struct qv_pq *pq = wu->kind == QV_WU_PQ
                             ? ((const struct qv_pq_params *)wu->params)->pq : NULL;
    uint64_t out_slots = 0;
    size_t mask_words = 0;
    S->nlaunch = 0;
    for (uint32_t l = 0; l < wu->nlists; l++) {
        uint32_t ng = S->loff[l + 1] - S->loff[l];
        uint32_t n = wu->lists[l].n;
        if (!ng || !n)
            continue;
        struct ocl_launch *L = &S->launch[S->nlaunch++];
        L->tq = pq ? 1 : tile_for(E, wu->kind, ng, n, wu->dim, k);
        uint32_t ntiles = (ng + L->tq - 1) / L->tq;
        L->li = l;
        L->gfirst = S->loff[l];
        L->ng = ng;
        L->nchunks = chunks_for(E, n, ntiles, is_flat(wu->kind) ? ls * 16 : ls * QV_OCL_E);
        L->out_off = out_slots;
        out_slots += (uint64_t)ng * L->nchunks * k;
        S->mask_off[l] = (uint32_t)mask_words;
        mask_words += (n + 31) / 32;
    }
    if (S->nlaunch == 0)
        return 1;                       /* every probed list is empty */
    if ((rc = dbuf_reserve(E, &S->out, out_slots * 8, CL_MEM_WRITE_ONLY, "candidates")))
        return rc;
    if (wu->filter) {
        if ((rc = dbuf_reserve(E, &S->mask, mask_words * 4, CL_MEM_READ_ONLY, "filter mask")))
            return rc;
        uint32_t *mask = S->mask.host;
        memset(mask, 0, mask_words * 4);
        for (uint32_t i = 0; i < S->nlaunch; i++) {
            const struct qv_wu_list *L = &wu->lists[S->launch[i].li];
            uint32_t *mw = mask + S->mask_off[S->launch[i].li];
            for (uint32_t e = 0; e < L->n; e++) {
                uint32_t r = L->rows[e];
                mw[e / 32] |= (uint32_t)(wu->filter[r / 64] >> (r % 64) & 1u) << (e % 32);
            }
        }
    }

    /* per-kind preparation on the host */
    cl_mem b_queries = E->dummy, b_qaux = E->dummy, b_scale = E->dummy;
    if (is_flat(wu->kind)) {
        if ((rc = host_buffer(E, S, wu->queries, (size_t)nq * dim * 4, 0, "queries",
                              &b_queries)))
            return rc;
        if (wu->metric == QV_METRIC_L2 &&
            (rc = host_buffer(E, S, wu->qnorms, (size_t)nq * 4, 0, "query norms", &b_qaux)))
            return rc;
        if (wu->metric != QV_METRIC_L2)
            b_qaux = b_queries;        /* read, unused: nq <= nq * dim floats */
    } else if (wu->kind == QV_WU_SQ8) {
        const struct qv_sq8_params *sp = wu->params;
        if ((rc = dbuf_reserve(E, &S->qprep, (size_t)nq * dim * 4, CL_MEM_READ_ONLY,
                               "prepared queries")) ||
            (rc = dbuf_reserve(E, &S->qaux, (size_t)nq * 4, CL_MEM_READ_ONLY, "biases")) ||
            (rc = dbuf_reserve(E, &S->scale, (size_t)dim * 4, CL_MEM_READ_ONLY, "scales")))
            return rc;
        float *scale = S->scale.host, *prep = S->qprep.host, *bias = S->qaux.host;
        qv_sq8_scale(sp->vdiff, dim, scale);
        for (uint32_t q = 0; q < nq; q++) {
            struct qv_sq8_query pqy;
            qv_sq8_query_prepare(wu->queries + (size_t)q * dim, dim, wu->metric, sp->vmin,
                                 scale, prep + (size_t)q * dim, &pqy);
            bias[q] = pqy.bias;
        }
        b_queries = S->qprep.mem;
        b_qaux = S->qaux.mem;
        b_scale = S->scale.mem;
    } else if ((rc = prepare_pq(E, S, wu, P))) {
        return rc;
    }

    /* uploads of the staging */
#define UPLOAD(B, bytes)                                                                  \
    do {                                                                                  \
        if (E->inplace)                                                                   \
            break;                                                                        \
        cl_event *ev_ = xev_slot(S);                                                      \
        err = clEnqueueWriteBuffer(E->queue, (B).mem, CL_FALSE, 0, (bytes), (B).host, 0,  \
                                   NULL, ev_);                                            \
        if (err != CL_SUCCESS) {                                                          \
            if (ev_)                                                                      \
                S->nxev--;                                                                \
            goto cl_fail;                                                                 \
        }                                                                                 \
        E->st.staging_bytes += (bytes);                                                   \
    } while (0)
    UPLOAD(S->qidx, (size_t)P * 4);
    if (wu->filter)
        UPLOAD(S->mask, mask_words * 4);
    if (wu->kind == QV_WU_SQ8) {
        UPLOAD(S->qprep, (size_t)nq * dim * 4);
        UPLOAD(S->qaux, (size_t)nq * 4);
        UPLOAD(S->scale, (size_t)dim * 4);
    }
    if (wu->kind == QV_WU_PQ) {
        UPLOAD(S->pbias, (size_t)P * 4);
        if (pq->nbits == 4) {
            UPLOAD(S->tab, (size_t)P * ((pq->m + 1u) & ~1u) * 16);
            UPLOAD(S->pscale, (size_t)P * 4);
        }
    }

    /* PQ 8-bit: index-wide tables and the unit's qtab */
    cl_mem b_qtab = E->dummy, b_ltab = E->dummy, b_cents = E->dummy, b_coarse = E->dummy;
    cl_int pq8_mode = 0;
    if (pq && pq->nbits == 8) {
        const struct qv_pq_params *pp = wu->params;
        size_t tsz = (size_t)pq->m * 256 * 4;
        if (wu->metric == QV_METRIC_IP) {
            pq8_mode = 0;
        } else if (pp->ltab) {
            pq8_mode = 1;
            if ((rc = host_buffer(E, S, pp->ltab, (size_t)pp->nlist * tsz, 1, "PQ list tables",
                                  &b_ltab)))
                return rc;
        } else {
            pq8_mode = 2;
            if ((rc = host_buffer(E, S, pq->cents, (size_t)pq->m * 256 * pq->dsub * 4, 1,
                                  "PQ codebooks", &b_cents)) ||
                (rc = host_buffer(E, S, pp->coarse, (size_t)pp->nlist * dim * 4, 1,
                                  "coarse centroids", &b_coarse)) ||
                (rc = host_buffer(E, S, wu->queries, (size_t)nq * dim * 4, 0, "queries",
                                  &b_queries)))
                return rc;
        }
        if (pq8_mode != 2 &&
            (rc = host_buffer(E, S, pp->qtab, (size_t)nq * tsz, 0, "PQ query tables",
                              &b_qtab)))
            return rc;
    }

    /* one launch per probed list */
    cl_mem b_mask = wu->filter ? S->mask.mem : E->dummy;
    for (uint32_t i = 0; i < S->nlaunch; i++) {
        const struct ocl_launch *L = &S->launch[i];
        const struct qv_wu_list *lst = &wu->lists[L->li];
        cl_uint mask_off = wu->filter ? S->mask_off[L->li] : QV_OCL_NONE;
        cl_uint n = lst->n, chunk, cdim = dim, kk = k, gfirst = L->gfirst, ng = L->ng;
        cl_ulong out_off = L->out_off;
        cl_mem b_codes, b_norms = E->dummy;
        size_t gsz[2], lsz[2] = { ls, 1 };
        cl_kernel K;
        /* FLAT chunks start at multiples of 16 (whole groups) */
        chunk = (cl_uint)round_up((n + L->nchunks - 1) / L->nchunks,
                                  is_flat(wu->kind) ? 16 : 1);
        err = CL_SUCCESS;
        if (is_flat(wu->kind) || wu->kind == QV_WU_SQ8) {
            const int flat = is_flat(wu->kind);
            size_t cbytes = list_codes_bytes(wu, n);
            if ((rc = host_buffer(E, S, lst->codes, cbytes, 1, "list codes", &b_codes)))
                return rc;
            if (flat && wu->metric == QV_METRIC_L2 &&
                (rc = host_buffer(E, S, lst->norms, (size_t)n * 4, 1, "list norms",
                                  &b_norms)))
                return rc;
            cl_uint stride = wu->code_size;
            cl_int metric = wu->metric == QV_METRIC_L2 ? 0 : 1;
            /* groups of 1 or 2 queries: the one-query kernel, not a tile
             * of 8 accumulators mostly idle */
            cl_uint qt = ng <= 2 ? 1 : QV_OCL_QT;
            K = E->kernels[wu->kind == QV_WU_FLAT  ? (qt == 1 ? OCL_K_FLAT1 : OCL_K_FLAT)
                           : wu->kind == QV_WU_F16 ? (qt == 1 ? OCL_K_FLAT1_F16
                                                              : OCL_K_FLAT_F16)
                                                   : (qt == 1 ? OCL_K_SQ81 : OCL_K_SQ8)];
            SETARG(K, 0, b_codes);
            SETARG(K, 1, b_norms);
            SETARG(K, 2, b_scale);
            SETARG(K, 3, n);
            SETARG(K, 4, cdim);
            SETARG(K, 5, stride);
            SETARG(K, 6, metric);
            SETARG(K, 7, b_queries);
            SETARG(K, 8, b_qaux);
            SETARG(K, 9, S->qidx.mem);
            SETARG(K, 10, gfirst);
            SETARG(K, 11, ng);
            SETARG(K, 12, b_mask);
            SETARG(K, 13, mask_off);
            SETARG(K, 14, chunk);
            SETARG(K, 15, kk);
            SETARG(K, 16, S->out.mem);
            SETARG(K, 17, out_off);
            cl_uint tq = L->tq;         /* qt, or a multiple of it (FLAT) */
            SETLOCAL(K, 18, (size_t)tq * (dim + flat) * 4);
            SETLOCAL(K, 19, (size_t)tq * ls * (flat ? 16 : QV_OCL_E) * 4);
            SETLOCAL(K, 20, (size_t)tq * k * 4);
            SETLOCAL(K, 21, (size_t)tq * k * 4);
            SETLOCAL(K, 22, (size_t)tq * 4);
            if (flat)
                SETARG(K, 23, tq);
            gsz[1] = (ng + tq - 1) / tq;
        } else if (pq->nbits == 4) {
            cl_uint mp = (pq->m + 1u) & ~1u;
            if ((rc = host_buffer(E, S, lst->codes, list_codes_bytes(wu, n), 1, "list codes",
                                  &b_codes)))
                return rc;
            K = E->kernels[OCL_K_PQ4];
            SETARG(K, 0, b_codes);
            SETARG(K, 1, n);
            SETARG(K, 2, mp);
            SETARG(K, 3, S->tab.mem);
            SETARG(K, 4, S->pscale.mem);
            SETARG(K, 5, S->pbias.mem);
            SETARG(K, 6, gfirst);
            SETARG(K, 7, b_mask);
            SETARG(K, 8, mask_off);
            SETARG(K, 9, chunk);
            SETARG(K, 10, kk);
            SETARG(K, 11, S->out.mem);
            SETARG(K, 12, out_off);
            SETLOCAL(K, 13, (size_t)mp * 16);
            SETLOCAL(K, 14, (size_t)ls * 4);
            SETLOCAL(K, 15, (size_t)k * 4);
            SETLOCAL(K, 16, (size_t)k * 4);
            SETLOCAL(K, 17, 16);
            gsz[1] = ng;
        } else {
            cl_uint m = pq->m, dsub = pq->dsub, list_no = lst->list_no;
            if ((rc = host_buffer(E, S, lst->codes, list_codes_bytes(wu, n), 1, "list codes",
                                  &b_codes)))
                return rc;
            K = E->kernels[OCL_K_PQ8];
            SETARG(K, 0, b_codes);
            SETARG(K, 1, n);
            SETARG(K, 2, m);
            SETARG(K, 3, dsub);
            SETARG(K, 4, pq8_mode);
            SETARG(K, 5, b_qtab);
            SETARG(K, 6, b_ltab);
            SETARG(K, 7, b_cents);
            SETARG(K, 8, b_coarse);
            SETARG(K, 9, b_queries);
            SETARG(K, 10, list_no);
            SETARG(K, 11, S->qidx.mem);
            SETARG(K, 12, S->pbias.mem);
            SETARG(K, 13, gfirst);
            SETARG(K, 14, b_mask);
            SETARG(K, 15, mask_off);
            SETARG(K, 16, chunk);
            SETARG(K, 17, kk);
            SETARG(K, 18, S->out.mem);
            SETARG(K, 19, out_off);
            SETLOCAL(K, 20, (size_t)m * 256 * 4);
            SETLOCAL(K, 21, (size_t)dim * 4);
            SETLOCAL(K, 22, (size_t)ls * 4);
            SETLOCAL(K, 23, (size_t)k * 4);
            SETLOCAL(K, 24, (size_t)k * 4);
            SETLOCAL(K, 25, 16);
            gsz[1] = ng;
        }
        if (err != CL_SUCCESS)
            goto cl_fail;
        gsz[0] = (size_t)L->nchunks * ls;
        /* prefetch copies of this launch's buffers still in flight on
         * E->xfer: wait for them (the queue is in order, so later
         * launches wait too) */
        err = clEnqueueNDRangeKernel(E->queue, K, 2, NULL, gsz, lsz, S->nwait,
                                     S->nwait ? S->wait : NULL, &S->kev[i]);
        slot_unwait(S);
        if (err != CL_SUCCESS) {
            S->kev[i] = NULL;
            goto cl_fail;
        }
    }

    /* the one read of the candidates, which is the unit's completion; in
     * place, the candidates are in S->out.host when the last kernel ends
     * (in-order queue: so have the others) */
    if (E->inplace && S->nlaunch) {
        S->last = S->kev[S->nlaunch - 1];
        clRetainEvent(S->last);
        clFlush(E->queue);
        return 0;
    }
    err = clEnqueueReadBuffer(E->queue, S->out.mem, CL_FALSE, 0, out_slots * 8, S->out.host,
                              0, NULL, &S->last);
    if (err != CL_SUCCESS) {
        S->last = NULL;
        goto cl_fail;
    }
    clFlush(E->queue);
    return 0;
#undef UPLOAD
cl_fail:
    return qv_seterr(is_alloc_error(err) ? QV_ENOMEM : QV_EIO,
                     "opencl engine: enqueueing a unit of %u queries, dim %u on %s: %s",
                     nq, dim, E->info.device, qv_opencl_strerror(err));
}

/* Release the unit's events and temporary buffers.  Cannot fail. */
static void slot_release(struct ocl_slot *S)
{
    slot_unwait(S);
    for (uint32_t i = 0; i < S->nlaunch; i++)
        if (S->kev[i]) {
            clReleaseEvent(S->kev[i]);
            S->kev[i] = NULL;
        }
    for (unsigned i = 0; i < S->nxev; i++)
        clReleaseEvent(S->xev[i]);
    S->nxev = 0;
    if (S->last)
        clReleaseEvent(S->last);
    S->last = NULL;
    for (size_t i = 0; i < S->ntemp; i++)
        clReleaseMemObject(S->temp[i]);
    S->ntemp = 0;
    S->nlaunch = 0;
    S->enqueued = 0;
}

static uint64_t event_ns(cl_event ev)
{
    cl_ulong a = 0, b = 0;
    if (!ev || clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof a, &a, NULL) ||
        clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof b, &b, NULL))
        return 0;
    return b > a ? b - a : 0;
}

/* Merge a completed unit's candidates into its heaps; set its times. */
static void finish_unit(struct ocl_engine *E, struct ocl_slot *S)
{
    struct qv_work_unit *wu = S->wu;
    const uint32_t k = S->k;
    const uint32_t *qidx = S->qidx.host;
    const uint32_t *out = S->out.host;
    uint64_t dev = 0, xfer = 0;
    for (uint32_t i = 0; i < S->nlaunch; i++) {
        const struct ocl_launch *L = &S->launch[i];
        const uint64_t *ids = wu->lists[L->li].ids;
        for (uint32_t g = 0; g < L->ng; g++) {
            struct qv_topk *h = &wu->heaps[qidx[L->gfirst + g]];
            for (uint32_t c = 0; c < L->nchunks; c++) {
                const uint32_t *pr = out + 2 * (L->out_off + ((uint64_t)g * L->nchunks + c) * k);
                for (uint32_t s = 0; s < k; s++) {
                    uint32_t e = pr[2 * s + 1];
                    if (e == QV_OCL_NONE)
                        break;
                    float d;
                    memcpy(&d, &pr[2 * s], sizeof d);
                    qv_topk_push(h, d, ids[e]);
                }
            }
        }
        dev += event_ns(S->kev[i]);
    }
    for (unsigned i = 0; i < S->nxev; i++)
        xfer += event_ns(S->xev[i]);
    if (!E->inplace)
        xfer += event_ns(S->last);      /* the read (in place: a kernel) */
    wu->device_ns = dev;
    wu->transfer_ns = xfer;
    wu->status = 0;
}

/* ------------------------------------------------------------------ */
/* Ops                                                                  */
/* ------------------------------------------------------------------ */

/*
 * Does this device use CL_MEM_USE_HOST_PTR memory in place?  The spec
 * lets an implementation copy at creation and copy back at a map; POCL's
 * CPU device uses the pointer itself.  Proven here rather than assumed: a
 * word written by the host AFTER the buffer was created must be seen by
 * a kernel (qv_nop clears 0xdeadbeef), and the kernel's write must be seen
 * by the host without a read or a map, twice over (no copy made at the
 * first launch), on memory aligned to 64 bytes but not 128 (what
 * qv_malloc gives lists).  1 = in place.  Any failure: 0 (copies).
 */
static int probe_inplace(struct ocl_engine *E)
{
    int ok = 0;
    cl_int err;
    uint32_t *mem = qv_malloc(256, QV_MEM_KERNEL);
    if (!mem)
        return 0;
    volatile uint32_t *w = ((uintptr_t)mem & 127) ? mem : mem + 16;
    w[0] = 1;
    cl_mem b = clCreateBuffer(E->ctx, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, 64,
                              (void *)w, &err);
    if (!b || err != CL_SUCCESS)
        goto out;
    cl_kernel K = E->kernels[OCL_K_NOP];
    size_t one = 1;
    ok = 1;
    for (int round = 0; round < 2 && ok; round++) {
        cl_event ev = NULL;
        w[0] = 0xdeadbeefu;
        err = clSetKernelArg(K, 0, sizeof b, &b);
        if (err == CL_SUCCESS)
            err = clEnqueueNDRangeKernel(E->queue, K, 1, NULL, &one, &one, 0, NULL, &ev);
        if (err == CL_SUCCESS)
            err = clWaitForEvents(1, &ev);
        if (ev)
            clReleaseEvent(ev);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        ok = err == CL_SUCCESS && w[0] == 0;
    }
    clReleaseMemObject(b);
out:
    qv_free(mem);
    return ok;
}

static void ocl_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    const struct ocl_engine *E = e->priv;
    out->kinds = 1u << QV_WU_FLAT | 1u << QV_WU_SQ8 | 1u << QV_WU_PQ | 1u << QV_WU_F16;
    out->max_dim = QV_OCL_MAX_DIM;
    out->device_memory = E->info.shared_memory ? 0 : E->info.global_mem;
}

static int ocl_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct ocl_engine *E = e->priv;
    int rc = check_unit(E, wu);
    if (rc)
        return rc;
    if (E->count == QV_OCL_SLOTS)
        return qv_seterr(QV_EBUSY, "opencl engine: %u units in flight or not yet polled",
                         QV_OCL_SLOTS);
    struct ocl_slot *S = &E->slots[(E->head + E->count) % QV_OCL_SLOTS];
    E->count++;
    E->serial++;
    S->wu = wu;
    S->t_submit = qv_now_ns();
    S->status = 0;
    S->enqueued = 0;
    wu->status = 0;
    wu->device_ns = wu->transfer_ns = 0;
    if (wu->nq == 0 || wu->probe_offsets[wu->nq] == wu->probe_offsets[0])
        return 0;                   /* nothing to scan: complete at once */
    S->k = wu->heaps[0].k;
    rc = enqueue_unit(E, S, wu);
    if (rc > 0)
        return 0;                   /* nothing to scan after all */
    if (rc) {
        /* whatever was enqueued must finish before the slot is reused */
        clFinish(E->queue);
        slot_release(S);
        S->status = rc;
        if (rc != QV_ENOMEM) {
            E->health = QV_EUNAVAIL;
            QV_LOG(QV_LOG_ERROR, "%s", qv_errmsg());
        }
        return 0;
    }
    S->enqueued = 1;
    return 0;
}

static int ocl_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct ocl_engine *E = e->priv;
    int n = 0;
    while (n < max && E->count) {
        struct ocl_slot *S = &E->slots[E->head];
        if (S->enqueued) {
            cl_int st = CL_QUEUED;
            cl_int err = clGetEventInfo(S->last, CL_EVENT_COMMAND_EXECUTION_STATUS,
                                        sizeof st, &st, NULL);
            if (err == CL_SUCCESS && st > CL_COMPLETE) {
                /* oldest still running: so are the rest.  A CPU device
                 * runs on the cores of the caller, who typically polls
                 * in a loop: spinning here (each call takes the event's
                 * lock, which the device's threads also take) cost POCL
                 * about a third of its throughput.  Past the first
                 * QV_OCL_POLL_SPIN_NS, give the core back for
                 * QV_OCL_POLL_BACKOFF_NS before saying "nothing". */
                if (E->cpu_device && n == 0 &&
                    qv_now_ns() - S->t_submit > QV_OCL_POLL_SPIN_NS) {
                    struct timespec ts = { 0, QV_OCL_POLL_BACKOFF_NS };
                    nanosleep(&ts, NULL);
                }
                break;
            }
            if (err != CL_SUCCESS || st < 0) {
                S->status = qv_seterr(QV_EIO, "opencl engine: a unit failed on %s: %s",
                                      E->info.device,
                                      qv_opencl_strerror(err != CL_SUCCESS ? err : st));
                E->health = QV_EUNAVAIL;
            } else {
                finish_unit(E, S);
            }
            slot_release(S);
        }
        S->wu->status = S->status;
        done[n++] = S->wu;
        S->wu = NULL;
        E->head = (E->head + 1) % QV_OCL_SLOTS;
        E->count--;
    }
    return n;
}

int qv_engine_opencl_wait(struct qv_engine *e)
{
    struct ocl_engine *E = e->priv;
    cl_int err = clFinish(E->queue);
    if (err == CL_SUCCESS && E->xfer && E->xfer != E->queue)
        err = clFinish(E->xfer);
    if (err != CL_SUCCESS)
        return qv_seterr(QV_EIO, "opencl engine: clFinish: %s", qv_opencl_strerror(err));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Prefetch                                                             */
/* ------------------------------------------------------------------ */

/* Start copying bytes of host memory (a list's codes or norms) into a
 * resident buffer on the prefetch queue.  1: a copy was started; 0: the
 * block is resident or on its way already; else a negative QV_E* with a
 * message (declined).  Evicts least recently used copies for room, never
 * one touched by this prefetch (serial).  Never waits. */
static int prefetch_block(struct ocl_engine *E, const void *host, size_t bytes,
                          const char *what)
{
    cl_int err = CL_SUCCESS;
    struct ocl_resident *r = res_find(E, host);
    if (r && r->bytes == bytes) {
        r->last_use = E->serial;
        return 0;
    }
    if (bytes > E->max_alloc || bytes > E->resident_budget)
        return qv_seterr(QV_ENOSPC, "opencl engine: prefetch of %s (%zu bytes): larger than "
                         "the resident budget (%llu bytes, [opencl] resident_bytes) or the "
                         "largest buffer (%llu)", what, bytes,
                         (unsigned long long)E->resident_budget,
                         (unsigned long long)E->max_alloc);
    if (r)
        res_remove(E, (size_t)(r - E->res));   /* stale: rewritten without forget */
    while (E->res_bytes + bytes > E->resident_budget && res_evict_one(E))
        ;
    if (E->res_bytes + bytes > E->resident_budget)
        return qv_seterr(QV_ENOSPC, "opencl engine: prefetch of %s (%zu bytes): the resident "
                         "budget (%llu bytes, [opencl] resident_bytes) is held by this "
                         "prefetch's own lists", what, bytes,
                         (unsigned long long)E->resident_budget);
    cl_mem m = clCreateBuffer(E->ctx, CL_MEM_READ_ONLY, bytes, NULL, &err);
    if (!m || err != CL_SUCCESS)
        goto fail;
    if (res_insert(E, host, bytes, m)) {
        clReleaseMemObject(m);
        return qv_seterr(QV_ENOMEM, "opencl engine: no memory for the resident table");
    }
    cl_event ev = NULL;
    err = clEnqueueWriteBuffer(E->xfer, m, CL_FALSE, 0, bytes, host, 0, NULL, &ev);
    r = res_find(E, host);
    if (err != CL_SUCCESS) {
        res_remove(E, (size_t)(r - E->res));
        goto fail;
    }
    r->ready = ev;
    E->st.prefetch_copies++;
    E->st.prefetch_bytes += bytes;
    return 1;
fail:
    return qv_seterr(is_alloc_error(err) ? QV_ENOMEM : QV_EIO, "opencl engine: prefetch of "
                     "%s (%zu bytes) on %s: %s", what, bytes, E->info.device,
                     qv_opencl_strerror(err));
}

static int ocl_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct ocl_engine *E = e->priv;
    int rc = 0, started = 0;
    if (E->info.shared_memory)
        return 0;                       /* lists are read where they are */
    E->st.prefetch_calls++;
    if (E->health)
        rc = qv_seterr(QV_EUNAVAIL, "opencl engine: prefetch: unhealthy after a device "
                       "error");
    else if ((unsigned)wu->kind >= QV_WU__COUNT || wu->dim == 0 || wu->dim > QV_OCL_MAX_DIM)
        rc = qv_seterr(QV_ENOTSUP, "opencl engine: prefetch of kind %d, dim %u: not a unit "
                       "this engine scans", (int)wu->kind, wu->dim);
    else if (wu->nlists && !wu->lists)
        rc = qv_seterr(QV_EINVAL, "opencl engine: prefetch of %u lists without lists[]",
                       wu->nlists);
    else if (wu->kind == QV_WU_SQ8 && wu->code_size < wu->dim)
        rc = qv_seterr(QV_EINVAL, "opencl engine: prefetch of SQ8 lists with code_size %u < "
                       "dim %u", wu->code_size, wu->dim);
    else if (wu->kind == QV_WU_PQ) {
        const struct qv_pq_params *pp = wu->params;
        if (!pp || !pp->pq || (pp->pq->nbits != 4 && pp->pq->nbits != 8))
            rc = qv_seterr(QV_ENOTSUP, "opencl engine: prefetch of PQ lists without "
                           "parameters or with other than 4 or 8 bits");
    }
    if (rc) {
        E->st.prefetch_declined++;
        return rc;
    }
    E->serial++;                        /* this call's lists are the newest */
    const int norms = is_flat(wu->kind) && wu->metric == QV_METRIC_L2;
    for (uint32_t l = 0; l < wu->nlists; l++) {
        const struct qv_wu_list *L = &wu->lists[l];
        if (!L->n || !L->codes)
            continue;
        int a = prefetch_block(E, L->codes, list_codes_bytes(wu, L->n), "list codes");
        int b = a < 0 || !norms || !L->norms ? 0
              : prefetch_block(E, L->norms, (size_t)L->n * 4, "list norms");
        if (a < 0 || b < 0) {
            rc = a < 0 ? a : b;
            break;
        }
        started += a || b;
    }
    if (started)
        clFlush(E->xfer);
    if (rc) {
        E->st.prefetch_declined++;
        return rc;
    }
    return started;
}

static int ocl_health(const struct qv_engine *e)
{
    const struct ocl_engine *E = e->priv;
    return E->health;
}

static void ocl_free(struct qv_engine *e)
{
    struct ocl_engine *E = e->priv;
    if (E->queue)
        clFinish(E->queue);
    if (E->xfer && E->xfer != E->queue)
        clFinish(E->xfer);
    for (unsigned i = 0; i < QV_OCL_SLOTS; i++) {
        struct ocl_slot *S = &E->slots[i];
        slot_release(S);
        struct ocl_dbuf *bufs[] = { &S->qidx, &S->mask, &S->qprep, &S->qaux, &S->scale,
                                    &S->tab, &S->pscale, &S->pbias, &S->out };
        for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; b++)
            dbuf_fini(bufs[b]);
        qv_free(S->loff);
        qv_free(S->lcur);
        qv_free(S->mask_off);
        qv_free(S->launch);
        qv_free(S->kev);
        qv_free(S->temp);
    }
    for (size_t i = 0; i < E->res_cap; i++)
        if (E->res[i].host) {
            clReleaseMemObject(E->res[i].mem);
            if (E->res[i].ready)
                clReleaseEvent(E->res[i].ready);
        }
    qv_free(E->res);
    qv_free(E->pq_lut);
    qv_free(E->pq_lut8);
    qv_free(E->pq_resid);
    for (unsigned i = 0; i < OCL_K__COUNT; i++)
        if (E->kernels[i])
            clReleaseKernel(E->kernels[i]);
    if (E->dummy)
        clReleaseMemObject(E->dummy);
    if (E->program)
        clReleaseProgram(E->program);
    if (E->xfer && E->xfer != E->queue)
        clReleaseCommandQueue(E->xfer);
    if (E->queue)
        clReleaseCommandQueue(E->queue);
    if (E->ctx)
        clReleaseContext(E->ctx);
    qv_free(E);
}

static void ocl_forget(struct qv_engine *e, const void *host)
{
    (void)qv_engine_opencl_forget(e, host);
}

static const struct qv_engine_ops ocl_ops = {
    .forget = ocl_forget,
    .prefetch = ocl_prefetch,
    .name = "opencl",
    .caps = ocl_caps,
    .submit = ocl_submit,
    .poll = ocl_poll,
    .health = ocl_health,
    .free = ocl_free,
};

int qv_engine_opencl_info(const struct qv_engine *e, struct qv_opencl_info *out)
{
    if (!e || e->ops != &ocl_ops)
        return qv_seterr(QV_EINVAL, "opencl engine: not an opencl engine");
    *out = ((const struct ocl_engine *)e->priv)->info;
    return 0;
}

int qv_engine_opencl_stats(const struct qv_engine *e, struct qv_opencl_stats *out)
{
    if (!e || e->ops != &ocl_ops)
        return qv_seterr(QV_EINVAL, "opencl engine: not an opencl engine");
    *out = ((const struct ocl_engine *)e->priv)->st;
    return 0;
}

struct qv_engine *qv_engine_opencl_create(const struct qv_opencl_opts *opts)
{
    struct qv_opencl_opts defaults;
    cl_int err;
    int rc;
    if (!opts) {
        qv_opencl_opts_default(&defaults);
        opts = &defaults;
    }
    unsigned ls = opts->local_size;
    if (ls && (ls < 16 || ls > 1024 || (ls & (ls - 1)))) {
        qv_seterr(QV_EINVAL, "opencl engine: local_size %u: expected a power of two in "
                  "16..1024", opts->local_size);
        return NULL;
    }
    struct ocl_engine *E = qv_calloc(1, sizeof *E, QV_MEM_KERNEL);
    if (!E) {
        qv_seterr(QV_ENOMEM, "opencl engine: no memory");
        return NULL;
    }
    E->base.ops = &ocl_ops;
    E->base.priv = E;
    if ((rc = find_device(E, opts)))
        goto fail;

    cl_ulong gm = 0, lm = 0, ma = 0;
    cl_uint cu = 1;
    cl_bool unified = CL_FALSE;
    size_t maxwg = 0;
    cl_device_type dt = 0;
    clGetDeviceInfo(E->device, CL_DEVICE_NAME, sizeof E->info.device - 1, E->info.device, NULL);
    clGetDeviceInfo(E->device, CL_DRIVER_VERSION, sizeof E->info.driver - 1, E->info.driver,
                    NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof gm, &gm, NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof lm, &lm, NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof ma, &ma, NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof maxwg, &maxwg, NULL);
    clGetDeviceInfo(E->device, CL_DEVICE_TYPE, sizeof dt, &dt, NULL);
    cl_ulong cache = 0;
    clGetDeviceInfo(E->device, CL_DEVICE_GLOBAL_MEM_CACHE_SIZE, sizeof cache, &cache, NULL);
    E->cache_bytes = cache;
    if (maxwg && ls > maxwg) {
        rc = qv_seterr(QV_EINVAL, "opencl engine: local_size %u exceeds the %zu work-items "
                       "a work-group of %s may have; lower [opencl] local_size", ls, maxwg,
                       E->info.device);
        goto fail;
    }
    E->info.global_mem = gm;
    E->info.local_mem = lm;
    E->info.compute_units = cu ? cu : 1;
    /* auto: 16 on CPU devices (measured on POCL, 200k x 128, 256
     * queries: 1075 QPS at 16, 918 at 32, 829 at 64 and 128), 64 on
     * GPUs and accelerators (two warps / one wavefront) */
    if (!ls)
        ls = (dt & CL_DEVICE_TYPE_CPU) ? 16 : 64;
    E->info.local_size = ls;
    E->cpu_device = (dt & CL_DEVICE_TYPE_CPU) != 0;
    E->info.cpu_device = E->cpu_device;
    /* FLAT register sub-tile: 16 float16 accumulators fill half of
     * AVX-512's 32 registers (POCL: measured faster than 8); GPUs keep 8
     * (16 x 16 floats per work-item would spill their registers) */
    E->flat_qt = E->cpu_device ? QV_OCL_FQT_CPU : QV_OCL_QT;
    E->info.shared_memory = (unified == CL_TRUE || (dt & CL_DEVICE_TYPE_CPU)) &&
                            !opts->no_zero_copy;
    E->max_alloc = ma;
    if (opts->max_alloc && opts->max_alloc < E->max_alloc)
        E->max_alloc = opts->max_alloc;
    E->info.max_alloc = E->max_alloc;
    E->resident_budget = opts->resident_bytes ? opts->resident_bytes : gm / 2;

    E->ctx = clCreateContext(NULL, 1, &E->device, NULL, NULL, &err);
    if (!E->ctx || err != CL_SUCCESS) {
        rc = qv_seterr(QV_EUNAVAIL, "opencl engine: clCreateContext on %s: %s",
                       E->info.device, qv_opencl_strerror(err));
        goto fail;
    }
    E->queue = clCreateCommandQueue(E->ctx, E->device, CL_QUEUE_PROFILING_ENABLE, &err);
    if (!E->queue || err != CL_SUCCESS) {
        rc = qv_seterr(QV_EUNAVAIL, "opencl engine: clCreateCommandQueue on %s: %s",
                       E->info.device, qv_opencl_strerror(err));
        goto fail;
    }
    /* prefetch copies: a second in-order queue where lists are copied
     * (without one, the engine's queue: still correct, less overlap) */
    E->xfer = E->queue;
    if (!E->info.shared_memory) {
        cl_command_queue x = clCreateCommandQueue(E->ctx, E->device, 0, &err);
        if (x && err == CL_SUCCESS)
            E->xfer = x;
        else
            QV_LOG(QV_LOG_WARN, "opencl engine: no second queue on %s (%s): prefetch copies "
                   "share the units' queue", E->info.device, qv_opencl_strerror(err));
    }
    E->dummy = clCreateBuffer(E->ctx, CL_MEM_READ_WRITE, 64, NULL, &err);
    if (!E->dummy || err != CL_SUCCESS) {
        rc = qv_seterr(QV_EUNAVAIL, "opencl engine: clCreateBuffer(64): %s",
                       qv_opencl_strerror(err));
        goto fail;
    }
    if ((rc = load_program(E, opts)))
        goto fail;
    for (unsigned i = 0; i < OCL_K__COUNT; i++) {
        E->kernels[i] = clCreateKernel(E->program, kernel_names[i], &err);
        if (!E->kernels[i] || err != CL_SUCCESS) {
            rc = qv_seterr(QV_EUNAVAIL, "opencl engine: kernel %s missing from the program "
                           "(%s): %s", kernel_names[i],
                           E->info.from_binary ? opts->binary : "kernels/quiver.cl",
                           qv_opencl_strerror(err));
            goto fail;
        }
    }
    E->inplace = E->info.shared_memory && probe_inplace(E);
    E->info.inplace = E->inplace;
    QV_LOG(QV_LOG_INFO, "opencl engine: %s on %s (driver %s), program %s in %.1f ms%s",
           E->info.device, E->info.platform, E->info.driver,
           E->info.from_binary ? "from binary" : E->info.cache_hit ? "from cache" : "built",
           E->info.build_ns / 1e6, E->inplace ? ", host memory used in place" : "");
    return &E->base;

fail:
    {
        /* keep the message across the cleanup */
        char msg[600];
        snprintf(msg, sizeof msg, "%s", qv_errmsg());
        ocl_free(&E->base);
        qv_seterr(rc, "%s", msg);
    }
    return NULL;
}
