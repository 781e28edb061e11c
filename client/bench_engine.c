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
