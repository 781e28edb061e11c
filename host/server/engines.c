/*
 * engines.c - the node's engines from its configuration (quiver/engines.h).
 *
 * OpenCL exists only in builds configured with an OpenCL ICD loader
 * (QV_HAVE_OPENCL); elsewhere asking for it is a clear error, not a
 * silent fallback.  The FPGA engine always exists: it drives a simulated
 * card started here as a thread ([fpga] mode = thread, or off) or a
 * running card / qv-fpga-sim ([fpga] mode = process).
 */
#include <stdio.h>
#include <string.h>

#include "fpga_sim.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/dist.h"
#include "quiver/engine.h"
#include "quiver/engine_fpga.h"
#include "quiver/engines.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/pool.h"
#include "quiver/router.h"
#ifdef QV_HAVE_OPENCL
#include "quiver/engine_opencl.h"
#endif

#define ENGINES_MAX 3

struct qv_engines {
    struct qv_router *router;
    struct qv_engine *eng[ENGINES_MAX];
    unsigned n;
};

/* ---- OpenCL ------------------------------------------------------------------ */

#ifdef QV_HAVE_OPENCL
struct qv_engine *qv_engines_opencl(const struct qv_config *cfg)
{
    struct qv_opencl_opts o;
    if (qv_opencl_opts_from_config(cfg, &o) != 0)
        return NULL;
    return qv_engine_opencl_create(&o);
}
#else
struct qv_engine *qv_engines_opencl(const struct qv_config *cfg)
{
    (void)cfg;
    qv_seterr(QV_ENOTSUP, "this build has no OpenCL engine: install an OpenCL ICD loader "
              "(scripts/setup.sh) and reconfigure with -Dopencl=enabled");
    return NULL;
}
#endif

/* ---- the FPGA card ----------------------------------------------------------- */

int qv_engines_fpga_open(const struct qv_config *cfg, unsigned flags, struct qv_fpga_sim **sim,
                         struct qv_engine **drv)
{
    struct qv_fpga_opts o;
    *sim = NULL;
    *drv = NULL;
    qv_fpga_opts_from_config(cfg, &o);
    if ((flags & QV_ENGINES_SLOW_CARD) &&
        strcmp(qv_config_origin(cfg, "fpga", "timeout_ms"), "default") == 0)
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

struct qv_engine *qv_engines_fpga(const struct qv_config *cfg, unsigned flags)
{
    struct qv_fpga_sim *sim;
    struct qv_engine *drv;
    if (qv_engines_fpga_open(cfg, flags, &sim, &drv))
        return NULL;
    if (!sim)
        return drv;
    struct fpga_owner *O = qv_calloc(1, sizeof *O, QV_MEM_SERVER);
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

/* ---- the router over them ---------------------------------------------------- */

/* Register e as name with desc; on failure e is freed.  0 or an error. */
static int add(struct qv_engines *E, const char *name, struct qv_engine *e, unsigned flags,
               const char *desc)
{
    int rc = qv_router_add(E->router, name, e, flags);
    if (rc) {
        qv_engine_free(e);
        return rc;
    }
    E->eng[E->n++] = e;
    return qv_router_set_desc(E->router, name, desc);
}

static void left_out(unsigned flags, const char *name)
{
    QV_WARN("engines: no %s engine, serving without it: %s", name, qv_errmsg());
    if (flags & QV_ENGINES_VERBOSE)
        fprintf(stderr, "engines: no %s engine: %s\n", name, qv_errmsg());
}

struct qv_engines *qv_engines_create(const struct qv_config *cfg, struct qv_pool *pool,
                                     unsigned flags)
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
    struct qv_engines *E = qv_calloc(1, sizeof *E, QV_MEM_SERVER);
    if (!E) {
        qv_seterr(QV_ENOMEM, "no memory for the engines");
        return NULL;
    }
    E->router = qv_router_create(&ro);
    if (!E->router)
        goto fail;
    /* the CPU is always there: the fallback of last resort */
    e = qv_engine_cpu_create(pool);
    if (!e)
        goto fail;
    snprintf(desc, sizeof desc, "cpu threads=%u simd=%s", qv_pool_threads(pool),
             qv_simd_name(qv_kernels()->level));
    if (add(E, "cpu", e, clean | QV_ROUTER_SYNC | QV_ROUTER_HOST_CORES, desc))
        goto fail;
    if (mask & QV_ROUTER_USE_OPENCL) {
        e = qv_engines_opencl(cfg);
        if (!e) {
            left_out(flags, "opencl");
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
            if (add(E, "opencl", e, oflags, desc))
                goto fail;
        }
    }
    if (mask & QV_ROUTER_USE_FPGA) {
        e = qv_engines_fpga(cfg, flags);
        if (!e) {
            left_out(flags, "fpga");
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
            if (add(E, "fpga", e, clean | QV_ROUTER_HOST_CORES, desc))
                goto fail;
        }
    }
    if (qv_router_calibrate(E->router))
        goto fail;
    return E;

fail:;
    int rc = qv_errno ? qv_errno : QV_ENOMEM;
    char msg[600];
    snprintf(msg, sizeof msg, "%s", qv_errmsg());
    qv_engines_free(E);
    qv_seterr(rc, "%s", msg);
    return NULL;
}

struct qv_router *qv_engines_router(struct qv_engines *E)
{
    return E->router;
}

struct qv_engine *qv_engines_engine(struct qv_engines *E)
{
    return qv_router_engine(E->router);
}

void qv_engines_free(struct qv_engines *E)
{
    if (!E)
        return;
    qv_router_free(E->router);          /* first: it borrows them */
    for (unsigned i = E->n; i-- > 0;)
        qv_engine_free(E->eng[i]);
    qv_free(E);
}
