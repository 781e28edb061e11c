/*
 * calibrate.c - the router's calibration (qv_router_calibrate) and its
 * on-disk cache.
 *
 * Measurement
 * -----------
 * Per engine and per kind (FLAT, F16, SQ8; dim 128; metric IP, k 10),
 * three synthetic units, run straight on the engine (not through the
 * router), each once cold and then QV_CAL_REPS times warm, keeping the
 * fastest warm run:
 *
 *   unit      shape                                     isolates
 *   tiny      1 query, 1 list of 16 entries             overhead
 *   stream    1 query, 16 lists of ~512 KiB each        memory bandwidth
 *             (1 query: 0.5 flop per byte of FLAT)      (+ link, cold)
 *   compute   64 queries, all probing 4 lists of 1024   compute rate
 *             entries (32 flop per byte scanned)
 *
 * and the parameters are solved directly, with the features of router.c
 * (qv__router_shape, so model and measurement agree by construction):
 *   overhead_ns = t_tiny
 *   mem_Bps     = scanned(stream) / (t_stream - t_tiny)
 *   flops       = ops(compute) / (t_compute - t_tiny)
 *   link_Bps    = list_bytes(stream) / (t_stream_cold - t_stream)
 *                 (engines with device memory; where the cold run is
 *                 not measurably slower: 100 GB/s, i.e. "free")
 * Differences are floored at 1 us so a noisy run cannot give a negative
 * or infinite rate.  If the compute unit turned out memory-bound on some
 * engine, flops is a lower bound there, which the max() in the model
 * makes harmless (that unit's time is then explained either way).  PQ
 * units are not synthesised (their codebooks and tables need a trained
 * quantiser): PQ takes SQ8's parameters, both being byte codes scanned
 * with table-like inner loops; the online correction absorbs the rest.
 * The synthetic lists are forgotten (qv_engine_forget) before they are
 * freed, so device engines drop their copies.
 *
 * Time: about 12 runs per kind, the largest touching 8 MiB: tens of ms
 * per engine on the CPU and POCL.  A deadline of QV_CAL_BUDGET_NS over
 * all engines stops further measurements (the rest keep their defaults,
 * with a warning).
 *
 * Cache
 * -----
 * One JSON file per host and engine: <dir>/<host>-<engine>.json
 *
 *   KEY          MEANING
 *   format       QV_CAL_FORMAT; another value = stale
 *   key          "<host>|<engine name>|<description>|v<format>": any
 *                change of host, engine, device or driver = stale
 *   measured_at  Unix time of the measurement (information)
 *   kinds        { "flat"|"f16"|"sq8"|"pq": { overhead_ns, link_Bps,
 *                mem_Bps, flops } } for every kind the engine supports
 *
 * A file that cannot be parsed, lacks a supported kind or holds a value
 * that is not finite and > 0 is corrupt; stale and corrupt files are
 * ignored with a warning, then rewritten after measuring.  Writes go to
 * a temporary file renamed over the old one (atomic for readers).
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "router_int.h"

#define QV_CAL_FORMAT 1
#define QV_CAL_DIM 128u
#define QV_CAL_K 10u
#define QV_CAL_REPS 3
#define QV_CAL_STREAM_BYTES (8u << 20)
#define QV_CAL_BUDGET_NS 1800000000LL
#define QV_CAL_FREE_LINK 100e9

static const char *const kind_names[QV_WU__COUNT] = {
    [QV_WU_FLAT] = "flat", [QV_WU_SQ8] = "sq8", [QV_WU_PQ] = "pq", [QV_WU_F16] = "f16",
};

/* ------------------------------------------------------------------ */
/* Synthetic units                                                     */
/* ------------------------------------------------------------------ */

struct cal_unit {
    struct qv_work_unit wu;
    struct qv_wu_list *lists;
    void **codes;
    float *norms;                   /* shared by all lists: max n */
    uint64_t *ids;
    uint32_t *rows;
    float *queries, *qnorms;
    uint32_t *offs, *plist;
    struct qv_topk *heaps;
    float *hd;
    uint64_t *hi;
    float *vmin, *vdiff;
    struct qv_sq8_params sq8;
};

static void cal_free(struct qv_engine *e, struct cal_unit *c)
{
    if (c->codes)
        for (uint32_t l = 0; l < c->wu.nlists; l++) {
            qv_engine_forget(e, c->codes[l]);
            qv_free(c->codes[l]);
        }
    qv_engine_forget(e, c->norms);
    qv_free(c->codes);
    qv_free(c->lists);
    qv_free(c->norms);
    qv_free(c->ids);
    qv_free(c->rows);
    qv_free(c->queries);
    qv_free(c->qnorms);
    qv_free(c->offs);
    qv_free(c->plist);
    qv_free(c->heaps);
    qv_free(c->hd);
    qv_free(c->hi);
    qv_free(c->vmin);
    qv_free(c->vdiff);
    memset(c, 0, sizeof *c);
}

/* nq queries, each probing all nlists lists of n entries (n a multiple
 * of 16).  Values are small pseudo-random numbers (codes of F16 lists
 * are binary16 values in [0, 1)). */
static int cal_make(struct cal_unit *c, enum qv_wu_kind kind, uint32_t nlists, uint32_t n,
                    uint32_t nq)
{
    const uint32_t d = QV_CAL_DIM;
    size_t bpe = kind == QV_WU_FLAT ? 4u * d : kind == QV_WU_F16 ? 2u * d : d;
    uint32_t seed = 12345u;
    memset(c, 0, sizeof *c);
    c->lists = qv_calloc(nlists, sizeof *c->lists, QV_MEM_ROUTER);
    c->codes = qv_calloc(nlists, sizeof *c->codes, QV_MEM_ROUTER);
    c->norms = qv_calloc(n, sizeof *c->norms, QV_MEM_ROUTER);
    c->ids = qv_malloc((size_t)n * sizeof *c->ids, QV_MEM_ROUTER);
    c->rows = qv_malloc((size_t)n * sizeof *c->rows, QV_MEM_ROUTER);
    c->queries = qv_malloc((size_t)nq * d * sizeof(float), QV_MEM_ROUTER);
    c->qnorms = qv_calloc(nq, sizeof(float), QV_MEM_ROUTER);
    c->offs = qv_malloc(((size_t)nq + 1) * sizeof(uint32_t), QV_MEM_ROUTER);
    c->plist = qv_malloc((size_t)nq * nlists * sizeof(uint32_t), QV_MEM_ROUTER);
    c->heaps = qv_malloc((size_t)nq * sizeof *c->heaps, QV_MEM_ROUTER);
    c->hd = qv_malloc((size_t)nq * QV_CAL_K * sizeof(float), QV_MEM_ROUTER);
    c->hi = qv_malloc((size_t)nq * QV_CAL_K * sizeof(uint64_t), QV_MEM_ROUTER);
    c->vmin = qv_calloc(d, sizeof(float), QV_MEM_ROUTER);
    c->vdiff = qv_malloc(d * sizeof(float), QV_MEM_ROUTER);
    c->wu.nlists = nlists;
    if (!c->lists || !c->codes || !c->norms || !c->ids || !c->rows || !c->queries ||
        !c->qnorms || !c->offs || !c->plist || !c->heaps || !c->hd || !c->hi || !c->vmin ||
        !c->vdiff)
        return QV_ENOMEM;
    for (uint32_t l = 0; l < nlists; l++) {
        c->codes[l] = qv_malloc(n * bpe, QV_MEM_ROUTER);
        if (!c->codes[l])
            return QV_ENOMEM;
        if (kind == QV_WU_F16) {
            uint16_t *h = c->codes[l];
            for (size_t i = 0; i < (size_t)n * d; i++) {
                seed = seed * 1664525u + 1013904223u;
                h[i] = (uint16_t)(0x3800u | (seed >> 22));  /* [0.5, 1) */
            }
        } else if (kind == QV_WU_FLAT) {
            float *f = c->codes[l];
            for (size_t i = 0; i < (size_t)n * d; i++) {
                seed = seed * 1664525u + 1013904223u;
                f[i] = (float)(seed >> 8) / 16777216.0f;
            }
        } else {
            uint8_t *b = c->codes[l];
            for (size_t i = 0; i < (size_t)n * d; i++) {
                seed = seed * 1664525u + 1013904223u;
                b[i] = (uint8_t)(seed >> 24);
            }
        }
        c->lists[l] = (struct qv_wu_list){ .codes = c->codes[l], .ids = c->ids,
                                           .rows = c->rows, .n = n, .list_no = l };
    }
    for (uint32_t i = 0; i < n; i++) {
        c->ids[i] = i;
        c->rows[i] = i;
    }
    for (size_t i = 0; i < (size_t)nq * d; i++) {
        seed = seed * 1664525u + 1013904223u;
        c->queries[i] = (float)(seed >> 8) / 16777216.0f;
    }
    for (uint32_t i = 0; i < d; i++)
        c->vdiff[i] = 1.0f;
    for (uint32_t q = 0; q <= nq; q++)
        c->offs[q] = q * nlists;
    for (uint32_t q = 0; q < nq; q++)
        for (uint32_t l = 0; l < nlists; l++)
            c->plist[q * nlists + l] = l;
    c->sq8 = (struct qv_sq8_params){ c->vmin, c->vdiff };
    c->wu = (struct qv_work_unit){
        .kind = kind, .metric = QV_METRIC_IP, .dim = d,
        .code_size = kind == QV_WU_SQ8 ? d : 0, .nq = nq, .queries = c->queries,
        .qnorms = c->qnorms, .nlists = nlists, .lists = c->lists, .probe_offsets = c->offs,
        .probe_lists = c->plist, .params = kind == QV_WU_SQ8 ? &c->sq8 : NULL,
        .heaps = c->heaps,
    };
    return 0;
}

/* Run c on e (fresh heaps): wall ns, or < 0 = the error. */
static int64_t cal_run(struct qv_engine *e, struct cal_unit *c)
{
    for (uint32_t q = 0; q < c->wu.nq; q++)
        qv_topk_init(&c->heaps[q], QV_CAL_K, c->hd + (size_t)q * QV_CAL_K,
                     c->hi + (size_t)q * QV_CAL_K);
    int64_t t0 = qv_now_ns();
    int rc = qv_engine_run(e, &c->wu);
    int64_t t = qv_now_ns() - t0;
    return rc ? rc : (t > 0 ? t : 1);
}

/* Cold run into *cold (may be NULL), then the fastest of QV_CAL_REPS. */
static int64_t cal_time(struct qv_engine *e, struct cal_unit *c, int64_t *cold)
{
    int64_t t = cal_run(e, c), best = INT64_MAX;
    if (t < 0)
        return t;
    if (cold)
        *cold = t;
    for (int i = 0; i < QV_CAL_REPS; i++) {
        t = cal_run(e, c);
        if (t < 0)
            return t;
        if (t < best)
            best = t;
    }
    return best;
}

static double floor_us(double ns)
{
    return ns < 1000.0 ? 1000.0 : ns;
}

/* Measure E's parameters for kind into *out.  0 or an error. */
static int cal_kind(struct qv_router *r, struct rt_engine *E, enum qv_wu_kind kind,
                    struct qv_router_params *out)
{
    struct cal_unit tiny, stream, comp;
    struct rt_shape s_stream, s_comp;
    int64_t t_tiny, t_stream, t_cold = 0, t_comp;
    size_t bpe = kind == QV_WU_FLAT ? 4u * QV_CAL_DIM : kind == QV_WU_F16 ? 2u * QV_CAL_DIM
                                                                           : QV_CAL_DIM;
    uint32_t n_stream = (uint32_t)(QV_CAL_STREAM_BYTES / 16u / bpe / 16u * 16u);
    int rc;

    memset(&stream, 0, sizeof stream);
    memset(&comp, 0, sizeof comp);
    if ((rc = cal_make(&tiny, kind, 1, 16, 1)) != 0 ||
        (rc = cal_make(&stream, kind, 16, n_stream, 1)) != 0 ||
        (rc = cal_make(&comp, kind, 4, 1024, 64)) != 0)
        goto out;
    t_tiny = cal_time(E->e, &tiny, NULL);
    t_stream = cal_time(E->e, &stream, &t_cold);
    t_comp = cal_time(E->e, &comp, NULL);
    if (t_tiny < 0 || t_stream < 0 || t_comp < 0) {
        rc = t_tiny < 0 ? (int)t_tiny : t_stream < 0 ? (int)t_stream : (int)t_comp;
        goto out;
    }
    qv__router_shape(r, &stream.wu, &s_stream);
    qv__router_shape_done(r, &s_stream);
    qv__router_shape(r, &comp.wu, &s_comp);
    qv__router_shape_done(r, &s_comp);
    out->overhead_ns = (double)t_tiny;
    out->mem_Bps = (double)s_stream.scanned / floor_us((double)(t_stream - t_tiny)) * 1e9;
    out->flops = (double)s_comp.ops / floor_us((double)(t_comp - t_tiny)) * 1e9;
    out->link_Bps = QV_CAL_FREE_LINK;
    if (E->caps.device_memory && t_cold > t_stream + t_stream / 20)
        out->link_Bps = (double)s_stream.list_bytes / floor_us((double)(t_cold - t_stream)) *
                        1e9;
out:
    cal_free(E->e, &comp);
    cal_free(E->e, &stream);
    cal_free(E->e, &tiny);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Cache                                                               */
/* ------------------------------------------------------------------ */

static void sanitize(char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
            *s = '_';
}

static void host_name(char *buf, size_t len)
{
    if (gethostname(buf, len) != 0 || !*buf)
        snprintf(buf, len, "localhost");
    buf[len - 1] = '\0';
}

void qv__router_cache_path(const struct qv_router *r, const struct rt_engine *E,
                           char *buf, size_t len)
{
    char host[128], name[QV_ROUTER_NAME_MAX];
    if (!r->calibration_dir[0]) {
        buf[0] = '\0';
        return;
    }
    host_name(host, sizeof host);
    sanitize(host);
    snprintf(name, sizeof name, "%s", E->name);
    sanitize(name);
    snprintf(buf, len, "%s/%s-%s.json", r->calibration_dir, host, name);
}

static void cache_key(const struct rt_engine *E, char *buf, size_t len)
{
    char host[128];
    host_name(host, sizeof host);
    snprintf(buf, len, "%s|%s|%s|v%d", host, E->name, E->desc, QV_CAL_FORMAT);
}

static int wanted(const struct rt_engine *E, unsigned k)
{
    return (E->caps.kinds >> k & 1u) && E->calib[k] != QV_ROUTER_CALIB_INJECTED;
}

static int json_num(json_object *o, const char *key, double *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) ||
        !(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
        return -1;
    *out = json_object_get_double(v);
    return 0;
}

/* 0: loaded; 1: no file; -1: stale or corrupt (why in `why`). */
static int cache_load(struct rt_engine *E, const char *path, char *why, size_t wlen)
{
    struct qv_router_params p[QV_WU__COUNT];
    char key[512];
    json_object *root, *v, *kinds;
    if (access(path, F_OK) != 0)
        return 1;
    root = json_object_from_file(path);
    if (!root) {
        snprintf(why, wlen, "not valid JSON");
        return -1;
    }
    int rc = -1;
    cache_key(E, key, sizeof key);
    if (!json_object_object_get_ex(root, "format", &v) ||
        json_object_get_int(v) != QV_CAL_FORMAT) {
        snprintf(why, wlen, "format is not %d", QV_CAL_FORMAT);
        goto out;
    }
    if (!json_object_object_get_ex(root, "key", &v) || !json_object_is_type(v, json_type_string) ||
        strcmp(json_object_get_string(v), key) != 0) {
        snprintf(why, wlen, "stale: made for another host, engine or device (key \"%s\" "
                 "expected)", key);
        goto out;
    }
    if (!json_object_object_get_ex(root, "kinds", &kinds)) {
        snprintf(why, wlen, "no \"kinds\"");
        goto out;
    }
    for (unsigned k = 0; k < QV_WU__COUNT; k++) {
        json_object *o;
        if (!wanted(E, k))
            continue;
        if (!json_object_object_get_ex(kinds, kind_names[k], &o) ||
            json_num(o, "overhead_ns", &p[k].overhead_ns) ||
            json_num(o, "link_Bps", &p[k].link_Bps) || json_num(o, "mem_Bps", &p[k].mem_Bps) ||
            json_num(o, "flops", &p[k].flops) || !isfinite(p[k].overhead_ns) ||
            p[k].overhead_ns < 0 || !(p[k].link_Bps > 0) || !isfinite(p[k].link_Bps) ||
            !(p[k].mem_Bps > 0) || !isfinite(p[k].mem_Bps) || !(p[k].flops > 0) ||
            !isfinite(p[k].flops)) {
            snprintf(why, wlen, "kind \"%s\" missing or not four finite positive numbers",
                     kind_names[k]);
            goto out;
        }
    }
    for (unsigned k = 0; k < QV_WU__COUNT; k++)
        if (wanted(E, k)) {
            E->params[k] = p[k];
            E->calib[k] = QV_ROUTER_CALIB_CACHED;
        }
    rc = 0;
out:
    json_object_put(root);
    return rc;
}

static int mkdirs(const char *dir)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static void cache_save(const struct qv_router *r, const struct rt_engine *E, const char *path)
{
    char key[512], host[128], tmp[760];
    json_object *root = json_object_new_object(), *kinds = json_object_new_object();
    if (!root || !kinds) {
        json_object_put(root);
        json_object_put(kinds);
        return;
    }
    cache_key(E, key, sizeof key);
    host_name(host, sizeof host);
    json_object_object_add(root, "format", json_object_new_int(QV_CAL_FORMAT));
    json_object_object_add(root, "key", json_object_new_string(key));
    json_object_object_add(root, "host", json_object_new_string(host));
    json_object_object_add(root, "engine", json_object_new_string(E->name));
    json_object_object_add(root, "desc", json_object_new_string(E->desc));
    json_object_object_add(root, "measured_at", json_object_new_int64((int64_t)time(NULL)));
    for (unsigned k = 0; k < QV_WU__COUNT; k++) {
        if (!(E->caps.kinds >> k & 1u))
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "overhead_ns", json_object_new_double(E->params[k].overhead_ns));
        json_object_object_add(o, "link_Bps", json_object_new_double(E->params[k].link_Bps));
        json_object_object_add(o, "mem_Bps", json_object_new_double(E->params[k].mem_Bps));
        json_object_object_add(o, "flops", json_object_new_double(E->params[k].flops));
        json_object_object_add(kinds, kind_names[k], o);
    }
    json_object_object_add(root, "kinds", kinds);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    if (mkdirs(r->calibration_dir) != 0 ||
        json_object_to_file_ext(tmp, root, JSON_C_TO_STRING_PRETTY) != 0 ||
        rename(tmp, path) != 0) {
        QV_WARN("router: cannot write the calibration cache %s: %s (set [router] "
                "calibration_dir to a writable directory, or off)", path, strerror(errno));
        unlink(tmp);
    }
    json_object_put(root);
}

/* ------------------------------------------------------------------ */
/* qv_router_calibrate                                                 */
/* ------------------------------------------------------------------ */

int qv_router_calibrate(struct qv_router *r)
{
    static const enum qv_wu_kind measured[] = { QV_WU_FLAT, QV_WU_F16, QV_WU_SQ8 };
    char path[700], why[600];
    int64_t t0 = qv_now_ns();
    int hits = 0;
    if (!r->o.calibrate)
        return 0;
    for (unsigned i = 0; i < r->n; i++) {
        struct rt_engine *E = &r->eng[i];
        int need = 0;
        for (unsigned k = 0; k < QV_WU__COUNT; k++)
            need |= wanted(E, k);
        if (!need)
            continue;
        qv__router_cache_path(r, E, path, sizeof path);
        if (path[0]) {
            int rc = cache_load(E, path, why, sizeof why);
            if (rc == 0) {
                hits++;
                continue;
            }
            if (rc < 0)
                QV_WARN("router: calibration cache %s ignored (%s); measuring again", path,
                        why);
        }
        int done = 0;
        for (size_t m = 0; m < sizeof measured / sizeof measured[0]; m++) {
            enum qv_wu_kind k = measured[m];
            struct qv_router_params p;
            if (!wanted(E, k))
                continue;
            if (qv_now_ns() - t0 > QV_CAL_BUDGET_NS) {
                QV_WARN("router: calibration budget spent; %s keeps default %s parameters",
                        E->name, kind_names[k]);
                continue;
            }
            int rc = cal_kind(r, E, k, &p);
            if (rc == QV_ENOMEM)
                return qv_seterr(QV_ENOMEM, "router: no memory for calibration units");
            if (rc) {
                QV_WARN("router: calibrating %s for %s units failed (%s); defaults kept",
                        E->name, kind_names[k], qv_strerror(rc));
                continue;
            }
            E->params[k] = p;
            E->calib[k] = QV_ROUTER_CALIB_MEASURED;
            done++;
        }
        if (wanted(E, QV_WU_PQ) && E->calib[QV_WU_SQ8] == QV_ROUTER_CALIB_MEASURED) {
            E->params[QV_WU_PQ] = E->params[QV_WU_SQ8];
            E->calib[QV_WU_PQ] = QV_ROUTER_CALIB_MEASURED;
        }
        int complete = 1;
        for (unsigned k = 0; k < QV_WU__COUNT; k++)
            if (wanted(E, k) && E->calib[k] != QV_ROUTER_CALIB_MEASURED)
                complete = 0;
        if (path[0] && done && complete)
            cache_save(r, E, path);
    }
    r->st.calibrate_ns = (uint64_t)(qv_now_ns() - t0);
    r->st.calib_cache_hits = hits;
    return 0;
}
