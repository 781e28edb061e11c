/*
 * bench_engine.c - what quiverbench puts around the engines `offline
 * --engine` can name besides the default CPU path (built by
 * host/server/engines.c, quiver/engines.h): a meter that totals what the
 * engine reports, and for --engine auto one engine that owns the node's
 * router and every engine under it.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/engine.h"
#include "quiver/engines.h"
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

/* -- --engine auto: the router over every engine there is (bench.h) -- */

#include "quiver/router.h"

struct auto_owner {
    struct qv_engine base;
    struct qv_engines *engines;
};

static struct qv_engine *auto_inner(const struct qv_engine *e)
{
    return qv_engines_engine(((const struct auto_owner *)e->priv)->engines);
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
    qv_engines_free(O->engines);
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

struct qv_engine *qv__bench_auto_engine(const struct qv_config *cfg, struct qv_pool *pool,
                                        int verbose, struct qv_router **router)
{
    struct auto_owner *O = qv_calloc(1, sizeof *O, QV_MEM_BENCH);
    if (!O) {
        qv_seterr(QV_ENOMEM, "no memory for the router");
        return NULL;
    }
    O->engines = qv_engines_create(cfg, pool,
                                   QV_ENGINES_SLOW_CARD | (verbose ? QV_ENGINES_VERBOSE : 0));
    if (!O->engines) {
        qv_free(O);
        return NULL;
    }
    O->base.ops = &auto_ops;
    O->base.priv = O;
    *router = qv_engines_router(O->engines);
    return &O->base;
}
