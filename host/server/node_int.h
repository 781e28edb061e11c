/*
 * node_int.h - private structures of the collection store (node.h, whose
 * header comment holds the design).  Four files share them:
 *   node.c          create/free, the collection table, CREATE, DROP,
 *                   DESCRIBE, LIST, UPSERT, DELETE, GET, sealing
 *   node_seg.c      segments: creation, growth, removal, index builds
 *   node_build.c    the builder thread and its queue
 *   node_search.c   the service's custom search and prefetch, and
 *                   qv_node_search_prepare
 *
 * Who may touch what, field by field:
 *   [imm]    set before the collection is published, then read-only
 *   [wmu]    guarded by coll->wmu (writers, describe, the builder)
 *   [vis]    read by the dispatcher without a lock; written only by a
 *            holder of coll->wmu WHILE the service is paused (so also
 *            readable by any holder of coll->wmu)
 *   [mu]     guarded by node->mu
 *   [tab]    guarded by node->tab_lock (write: create_mu held too)
 *   [atom]   atomics
 *   [frozen] written while the segment grows ([wmu]); read-only once
 *            it is sealed, so the builder reads it without a lock
 */
#ifndef QUIVER_NODE_INT_H
#define QUIVER_NODE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../index/idmap.h"
#include "quiver/filter.h"
#include "quiver/ixfile.h"
#include "quiver/node.h"

#define NODE_ROW_BITS 40
#define NODE_ROW_MASK ((1ULL << NODE_ROW_BITS) - 1)
#define NODE_MAX_SLOTS (1u << 23)       /* keys stay below 2^63 */
#define NODE_MAX_SEG_ROWS (1ULL << 31)  /* rows of one segment */
#define NODE_IN_CAP 1024                /* IN values of one filter */
#define NODE_MAX_CANDIDATES 100000u     /* refine x k at most (the indexes') */
#define NODE_MERGE_MAX 64u              /* segments one compaction merges */

/* The key of row `row` of the segment in slot `slot`: what the indexes
 * store as the vector's id. */
static inline uint64_t node_key(uint32_t slot, uint64_t row)
{
    return (uint64_t)slot << NODE_ROW_BITS | row;
}

enum nseg_kind {
    NSEG_FLAT = 0,
    NSEG_IVF,                       /* IVF-Flat or IVF-SQ8 */
    NSEG_IVFPQ,
    NSEG_HNSW,
};

enum nseg_state {
    NSEG_GROWING = 0,               /* takes inserts (one per collection) */
    NSEG_SEALED,                    /* final: no build needed */
    NSEG_QUEUED,                    /* in the builder's queue */
    NSEG_BUILDING,                  /* the builder works on it */
};

struct ncoll;
struct qv_ixfile;

/* The sections of a segment's rows file (node_store.c writes it,
 * qv__seg_load reads it): SHDR, a struct nseg_file_hdr checked against
 * the snapshot's entry; ids; vectors; one per attribute column. */
#define NSEG_TAG_SHDR QV_FOURCC('S', 'H', 'D', 'R')
#define NSEG_TAG_SIDS QV_FOURCC('S', 'I', 'D', 'S')
#define NSEG_TAG_SVEC QV_FOURCC('S', 'V', 'E', 'C')
#define NSEG_TAG_SCOL(a) QV_FOURCC('S', 'C', '0' + (a) / 10, '0' + (a) % 10)
#define NSEG_FILE_VERSION 1u
struct nseg_file_hdr {
    uint32_t version;
    uint32_t dim;
    uint32_t nattrs;
    uint32_t slot;                  /* its keys are slot << 40 | row */
    uint32_t kind;                  /* enum nseg_kind */
    uint32_t nlist;
    uint64_t rows;
    uint64_t coll_id;
    uint64_t file_no;
};

struct nseg {
    struct ncoll *coll;                                 /* [imm] */
    uint32_t slot;                                      /* [imm] */
    enum nseg_kind kind;                                /* [imm] */
    enum nseg_state state;                              /* [wmu] */
    union {                                             /* [imm]; the index's
                                                           own state [vis] */
        struct qv_flat *flat;
        struct qv_ivf *ivf;
        struct qv_ivfpq *ivfpq;
        struct qv_hnsw *hnsw;
    } ix;
    uint32_t nlist;                 /* IVF*: its lists   [imm] */
    uint64_t rows;                  /* rows, tombstones included [vis] */
    uint64_t cap;                   /* room in the arrays below [wmu] */
    uint64_t live;                  /* rows not tombstoned [wmu] */
    uint64_t *ids;                  /* user id of each row [vis, frozen] */
    int64_t *cols[QV_NODE_MAX_ATTRS];   /* attribute columns [vis, frozen] */
    struct qv_attrs attrs;          /* names, cols, rows: for qv_filter_eval
                                       [vis] */
    float *vecs;                    /* rows x dim, as given [wmu, frozen] */
    uint64_t *alive;                /* bit per row [wmu] */
    int build_failed;               /* its build failed: not queued again
                                       [wmu] */
    int detached;                   /* the engine forgot it (qv__seg_detach) */
    struct nseg *job_next;          /* the builder's queue [mu] */
    int persist_only;               /* queued only to write its rows file (a
                                       sealed FLAT segment with a data_dir):
                                       no rebuild [wmu] */
    struct nseg *merge_next;        /* the other segments a queued job merges
                                       into one (node_build.c) [wmu] */
    uint64_t file_no;               /* [storage]: its files seg-<F>.qvseg and
                                       .qvix are written (node_store.c); 0:
                                       not on disk [wmu, then imm] */
    struct qv_ixfile *rows_file;    /* loaded from disk: ids, vecs and cols
                                       point into this mapping (read-only);
                                       NULL: they are heap arrays [imm] */
};

struct ncoll {
    uint64_t id;                                        /* [imm] */
    struct qv_node *node;                               /* [imm] */
    char name[QV_NODE_MAX_NAME + 1];                    /* [imm] */
    char attr_names[QV_NODE_MAX_ATTRS][QV_NODE_MAX_NAME + 1];  /* [imm] */
    struct qv_node_coll_spec spec;  /* resolved defaults; name and attrs
                                       point into the arrays above [imm] */
    struct qv_attrs names;          /* nattrs + names, no rows: for parsing
                                       filters [imm] */
    uint32_t nprobe;                /* resolved default (IVF*) [imm] */
    int registered;                 /* with the service [imm] */

    _Atomic int refs;               /* callers inside (node.c: coll_get) */
    _Atomic int dropping;           /* set under node->mu and tab_lock */

    pthread_mutex_t wmu;
    struct nseg **slots;            /* slot table, NULL holes [vis] */
    uint32_t nslots;                /* slots in use (highest + 1) [vis] */
    uint32_t slot_cap;                                  /* [wmu] */
    struct nseg *growing;                               /* [vis] */
    struct qv_idmap map;            /* user id -> key     [wmu] */
    uint64_t epoch;                                     /* [wmu] */
    uint32_t nlist_eff;             /* nlist of builds; 0 until chosen
                                       (nlist 0 before the first) [wmu] */
    int trained;                                        /* [wmu] */
    uint64_t seals;                 /* growing segments sealed so far [wmu] */
    uint32_t pending;               /* segments queued or building [mu] */
    struct qv_wal *wal;             /* [storage]: its log (node_store.c), or
                                       NULL in memory [wmu] */
    pthread_mutex_t snap_mu;        /* serialises qv_node_snapshot; taken
                                       before wmu */
    uint64_t snap_lsn;              /* LSN of the snapshot in force; 0:
                                       none [wmu] */
    uint64_t next_file;             /* [storage]: number of the next segment
                                       file (seg-<F>.*) [wmu] */
    uint64_t build_file;            /* the file number the builder's job in
                                       hand writes; 0: none [wmu] */
};

struct qv_node {
    struct qv_node_opts o;                              /* [imm] */

    pthread_mutex_t create_mu;      /* serialises create and drop */
    pthread_rwlock_t tab_lock;
    struct ncoll **table;           /* open addressing by id, 2 x max
                                       slots, no tombstones [tab] */
    uint32_t hmask;                                     /* [imm] */
    uint32_t ncoll;                                     /* [tab] */
    uint64_t next_id;               /* [create_mu] */

    pthread_mutex_t mu;
    pthread_cond_t cv;              /* job queue, reference and build waits
                                       (CLOCK_MONOTONIC) */
    struct nseg *jobs_head, *jobs_tail;                 /* [mu] */
    int stop;                                           /* [mu] */
    pthread_t builder;
    int started;
    struct qv_node_build_stats bst;                     /* [mu] */
    struct qv_wal *catalog;         /* [storage]: CREATE / DROP log, or NULL
                                       [create_mu] */
    char *data_dir;                 /* our copy of o.data_dir [imm] */
    /* the snapshotter thread (node_store.c), with snapshot_wal_bytes */
    pthread_t snapper;
    int snap_started;
    pthread_mutex_t snap_tmu;
    pthread_cond_t snap_cv;         /* CLOCK_MONOTONIC */
    int snap_stop;                  /* [snap_tmu] */
};

/* node.c */
/* The collection of id or NULL; tab_lock held (no reference taken). */
struct ncoll *qv__node_find_locked(const struct qv_node *node, uint64_t id);
/* The collection of id with a reference (qv__node_coll_put), or NULL. */
struct ncoll *qv__node_coll_get(struct qv_node *node, uint64_t id);
void qv__node_coll_put(struct ncoll *c);
void qv__node_pause(struct ncoll *c);
void qv__node_resume(struct ncoll *c);
uint64_t qv__node_seal_at(const struct ncoll *c);

/* node.c, for node_store.c: the apply halves of UPSERT and DELETE (wmu
 * held; rows / ids checked), and CREATE under a given id without
 * logging (recovery; *out: the collection, in the table). */
int qv__node_apply_upsert(struct ncoll *c, const struct qv_node_rows *r);
long qv__node_apply_delete(struct ncoll *c, size_t n, const uint64_t *ids);
int qv__node_recreate(struct qv_node *node, const struct qv_node_coll_spec *spec,
                      uint64_t id, struct ncoll **out);
/* Recovery (wmu held, c new: no rows yet): put the n loaded segments in
 * their slots (distinct; the empty growing segment moves to a free slot),
 * attach the engine, point the id map at their live rows.  The segments
 * are c's from the call (freed on failure).  0, QV_ENOMEM, QV_ECORRUPT
 * (two in a slot, or an id live in two segments). */
int qv__node_install(struct ncoll *c, struct nseg **segs, size_t n);

/* node_store.c (its header comment has the design) */
struct qv_wal;
int qv__store_open(struct qv_node *node);
void qv__store_close(struct qv_node *node);
int qv__store_start_snapshotter(struct qv_node *node);
void qv__store_stop_snapshotter(struct qv_node *node);
int qv__store_log_create(struct qv_node *node, const struct ncoll *c);
int qv__store_log_drop(struct qv_node *node, const struct ncoll *c);
void qv__store_drop_files(struct qv_node *node, uint64_t id);
int qv__store_open_coll(struct qv_node *node, struct ncoll *c, uint64_t after_lsn,
                        int (*fn)(void *, uint64_t, uint8_t, const void *, size_t),
                        void *arg);
/* Write s's rows file and (not for a flat segment) its index file as
 * file number F (no lock: s is the builder's until it is swapped in, or
 * sealed and frozen).  0, or the error (nothing left). */
int qv__store_write_seg(struct ncoll *c, const struct nseg *s, uint64_t F);
void qv__store_remove_seg(struct ncoll *c, uint64_t F);
int qv__store_log_upsert(struct ncoll *c, const struct qv_node_rows *r, uint64_t *lsn);
int qv__store_log_delete(struct ncoll *c, size_t n, const uint64_t *ids, uint64_t *lsn);
void qv__store_log_abort(struct ncoll *c, uint64_t lsn);

/* node_seg.c */
struct nseg *qv__seg_new_growing(struct ncoll *c, uint32_t slot);
void qv__seg_free(struct nseg *s, int paused);
/* Under a pause: the node's engine forgets s (IVF / IVF-PQ detached, a
 * flat index freed now); no-op without an engine. */
void qv__seg_detach(struct nseg *s);
int qv__seg_reserve(struct nseg *s, uint64_t need);
long qv__seg_remove_key(struct nseg *s, uint64_t key);
int qv__seg_alive(const struct nseg *s, uint64_t row);
/* A sealed segment in slot from the selected rows of nsrc segments
 * (src[j]'s rows sel[j][0..n[j]-1], in that order). */
struct nseg *qv__seg_build(struct ncoll *c, uint32_t slot, struct nseg *const *src,
                           uint32_t *const *sel, const uint64_t *n, uint32_t nsrc,
                           uint32_t nlist);
/* A sealed segment of kind in slot from its files (node_store.c wrote
 * them): the rows file mapped (ids, vectors, attributes not copied), the
 * index mapped by its load function, alive = a copy of the `words`
 * bitmap words given (tombstones applied to the index).  NULL and
 * qv_errno (QV_ECORRUPT with the file named, QV_ENOMEM, QV_EIO). */
struct nseg *qv__seg_load(struct ncoll *c, uint32_t slot, enum nseg_kind kind, uint32_t nlist,
                          uint64_t rows, const uint64_t *alive, const char *rows_path,
                          const char *ix_path);
/* The ixfile.h index type of a segment of kind (IVF: the collection's
 * encoding). */
int qv__seg_ix_type(const struct ncoll *c, enum nseg_kind kind);
uint32_t qv__slot_free(const struct ncoll *c);

/* node_build.c */
int qv__build_start(struct qv_node *node);
void qv__build_stop(struct qv_node *node);
void qv__build_enqueue(struct ncoll *c, struct nseg *s);
void qv__build_forget(struct qv_node *node, struct ncoll *c);

/* node_search.c */
int qv__node_search(void *ix, const float *q, size_t nq, uint32_t k, uint32_t p1,
                    uint32_t refine, const char *filter_text, float *dist, uint64_t *ids);
int qv__node_prefetch(void *ix, const float *q, size_t nq, uint32_t p1);

#endif
