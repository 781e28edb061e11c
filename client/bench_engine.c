/*
 * bench_engine.c - the engines `quiverbench offline --engine` can name
 * besides the default CPU path.  OpenCL exists only in builds configured
 * with an OpenCL ICD loader (QV_HAVE_OPENCL); elsewhere asking for it is a
 * clear error, not a silent fallback.
 */
#include "bench.h"
#include "quiver/config.h"
#include "quiver/engine.h"
#include "quiver/errors.h"

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
