/*
 * bench_engine.c - the engines `quiverbench offline --engine` can name
 * besides the default CPU path.  OpenCL exists only in builds configured
 * with an OpenCL ICD loader (QV_HAVE_OPENCL); elsewhere asking for it is a
 * clear error, not a silent fallback.  The FPGA engine always exists: it
 * drives a simulated card started here as a thread ([fpga] mode = thread,
 * or off) or a running qv-fpga-sim ([fpga] mode = process).
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "fpga_sim.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/engine.h"
#include "quiver/engine_fpga.h"
#include "quiver/errors.h"

/* -- the meter (bench.h) -- */

struct meter {
    struct qv_engine base;
    struct qv_engine *inner;
    struct qv__bench_meter m;
};

static void meter_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    const struct meter *M = e->priv;
    M->inner->ops->caps(M->inner, out);
}

static int meter_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct meter *M = e->priv;
    return M->inner->ops->submit(M->inner, wu);
}

static int meter_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct meter *M = e->priv;
    int n = M->inner->ops->poll(M->inner, done, max);
    for (int i = 0; i < n; i++) {
        M->m.units++;
        M->m.device_ns += done[i]->device_ns;
        M->m.transfer_ns += done[i]->transfer_ns;
    }
    return n;
}

static int meter_health(const struct qv_engine *e)
{
    const struct meter *M = e->priv;
    return M->inner->ops->health(M->inner);
}

static void meter_forget(struct qv_engine *e, const void *host)
{
    struct meter *M = e->priv;
    qv_engine_forget(M->inner, host);
}

static int meter_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct meter *M = e->priv;
    return qv_engine_prefetch(M->inner, wu);
}

static void meter_free(struct qv_engine *e)
{
    struct meter *M = e->priv;
    qv_engine_free(M->inner);
    qv_free(M);
}

static const struct qv_engine_ops meter_ops = {
    .name = "meter",
    .caps = meter_caps,
    .submit = meter_submit,
    .poll = meter_poll,
    .health = meter_health,
    .free = meter_free,
    .forget = meter_forget,
    .prefetch = meter_prefetch,
};

struct qv_engine *qv__bench_meter_wrap(struct qv_engine *inner)
{
    struct meter *M = qv_calloc(1, sizeof *M, QV_MEM_MISC);
    if (!M) {
        qv_engine_free(inner);
        qv_seterr(QV_ENOMEM, "no memory for the engine meter");
        return NULL;
    }
    M->base.ops = &meter_ops;
    M->base.priv = M;
    M->inner = inner;
    return &M->base;
}

void qv__bench_meter_take(struct qv_engine *meter, struct qv__bench_meter *out)
{
    struct meter *M = meter->priv;
    *out = M->m;
    memset(&M->m, 0, sizeof M->m);
}

#ifdef QV_HAVE_OPENCL
#include "quiver/engine_opencl.h"

struct qv_engine *qv__bench_opencl_engine(const struct qv_config *cfg)
{
    struct qv_opencl_opts o;
    if (qv_opencl_opts_from_config(cfg, &o) != 0)
        return NULL;
    return qv_engine_opencl_create(&o);
}
#else
struct qv_engine *qv__bench_opencl_engine(const struct qv_config *cfg)
{
    (void)cfg;
    qv_seterr(QV_ENOTSUP, "this build has no OpenCL engine: install an OpenCL ICD loader "
              "(scripts/setup.sh) and reconfigure with -Dopencl=enabled");
    return NULL;
}
#endif

/* -- the FPGA engine (bench.h) -- */

int qv__bench_fpga_open(const struct qv_config *cfg, struct qv_fpga_sim **sim,
                        struct qv_engine **drv)
{
    struct qv_fpga_opts o;
    *sim = NULL;
    *drv = NULL;
    qv_fpga_opts_from_config(cfg, &o);
    /* the simulator scans far slower than the card it models: a big batch
     * may take seconds, so unless the configuration says otherwise a
     * benchmark waits a minute before calling a unit lost */
    if (strcmp(qv_config_origin(cfg, "fpga", "timeout_ms"), "default") == 0)
        o.timeout_ms = 60000;
    if (qv_config_enum(cfg, "fpga", "mode") != 2) {     /* off or thread */
        struct qv_fpga_sim_opts so;
        qv_fpga_sim_opts_default(&so);
        qv_fpga_sim_opts_from_config(cfg, &so);
        *sim = qv_fpga_sim_create(&so, QV_FPGA_SIM_THREAD);
        if (!*sim)
            return qv_errno;
        o.bar0 = qv_fpga_sim_bar0(*sim);
    }
    *drv = qv_engine_fpga_create(&o);
    if (!*drv) {
        int rc = qv_errno;
        char msg[600];
        snprintf(msg, sizeof msg, "%s", qv_errmsg());
        qv_fpga_sim_free(*sim);
        *sim = NULL;
        return qv_seterr(rc, "%s", msg);
    }
    return 0;
}

/* An engine that owns a driver and the thread-mode card under it. */
struct fpga_owner {
    struct qv_engine base;
    struct qv_engine *drv;
    struct qv_fpga_sim *sim;
};

static void owner_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    const struct fpga_owner *O = e->priv;
    O->drv->ops->caps(O->drv, out);
}

static int owner_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct fpga_owner *O = e->priv;
    return O->drv->ops->submit(O->drv, wu);
}

static int owner_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct fpga_owner *O = e->priv;
    return O->drv->ops->poll(O->drv, done, max);
}

static int owner_health(const struct qv_engine *e)
{
    const struct fpga_owner *O = e->priv;
    return O->drv->ops->health(O->drv);
}

static void owner_forget(struct qv_engine *e, const void *host)
{
    struct fpga_owner *O = e->priv;
    qv_engine_forget(O->drv, host);
}

static int owner_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct fpga_owner *O = e->priv;
    return qv_engine_prefetch(O->drv, wu);
}

static void owner_free(struct qv_engine *e)
{
    struct fpga_owner *O = e->priv;
    qv_engine_free(O->drv);             /* first: it resets the card */
    qv_fpga_sim_free(O->sim);
    qv_free(O);
}

static const struct qv_engine_ops owner_ops = {
    .name = "fpga",
    .caps = owner_caps,
    .submit = owner_submit,
    .poll = owner_poll,
    .health = owner_health,
    .free = owner_free,
    .forget = owner_forget,
    .prefetch = owner_prefetch,
};

struct qv_engine *qv__bench_fpga_engine(const struct qv_config *cfg)
{
    struct qv_fpga_sim *sim;
    struct qv_engine *drv;
    if (qv__bench_fpga_open(cfg, &sim, &drv))
        return NULL;
    if (!sim)
        return drv;
    struct fpga_owner *O = qv_calloc(1, sizeof *O, QV_MEM_BENCH);
    if (!O) {
        qv_engine_free(drv);
        qv_fpga_sim_free(sim);
        qv_seterr(QV_ENOMEM, "no memory for the fpga engine");
        return NULL;
    }
    O->base.ops = &owner_ops;
    O->base.priv = O;
    O->drv = drv;
    O->sim = sim;
    return &O->base;
}

/* -- --engine auto: the router over every engine there is (bench.h) -- */

#include "quiver/dist.h"
#include "quiver/pool.h"
#include "quiver/router.h"
#ifdef QV_HAVE_OPENCL
#include "quiver/engine_opencl.h"
#endif

struct auto_owner {
    struct qv_engine base;
    struct qv_router *router;
    struct qv_engine *eng[3];
    unsigned n;
};

static struct qv_engine *auto_inner(const struct qv_engine *e)
{
    return qv_router_engine(((const struct auto_owner *)e->priv)->router);
}

static void auto_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    auto_inner(e)->ops->caps(auto_inner(e), out);
}

static int auto_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    return auto_inner(e)->ops->submit(auto_inner(e), wu);
}

static int auto_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    return auto_inner(e)->ops->poll(auto_inner(e), done, max);
}

static int auto_health(const struct qv_engine *e)
{
    return auto_inner(e)->ops->health(auto_inner(e));
}

static void auto_forget(struct qv_engine *e, const void *host)
{
    qv_engine_forget(auto_inner(e), host);
}

static int auto_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    return qv_engine_prefetch(auto_inner(e), wu);
}

static void auto_free(struct qv_engine *e)
{
    struct auto_owner *O = e->priv;
    qv_router_free(O->router);              /* first: it borrows them */
    for (unsigned i = O->n; i-- > 0;)
        qv_engine_free(O->eng[i]);
    qv_free(O);
}

static const struct qv_engine_ops auto_ops = {
    .name = "auto",
    .caps = auto_caps,
    .submit = auto_submit,
    .poll = auto_poll,
    .health = auto_health,
    .free = auto_free,
    .forget = auto_forget,
    .prefetch = auto_prefetch,
};

/* Register e as name with desc; on failure e is freed.  0 or an error. */
static int auto_add(struct auto_owner *O, const char *name, struct qv_engine *e,
                    unsigned flags, const char *desc)
{
    int rc = qv_router_add(O->router, name, e, flags);
    if (rc) {
        qv_engine_free(e);
        return rc;
    }
    O->eng[O->n++] = e;
    return qv_router_set_desc(O->router, name, desc);
}

struct qv_engine *qv__bench_auto_engine(const struct qv_config *cfg, struct qv_pool *pool,
                                        int verbose, struct qv_router **router)
{
    struct qv_router_opts ro;
    unsigned mask;
    char desc[512];         /* the router keeps QV_ROUTER_DESC_MAX - 1 */
    struct qv_engine *e;
    /* cpu, opencl and fpga all merge into heaps only on success */
    const unsigned clean = QV_ROUTER_CLEAN_FAIL;

    if (qv_router_parse_engines(qv_config_string(cfg, "router", "engines"), &mask))
        return NULL;
    qv_router_opts_from_config(cfg, &ro);
    struct auto_owner *O = qv_calloc(1, sizeof *O, QV_MEM_BENCH);
    if (!O) {
        qv_seterr(QV_ENOMEM, "no memory for the router");
        return NULL;
    }
    O->base.ops = &auto_ops;
    O->base.priv = O;
    O->router = qv_router_create(&ro);
    if (!O->router)
        goto fail;
    /* the CPU is always there: the fallback of last resort */
    e = qv_engine_cpu_create(pool);
    if (!e)
        goto fail;
    snprintf(desc, sizeof desc, "cpu threads=%u simd=%s", qv_pool_threads(pool),
             qv_simd_name(qv_kernels()->level));
    if (auto_add(O, "cpu", e, clean | QV_ROUTER_SYNC | QV_ROUTER_HOST_CORES, desc))
        goto fail;
    if (mask & QV_ROUTER_USE_OPENCL) {
        e = qv__bench_opencl_engine(cfg);
        if (!e) {
            if (verbose)
                fprintf(stderr, "offline: --engine auto: no opencl engine: %s\n", qv_errmsg());
        } else {
#ifdef QV_HAVE_OPENCL
            struct qv_opencl_info info;
            qv_engine_opencl_info(e, &info);
            snprintf(desc, sizeof desc, "%s|%s|%s|ls=%u", info.platform, info.device,
                     info.driver, info.local_size);
            unsigned oflags = clean | (info.cpu_device ? QV_ROUTER_HOST_CORES : 0);
#else
            snprintf(desc, sizeof desc, "opencl");
            unsigned oflags = clean;
#endif
            if (auto_add(O, "opencl", e, oflags, desc))
                goto fail;
        }
    }
    if (mask & QV_ROUTER_USE_FPGA) {
        e = qv__bench_fpga_engine(cfg);
        if (!e) {
            if (verbose)
                fprintf(stderr, "offline: --engine auto: no fpga engine: %s\n", qv_errmsg());
        } else {
            snprintf(desc, sizeof desc, "%s card=%s clock=%lld lanes=%lld hbm=%lld pcie=%lld "
                     "launch=%lld sim_opencl=%d",
                     qv_config_string(cfg, "fpga", "mode"), qv_config_string(cfg, "fpga", "name"),
                     (long long)qv_config_int(cfg, "fpga", "clock_mhz"),
                     (long long)qv_config_int(cfg, "fpga", "lanes"),
                     (long long)qv_config_int(cfg, "fpga", "hbm_mbps"),
                     (long long)qv_config_int(cfg, "fpga", "pcie_mbps"),
                     (long long)qv_config_int(cfg, "fpga", "launch_ns"),
                     (int)qv_config_bool(cfg, "fpga", "sim_opencl"));
            /* the card this build reaches is the simulator, on this
             * host's cores (thread mode, or a qv-fpga-sim process) */
            if (auto_add(O, "fpga", e, clean | QV_ROUTER_HOST_CORES, desc))
                goto fail;
        }
    }
    if (qv_router_calibrate(O->router))
        goto fail;
    *router = O->router;
    return &O->base;

fail:;
    int rc = qv_errno ? qv_errno : QV_ENOMEM;
    char msg[600];
    snprintf(msg, sizeof msg, "%s", qv_errmsg());
    auto_free(&O->base);
    qv_seterr(rc, "%s", msg);
    return NULL;
}
