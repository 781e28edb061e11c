/*
 * node_store.c - the node's durability: what it writes to disk before a
 * write is acknowledged, and how it rebuilds itself from that at start
 * ([storage] data_dir; without one the node lives in memory only).
 *
 * Layout of data_dir
 * ------------------
 *   catalog/         a WAL (quiver/wal.h) of collection operations:
 *                    CREATE (the collection's id and specification) and
 *                    DROP (its id), in the order they were acknowledged
 *   c<ID>/wal/       a WAL per collection ("shard"): UPSERT, DELETE and
 *                    ABORT records, in the order they were applied (the
 *                    collection's writer mutex orders them)
 *
 * A write is logged, then applied, then acknowledged: UPSERT and DELETE
 * are validated first (every error a client can cause is found before
 * the log), appended to the collection's WAL and made durable under
 * [storage] sync (quiver/wal.h "Sync policies" says what each policy
 * risks), then applied.  If applying fails after the record is durable
 * (no memory), an ABORT record naming its LSN follows it, so recovery
 * skips it: the log never holds a write the client was told failed.
 * CREATE is logged once the service gave the collection its id and its
 * WAL directory exists; DROP is logged before the collection goes, and
 * its directory is removed after.
 *
 * Records (all integers little-endian; payloads 8-byte aligned)
 *   catalog CREATE (type 1)
 *     OFFSET  SIZE        MEANING
 *     0       8           collection id
 *     8       4 x 12      dim, metric, index, nattrs, nlist, nprobe, pq_m,
 *                         pq_nbits, hnsw_m, ef_construction, ef_search, 0
 *     56      65          name, NUL-padded
 *     121     16 x 65     attribute names, NUL-padded
 *   catalog DROP (type 2)
 *     0       8           collection id
 *   collection UPSERT (type 1)
 *     0       4           n rows
 *     4       4           dim
 *     8       4           nattrs
 *     12      4           0
 *     16      8 n         ids
 *     ..      4 n dim     vectors, row-major
 *     ..      8 n nattrs  attribute columns (attribute-major), after
 *                         padding the vectors to 8 bytes
 *   collection DELETE (type 2)
 *     0       4           n ids (as the request gave them: repeats and
 *                         absent ids are ignored again at replay)
 *     4       4           0
 *     8       8 n         ids
 *   collection ABORT (type 3)
 *     0       8           LSN of the record that was not applied
 *
 * Recovery (qv__store_open, inside qv_node_create): the catalog is
 * replayed into the set of live collections (a DROP cancels its CREATE);
 * ids are never reused, so the next id is one past the largest ever
 * created.  Each live collection is created again with its id and
 * specification, then its WAL is replayed through the same apply code as
 * live writes (a record followed by an ABORT of it is skipped).  Sealed
 * segments are rebuilt by the builder thread as at run time.  A torn
 * final record is truncated; a corrupted record in the middle stops the
 * start with a message naming the file and offset (quiver/wal.h).
 * Directories c<ID> of collections the catalog does not hold (a drop or a
 * failed create cut short) are removed.
 */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"
#include "quiver/wal.h"

enum { CAT_CREATE = 1, CAT_DROP = 2 };
enum { REC_UPSERT = 1, REC_DELETE = 2, REC_ABORT = 3 };

#define CAT_NAME 65u
#define CAT_CREATE_SIZE (56u + CAT_NAME + QV_NODE_MAX_ATTRS * CAT_NAME)

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);           /* little-endian hosts only (x86-64, arm64) */
}

static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int wal_opts(const struct qv_node *node, const char *sub, struct qv_wal_opts *o,
                    char *path, size_t cap)
{
    qv_wal_opts_default(o);
    o->sync = node->o.sync;
    o->interval_ms = node->o.sync_interval_ms ? node->o.sync_interval_ms : o->interval_ms;
    if (node->o.wal_segment_bytes)
        o->segment_bytes = node->o.wal_segment_bytes;
    if ((size_t)snprintf(path, cap, "%s/%s", node->o.data_dir, sub) >= cap)
        return qv_seterr(QV_EINVAL, "[storage] data_dir %s: path too long", node->o.data_dir);
    o->dir = path;
    return 0;
}

/* A WAL error as the client should see it: a full disk makes the node
 * unable to take writes (UNAVAILABLE), not the request bad. */
static int wal_error(int rc, const char *what, const char *name)
{
    char why[512];
    snprintf(why, sizeof why, "%s", qv_errmsg());
    if (rc == QV_ENOSPC)
        return qv_seterr(QV_EUNAVAIL, "%s: collection '%s': the node cannot log writes: %s",
                         what, name, why);
    return qv_seterr(rc, "%s: collection '%s': %s", what, name, why);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

static void rm_tree(const char *path)
{
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        QV_WARN("storage: cannot remove %s: %s (remove it by hand)", path, strerror(errno));
}

static void coll_dir(const struct qv_node *node, uint64_t id, char *path, size_t cap)
{
    snprintf(path, cap, "%s/c%llu", node->o.data_dir, (unsigned long long)id);
}

/* ---- collection WAL ---------------------------------------------------- */

int qv__store_open_coll(struct qv_node *node, struct ncoll *c,
                        int (*fn)(void *, uint64_t, uint8_t, const void *, size_t),
                        void *arg)
{
    struct qv_wal_opts o;
    char sub[64], path[4096];
    snprintf(sub, sizeof sub, "c%llu/wal", (unsigned long long)c->id);
    int rc = wal_opts(node, sub, &o, path, sizeof path);
    if (rc)
        return rc;
    c->wal = qv_wal_open(&o, 0, fn, arg);
    return c->wal ? 0 : qv_errno;
}

int qv__store_log_upsert(struct ncoll *c, const struct qv_node_rows *r, uint64_t *lsn)
{
    const size_t n = r->n, dim = c->spec.dim, na = c->spec.nattrs;
    size_t voff = 16 + 8 * n, aoff = pad8(voff + 4 * n * dim), len = aoff + 8 * n * na;
    uint8_t *p = qv_malloc(len, QV_MEM_SERVER);
    if (!p)
        return qv_seterr(QV_ENOMEM, "UPSERT: collection '%s': no memory to log %zu rows",
                         c->name, n);
    memset(p, 0, 16);
    put32(p, (uint32_t)n);
    put32(p + 4, (uint32_t)dim);
    put32(p + 8, (uint32_t)na);
    memcpy(p + 16, r->ids, 8 * n);
    memcpy(p + voff, r->vectors, 4 * n * dim);
    memset(p + voff + 4 * n * dim, 0, aoff - (voff + 4 * n * dim));
    for (size_t a = 0; a < na; a++)
        memcpy(p + aoff + 8 * n * a, r->attrs[a], 8 * n);
    int rc = qv_wal_append(c->wal, REC_UPSERT, p, len, lsn);
    qv_free(p);
    return rc ? wal_error(rc, "UPSERT", c->name) : 0;
}

int qv__store_log_delete(struct ncoll *c, size_t n, const uint64_t *ids, uint64_t *lsn)
{
    size_t len = 8 + 8 * n;
    uint8_t *p = qv_malloc(len, QV_MEM_SERVER);
    if (!p)
        return qv_seterr(QV_ENOMEM, "DELETE: collection '%s': no memory to log %zu ids",
                         c->name, n);
    put32(p, (uint32_t)n);
    put32(p + 4, 0);
    memcpy(p + 8, ids, 8 * n);
    int rc = qv_wal_append(c->wal, REC_DELETE, p, len, lsn);
    qv_free(p);
    return rc ? wal_error(rc, "DELETE", c->name) : 0;
}

void qv__store_log_abort(struct ncoll *c, uint64_t lsn)
{
    uint8_t p[8];
    put64(p, lsn);
    if (qv_wal_append(c->wal, REC_ABORT, p, sizeof p, NULL) != 0)
        QV_ERR("storage: collection '%s': a write (LSN %llu) failed after it was logged and "
               "its ABORT record could not be logged (%s): a restart would apply it",
               c->name, (unsigned long long)lsn, qv_errmsg());
}

/* Replay of a collection's WAL: one record held back until the next
 * shows it was not aborted. */
struct replay {
    struct ncoll *c;
    uint8_t *held;
    size_t held_len, held_cap;
    uint64_t held_lsn;
    uint8_t held_type;
    uint64_t applied, aborted;
};

static int apply_record(struct replay *R, uint8_t type, const uint8_t *p, size_t len,
                        uint64_t lsn)
{
    struct ncoll *c = R->c;
    if (type == REC_UPSERT) {
        if (len < 16)
            goto bad;
        struct qv_node_rows r = { .n = get32(p), .dim = get32(p + 4), .nattrs = get32(p + 8) };
        size_t n = r.n, voff = 16 + 8 * n, aoff = pad8(voff + 4 * n * r.dim);
        if (r.dim != c->spec.dim || r.nattrs != c->spec.nattrs ||
            len != aoff + 8 * n * r.nattrs)
            goto bad;
        r.ids = (const uint64_t *)(p + 16);
        r.vectors = (const float *)(p + voff);
        for (uint32_t a = 0; a < r.nattrs; a++)
            r.attrs[a] = (const int64_t *)(p + aoff + 8 * n * a);
        int rc = qv__node_apply_upsert(c, &r);
        if (rc)
            return qv_seterr(rc, "storage: collection '%s': replaying UPSERT at LSN %llu: %s",
                             c->name, (unsigned long long)lsn, qv_errmsg());
    } else if (type == REC_DELETE) {
        if (len < 8 || len != 8 + 8 * (size_t)get32(p))
            goto bad;
        long m = qv__node_apply_delete(c, get32(p), (const uint64_t *)(p + 8));
        if (m < 0)
            return (int)m;
    } else {
        goto bad;
    }
    R->applied++;
    return 0;
bad:
    return qv_seterr(QV_ECORRUPT, "storage: collection '%s': WAL record at LSN %llu (type %u, "
                     "%zu bytes) does not decode: the WAL is not this collection's, or it "
                     "was written by another version", c->name, (unsigned long long)lsn, type,
                     len);
}

static int flush_held(struct replay *R)
{
    if (!R->held_type)
        return 0;
    uint8_t t = R->held_type;
    R->held_type = 0;
    return apply_record(R, t, R->held, R->held_len, R->held_lsn);
}

static int on_coll_record(void *arg, uint64_t lsn, uint8_t type, const void *payload,
                          size_t len)
{
    struct replay *R = arg;
    if (type == REC_ABORT) {
        if (len == 8 && R->held_type && get64(payload) == R->held_lsn) {
            R->held_type = 0;               /* that write was never acknowledged */
            R->aborted++;
            return 0;
        }
        return 0;                           /* an ABORT of nothing held: nothing to do */
    }
    int rc = flush_held(R);
    if (rc)
        return rc;
    if (len > R->held_cap) {
        uint8_t *p = qv_malloc(len, QV_MEM_SERVER);
        if (!p)
            return qv_seterr(QV_ENOMEM, "storage: no memory to replay a record of %zu bytes",
                             len);
        qv_free(R->held);
        R->held = p;
        R->held_cap = len;
    }
    memcpy(R->held, payload, len);
    R->held_len = len;
    R->held_lsn = lsn;
    R->held_type = type;
    return 0;
}

/* ---- catalog ----------------------------------------------------------- */

int qv__store_log_create(struct qv_node *node, const struct ncoll *c)
{
    uint8_t p[CAT_CREATE_SIZE + 7];
    const struct qv_node_coll_spec *s = &c->spec;
    const uint32_t f[12] = { s->dim, (uint32_t)s->metric, (uint32_t)s->index, s->nattrs,
                             s->nlist, s->nprobe, s->pq_m, s->pq_nbits, s->hnsw_m,
                             s->ef_construction, s->ef_search, 0 };
    memset(p, 0, sizeof p);
    put64(p, c->id);
    for (int i = 0; i < 12; i++)
        put32(p + 8 + 4 * i, f[i]);
    snprintf((char *)p + 56, CAT_NAME, "%s", c->name);
    for (uint32_t a = 0; a < s->nattrs; a++)
        snprintf((char *)p + 56 + CAT_NAME * (a + 1), CAT_NAME, "%s", c->attr_names[a]);
    int rc = qv_wal_append(node->catalog, CAT_CREATE, p, CAT_CREATE_SIZE, NULL);
    return rc ? wal_error(rc, "CREATE", c->name) : 0;
}

int qv__store_log_drop(struct qv_node *node, const struct ncoll *c)
{
    uint8_t p[8];
    put64(p, c->id);
    int rc = qv_wal_append(node->catalog, CAT_DROP, p, sizeof p, NULL);
    return rc ? wal_error(rc, "DROP", c->name) : 0;
}

void qv__store_drop_files(struct qv_node *node, uint64_t id)
{
    char path[4096];
    coll_dir(node, id, path, sizeof path);
    rm_tree(path);
}

/* The catalog's live collections while it is replayed. */
struct cat_entry {
    uint64_t id;
    uint8_t rec[CAT_CREATE_SIZE];
    int live;
};

struct cat_replay {
    struct cat_entry *e;
    size_t n, cap;
    uint64_t max_id;
};

static int on_cat_record(void *arg, uint64_t lsn, uint8_t type, const void *payload,
                         size_t len)
{
    struct cat_replay *R = arg;
    const uint8_t *p = payload;
    if ((type == CAT_CREATE && len != CAT_CREATE_SIZE) || (type == CAT_DROP && len != 8) ||
        (type != CAT_CREATE && type != CAT_DROP))
        return qv_seterr(QV_ECORRUPT, "storage: catalog record at LSN %llu (type %u, %zu "
                         "bytes) does not decode", (unsigned long long)lsn, type, len);
    uint64_t id = get64(p);
    if (type == CAT_DROP) {
        for (size_t i = 0; i < R->n; i++)
            if (R->e[i].id == id)
                R->e[i].live = 0;
        return 0;
    }
    if (R->n == R->cap) {
        size_t cap = R->cap ? 2 * R->cap : 16;
        struct cat_entry *e = qv_malloc(cap * sizeof *e, QV_MEM_SERVER);
        if (!e)
            return qv_seterr(QV_ENOMEM, "storage: no memory for the catalog");
        if (R->n)
            memcpy(e, R->e, R->n * sizeof *e);
        qv_free(R->e);
        R->e = e;
        R->cap = cap;
    }
    R->e[R->n].id = id;
    memcpy(R->e[R->n].rec, p, CAT_CREATE_SIZE);
    R->e[R->n].live = 1;
    R->n++;
    if (id > R->max_id)
        R->max_id = id;
    return 0;
}

static void spec_of(const uint8_t *p, struct qv_node_coll_spec *s, char *name,
                    char attrs[][QV_NODE_MAX_NAME + 1])
{
    memset(s, 0, sizeof *s);
    s->dim = get32(p + 8);
    s->metric = (enum qv_metric)get32(p + 12);
    s->index = (enum qv_node_index)get32(p + 16);
    s->nattrs = get32(p + 20);
    s->nlist = get32(p + 24);
    s->nprobe = get32(p + 28);
    s->pq_m = get32(p + 32);
    s->pq_nbits = get32(p + 36);
    s->hnsw_m = get32(p + 40);
    s->ef_construction = get32(p + 44);
    s->ef_search = get32(p + 48);
    snprintf(name, QV_NODE_MAX_NAME + 1, "%.*s", (int)QV_NODE_MAX_NAME, (const char *)p + 56);
    s->name = name;
    if (s->nattrs > QV_NODE_MAX_ATTRS)
        s->nattrs = QV_NODE_MAX_ATTRS + 1;  /* check_spec refuses it */
    for (uint32_t a = 0; a < s->nattrs && a < QV_NODE_MAX_ATTRS; a++) {
        snprintf(attrs[a], QV_NODE_MAX_NAME + 1, "%.*s", (int)QV_NODE_MAX_NAME,
                 (const char *)p + 56 + CAT_NAME * (a + 1));
        s->attrs[a] = attrs[a];
    }
}

/* Remove c<ID> directories of collections not live in the catalog. */
static void remove_strays(struct qv_node *node, const struct cat_replay *R)
{
    DIR *d = opendir(node->o.data_dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char *end;
        if (e->d_name[0] != 'c' || e->d_name[1] < '0' || e->d_name[1] > '9')
            continue;
        unsigned long long id = strtoull(e->d_name + 1, &end, 10);
        if (*end)
            continue;
        int live = 0;
        for (size_t i = 0; i < R->n; i++)
            live |= R->e[i].live && R->e[i].id == id;
        if (!live) {
            char path[4096];
            coll_dir(node, id, path, sizeof path);
            QV_INFO("storage: removing %s: collection %llu was dropped (or its create did "
                    "not complete)", path, id);
            rm_tree(path);
        }
    }
    if (d)
        closedir(d);
}

int qv__store_open(struct qv_node *node)
{
    struct qv_wal_opts o;
    char path[4096];
    struct cat_replay R = { 0 };
    int rc;

    if (mkdir(node->o.data_dir, 0750) != 0 && errno != EEXIST)
        return qv_seterr(QV_EIO, "[storage] data_dir %s: %s", node->o.data_dir,
                         strerror(errno));
    if ((rc = wal_opts(node, "catalog", &o, path, sizeof path)) != 0)
        return rc;
    int64_t t0 = qv_now_ns();
    node->catalog = qv_wal_open(&o, 0, on_cat_record, &R);
    if (!node->catalog) {
        qv_free(R.e);
        return qv_errno;
    }
    remove_strays(node, &R);
    uint64_t rows = 0, records = 0, aborted = 0;
    unsigned ncoll = 0;
    for (size_t i = 0; i < R.n && rc == 0; i++) {
        if (!R.e[i].live)
            continue;
        struct qv_node_coll_spec s;
        char name[QV_NODE_MAX_NAME + 1], attrs[QV_NODE_MAX_ATTRS][QV_NODE_MAX_NAME + 1];
        struct ncoll *c = NULL;
        spec_of(R.e[i].rec, &s, name, attrs);
        if ((rc = qv__node_recreate(node, &s, R.e[i].id, &c)) != 0) {
            rc = qv_seterr(rc, "storage: the catalog's collection %llu ('%s') cannot be "
                           "created again: %s", (unsigned long long)R.e[i].id, name,
                           qv_errmsg());
            break;
        }
        struct replay CR = { .c = c };
        pthread_mutex_lock(&c->wmu);
        rc = qv__store_open_coll(node, c, on_coll_record, &CR);
        if (rc == 0)
            rc = flush_held(&CR);
        pthread_mutex_unlock(&c->wmu);
        qv_free(CR.held);
        records += CR.applied;
        aborted += CR.aborted;
        rows += c->map.count;
        ncoll++;
    }
    if (node->next_id <= R.max_id)
        node->next_id = R.max_id + 1;
    qv_free(R.e);
    if (rc == 0)
        QV_INFO("storage: %s: %u collections, %llu rows from %llu WAL records (%llu aborted) "
                "in %.0f ms", node->o.data_dir, ncoll, (unsigned long long)rows,
                (unsigned long long)records, (unsigned long long)aborted,
                (double)(qv_now_ns() - t0) / 1e6);
    return rc;
}

void qv__store_close(struct qv_node *node)
{
    qv_wal_close(node->catalog);
    node->catalog = NULL;
}
