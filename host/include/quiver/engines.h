/*
 * engines.h - the engines a node runs, built from its configuration: the
 * CPU engine always (the fallback of last resort), the OpenCL engine and
 * the FPGA card as [router] engines names them, all registered in one
 * router (router.h) with their descriptions (the calibration cache key)
 * and flags, and calibrated.  quiverd serves through it; quiverbench
 * --engine auto measures it.
 *
 * An engine named in [router] engines that cannot be opened (no OpenCL
 * ICD or device, a card that does not answer) is left out with a warning
 * naming why: the node serves with the others.  The CPU engine cannot be
 * left out.
 *
 * The FPGA card: [fpga] mode = thread starts a simulated card as a thread
 * of this process (firmware-sim), off means the same simulated card when
 * fpga is named in [router] engines (so a default build exercises the
 * card path), process connects to the card (or qv-fpga-sim) named by
 * [fpga] name.  Engines that compute on this host's cores (the CPU, an
 * OpenCL CPU device such as POCL, the simulated card) get
 * QV_ROUTER_HOST_CORES, so the router never splits a unit across two of
 * them.
 *
 * Lives in its own library (quiver_engines, host/server/meson.build)
 * because it links the OpenCL engine and the card simulator, which the
 * host library does not.
 */
#ifndef QUIVER_ENGINES_H
#define QUIVER_ENGINES_H

struct qv_config;
struct qv_engine;
struct qv_pool;
struct qv_router;
struct qv_engines;

/*
 * qv_engines_create - the engines of [router] engines over pool (borrowed:
 * the CPU engine's workers), in a router built from [router], calibrated
 * (or loaded from the calibration cache).  Returns NULL with qv_errno:
 * QV_ECONFIG (an unknown engine name), QV_ENOMEM, or the router's error.
 */
#define QV_ENGINES_VERBOSE 0x1u     /* engines left out: a line on stderr
                                       too (besides the warning log) */
#define QV_ENGINES_SLOW_CARD 0x2u   /* a simulated card's unit is lost
                                       after 60 s unless [fpga] timeout_ms
                                       is set: the simulator scans far
                                       slower than the card it models, and
                                       a benchmark's big batch may take
                                       seconds */

struct qv_engines *qv_engines_create(const struct qv_config *cfg, struct qv_pool *pool,
                                     unsigned flags);

/* The router (owned by e: do not free) and its engine. */
struct qv_router *qv_engines_router(struct qv_engines *e);
struct qv_engine *qv_engines_engine(struct qv_engines *e);

/* Free the router, then the engines (a thread-mode card is reset and
 * stopped).  NULL: no-op. */
void qv_engines_free(struct qv_engines *e);

/* One engine alone, from the configuration (for pinned benchmarks): the
 * OpenCL engine of [opencl], or the FPGA engine of [fpga] with its
 * simulated card when mode is thread or off (the engine owns the card:
 * qv_engine_free stops it).  NULL + qv_errno (QV_ENOTSUP: a build without
 * OpenCL). */
struct qv_engine *qv_engines_opencl(const struct qv_config *cfg);
struct qv_engine *qv_engines_fpga(const struct qv_config *cfg, unsigned flags);

/* The FPGA driver and, in thread / off mode, the simulated card under it,
 * separately (for tools that read the card's registers).  0, or an error
 * with both NULL. */
struct qv_fpga_sim;
int qv_engines_fpga_open(const struct qv_config *cfg, unsigned flags, struct qv_fpga_sim **sim,
                         struct qv_engine **drv);

#endif
