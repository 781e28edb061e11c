/*
 * engine_opencl.h - the OpenCL engine: work units (engine.h) on any
 * OpenCL 1.2 device reached through the ICD loader (POCL's CPU device in
 * tests and CI, GPUs, FPGA boards with a prebuilt binary).
 *
 * The design (work-group shape, top-k in local memory, buffers, binary
 * cache) is described at the top of opencl/engine_opencl.c.  What a caller
 * needs to know:
 *
 *   - Supported units: QV_WU_FLAT, QV_WU_F16, QV_WU_SQ8 and QV_WU_PQ
 *     (nbits 4 and 8),
 *     metrics L2 and IP, k (the heaps' k) 1..QV_OPENCL_MAX_K.  A unit
 *     outside that (larger k, a dim whose query tile does not fit the
 *     device's local memory, a PQ table too big for it) is refused by
 *     submit with QV_ENOTSUP and a message, so the router can give it to
 *     the CPU engine.
 *   - Results equal the CPU engine's: identical ids except exact ties,
 *     distances within float rounding (FLAT / SQ8 sum in another order;
 *     PQ 4-bit is bit-identical).  For PQ units the engine merges straight
 *     into wu->heaps and leaves params->res untouched.
 *   - submit() enqueues and returns; poll() collects finished units and
 *     merges their candidates into wu->heaps (so poll does O(nq * probes
 *     * k) host work for the units it returns).  device_ns = kernel time
 *     from event profiling, transfer_ns = time of the buffer writes and
 *     reads.  A unit that fails on the device completes with status < 0
 *     (QV_ENOMEM: an allocation failed or exceeded CL_DEVICE_MAX_MEM_
 *     ALLOC_SIZE / max_alloc; QV_EIO: another OpenCL error, and the engine
 *     turns unhealthy with QV_EUNAVAIL).
 *   - Lists are read where they are on devices that share host memory
 *     (CL_MEM_USE_HOST_PTR, nothing cached, nothing copied).  Elsewhere
 *     they are copied into device buffers kept resident, keyed by (host
 *     pointer, bytes), LRU-evicted: the memory of a list must not change
 *     while the engine may hold a copy; call qv_engine_opencl_forget()
 *     when a list is freed or rewritten.
 *   - Prefetch (qv_engine_prefetch, engine.h): on devices without shared
 *     memory, non-blocking writes of the lists' codes (and L2 FLAT norms)
 *     into resident buffers, on a second in-order queue so that units on
 *     the engine's queue are not held behind them; the buffers join the
 *     resident LRU under the same budget (a prefetch evicts least
 *     recently used copies, never one of its own lists, and declines with
 *     QV_ENOSPC what the budget cannot take).  A unit whose list is still
 *     being copied waits on that copy's event (kernel wait list), it
 *     does not copy again.  forget of a list whose copy is in flight
 *     waits for the copy.  In place (POCL's default) and on other shared
 *     memory devices: nothing to do, 0.
 *
 * Thread-safety: one thread at a time per engine (submit, poll, forget,
 * prefetch).
 */
#ifndef QUIVER_ENGINE_OPENCL_H
#define QUIVER_ENGINE_OPENCL_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"

struct qv_config;

#define QV_OPENCL_MAX_K 256u        /* largest k the kernels keep */

enum qv_opencl_devtype {
    QV_OPENCL_DEV_ALL = 0,          /* any type, in platform order */
    QV_OPENCL_DEV_CPU,
    QV_OPENCL_DEV_GPU,
    QV_OPENCL_DEV_ACCELERATOR,
};

struct qv_opencl_opts {
    const char *platform;           /* substring of the platform name
                                       (case-insensitive); NULL or "" =
                                       any */
    enum qv_opencl_devtype device_type;
    unsigned device_index;          /* among the matching devices, in
                                       platform then device order */
    const char *cache_dir;          /* program binary cache; NULL or "" =
                                       $XDG_CACHE_HOME/quiver/opencl, else
                                       $HOME/.cache/quiver/opencl, else
                                       /var/cache/quiver/opencl; "off" =
                                       no cache */
    const char *binary;             /* prebuilt program binary (FPGA
                                       offline compilers); NULL or "" =
                                       build from the embedded source */
    unsigned local_size;            /* work-items per work-group; 0 = auto
                                       (16 on CPU devices, else 64) */
    uint64_t max_alloc;             /* cap on one buffer in bytes; 0 = the
                                       device's CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    uint64_t resident_bytes;        /* budget of resident list copies on
                                       devices without shared memory; 0 =
                                       half the device's global memory */
    const char *build_options;      /* extra options for clBuildProgram
                                       (tests: "-DQV_FORCE_ERROR"); NULL
                                       = none */
    int no_zero_copy;               /* copy lists into resident device
                                       buffers even where the device
                                       shares host memory (tests of the
                                       resident cache; benchmarks) */
};

/* Defaults: any platform, any type, index 0, default cache dir, no
 * binary, automatic local size, no caps.  Cannot fail. */
void qv_opencl_opts_default(struct qv_opencl_opts *o);

/* Fill o from the [opencl] section of cfg (keys platform, device_type,
 * device_index, cache_dir, binary, local_size, max_alloc,
 * resident_bytes; see conf/quiver.conf).  String fields point into cfg,
 * which must outlive o.  Returns 0 (the values were validated when cfg
 * was loaded). */
int qv_opencl_opts_from_config(const struct qv_config *cfg, struct qv_opencl_opts *o);

/*
 * qv_engine_opencl_create - pick the device per o (NULL = defaults),
 * create its context and in-order profiling queue, and build the program:
 * from o->binary when set, else from the binary cache when it holds one
 * for (device name, driver version, source + options hash), else from
 * the embedded source (then written to the cache; ~2 s on POCL).
 * Returns the engine, or NULL with qv_errno:
 *   QV_EUNAVAIL  no OpenCL platform / no matching device / the program
 *                failed to build (the message holds the build log) or the
 *                binary was refused.  The caller goes on with the CPU.
 *   QV_EINVAL    bad options (local_size not 0 or a power of two in
 *                16..1024, or above the device's work-group limit)
 *   QV_ENOMEM
 * A cache that cannot be written is not an error (a warning is logged).
 * Not thread-safe against another create in the same cache dir only in
 * that both may build; the cache file is replaced atomically.
 */
struct qv_engine *qv_engine_opencl_create(const struct qv_opencl_opts *o);

/* What create did and found, for logs, tests and the cost model. */
struct qv_opencl_info {
    char platform[128];
    char device[128];
    char driver[64];
    int cache_hit;                  /* 1: program loaded from the cache */
    int from_binary;                /* 1: loaded from opts.binary */
    uint64_t build_ns;              /* time to get the program */
    int shared_memory;              /* 1: lists used in place (zero-copy) */
    int cpu_device;                 /* 1: CL_DEVICE_TYPE_CPU (POCL): runs
                                       on this host's cores */
    int inplace;                    /* 1: the device was proven to use
                                       USE_HOST_PTR memory itself: no
                                       staging writes or candidate read;
                                       wrappers of lists and queries are
                                       cached by (pointer, bytes) */
    uint64_t global_mem, local_mem, max_alloc;
    unsigned compute_units, local_size;
    char cache_path[512];           /* the binary's file ("" = no cache) */
};

/* Fill *out for an engine made by qv_engine_opencl_create (another engine
 * gives QV_EINVAL).  Cannot fail otherwise. */
int qv_engine_opencl_info(const struct qv_engine *e, struct qv_opencl_info *out);

/* Drop any resident device copy (or, on in-place devices, the cached
 * wrapper) of the list memory at host (codes or norms).  Returns how many
 * buffers were released (0 when none was held).  Units in flight that use
 * it keep it until they complete (OpenCL reference counts).  A prefetch
 * copy of it still in flight is waited for first (it reads host). */
int qv_engine_opencl_forget(struct qv_engine *e, const void *host);

/* Block until every submitted unit and every prefetch copy has finished
 * on the device (poll() then returns the units without waiting).  For
 * benchmarks, tests and shutdown: the router polls.  Returns 0 or
 * QV_EIO. */
int qv_engine_opencl_wait(struct qv_engine *e);

/* Bytes moved to the device, since create.  A unit over lists that a
 * prefetch made resident adds nothing to resident_bytes. */
struct qv_opencl_stats {
    uint64_t resident_copies;       /* list / table copies units made into
                                       resident buffers (misses at submit) */
    uint64_t resident_bytes;        /* their bytes */
    uint64_t staging_bytes;         /* per-unit writes: queries, query
                                       tables, probes, masks (not in place) */
    uint64_t evictions;             /* resident copies dropped for room */
    uint64_t prefetch_calls;        /* prefetches on a device with device
                                       memory (in place: not counted) */
    uint64_t prefetch_copies;       /* buffers a prefetch started copying */
    uint64_t prefetch_bytes;        /* their bytes */
    uint64_t prefetch_waits;        /* buffers a unit found still being
                                       copied by a prefetch (it waited) */
    uint64_t prefetch_declined;     /* prefetches that declined a list */
};

/* Copy the engine's counters into *out.  QV_EINVAL when e is not an
 * OpenCL engine; cannot fail otherwise. */
int qv_engine_opencl_stats(const struct qv_engine *e, struct qv_opencl_stats *out);

/* The OpenCL name of an error code ("CL_OUT_OF_RESOURCES"), or
 * "CL_UNKNOWN_ERROR(<n>)" in a static buffer (not thread-safe then). */
const char *qv_opencl_strerror(int cl_error);

#endif
