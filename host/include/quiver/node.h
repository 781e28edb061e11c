/*
 * node.h - the node's collection store: what quiverd's request handler
 * calls for CREATE, DROP, LIST, DESCRIBE, UPSERT, DELETE, GET and (through
 * the query service) SEARCH of docs/PROTOCOL.md.
 *
 *   writers (any threads)                  dispatcher (service.h)
 *   ---------------------                  ----------------------
 *   upsert / delete: validate, prepare     custom search callback:
 *     lock the collection's writer mutex     for every segment: filter
 *     pause the service (us): apply          bitmap, index search, ids
 *     resume, bump the epochs                translated; merge top-k
 *   seal: growing -> sealed, new growing
 *     (under the pause), queue a build     builder thread (one per node)
 *   drop: remove from the service          -------------------------
 *     (drains), wait for writers and the     build a sealed segment's
 *     builder, free                          index WITHOUT the pause;
 *                                            swap it in under the pause
 *
 * Decisions, and why
 * ------------------
 * Collections.  A node holds up to max_collections live collections
 * ([server] max_collections), each with a name unique on the node
 * ([A-Za-z0-9_.-]{1,64}), dim 1..4096, a metric (L2, IP, COSINE), an
 * index type (FLAT, IVF, IVF_SQ8, IVF_PQ, HNSW: the PROTOCOL values),
 * the type's parameters (CREATE's table; a parameter of another type must
 * be 0, so a mistaken CREATE is refused rather than half-obeyed) and up
 * to 16 int64 attributes.  Ids are assigned by the node: 1, 2, 3, ...,
 * never reused while the node lives (a client holding a dropped id gets
 * NOT_FOUND, never another collection), skipping ids the service already
 * has registered.  The node id IS the service's collection id, so a
 * transport submits with the id of the wire header.
 *
 * Segments.  Not every index grows in place (HNSW is build-only, IVF
 * types need training), so a collection is segmented, as vector
 * databases do it: ONE growing segment (a flat index: exact, takes
 * inserts) and any number of sealed segments (a flat, IVF, IVF-PQ or
 * HNSW index of the collection's type).  The growing segment is sealed
 * when it holds seal_at rows (tombstones included):
 *     FLAT, HNSW   seal_rows ([server] seal_rows)
 *     IVF, SQ8     the first time: `train` = 39 x nlist (nlist 0: 10 000,
 *                  nlist then fixed at sqrt(rows) by that first build and
 *                  used by every later one), as PROTOCOL's Training says:
 *                  the collection is trained as soon as it holds enough
 *                  data; afterwards max(seal_rows, train)
 *     IVF_PQ       as IVF, with train at least 39 x 2^pq_nbits (codebooks)
 * (39 points per centroid is where k-means stops warning.)  A sealed
 * segment of a FLAT collection in memory stays as it is; of the other
 * types (and with a data_dir of FLAT too: its files are written) it is
 * queued for the builder thread, which builds the index from the
 * segment's rows that are live at that moment (so a build compacts), with
 * the node's fixed seed (opts.build_seed) on one thread, then swaps it in.
 * Until then the sealed flat is searched exactly.  A sealed segment whose
 * tombstones reach compact_ratio of its rows ([server] compact_ratio) is
 * queued again and rebuilt from its live rows; one with none is removed.
 * Segments to compact and small sealed ones (fewer live rows than half
 * the seal size) are merged: grouped in slot order up to the seal size
 * in live rows, each group rebuilt as one segment (node.c maintain).
 * A build that cannot train (fewer live rows than 39 x nlist: nlist is
 * lowered to rows / 39; under 39 rows, or fewer than 2^pq_nbits for
 * IVF_PQ) builds a flat segment.  "trained" (DESCRIBE) is 1 for FLAT and
 * HNSW, and for IVF types once an IVF segment exists.
 *
 * Why the builder never uses the search pool.  qv_pool_run is one run at
 * a time (pool.h) and an HNSW build is ONE run: built on the pool that
 * searches use, it would stall every search for the whole build.  And an
 * index keeps its build pool for its searches (hnsw.h, ivf.h have one
 * pool option).  So every sealed index is built with pool NULL, on the
 * builder thread alone: IVF and IVF-PQ segments then search on the
 * dispatcher's thread (or their engine), and HNSW segments are searched
 * by the node in chunks of queries over the node's pool (concurrent HNSW
 * searches are allowed, hnsw.h).  Flat segments use the node's pool.
 *
 * Rows and keys.  Inside each segment's index a row is named by its KEY,
 * slot << 40 | row (slot: the segment's place in the collection's slot
 * table, kept when it is rebuilt), never by the user's id.  So an upsert
 * can add the new row BEFORE it tombstones the old one (the only step
 * that can fail, the flat add, comes first: on ENOMEM nothing is applied)
 * and an id can live in two segments' indexes for a moment without a
 * clash.  The user id of each row is in the segment's ids[]; a search
 * translates its results through it, then merges by (distance, user id).
 * The collection's id map (user id -> key) holds the one live row of each
 * id.  Every segment keeps the float vectors as given (for GET and for
 * rebuilds; a flat index keeps a normalised, blocked copy it cannot give
 * back, so flat data is held twice) and its attributes, column by column
 * (struct qv_attrs per segment), so a filter is evaluated per segment.
 *
 * Writes.  UPSERT and DELETE are atomic per call: everything is validated
 * first (dim, nattrs, finite values, the reserved id 2^64-1, duplicates
 * within the call), every allocation is made next (growing arrays are
 * copied to larger ones outside the pause), and only then is anything
 * applied.  Writers of one collection are serialised by its mutex (writes
 * are not the hot path; writers of different collections run in
 * parallel).  What the dispatcher reads (the slot table, the indexes, a
 * segment's ids, attribute columns and row count) changes only while the
 * service is paused (qv_service_pause: the dispatcher is parked between
 * batches), and the pause covers only the index add / removes and pointer
 * swaps: microseconds for a small upsert, a memory copy of the batch for a
 * large one.  Then qv_service_bump_epoch, so no cached answer of before
 * the write is served after it has been acknowledged.  Every write that
 * changes something bumps the collection's epoch (DESCRIBE, and the
 * return of upsert / delete); a delete of absent ids changes nothing and
 * leaves it.  A swap of a built segment bumps the service's epoch (its
 * answers are approximate now) but not the collection's.
 *
 * Search.  Each collection is registered with the service as a CUSTOM
 * collection (service.h): the service validates, caches, batches and
 * calls the node's search on its dispatcher thread for each group of
 * requests.  The search parses the filter text once, then for each
 * segment: evaluates the filter into a bitmap of the segment's rows
 * (a segment with none passing is skipped), searches it (flat: through
 * the node's engine when it has one (qv_flat_search_engine), else on the
 * pool; IVF / IVF-PQ: their engine, set to the node's; HNSW: on the CPU,
 * ef = max(ef, k)), translates keys to ids and pushes them into one top-k
 * heap per query.  An id is live in at most one segment at any moment a
 * search can see (an upsert adds and tombstones under one pause), so no
 * result holds an id twice.  IVF_PQ with refine > 1 asks its segments for
 * refine x k candidates and re-ranks them with the kept float vectors.
 * Transports fill a request with qv_node_search_prepare(), which checks
 * what the service cannot (the collection's dim, nprobe <= nlist, ef in
 * k..4096, the filter's syntax and attribute names, with messages naming
 * the field) and submit it with qv_service_submit().
 *
 * Durability.  With opts.data_dir (quiverd: [storage] data_dir) every
 * CREATE and DROP goes to a catalog WAL and every UPSERT and DELETE to
 * its collection's WAL (quiver/wal.h) and is durable under opts.sync
 * BEFORE it is applied and acknowledged; qv_node_create replays them, so
 * the node comes back with the same collections, ids and rows.  Every
 * segment the builder makes (an index build, a compaction, a merge) is
 * also written to two files (its rows and its index) before it is
 * swapped in; qv_node_snapshot() writes a manifest that lists those
 * files with each segment's live-row bitmap, plus the rows not in such
 * a segment yet, and truncates the WAL up to it, so that recovery maps
 * the segment files back (the indexes searched in place, not rebuilt)
 * and replays only the records after it.  host/server/node_store.c has
 * the layout, the formats and the recovery rules.  Without a data_dir
 * the node is in memory only.
 *
 * Drop.  qv_node_drop_collection removes the name and id at once (later
 * requests: QV_ENOENT), then qv_service_remove_collection: new searches
 * are refused, the queued ones are searched and completed (PROTOCOL:
 * "queries in flight complete first"; at the latest by their deadlines,
 * so a DROP may wait up to a class's budget), the service never calls
 * the collection again, and it frees the collection's queues, record and
 * metric series (/metrics stops showing collection="id"); then the node
 * waits for writers inside it and for the build in hand (a build cannot
 * be interrupted: dropping a collection whose segment is being built
 * waits for that build), and frees.  So once a DROP returned, the
 * collection no longer counts anywhere: [server] max_collections and the
 * service's [batcher] max_collections both bound the collections live at
 * one time (a collection still being dropped counts in the service until
 * its DROP returns; a CREATE beyond either is QV_ENOSPC naming the key),
 * and a node may CREATE and DROP collections for ever.  The name may be
 * used again at once; the id never is (a new CREATE gets the next id).
 *
 * Threads.  Every function is thread-safe.  Locks, in the order they are
 * taken: node->create_mu (create, drop) -> node->tab_lock (the id table;
 * readers: every lookup) -> collection->wmu (writers, describe, the
 * builder's snapshot and swap) -> the service's pause -> node->mu (job
 * queue, reference waits).  qv_node_snapshot takes the collection's
 * snapshot mutex before its wmu.  The dispatcher takes none of them.
 *
 * Lifetime.  The service, engine and pool are borrowed and must outlive
 * the node; free the node before the service (the node's free removes its
 * collections from the service, which completes their queued searches).
 *
 * Not yet: merging small sealed segments, replication.
 */
#ifndef QUIVER_NODE_H
#define QUIVER_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"
#include "quiver/wal.h"

struct qv_config;
struct qv_engine;
struct qv_pool;
struct qv_service;
struct qv_service_request;
struct qv_node;

#define QV_NODE_MAX_NAME 64u            /* bytes of a name */
#define QV_NODE_MAX_ATTRS 16u           /* == QV_FILTER_MAX_ATTRS */
#define QV_NODE_MAX_DIM 4096u
#define QV_NODE_MAX_NLIST 65536u
#define QV_NODE_MAX_EF 4096u            /* ef_search, ef_construction, ef */
#define QV_NODE_MIN_EF_CONSTRUCTION 8u
#define QV_NODE_MIN_HNSW_M 4u
#define QV_NODE_MAX_HNSW_M 64u
#define QV_NODE_MAX_PQ_M 256u
#define QV_NODE_MAX_K 1024u
#define QV_NODE_MAX_FILTER 1024u        /* bytes of filter text */
#define QV_NODE_MAX_UPSERT 65536u       /* rows per upsert */
#define QV_NODE_MAX_IDS 1048576u        /* ids per delete or get */
#define QV_NODE_MAX_COLLECTIONS 65536u
#define QV_NODE_DEFAULT_NPROBE 16u
#define QV_NODE_DEFAULT_HNSW_M 16u
#define QV_NODE_DEFAULT_EF_CONSTRUCTION 200u
#define QV_NODE_DEFAULT_EF_SEARCH 64u
#define QV_NODE_AUTO_NLIST_ROWS 10000u  /* nlist 0: rows of the first build */
#define QV_NODE_TRAIN_PER_CENTROID 39u

/* Index types: the values of PROTOCOL's CREATE `index`. */
enum qv_node_index {
    QV_NODE_FLAT = 0,
    QV_NODE_IVF = 1,
    QV_NODE_IVF_SQ8 = 2,
    QV_NODE_IVF_PQ = 3,
    QV_NODE_HNSW = 4,
    QV_NODE_INDEX__COUNT
};

/* What CREATE asks for.  Strings are borrowed for the call (copied). */
struct qv_node_coll_spec {
    const char *name;               /* [A-Za-z0-9_.-]{1,64}, unique */
    uint32_t dim;                   /* 1..4096 */
    enum qv_metric metric;          /* L2, IP, COSINE */
    enum qv_node_index index;
    uint32_t nattrs;                /* 0..16 */
    const char *attrs[QV_NODE_MAX_ATTRS];   /* nattrs distinct names, same
                                       alphabet, 1..64 bytes */
    uint32_t nlist;                 /* IVF*: 1..65536; 0 = sqrt of the rows of
                                       the first build; else 0 */
    uint32_t nprobe;                /* IVF*: default nprobe, 1..nlist; 0 = 16
                                       (at most nlist); else 0 */
    uint32_t pq_m;                  /* IVF_PQ: 1..256, divides dim; else 0 */
    uint32_t pq_nbits;              /* IVF_PQ: 4 or 8; else 0 */
    uint32_t hnsw_m;                /* HNSW: 4..64; 0 = 16; else 0 */
    uint32_t ef_construction;       /* HNSW: 8..4096 and >= hnsw_m; 0 = 200;
                                       else 0 */
    uint32_t ef_search;             /* HNSW: 1..4096; 0 = 64; else 0 */
};

/* DESCRIBE's descriptor (and LIST's entries): a snapshot. */
struct qv_node_coll_info {
    uint64_t id;
    char name[QV_NODE_MAX_NAME + 1];
    uint32_t dim;
    enum qv_metric metric;
    enum qv_node_index index;
    uint32_t nattrs;
    char attrs[QV_NODE_MAX_ATTRS][QV_NODE_MAX_NAME + 1];
    uint64_t rows;                  /* live vectors */
    uint64_t epoch;                 /* bumped by every write that changed
                                       something */
    uint32_t nlist;                 /* as created; nlist 0: the nlist of the
                                       first build once trained, else 0 */
    uint32_t nprobe;                /* resolved default (IVF*), else 0 */
    uint32_t pq_m, pq_nbits;        /* IVF_PQ, else 0 */
    uint32_t hnsw_m, ef_construction, ef_search;    /* resolved (HNSW), else 0 */
    int trained;                    /* 0/1: see the top of this file */
    /* beyond PROTOCOL's descriptor, for STATS and operators */
    uint32_t segments;              /* the growing one included */
    uint32_t sealed;                /* sealed segments with their final index */
    uint32_t pending;               /* sealed segments queued or building */
    uint64_t growing_rows;          /* rows of the growing segment (tombstones
                                       included) */
    uint64_t seal_at;               /* rows at which it will be sealed */
    uint64_t dead_rows;             /* tombstones not yet compacted away */
};

/* Rows of one upsert.  All borrowed for the call. */
struct qv_node_rows {
    size_t n;                       /* 1..QV_NODE_MAX_UPSERT */
    uint32_t dim;                   /* must be the collection's */
    uint32_t nattrs;                /* must be the collection's */
    const uint64_t *ids;            /* n ids, distinct, not 2^64-1 */
    const float *vectors;           /* n x dim floats, row-major, finite */
    const int64_t *attrs[QV_NODE_MAX_ATTRS];    /* attrs[a]: n values of
                                       attribute a (declared order) */
};

/* A search's parameters as the wire gives them (PROTOCOL SEARCH). */
struct qv_node_search_args {
    uint32_t dim;                   /* must be the collection's */
    uint32_t k;                     /* 1..1024 */
    uint32_t nprobe;                /* IVF*: 0 = default, else 1..nlist;
                                       ignored by other types */
    uint32_t ef;                    /* HNSW: 0 = default, else k..4096;
                                       ignored by other types */
    const char *filter_text;        /* NUL-terminated, <= 1024 bytes, or NULL
                                       / "" for none; borrowed until the
                                       request completes */
};

struct qv_node_opts {
    uint32_t max_collections;       /* live collections, 1..65536; 64 */
    uint32_t seal_rows;             /* growing rows at which it is sealed,
                                       16..2^30; 65536 */
    double compact_ratio;           /* tombstone share of a sealed segment
                                       that rebuilds it (merged with small
                                       ones), [0, 1]; 0 = never; 0.5 */
    uint64_t build_seed;            /* k-means and HNSW seed of every build;
                                       0x5156 */
    struct qv_service *service;     /* borrowed, required */
    struct qv_engine *engine;       /* borrowed or NULL: flat, IVF and IVF-PQ
                                       segments search through it (normally
                                       the router's: the service's engine);
                                       it must be one only the dispatcher
                                       uses, as the service's */
    struct qv_pool *pool;           /* borrowed or NULL: flat searches and
                                       HNSW query chunks (the dispatcher's
                                       pool) */
    /* Durability (host/server/node_store.c): data_dir NULL = in memory
     * only.  Else collections and writes are logged there before they are
     * acknowledged and recovered by qv_node_create. */
    const char *data_dir;           /* borrowed during qv_node_create */
    enum qv_wal_sync sync;          /* quiver/wal.h; ALWAYS */
    unsigned sync_interval_ms;      /* INTERVAL's period; 0 = 10 */
    uint64_t wal_segment_bytes;     /* 0 = 64 MiB */
    double build_share;             /* pace of the builder thread (index
                                       builds and compacting rebuilds): the
                                       share of one CPU it may use, in
                                       (0, 1]; after a build of t it rests
                                       t (1 / share - 1).  1 = no rest;
                                       default 1 */
    uint64_t snapshot_wal_bytes;    /* snapshot a collection automatically
                                       once its WAL holds this many bytes it
                                       does not cover (checked each second);
                                       0 = only on request; default 0 here,
                                       256 MiB in quiverd's configuration */
};

/* The write-ahead log of a collection (or, id 0, the catalog's), for
 * STATS and `quiverctl status`. */
struct qv_node_storage {
    int enabled;                    /* 0: in memory only (no data_dir) */
    enum qv_wal_sync sync;
    uint64_t last_lsn;              /* last LSN logged */
    uint64_t durable_lsn;           /* last LSN fdatasync'ed */
    uint64_t first_lsn;             /* first LSN still in the log */
    uint32_t segments;              /* WAL segment files */
    uint64_t bytes;                 /* their size */
    uint64_t appends, fsyncs;       /* since start */
    uint64_t snapshot_lsn;          /* LSN the snapshot in force covers
                                       (qv_node_snapshot); 0: none */
    uint32_t segment_files;         /* segments whose rows and index are on
                                       disk (seg-<F>.qvseg / .qvix) */
    uint32_t segments_mapped;       /* of those, loaded by mapping the files
                                       at start (not rebuilt) */
};

/* Defaults (above), borrowed pointers NULL.  Cannot fail. */
void qv_node_opts_default(struct qv_node_opts *o);

/* Defaults, then [server] max_collections, seal_rows, compact_ratio and
 * [storage] data_dir (borrowed from cfg), sync, sync_interval_ms,
 * wal_segment_bytes of cfg.  Returns 0 (values were validated at load). */
int qv_node_opts_from_config(const struct qv_config *cfg, struct qv_node_opts *o);

/* qv_node_storage - fill *out for collection id (0: the catalog).  0, or
 * QV_ENOENT (no such collection).  Thread-safe. */
int qv_node_storage(struct qv_node *node, uint64_t id, struct qv_node_storage *out);

/*
 * qv_node_snapshot - write collection id's manifest (snapshot) and drop
 * the WAL records it covers (node_store.c has the file formats).  Under
 * the collection's writer mutex (writes wait for it; searches do not) it
 * notes the WAL's last LSN L (every record up to L is applied), lists
 * the segments whose files the builder wrote (file number, slot, kind)
 * with a copy of each one's live-row bitmap, and copies the live rows of
 * the others (the growing segment, segments not built yet); then,
 * without the mutex, writes that to data_dir/c<ID>/snap-<L>.qvs (written
 * as .tmp, fdatasync'ed, renamed, directory fsync'ed), removes the older
 * snapshots, the segment files nothing uses any more (segments replaced
 * by compactions and merges) and the WAL segments wholly covered by L
 * (qv_wal_truncate_upto).  When nothing was logged since the snapshot in
 * force (L equals its LSN, or L is 0) nothing is written.  *lsn (may be
 * NULL) gets L.  Snapshots of one collection are serialised; other
 * collections are not affected.
 * Memory: the bitmaps (rows / 8 bytes) and a copy of the unindexed rows
 * (8 + 4 x dim + 8 x nattrs bytes a row; at most a few segments' worth).
 * Cost: that copy under the mutex, then one sequential write of that
 * size and two fsyncs: sealed segments are never rewritten.
 * Returns 0, or QV_ENOENT (no such collection, or it is being dropped),
 * QV_EINVAL (the node has no data_dir: nothing to write to), QV_ENOMEM,
 * QV_ENOSPC or QV_EIO (the message names the file; a failed snapshot
 * leaves the previous snapshot and the WAL as they were).  A failure to
 * remove covered WAL segments is only logged: the snapshot stands.
 * Thread-safe.
 */
int qv_node_snapshot(struct qv_node *node, uint64_t id, uint64_t *lsn);

/*
 * qv_node_create - an empty node and its builder thread.  Returns NULL
 * with qv_errno QV_EINVAL (no service, an option out of range: the
 * message names it), QV_ENOMEM or the -errno of pthread_create.
 */
struct qv_node *qv_node_create(const struct qv_node_opts *o);

/*
 * qv_node_free - stop the builder (it finishes the build in hand: builds
 * cannot be interrupted), drop every collection (each removed from the
 * service: its queued searches complete first), free everything.  No
 * other call on the node may be running or start.  Call before freeing
 * the service.  NULL is a no-op.
 */
void qv_node_free(struct qv_node *node);

/*
 * qv_node_create_collection - a new, empty collection from spec;
 * registered with the service (searchable) before it returns.  *id gets
 * its id.  Returns 0, QV_EINVAL (a field out of range or unlike the rule
 * above: the message names it and what is allowed), QV_EEXIST (the name
 * is in use), QV_ENOSPC (max_collections live, or the service's
 * [batcher] max_collections registered: live collections and ones whose
 * DROP has not returned yet), QV_ENOMEM.
 * O(collections).  Thread-safe.
 */
int qv_node_create_collection(struct qv_node *node, const struct qv_node_coll_spec *spec,
                              uint64_t *id);

/*
 * qv_node_drop_collection - see "Drop" above.  Waits for the collection's
 * queued searches, its writers and its build in hand.  Returns 0 or
 * QV_ENOENT.  Thread-safe; never from a service callback.
 */
int qv_node_drop_collection(struct qv_node *node, uint64_t id);

/* The id of the collection named name: 0 or QV_ENOENT.  Thread-safe. */
int qv_node_find(struct qv_node *node, const char *name, uint64_t *id);

/* DESCRIBE: 0 or QV_ENOENT.  Thread-safe (waits for a write in hand). */
int qv_node_describe(struct qv_node *node, uint64_t id, struct qv_node_coll_info *out);

/*
 * qv_node_list - LIST: descriptors of up to cap collections into out (in
 * id order), *n = the number of collections (may exceed cap: call again
 * with more room).  Returns 0 or QV_ENOMEM.  Thread-safe.
 */
int qv_node_list(struct qv_node *node, struct qv_node_coll_info *out, uint32_t cap,
                 uint32_t *n);

/*
 * qv_node_upsert - UPSERT: insert rows; an id already present is replaced
 * (its old row tombstoned: no search sees both).  Atomic: on any error
 * nothing is applied.  *epoch (may be NULL) gets the collection's epoch
 * after the write.  May seal the growing segment (and queue a build).
 * Returns 0, QV_ENOENT (no such collection), QV_EINVAL (rows NULL, n
 * outside 1..65536, dim or nattrs unlike the collection's, a NULL array
 * or attribute column, a NaN / infinite value, the id 2^64-1, an id
 * repeated within the call: the message names the row and the fix),
 * QV_ENOMEM.  Thread-safe.  Cost: O(n (dim + nattrs)) outside the
 * service's pause, an O(n dim) flat add and O(n) removes inside it.
 */
int qv_node_upsert(struct qv_node *node, uint64_t id, const struct qv_node_rows *rows,
                   uint64_t *epoch);

/*
 * qv_node_delete - DELETE: tombstone the rows of ids (n u64; absent ids
 * and repeats are ignored).  Returns the number of ids that were present
 * (>= 0), or QV_ENOENT, QV_EINVAL (ids NULL with n > 0, n over
 * QV_NODE_MAX_IDS), QV_ENOMEM (nothing deleted).  *epoch as for upsert.
 * Thread-safe.  O(n).
 */
long qv_node_delete(struct qv_node *node, uint64_t id, size_t n, const uint64_t *ids,
                    uint64_t *epoch);

/*
 * qv_node_get - GET: the stored vectors (as upserted) of ids (n u64, 1..
 * QV_NODE_MAX_IDS) into vectors (n x dim floats; zeros where not found)
 * and found (n bytes, 0/1).  dim must be the collection's (the caller's
 * buffer is sized by it).  Returns the number found (>= 0), QV_ENOENT,
 * QV_EINVAL (NULL arrays, n out of range, dim unlike the collection's).
 * Thread-safe.  O(n dim).
 */
long qv_node_get(struct qv_node *node, uint64_t id, size_t n, const uint64_t *ids,
                 uint32_t dim, float *vectors, uint8_t *found);

/*
 * qv_node_search_prepare - check a search of collection id (a) and fill
 * req's collection, k, nprobe, ef (the one of another index type zeroed,
 * so it does not split the cache), refine (0), filter (NULL) and
 * filter_text (a->filter_text, borrowed; NULL when empty).  The caller
 * fills the rest (query, dist, ids, done, class, deadline, ...) and
 * submits it with qv_service_submit.  Returns 0, QV_ENOENT, QV_EINVAL
 * (dim unlike the collection's, k outside 1..1024, nprobe > nlist, ef
 * outside k..4096, filter text too long, unparsable or naming an unknown
 * attribute: the message names the field).  Thread-safe.  O(filter).
 */
int qv_node_search_prepare(struct qv_node *node, uint64_t id,
                           const struct qv_node_search_args *a,
                           struct qv_service_request *req);

/*
 * qv_node_seal - seal the growing segment of id now, whatever its size
 * (a flush: for bulk loads, tests and operators); its build is queued.
 * A build with too few rows to train makes a flat segment, and an early
 * seal of an nlist-0 collection does not fix its nlist (see "Segments").
 * Returns 1 (sealed), 0 (the growing segment is empty), QV_ENOENT,
 * QV_ENOMEM, QV_ENOSPC (no slot left).  Thread-safe.
 */
int qv_node_seal(struct qv_node *node, uint64_t id);

/*
 * qv_node_wait_builds - wait until no segment of id is queued or being
 * built, at most timeout_ns.  Returns 0, QV_ETIMEDOUT, QV_ENOENT.
 * Thread-safe.
 */
int qv_node_wait_builds(struct qv_node *node, uint64_t id, int64_t timeout_ns);

/* The builder thread's work since the node started: builds (index builds
 * and compacting rebuilds) done, their time, the last one's, and the rest
 * the pace (opts.build_share) imposed after them.  Thread-safe. */
struct qv_node_build_stats {
    uint64_t builds;
    int64_t build_ns, last_build_ns, rest_ns;
};
void qv_node_build_stats(struct qv_node *node, struct qv_node_build_stats *out);

/* Name of an index type ("flat", "ivf", "ivf_sq8", "ivf_pq", "hnsw";
 * "unknown" out of range). */
const char *qv_node_index_name(enum qv_node_index t);

#endif
