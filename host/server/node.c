/*
 * node.c - the collection store (quiver/node.h holds the design; the
 * structures and their locking rules are in node_int.h): options,
 * create / free, the id table, CREATE, DROP, DESCRIBE, LIST, UPSERT,
 * DELETE, GET and sealing.  Segments are node_seg.c, the builder
 * node_build.c, the search node_search.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/finite.h"
#include "quiver/flat.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/log.h"
#include "quiver/service.h"
#include "quiver/topk.h"

#define NODE_FIRST_SLOTS 8u

const char *qv_node_index_name(enum qv_node_index t)
{
    static const char *const names[] = { "flat", "ivf", "ivf_sq8", "ivf_pq", "hnsw" };
    return (unsigned)t < QV_NODE_INDEX__COUNT ? names[t] : "unknown";
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

void qv_node_opts_default(struct qv_node_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_collections = 64;
    o->seal_rows = 65536;
    o->compact_ratio = 0.5;
    o->build_seed = 0x5156;
    o->build_share = 1.0;
}

int qv_node_opts_from_config(const struct qv_config *cfg, struct qv_node_opts *o)
{
    qv_node_opts_default(o);
    o->max_collections = (uint32_t)qv_config_int(cfg, "server", "max_collections");
    o->seal_rows = (uint32_t)qv_config_int(cfg, "server", "seal_rows");
    o->compact_ratio = qv_config_double(cfg, "server", "compact_ratio");
    o->build_share = qv_config_double(cfg, "server", "build_share");
    const char *dir = qv_config_string(cfg, "storage", "data_dir");
    o->data_dir = strcmp(dir, "none") == 0 ? NULL : dir;
    qv_wal_sync_parse(qv_config_string(cfg, "storage", "sync"), &o->sync);
    o->sync_interval_ms = (unsigned)qv_config_int(cfg, "storage", "sync_interval_ms");
    o->wal_segment_bytes = qv_config_size(cfg, "storage", "wal_segment_bytes");
    o->snapshot_wal_bytes = qv_config_size(cfg, "storage", "snapshot_wal_bytes");
    return 0;
}

static int check_opts(const struct qv_node_opts *o)
{
    if (o->service == NULL)
        return qv_seterr(QV_EINVAL, "node: service is NULL: a node serves its searches "
                         "through a query service (qv_service_create)");
    if (o->max_collections < 1 || o->max_collections > QV_NODE_MAX_COLLECTIONS)
        return qv_seterr(QV_EINVAL, "node: max_collections = %u: expected 1..%u",
                         o->max_collections, QV_NODE_MAX_COLLECTIONS);
    if (!(o->build_share > 0.0 && o->build_share <= 1.0))
        return qv_seterr(QV_EINVAL, "node: build_share = %g: expected a share of one CPU in "
                         "(0, 1] (1 = the builder never rests)", o->build_share);
    if (o->seal_rows < 16 || o->seal_rows > (1u << 30))
        return qv_seterr(QV_EINVAL, "node: seal_rows = %u: expected 16..%u", o->seal_rows,
                         1u << 30);
    if (!(o->compact_ratio >= 0.0 && o->compact_ratio <= 1.0))
        return qv_seterr(QV_EINVAL, "node: compact_ratio = %g: expected a number in 0..1 "
                         "(0 = never compact)", o->compact_ratio);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Pausing the dispatcher for a collection's change                    */
/* ------------------------------------------------------------------ */

/* Before the collection is registered nothing searches it: no pause. */
void qv__node_pause(struct ncoll *c)
{
    if (c->registered)
        qv_service_pause(c->node->o.service);
}

void qv__node_resume(struct ncoll *c)
{
    if (c->registered)
        qv_service_resume(c->node->o.service);
}

/* ------------------------------------------------------------------ */
/* The id table                                                        */
/* ------------------------------------------------------------------ */

static uint32_t hash_id(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* Slot of id, or -1.  tab_lock held (either way). */
static int64_t tab_find(const struct qv_node *node, uint64_t id)
{
    for (uint32_t h = hash_id(id) & node->hmask;; h = (h + 1) & node->hmask) {
        if (node->table[h] == NULL)
            return -1;
        if (node->table[h]->id == id)
            return h;
    }
}

static void tab_insert(struct qv_node *node, struct ncoll *c)
{
    uint32_t h = hash_id(c->id) & node->hmask;

    while (node->table[h] != NULL)
        h = (h + 1) & node->hmask;
    node->table[h] = c;
    node->ncoll++;
}

/* Remove slot h, shifting later members of its cluster back (no
 * tombstones).  tab_lock held for writing. */
static void tab_remove(struct qv_node *node, uint32_t h)
{
    uint32_t j = h;

    node->table[h] = NULL;
    node->ncoll--;
    for (;;) {
        j = (j + 1) & node->hmask;
        struct ncoll *m = node->table[j];
        if (m == NULL)
            return;
        uint32_t home = hash_id(m->id) & node->hmask;
        /* m may move to h when its home is not in (h, j] (cyclically) */
        if ((j > h && (home <= h || home > j)) || (j < h && home <= h && home > j)) {
            node->table[h] = m;
            node->table[j] = NULL;
            h = j;
        }
    }
}

struct ncoll *qv__node_find_locked(const struct qv_node *node, uint64_t id)
{
    int64_t h = tab_find(node, id);

    return h >= 0 ? node->table[h] : NULL;
}

struct ncoll *qv__node_coll_get(struct qv_node *node, uint64_t id)
{
    struct ncoll *c = NULL;
    int64_t h;

    pthread_rwlock_rdlock(&node->tab_lock);
    if ((h = tab_find(node, id)) >= 0) {
        c = node->table[h];
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_acq_rel);
    }
    pthread_rwlock_unlock(&node->tab_lock);
    return c;
}

void qv__node_coll_put(struct ncoll *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_seq_cst) == 1 &&
        atomic_load_explicit(&c->dropping, memory_order_seq_cst)) {
        pthread_mutex_lock(&c->node->mu);
        pthread_cond_broadcast(&c->node->cv);
        pthread_mutex_unlock(&c->node->mu);
    }
}

/* The collection, with a reference, or NULL after setting the error. */
static struct ncoll *coll_get(struct qv_node *node, uint64_t id, const char *op)
{
    struct ncoll *c = qv__node_coll_get(node, id);

    if (c == NULL)
        qv_seterr(QV_ENOENT, "%s: collection %llu does not exist", op,
                  (unsigned long long)id);
    return c;
}

/* Lock c's writer mutex; QV_ENOENT (mutex not held) when it is being
 * dropped. */
static int coll_lock(struct ncoll *c, const char *op)
{
    pthread_mutex_lock(&c->wmu);
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        return qv_seterr(QV_ENOENT, "%s: collection %llu ('%s') is being dropped", op,
                         (unsigned long long)c->id, c->name);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Create and free the node                                            */
/* ------------------------------------------------------------------ */

static int init_locks(struct qv_node *node)
{
    pthread_condattr_t ca;
    int rc;

    if ((rc = pthread_mutex_init(&node->create_mu, NULL)) != 0)
        goto fail;
    if ((rc = pthread_rwlock_init(&node->tab_lock, NULL)) != 0)
        goto fail_tab;
    if ((rc = pthread_mutex_init(&node->mu, NULL)) != 0)
        goto fail_mu;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    rc = pthread_cond_init(&node->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        goto fail_cv;
    return 0;
fail_cv:
    pthread_mutex_destroy(&node->mu);
fail_mu:
    pthread_rwlock_destroy(&node->tab_lock);
fail_tab:
    pthread_mutex_destroy(&node->create_mu);
fail:
    return qv_seterr(-rc, "node: cannot initialise its locks: %s", strerror(rc));
}

static void fini_locks(struct qv_node *node)
{
    pthread_cond_destroy(&node->cv);
    pthread_mutex_destroy(&node->mu);
    pthread_rwlock_destroy(&node->tab_lock);
    pthread_mutex_destroy(&node->create_mu);
}

struct qv_node *qv_node_create(const struct qv_node_opts *o)
{
    struct qv_node *node;
    uint32_t hsize = 1;
    int rc;

    if (o == NULL) {
        qv_errno = qv_seterr(QV_EINVAL, "node: NULL options: a node needs at least its "
                             "service (qv_node_opts_default, then .service)");
        return NULL;
    }
    if ((rc = check_opts(o)) != 0) {
        qv_errno = rc;
        return NULL;
    }
    node = qv_calloc(1, sizeof *node, QV_MEM_SERVER);
    if (node == NULL)
        goto fail_nomem;
    node->o = *o;
    node->next_id = 1;
    while (hsize < 2 * o->max_collections)
        hsize <<= 1;
    node->hmask = hsize - 1;
    node->table = qv_calloc(hsize, sizeof *node->table, QV_MEM_SERVER);
    if (node->table == NULL) {
        qv_free(node);
        goto fail_nomem;
    }
    if ((rc = init_locks(node)) != 0)
        goto fail;
    if ((rc = qv__build_start(node)) != 0) {
        fini_locks(node);
        goto fail;
    }
    if (o->data_dir) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", o->data_dir);
        node->o.data_dir = NULL;        /* borrowed: our copy below */
        node->data_dir = qv_strdup(dir, QV_MEM_SERVER);
        node->o.data_dir = node->data_dir;
        if (!node->data_dir || qv__store_open(node) != 0 ||
            qv__store_start_snapshotter(node) != 0) {
            rc = node->data_dir ? qv_errno : QV_ENOMEM;
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", qv_errmsg());
            qv_node_free(node);
            qv_errno = qv_seterr(rc, "%s", msg);
            return NULL;
        }
    }
    return node;
fail:
    qv_free(node->table);
    qv_free(node);
    qv_errno = rc;
    return NULL;
fail_nomem:
    qv_errno = qv_seterr(QV_ENOMEM, "node: no memory for a node of %u collections",
                         o->max_collections);
    return NULL;
}

/* Free c and everything in it.  Nothing can reach it any more (removed from
 * the service, out of the table, no references, no queued build). */
static void coll_free(struct ncoll *c)
{
    int engine = c->node->o.engine != NULL;

    if (c->slots != NULL) {
        if (engine)
            qv__node_pause(c);
        for (uint32_t i = 0; i < c->nslots; i++)
            qv__seg_free(c->slots[i], engine);
        if (engine)
            qv__node_resume(c);
        qv_free(c->slots);
    }
    qv__idmap_fini(&c->map);
    qv_wal_close(c->wal);
    pthread_mutex_destroy(&c->snap_mu);
    pthread_mutex_destroy(&c->wmu);
    qv_free(c);
}

/* Take c out of the table (create_mu and tab_lock held for writing) and
 * out of the builder's queue. */
static void coll_unpublish(struct qv_node *node, uint32_t h)
{
    struct ncoll *c = node->table[h];

    tab_remove(node, h);
    pthread_mutex_lock(&node->mu);
    atomic_store_explicit(&c->dropping, 1, memory_order_seq_cst);
    qv__build_forget(node, c);
    pthread_mutex_unlock(&node->mu);
}

/* The end of a drop: remove from the service (its queued searches
 * complete first, then its id, queues and metric series are freed there),
 * wait for the references (writers, the builder), free. */
static void coll_finish_drop(struct qv_node *node, struct ncoll *c)
{
    if (c->registered)
        qv_service_remove_collection(node->o.service, c->id);
    pthread_mutex_lock(&node->mu);
    while (atomic_load_explicit(&c->refs, memory_order_seq_cst) != 0)
        pthread_cond_wait(&node->cv, &node->mu);
    pthread_mutex_unlock(&node->mu);
    coll_free(c);
}

void qv_node_free(struct qv_node *node)
{
    if (node == NULL)
        return;
    qv__store_stop_snapshotter(node);
    qv__build_stop(node);
    for (;;) {
        struct ncoll *c = NULL;
        pthread_mutex_lock(&node->create_mu);
        pthread_rwlock_wrlock(&node->tab_lock);
        for (uint32_t h = 0; h <= node->hmask && c == NULL; h++) {
            if (node->table[h] != NULL) {
                c = node->table[h];
                coll_unpublish(node, h);
            }
        }
        pthread_rwlock_unlock(&node->tab_lock);
        pthread_mutex_unlock(&node->create_mu);
        if (c == NULL)
            break;
        coll_finish_drop(node, c);
    }
    qv__store_close(node);
    fini_locks(node);
    qv_free(node->data_dir);
    qv_free(node->table);
    qv_free(node);
}

/* ------------------------------------------------------------------ */
/* CREATE                                                              */
/* ------------------------------------------------------------------ */

/* 0 when s is a name: 1..64 bytes of [A-Za-z0-9_.-]; else the byte
 * offset + 1 of the first wrong byte, or -1 (empty / too long / NULL). */
static int bad_name(const char *s)
{
    size_t n;

    if (s == NULL)
        return -1;
    n = strnlen(s, QV_NODE_MAX_NAME + 1);
    if (n == 0 || n > QV_NODE_MAX_NAME)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return (int)i + 1;
    }
    return 0;
}

static int name_error(const char *field, const char *s)
{
    int b = bad_name(s);

    if (s == NULL)
        return qv_seterr(QV_EINVAL, "CREATE: %s is missing: give 1..%u bytes of "
                         "[A-Za-z0-9_.-]", field, QV_NODE_MAX_NAME);
    if (b < 0)
        return qv_seterr(QV_EINVAL, "CREATE: %s = \"%.70s\": %zu bytes: use 1..%u bytes of "
                         "[A-Za-z0-9_.-]", field, s, strnlen(s, 1000), QV_NODE_MAX_NAME);
    return qv_seterr(QV_EINVAL, "CREATE: %s = \"%.70s\": byte %d (0x%02x) is not allowed: "
                     "use [A-Za-z0-9_.-]", field, s, b - 1, (unsigned char)s[b - 1]);
}

/* A parameter of another index type must be 0. */
static int not_for(const char *field, uint32_t v, const char *types, enum qv_node_index t)
{
    return qv_seterr(QV_EINVAL, "CREATE: %s = %u: only %s collections take %s, this one "
                     "is %s: pass 0", field, v, types, field, qv_node_index_name(t));
}

static int check_ivf(const struct qv_node_coll_spec *s)
{
    uint32_t top = s->nlist ? s->nlist : QV_NODE_MAX_NLIST;

    if (s->nlist > QV_NODE_MAX_NLIST)
        return qv_seterr(QV_EINVAL, "CREATE: nlist = %u: use 1..%u, or 0 = sqrt of the "
                         "rows at the first build", s->nlist, QV_NODE_MAX_NLIST);
    if (s->nprobe > top)
        return qv_seterr(QV_EINVAL, "CREATE: nprobe = %u: use 1..nlist (%u), or 0 = %u",
                         s->nprobe, top, QV_NODE_DEFAULT_NPROBE);
    if (s->index == QV_NODE_IVF_PQ) {
        if (s->pq_m == 0 || s->pq_m > QV_NODE_MAX_PQ_M || s->dim % s->pq_m != 0)
            return qv_seterr(QV_EINVAL, "CREATE: pq_m = %u: use a divisor of dim (%u) in "
                             "1..%u", s->pq_m, s->dim, QV_NODE_MAX_PQ_M);
        if (s->pq_nbits != 4 && s->pq_nbits != 8)
            return qv_seterr(QV_EINVAL, "CREATE: pq_nbits = %u: use 4 or 8", s->pq_nbits);
    } else {
        if (s->pq_m)
            return not_for("pq_m", s->pq_m, "IVF_PQ", s->index);
        if (s->pq_nbits)
            return not_for("pq_nbits", s->pq_nbits, "IVF_PQ", s->index);
    }
    return 0;
}

static int check_hnsw(const struct qv_node_coll_spec *s)
{
    uint32_t m = s->hnsw_m ? s->hnsw_m : QV_NODE_DEFAULT_HNSW_M;

    if (s->hnsw_m && (s->hnsw_m < QV_NODE_MIN_HNSW_M || s->hnsw_m > QV_NODE_MAX_HNSW_M))
        return qv_seterr(QV_EINVAL, "CREATE: hnsw_m = %u: use %u..%u, or 0 = %u", s->hnsw_m,
                         QV_NODE_MIN_HNSW_M, QV_NODE_MAX_HNSW_M, QV_NODE_DEFAULT_HNSW_M);
    if (s->ef_construction &&
        (s->ef_construction < QV_NODE_MIN_EF_CONSTRUCTION ||
         s->ef_construction > QV_NODE_MAX_EF || s->ef_construction < m))
        return qv_seterr(QV_EINVAL, "CREATE: ef_construction = %u: use %u..%u and at least "
                         "hnsw_m (%u), or 0 = %u", s->ef_construction,
                         QV_NODE_MIN_EF_CONSTRUCTION, QV_NODE_MAX_EF, m,
                         QV_NODE_DEFAULT_EF_CONSTRUCTION);
    if (s->ef_search > QV_NODE_MAX_EF)
        return qv_seterr(QV_EINVAL, "CREATE: ef_search = %u: use 1..%u, or 0 = %u",
                         s->ef_search, QV_NODE_MAX_EF, QV_NODE_DEFAULT_EF_SEARCH);
    return 0;
}

/* Every rule of CREATE, in the order of PROTOCOL's table. */
static int check_spec(const struct qv_node_coll_spec *s)
{
    int rc;

    if (s == NULL)
        return qv_seterr(QV_EINVAL, "CREATE: no collection description (NULL spec)");
    if (s->dim == 0 || s->dim > QV_NODE_MAX_DIM)
        return qv_seterr(QV_EINVAL, "CREATE: dim = %u: use 1..%u", s->dim, QV_NODE_MAX_DIM);
    if ((unsigned)s->metric >= QV_METRIC__COUNT)
        return qv_seterr(QV_EINVAL, "CREATE: metric = %d: use 0 (L2), 1 (IP) or 2 (COSINE)",
                         (int)s->metric);
    if ((unsigned)s->index >= QV_NODE_INDEX__COUNT)
        return qv_seterr(QV_EINVAL, "CREATE: index = %d: use 0 (FLAT), 1 (IVF), 2 "
                         "(IVF_SQ8), 3 (IVF_PQ) or 4 (HNSW)", (int)s->index);
    if (s->nattrs > QV_NODE_MAX_ATTRS)
        return qv_seterr(QV_EINVAL, "CREATE: nattrs = %u: use 0..%u", s->nattrs,
                         QV_NODE_MAX_ATTRS);
    if (s->index == QV_NODE_IVF || s->index == QV_NODE_IVF_SQ8 || s->index == QV_NODE_IVF_PQ) {
        if ((rc = check_ivf(s)) != 0)
            return rc;
    } else {
        if (s->nlist)
            return not_for("nlist", s->nlist, "IVF, IVF_SQ8 and IVF_PQ", s->index);
        if (s->nprobe)
            return not_for("nprobe", s->nprobe, "IVF, IVF_SQ8 and IVF_PQ", s->index);
        if (s->pq_m)
            return not_for("pq_m", s->pq_m, "IVF_PQ", s->index);
        if (s->pq_nbits)
            return not_for("pq_nbits", s->pq_nbits, "IVF_PQ", s->index);
    }
    if (s->index == QV_NODE_HNSW) {
        if ((rc = check_hnsw(s)) != 0)
            return rc;
    } else {
        if (s->hnsw_m)
            return not_for("hnsw_m", s->hnsw_m, "HNSW", s->index);
        if (s->ef_construction)
            return not_for("ef_construction", s->ef_construction, "HNSW", s->index);
        if (s->ef_search)
            return not_for("ef_search", s->ef_search, "HNSW", s->index);
    }
    if (bad_name(s->name) != 0)
        return name_error("name", s->name);
    for (uint32_t a = 0; a < s->nattrs; a++) {
        char field[24];
        snprintf(field, sizeof field, "attrs[%u]", a);
        if (bad_name(s->attrs[a]) != 0)
            return name_error(field, s->attrs[a]);
        for (uint32_t b = 0; b < a; b++)
            if (strcmp(s->attrs[a], s->attrs[b]) == 0)
                return qv_seterr(QV_EINVAL, "CREATE: attrs[%u] = \"%s\" repeats attrs[%u]: "
                                 "attribute names must be distinct", a, s->attrs[a], b);
    }
    return 0;
}

uint64_t qv__node_seal_at(const struct ncoll *c)
{
    const struct qv_node_coll_spec *s = &c->spec;
    uint64_t at = c->node->o.seal_rows, need;
    uint32_t nlist = c->nlist_eff;

    switch (s->index) {
    case QV_NODE_IVF:
    case QV_NODE_IVF_SQ8:
    case QV_NODE_IVF_PQ:
        need = nlist ? (uint64_t)QV_NODE_TRAIN_PER_CENTROID * nlist : QV_NODE_AUTO_NLIST_ROWS;
        if (s->index == QV_NODE_IVF_PQ &&
            need < (uint64_t)QV_NODE_TRAIN_PER_CENTROID << s->pq_nbits)
            need = (uint64_t)QV_NODE_TRAIN_PER_CENTROID << s->pq_nbits;
        if (c->seals == 0)
            return need;            /* train as soon as there is data */
        return at > need ? at : need;
    default:
        return at;
    }
}

/* A new collection record from a checked spec, with its growing segment,
 * not yet registered nor published. */
static struct ncoll *coll_new(struct qv_node *node, const struct qv_node_coll_spec *s)
{
    struct ncoll *c = qv_calloc(1, sizeof *c, QV_MEM_SERVER);

    if (c == NULL)
        return NULL;
    c->node = node;
    c->spec = *s;
    snprintf(c->name, sizeof c->name, "%s", s->name);
    c->spec.name = c->name;
    c->names.nattrs = s->nattrs;
    for (uint32_t a = 0; a < s->nattrs; a++) {
        snprintf(c->attr_names[a], sizeof c->attr_names[a], "%s", s->attrs[a]);
        c->spec.attrs[a] = c->attr_names[a];
        c->names.names[a] = c->attr_names[a];
    }
    for (uint32_t a = s->nattrs; a < QV_NODE_MAX_ATTRS; a++)
        c->spec.attrs[a] = NULL;
    if (s->index == QV_NODE_HNSW) {
        if (!c->spec.hnsw_m)
            c->spec.hnsw_m = QV_NODE_DEFAULT_HNSW_M;
        if (!c->spec.ef_construction)
            c->spec.ef_construction = QV_NODE_DEFAULT_EF_CONSTRUCTION;
        if (!c->spec.ef_search)
            c->spec.ef_search = QV_NODE_DEFAULT_EF_SEARCH;
    } else if (s->index != QV_NODE_FLAT) {
        c->nprobe = s->nprobe ? s->nprobe : QV_NODE_DEFAULT_NPROBE;
        if (s->nlist && c->nprobe > s->nlist)
            c->nprobe = s->nlist;
        c->nlist_eff = s->nlist;
    }
    c->trained = s->index == QV_NODE_FLAT || s->index == QV_NODE_HNSW;
    c->next_file = 1;
    atomic_init(&c->refs, 0);
    atomic_init(&c->dropping, 0);
    qv__idmap_init(&c->map);
    if (pthread_mutex_init(&c->wmu, NULL) != 0) {
        qv_free(c);
        return NULL;
    }
    if (pthread_mutex_init(&c->snap_mu, NULL) != 0) {
        pthread_mutex_destroy(&c->wmu);
        qv_free(c);
        return NULL;
    }
    c->slots = qv_calloc(NODE_FIRST_SLOTS, sizeof *c->slots, QV_MEM_SERVER);
    c->growing = c->slots ? qv__seg_new_growing(c, 0) : NULL;
    if (c->growing == NULL) {
        qv_free(c->slots);
        pthread_mutex_destroy(&c->snap_mu);
        pthread_mutex_destroy(&c->wmu);
        qv_free(c);
        return NULL;
    }
    c->slot_cap = NODE_FIRST_SLOTS;
    c->slots[0] = c->growing;
    c->nslots = 1;
    return c;
}

/* Register c with the service as a CUSTOM collection under a free id.
 * create_mu held. */
static int coll_register(struct qv_node *node, struct ncoll *c)
{
    struct qv_service_collection sc = {
        .dim = c->spec.dim, .metric = c->spec.metric, .nprobe = c->nprobe,
        .ef = c->spec.index == QV_NODE_HNSW ? c->spec.ef_search : 0,
    };
    int rc = QV_EEXIST;

    sc.index.type = QV_SERVICE_CUSTOM;
    sc.index.custom = (struct qv_service_custom){
        .search = qv__node_search, .prefetch = qv__node_prefetch, .ix = c,
    };
    for (unsigned tries = 0; rc == QV_EEXIST && tries < 1000; tries++) {
        while (qv_service_epoch(node->o.service, node->next_id) != UINT64_MAX)
            node->next_id++;            /* registered by someone else */
        c->id = node->next_id++;
        rc = qv_service_add_collection(node->o.service, c->id, &sc);
    }
    if (rc == QV_ENOSPC)
        return qv_seterr(QV_ENOSPC, "CREATE: '%s': the query service has no room for "
                         "another collection: [batcher] max_collections are registered "
                         "(live ones and ones being dropped); drop one or raise it",
                         c->name);
    if (rc != 0)
        return rc;
    c->registered = 1;
    return 0;
}

/* CREATE; fixed_id 0 = the next id, and the collection is logged (with
 * a data_dir); else recovery: that id, nothing logged.  *out (may be
 * NULL) gets the collection, now in the table. */
static int create_coll(struct qv_node *node, const struct qv_node_coll_spec *spec,
                       uint64_t fixed_id, struct ncoll **out)
{
    struct ncoll *c = NULL;
    int rc;

    if ((rc = check_spec(spec)) != 0)
        return rc;
    pthread_mutex_lock(&node->create_mu);
    for (uint32_t h = 0; h <= node->hmask; h++) {
        if (node->table[h] && strcmp(node->table[h]->name, spec->name) == 0) {
            rc = qv_seterr(QV_EEXIST, "CREATE: name = \"%s\" is in use (collection %llu): "
                           "choose another or DROP it first", spec->name,
                           (unsigned long long)node->table[h]->id);
            goto out;
        }
    }
    if (node->ncoll >= node->o.max_collections) {
        rc = qv_seterr(QV_ENOSPC, "CREATE: '%s': the node holds %u collections, its "
                       "maximum: drop one or raise [server] max_collections", spec->name,
                       node->ncoll);
        goto out;
    }
    c = coll_new(node, spec);
    if (c == NULL) {
        rc = qv_seterr(QV_ENOMEM, "CREATE: '%s': no memory for the collection", spec->name);
        goto out;
    }
    if (fixed_id)
        node->next_id = fixed_id;
    if ((rc = coll_register(node, c)) != 0)
        goto out;
    if (fixed_id && c->id != fixed_id) {
        rc = qv_seterr(QV_EEXIST, "CREATE: '%s': id %llu is taken in the query service",
                       spec->name, (unsigned long long)fixed_id);
        goto out;
    }
    if (node->catalog && !fixed_id) {
        /* its WAL first (the directory exists), then the catalog record:
         * a crash between leaves a stray directory that start removes */
        if ((rc = qv__store_open_coll(node, c, 0, NULL, NULL)) != 0 ||
            (rc = qv__store_log_create(node, c)) != 0) {
            qv_wal_close(c->wal);
            c->wal = NULL;
            qv__store_drop_files(node, c->id);
            goto out;
        }
    }
    pthread_rwlock_wrlock(&node->tab_lock);
    tab_insert(node, c);
    pthread_rwlock_unlock(&node->tab_lock);
    if (out)
        *out = c;
    c = NULL;
out:
    pthread_mutex_unlock(&node->create_mu);
    if (c != NULL) {
        if (c->registered)
            qv_service_remove_collection(node->o.service, c->id);
        coll_free(c);
    }
    return rc;
}

int qv_node_create_collection(struct qv_node *node, const struct qv_node_coll_spec *spec,
                              uint64_t *id)
{
    struct ncoll *c = NULL;
    int rc = create_coll(node, spec, 0, &c);
    if (rc == 0 && id)
        *id = c->id;
    return rc;
}

int qv__node_recreate(struct qv_node *node, const struct qv_node_coll_spec *spec,
                      uint64_t id, struct ncoll **out)
{
    return create_coll(node, spec, id, out);
}

/* ------------------------------------------------------------------ */
/* DROP, find                                                          */
/* ------------------------------------------------------------------ */

int qv_node_drop_collection(struct qv_node *node, uint64_t id)
{
    struct ncoll *c;
    int64_t h;

    pthread_mutex_lock(&node->create_mu);
    pthread_rwlock_wrlock(&node->tab_lock);
    h = tab_find(node, id);
    c = h >= 0 ? node->table[h] : NULL;
    int rc = 0;
    if (c != NULL && node->catalog)
        rc = qv__store_log_drop(node, c);       /* logged before it goes */
    if (c != NULL && rc == 0)
        coll_unpublish(node, (uint32_t)h);
    pthread_rwlock_unlock(&node->tab_lock);
    pthread_mutex_unlock(&node->create_mu);
    if (c == NULL)
        return qv_seterr(QV_ENOENT, "DROP: collection %llu does not exist",
                         (unsigned long long)id);
    if (rc != 0)
        return rc;
    coll_finish_drop(node, c);
    if (node->catalog)
        qv__store_drop_files(node, id);
    return 0;
}

int qv_node_find(struct qv_node *node, const char *name, uint64_t *id)
{
    int rc = QV_ENOENT;

    pthread_rwlock_rdlock(&node->tab_lock);
    for (uint32_t h = 0; name && h <= node->hmask; h++) {
        if (node->table[h] && strcmp(node->table[h]->name, name) == 0) {
            if (id)
                *id = node->table[h]->id;
            rc = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&node->tab_lock);
    if (rc)
        qv_seterr(rc, "no collection is named \"%.70s\"", name ? name : "(null)");
    return rc;
}

/* ------------------------------------------------------------------ */
/* DESCRIBE, LIST                                                      */
/* ------------------------------------------------------------------ */

/* c's descriptor; wmu held. */
static void fill_info(const struct ncoll *c, struct qv_node_coll_info *out)
{
    const struct qv_node_coll_spec *s = &c->spec;

    memset(out, 0, sizeof *out);
    out->id = c->id;
    snprintf(out->name, sizeof out->name, "%s", c->name);
    out->dim = s->dim;
    out->metric = s->metric;
    out->index = s->index;
    out->nattrs = s->nattrs;
    for (uint32_t a = 0; a < s->nattrs; a++)
        snprintf(out->attrs[a], sizeof out->attrs[a], "%s", c->attr_names[a]);
    out->rows = c->map.count;
    out->epoch = c->epoch;
    out->nlist = s->nlist ? s->nlist : (c->trained ? c->nlist_eff : 0);
    out->nprobe = c->nprobe;
    out->pq_m = s->pq_m;
    out->pq_nbits = s->pq_nbits;
    out->hnsw_m = s->hnsw_m;
    out->ef_construction = s->ef_construction;
    out->ef_search = s->ef_search;
    out->trained = c->trained;
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct nseg *g = c->slots[i];
        if (g == NULL)
            continue;
        out->segments++;
        out->dead_rows += g->rows - g->live;
        if (g->state == NSEG_SEALED)
            out->sealed++;
        else if (g->state == NSEG_QUEUED || g->state == NSEG_BUILDING)
            out->pending++;
    }
    out->growing_rows = c->growing->rows;
    out->seal_at = qv__node_seal_at(c);
}

static void storage_of(struct qv_wal *w, enum qv_wal_sync sync, struct qv_node_storage *out)
{
    struct qv_wal_stats ws;
    memset(out, 0, sizeof *out);
    if (!w)
        return;
    qv_wal_stats(w, &ws);
    out->enabled = 1;
    out->sync = sync;
    out->last_lsn = ws.last_lsn;
    out->durable_lsn = ws.durable_lsn;
    out->first_lsn = ws.first_lsn;
    out->segments = ws.segments;
    out->bytes = ws.bytes;
    out->appends = ws.appends;
    out->fsyncs = ws.fsyncs;
}

int qv_node_storage(struct qv_node *node, uint64_t id, struct qv_node_storage *out)
{
    if (id == 0) {
        pthread_mutex_lock(&node->create_mu);
        storage_of(node->catalog, node->o.sync, out);
        pthread_mutex_unlock(&node->create_mu);
        return 0;
    }
    struct ncoll *c = coll_get(node, id, "STATS");
    if (c == NULL)
        return QV_ENOENT;
    pthread_mutex_lock(&c->wmu);
    storage_of(c->wal, node->o.sync, out);
    out->snapshot_lsn = c->wal ? c->snap_lsn : 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct nseg *s = c->slots[i];
        out->segment_files += s != NULL && s->file_no != 0;
        out->segments_mapped += s != NULL && s->rows_file != NULL;
    }
    pthread_mutex_unlock(&c->wmu);
    qv__node_coll_put(c);
    return 0;
}

int qv_node_describe(struct qv_node *node, uint64_t id, struct qv_node_coll_info *out)
{
    struct ncoll *c;
    int rc;

    if (out == NULL)
        return qv_seterr(QV_EINVAL, "DESCRIBE: out is NULL");
    if ((c = coll_get(node, id, "DESCRIBE")) == NULL)
        return QV_ENOENT;
    if ((rc = coll_lock(c, "DESCRIBE")) == 0) {
        fill_info(c, out);
        pthread_mutex_unlock(&c->wmu);
    }
    qv__node_coll_put(c);
    return rc;
}

static int cmp_coll_id(const void *a, const void *b)
{
    uint64_t x = (*(struct ncoll *const *)a)->id, y = (*(struct ncoll *const *)b)->id;
    return x < y ? -1 : x > y;
}

int qv_node_list(struct qv_node *node, struct qv_node_coll_info *out, uint32_t cap,
                 uint32_t *n)
{
    struct ncoll **all;
    uint32_t m = 0, filled = 0;

    pthread_rwlock_rdlock(&node->tab_lock);
    all = qv_malloc((node->ncoll + 1) * sizeof *all, QV_MEM_SERVER);
    if (all == NULL) {
        pthread_rwlock_unlock(&node->tab_lock);
        return qv_seterr(QV_ENOMEM, "LIST: no memory for %u descriptors", node->ncoll);
    }
    for (uint32_t h = 0; h <= node->hmask; h++) {
        if (node->table[h] != NULL) {
            all[m] = node->table[h];
            atomic_fetch_add_explicit(&all[m]->refs, 1, memory_order_acq_rel);
            m++;
        }
    }
    pthread_rwlock_unlock(&node->tab_lock);
    qsort(all, m, sizeof *all, cmp_coll_id);
    for (uint32_t i = 0; i < m; i++) {
        if (out != NULL && filled < cap && coll_lock(all[i], "LIST") == 0) {
            fill_info(all[i], &out[filled++]);
            pthread_mutex_unlock(&all[i]->wmu);
        }
        qv__node_coll_put(all[i]);
    }
    qv_free(all);
    if (n)
        *n = out == NULL || m > cap ? m : filled;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Sealing and compaction (wmu held)                                   */
/* ------------------------------------------------------------------ */

/* Seal the growing segment: a new one takes its place (under a pause),
 * the old one is queued for its build (not for FLAT collections).
 * 1 sealed, 0 nothing to seal, or QV_ENOMEM / QV_ENOSPC (nothing
 * changed). */
static int seal(struct ncoll *c)
{
    struct nseg *g = c->growing, *fresh, **grown = NULL, **old = NULL;
    uint32_t slot = qv__slot_free(c), cap = c->slot_cap;

    if (g->rows == 0)
        return 0;
    if (slot >= NODE_MAX_SLOTS)
        return qv_seterr(QV_ENOSPC, "node: collection '%s' has %u segments, the most it "
                         "can: wait for its builds to finish", c->name, slot);
    if (slot >= cap) {
        cap *= 2;
        grown = qv_calloc(cap, sizeof *grown, QV_MEM_SERVER);
        if (grown == NULL)
            return qv_seterr(QV_ENOMEM, "node: collection '%s': no memory for %u "
                             "segment slots", c->name, cap);
        memcpy(grown, c->slots, c->nslots * sizeof *grown);
    }
    fresh = qv__seg_new_growing(c, slot);
    if (fresh == NULL) {
        qv_free(grown);
        return QV_ENOMEM;
    }
    qv__node_pause(c);
    if (grown != NULL) {
        old = c->slots;
        c->slots = grown;
    }
    c->slots[slot] = fresh;
    if (slot == c->nslots)
        c->nslots++;
    c->growing = fresh;
    qv__node_resume(c);
    c->slot_cap = cap;
    c->seals++;
    qv_free(old);
    if (c->spec.index != QV_NODE_FLAT) {
        qv__build_enqueue(c, g);        /* an index (and with a data_dir, files) */
    } else if (c->node->o.data_dir != NULL) {
        g->persist_only = 1;            /* final as it is: its rows file only */
        qv__build_enqueue(c, g);
    } else {
        g->state = NSEG_SEALED;         /* final: its flat index is exact */
    }
    return 1;
}

/* Queue the group head..(merge_next chain) built in maintain when it is
 * worth a build: it holds a segment to compact, or merges two or more. */
static void queue_group(struct ncoll *c, struct nseg *head, uint32_t count, int compact)
{
    if (head == NULL)
        return;
    if (!compact && count < 2) {
        head->merge_next = NULL;
        return;
    }
    for (struct nseg *x = head->merge_next; x != NULL; x = x->merge_next)
        x->state = NSEG_QUEUED;
    qv__build_enqueue(c, head);
}

/*
 * After a write: seal when the growing segment is full; then compaction.
 * A sealed segment is compacted when it has lost compact_ratio of its
 * rows (or all of them), and "small" when it holds fewer live rows than
 * half a growing segment's seal size (what compactions and early seals
 * leave).  Candidates are grouped in slot order into merges of at most
 * seal size live rows and NODE_MERGE_MAX segments; a group is queued when
 * it compacts one or merges two or more: one build writes their live
 * rows into one segment, in the first one's slot (node_build.c).  The
 * builder's pace ([server] build_share) rate-limits the work.
 * compact_ratio 0 turns both off.
 */
static void maintain(struct ncoll *c)
{
    const double ratio = c->node->o.compact_ratio;
    struct nseg *head = NULL, *tail = NULL;
    uint64_t sum = 0, target;
    uint32_t count = 0;
    int compact = 0;

    if (c->growing->rows >= qv__node_seal_at(c)) {
        int rc = seal(c);
        if (rc < 0)
            QV_LOG_RL(QV_LOG_WARN, 1, "node: collection '%s': cannot seal its growing "
                      "segment (%s); it keeps growing", c->name, qv_errmsg());
    }
    if (!(ratio > 0.0))
        return;
    target = qv__node_seal_at(c);
    for (uint32_t i = 0; i < c->nslots; i++) {
        struct nseg *g = c->slots[i];
        if (g == NULL || g->state != NSEG_SEALED || g->build_failed || g->rows == 0)
            continue;
        uint64_t dead = g->rows - g->live;
        int want = g->live == 0 || (double)dead >= ratio * (double)g->rows;
        if (!want && 2 * g->live >= target)
            continue;
        if (head != NULL && (sum + g->live > target || count == NODE_MERGE_MAX)) {
            queue_group(c, head, count, compact);
            head = NULL;
        }
        if (head == NULL) {
            head = tail = g;
            sum = count = 0;
            compact = 0;
        } else {
            tail->merge_next = g;
            tail = g;
        }
        g->merge_next = NULL;
        sum += g->live;
        count++;
        compact |= want;
    }
    queue_group(c, head, count, compact);
}

int qv__node_install(struct ncoll *c, struct nseg **segs, size_t n)
{
    struct nseg **tab, *g, *old_g = c->growing, **old = c->slots;
    struct qv_engine *e = c->node->o.engine;
    uint32_t top = 0, cap = NODE_FIRST_SLOTS, gslot = 0;
    uint64_t live = 0;

    int rc;

    if (c->nslots != 1 || old_g->rows != 0) {
        rc = qv_seterr(QV_EINVAL, "node: collection '%s': segments are installed only "
                         "into a new collection", c->name);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (segs[i]->slot >= NODE_MAX_SLOTS) {
            rc = qv_seterr(QV_ECORRUPT, "node: collection '%s': segment slot %u is out of "
                           "range", c->name, segs[i]->slot);
            goto fail;
        }
        top = segs[i]->slot + 1 > top ? segs[i]->slot + 1 : top;
        live += segs[i]->live;
    }
    while (cap < top + 1)
        cap *= 2;
    if (qv__idmap_reserve(&c->map, live) != 0) {
        rc = qv_seterr(QV_ENOMEM, "node: collection '%s': no memory for the id map of "
                       "%llu rows", c->name, (unsigned long long)live);
        goto fail;
    }
    tab = qv_calloc(cap, sizeof *tab, QV_MEM_SERVER);
    if (tab == NULL) {
        rc = qv_seterr(QV_ENOMEM, "node: collection '%s': no memory for %u segment slots",
                       c->name, cap);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (tab[segs[i]->slot] != NULL) {
            qv_free(tab);
            rc = qv_seterr(QV_ECORRUPT, "node: collection '%s': two segments in slot %u",
                           c->name, segs[i]->slot);
            goto fail;
        }
        tab[segs[i]->slot] = segs[i];
    }
    while (tab[gslot] != NULL)
        gslot++;
    g = qv__seg_new_growing(c, gslot);
    if (g == NULL) {
        qv_free(tab);
        rc = QV_ENOMEM;
        goto fail;
    }
    tab[gslot] = g;
    qv__node_pause(c);
    for (size_t i = 0; i < n && e != NULL; i++) {
        if (segs[i]->kind == NSEG_IVF)
            qv_ivf_set_engine(segs[i]->ix.ivf, e);
        else if (segs[i]->kind == NSEG_IVFPQ)
            qv_ivfpq_set_engine(segs[i]->ix.ivfpq, e);
    }
    c->slots = tab;
    c->nslots = top > gslot + 1 ? top : gslot + 1;
    c->growing = g;
    qv__seg_detach(old_g);
    qv__node_resume(c);
    c->slot_cap = cap;
    qv__seg_free(old_g, 0);
    qv_free(old);
    /* from here the segments are the collection's */
    for (size_t i = 0; i < n; i++) {
        const struct nseg *s = segs[i];
        for (uint64_t r = 0; r < s->rows; r++) {
            if (!qv__seg_alive(s, r))
                continue;
            if (qv__idmap_get(&c->map, s->ids[r]) >= 0)
                return qv_seterr(QV_ECORRUPT, "node: collection '%s': id %llu is live in two "
                                 "segments (slot %u and another)", c->name,
                                 (unsigned long long)s->ids[r], s->slot);
            qv__idmap_put(&c->map, s->ids[r], node_key(s->slot, r));    /* reserved */
        }
        if (s->kind == NSEG_IVF || s->kind == NSEG_IVFPQ)
            c->trained = 1;
    }
    c->epoch++;
    qv_service_bump_epoch(c->node->o.service, c->id);
    return 0;
fail:
    for (size_t i = 0; i < n; i++)
        qv__seg_free(segs[i], 0);
    return rc;
}

int qv_node_seal(struct qv_node *node, uint64_t id)
{
    struct ncoll *c = coll_get(node, id, "seal");
    int rc;

    if (c == NULL)
        return QV_ENOENT;
    if ((rc = coll_lock(c, "seal")) == 0) {
        rc = seal(c);
        pthread_mutex_unlock(&c->wmu);
    }
    qv__node_coll_put(c);
    return rc;
}

/* ------------------------------------------------------------------ */
/* UPSERT                                                              */
/* ------------------------------------------------------------------ */

static int check_rows(const struct ncoll *c, const struct qv_node_rows *r)
{
    const struct qv_node_coll_spec *s = &c->spec;
    struct qv_idmap seen;
    int rc = 0;

    if (r->n == 0 || r->n > QV_NODE_MAX_UPSERT)
        return qv_seterr(QV_EINVAL, "UPSERT: n = %zu: use 1..%u", r->n, QV_NODE_MAX_UPSERT);
    if (r->dim != s->dim)
        return qv_seterr(QV_EINVAL, "UPSERT: dim = %u: collection '%s' has dim %u", r->dim,
                         c->name, s->dim);
    if (r->nattrs != s->nattrs)
        return qv_seterr(QV_EINVAL, "UPSERT: nattrs = %u: collection '%s' has %u "
                         "attributes", r->nattrs, c->name, s->nattrs);
    if (r->ids == NULL || r->vectors == NULL)
        return qv_seterr(QV_EINVAL, "UPSERT: %s is NULL: pass n = %zu of them",
                         r->ids == NULL ? "ids" : "vectors", r->n);
    for (uint32_t a = 0; a < s->nattrs; a++)
        if (r->attrs[a] == NULL)
            return qv_seterr(QV_EINVAL, "UPSERT: attribute %u ('%s') is NULL: pass n = %zu "
                             "values", a, c->attr_names[a], r->n);
    for (size_t i = 0; i < r->n; i++) {
        if (r->ids[i] == QV_ID_NONE)
            return qv_seterr(QV_EINVAL, "UPSERT: ids[%zu] = 2^64-1 is reserved: use ids "
                             "below it", i);
        size_t bad = qv_first_nonfinite(r->vectors + i * s->dim, s->dim);
        if (bad < s->dim)
            return qv_seterr(QV_EINVAL, "UPSERT: vectors[%zu][%zu] = %g (id %llu): values "
                             "must be finite", i, bad,
                             (double)r->vectors[i * s->dim + bad],
                             (unsigned long long)r->ids[i]);
    }
    qv__idmap_init(&seen);
    if (qv__idmap_reserve(&seen, r->n) != 0)
        return qv_seterr(QV_ENOMEM, "UPSERT: no memory to check %zu ids", r->n);
    for (size_t i = 0; i < r->n && rc == 0; i++) {
        int64_t j = qv__idmap_get(&seen, r->ids[i]);
        if (j >= 0)
            rc = qv_seterr(QV_EINVAL, "UPSERT: ids[%zu] = %llu repeats ids[%lld]: ids must "
                           "be unique within a request", i, (unsigned long long)r->ids[i],
                           (long long)j);
        else
            qv__idmap_put(&seen, r->ids[i], i);     /* reserved: cannot fail */
    }
    qv__idmap_fini(&seen);
    return rc;
}

static void bit_set(uint64_t *b, uint64_t i)
{
    b[i / 64] |= 1ULL << (i % 64);
}

static void bit_clear(uint64_t *b, uint64_t i)
{
    b[i / 64] &= ~(1ULL << (i % 64));
}

/* The segment holding key. */
static struct nseg *key_seg(const struct ncoll *c, uint64_t key)
{
    return c->slots[key >> NODE_ROW_BITS];
}

/* Tombstone the row of key in its segment's index (the caller holds a
 * pause); kill_key_bits then does the writers' side (bit, live count). */
static void kill_key(struct ncoll *c, uint64_t key)
{
    qv__seg_remove_key(key_seg(c, key), key);
}

static void kill_key_bits(struct ncoll *c, uint64_t key)
{
    struct nseg *g = key_seg(c, key);

    bit_clear(g->alive, key & NODE_ROW_MASK);
    g->live--;
}

/* Apply checked rows (wmu held).  All or nothing. */
int qv__node_apply_upsert(struct ncoll *c, const struct qv_node_rows *r)
{
    struct nseg *g = c->growing;
    const uint32_t dim = c->spec.dim, na = c->spec.nattrs;
    const uint64_t base = g->rows;
    const size_t n = r->n;
    int64_t *old = qv_malloc(n * sizeof *old, QV_MEM_SERVER);
    uint64_t *keys = qv_malloc(n * sizeof *keys, QV_MEM_SERVER);
    int rc;

    if (old == NULL || keys == NULL) {
        rc = qv_seterr(QV_ENOMEM, "UPSERT: no memory for %zu rows", n);
        goto out;
    }
    if ((rc = qv__idmap_reserve(&c->map, n)) != 0) {
        rc = qv_seterr(QV_ENOMEM, "UPSERT: no memory for the id map of %zu more rows", n);
        goto out;
    }
    if ((rc = qv__seg_reserve(g, base + n)) != 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        old[i] = qv__idmap_get(&c->map, r->ids[i]);
        keys[i] = node_key(g->slot, base + i);
        /* past g->rows: nothing reads these rows yet */
        g->ids[base + i] = r->ids[i];
        for (uint32_t a = 0; a < na; a++)
            g->cols[a][base + i] = r->attrs[a][i];
    }
    memcpy(g->vecs + base * dim, r->vectors, n * dim * sizeof(float));

    qv__node_pause(c);
    rc = qv_flat_add(g->ix.flat, n, r->vectors, keys);
    if (rc == 0) {
        g->rows = base + n;
        g->attrs.rows = g->rows;
        for (size_t i = 0; i < n; i++)
            if (old[i] >= 0)
                kill_key(c, (uint64_t)old[i]);
    }
    qv__node_resume(c);
    if (rc != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", qv_errmsg());  /* qv_seterr writes over it */
        rc = qv_seterr(rc, "UPSERT: collection '%s': %s", c->name, why);
        goto out;
    }
    g->live += n;
    for (size_t i = 0; i < n; i++) {
        bit_set(g->alive, base + i);
        if (old[i] >= 0)
            kill_key_bits(c, (uint64_t)old[i]);
        qv__idmap_put(&c->map, r->ids[i], keys[i]);     /* reserved: cannot fail */
    }
    c->epoch++;
    qv_service_bump_epoch(c->node->o.service, c->id);
    maintain(c);
out:
    qv_free(keys);
    qv_free(old);
    return rc;
}

int qv_node_upsert(struct qv_node *node, uint64_t id, const struct qv_node_rows *rows,
                   uint64_t *epoch)
{
    struct ncoll *c;
    int rc;

    if (rows == NULL)
        return qv_seterr(QV_EINVAL, "UPSERT: rows is NULL");
    if ((c = coll_get(node, id, "UPSERT")) == NULL)
        return QV_ENOENT;
    if ((rc = check_rows(c, rows)) == 0 && (rc = coll_lock(c, "UPSERT")) == 0) {
        uint64_t lsn = 0;
        if (c->wal)
            rc = qv__store_log_upsert(c, rows, &lsn);   /* durable, then applied */
        if (rc == 0) {
            rc = qv__node_apply_upsert(c, rows);
            if (rc != 0 && c->wal)
                qv__store_log_abort(c, lsn);
        }
        if (rc == 0 && epoch)
            *epoch = c->epoch;
        pthread_mutex_unlock(&c->wmu);
    }
    qv__node_coll_put(c);
    return rc;
}

/* ------------------------------------------------------------------ */
/* DELETE, GET                                                         */
/* ------------------------------------------------------------------ */

long qv__node_apply_delete(struct ncoll *c, size_t n, const uint64_t *ids)
{
    uint64_t *keys = qv_malloc((n ? n : 1) * sizeof *keys, QV_MEM_SERVER);
    size_t m = 0;

    if (keys == NULL)
        return qv_seterr(QV_ENOMEM, "DELETE: no memory for %zu ids", n);
    for (size_t i = 0; i < n; i++) {
        int64_t v = qv__idmap_get(&c->map, ids[i]);
        if (v >= 0) {
            qv__idmap_del(&c->map, ids[i]);     /* a repeat is absent now */
            keys[m++] = (uint64_t)v;
        }
    }
    if (m > 0) {
        qv__node_pause(c);
        for (size_t i = 0; i < m; i++)
            kill_key(c, keys[i]);
        qv__node_resume(c);
        for (size_t i = 0; i < m; i++)
            kill_key_bits(c, keys[i]);
        c->epoch++;
        qv_service_bump_epoch(c->node->o.service, c->id);
        maintain(c);
    }
    qv_free(keys);
    return (long)m;
}

long qv_node_delete(struct qv_node *node, uint64_t id, size_t n, const uint64_t *ids,
                    uint64_t *epoch)
{
    struct ncoll *c;
    long rc;

    if (n > QV_NODE_MAX_IDS)
        return qv_seterr(QV_EINVAL, "DELETE: n = %zu: use 1..%u", n, QV_NODE_MAX_IDS);
    if (ids == NULL && n > 0)
        return qv_seterr(QV_EINVAL, "DELETE: ids is NULL: pass n = %zu ids", n);
    if ((c = coll_get(node, id, "DELETE")) == NULL)
        return QV_ENOENT;
    if ((rc = coll_lock(c, "DELETE")) != 0)
        goto out_put;
    size_t present = 0;
    for (size_t i = 0; i < n && !present; i++)
        present += qv__idmap_get(&c->map, ids[i]) >= 0;
    uint64_t lsn = 0;
    if (present && c->wal)
        rc = qv__store_log_delete(c, n, ids, &lsn);     /* durable, then applied */
    if (rc == 0 && present) {
        rc = qv__node_apply_delete(c, n, ids);
        if (rc < 0 && c->wal)
            qv__store_log_abort(c, lsn);
    }
    if (rc >= 0 && epoch)
        *epoch = c->epoch;
    pthread_mutex_unlock(&c->wmu);
out_put:
    qv__node_coll_put(c);
    return rc;
}

long qv_node_get(struct qv_node *node, uint64_t id, size_t n, const uint64_t *ids,
                 uint32_t dim, float *vectors, uint8_t *found)
{
    struct ncoll *c;
    long got = 0;
    int rc;

    if (n == 0 || n > QV_NODE_MAX_IDS)
        return qv_seterr(QV_EINVAL, "GET: n = %zu: use 1..%u", n, QV_NODE_MAX_IDS);
    if (ids == NULL || vectors == NULL || found == NULL)
        return qv_seterr(QV_EINVAL, "GET: %s is NULL", ids == NULL ? "ids" :
                         vectors == NULL ? "vectors" : "found");
    if ((c = coll_get(node, id, "GET")) == NULL)
        return QV_ENOENT;
    if (dim != c->spec.dim) {
        rc = qv_seterr(QV_EINVAL, "GET: dim = %u: collection '%s' has dim %u", dim, c->name,
                       c->spec.dim);
        goto out_put;
    }
    if ((rc = coll_lock(c, "GET")) != 0)
        goto out_put;
    for (size_t i = 0; i < n; i++) {
        int64_t v = qv__idmap_get(&c->map, ids[i]);
        float *dst = vectors + i * dim;
        if (v < 0) {
            memset(dst, 0, dim * sizeof *dst);
            found[i] = 0;
            continue;
        }
        const struct nseg *g = key_seg(c, (uint64_t)v);
        memcpy(dst, g->vecs + ((uint64_t)v & NODE_ROW_MASK) * dim, dim * sizeof *dst);
        found[i] = 1;
        got++;
    }
    pthread_mutex_unlock(&c->wmu);
out_put:
    qv__node_coll_put(c);
    return rc ? rc : got;
}

/* ------------------------------------------------------------------ */
/* Waiting for builds                                                  */
/* ------------------------------------------------------------------ */

int qv_node_wait_builds(struct qv_node *node, uint64_t id, int64_t timeout_ns)
{
    struct ncoll *c = coll_get(node, id, "wait_builds");
    struct timespec until;
    int rc = 0;

    if (c == NULL)
        return QV_ENOENT;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ns < 0)
        timeout_ns = 0;
    until.tv_sec += timeout_ns / 1000000000LL;
    until.tv_nsec += timeout_ns % 1000000000LL;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&node->mu);
    while (c->pending > 0 && rc == 0)
        if (pthread_cond_timedwait(&node->cv, &node->mu, &until) == ETIMEDOUT &&
            c->pending > 0)
            rc = qv_seterr(QV_ETIMEDOUT, "wait_builds: collection %llu still has %u "
                           "segments to build", (unsigned long long)id, c->pending);
    pthread_mutex_unlock(&node->mu);
    qv__node_coll_put(c);
    return rc;
}
