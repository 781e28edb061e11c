/*
 * bench_engine.c - the engines `quiverbench offline --engine` can name
 * besides the default CPU path.  OpenCL exists only in builds configured
 * with an OpenCL ICD loader (QV_HAVE_OPENCL); elsewhere asking for it is a
 * clear error, not a silent fallback.
 */
#include <string.h>

#include "bench.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/engine.h"
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
