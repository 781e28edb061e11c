/*
 * hnsw.c - the HNSW graph index; contract in quiver/hnsw.h, layout and
 * design in hnsw_int.h.
 *
 * Costs: build O(n log n) searches of ef_construction candidates; search
 * O(ef * M0 * log n) distances per query; remove and row_of O(log n);
 * load O(n * M0) (every link is range-checked once) on top of the
 * ixfile's checksum pass.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hnsw_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/hnsw.h"
#include "quiver/ixfile.h"
#include "quiver/pool.h"
#include "quiver/topk.h"

#define HNSW_DEFAULT_M 16u
#define HNSW_DEFAULT_EFC 200u
#define HNSW_DEFAULT_EF 64u
#define HNSW_BUILD_CHUNK 16u        /* rows per build task */
#define HNSW_SEARCH_CHUNK 8u        /* queries per search task */
#define HNSW_NSLOTS 64u             /* cached scratch slots */
#define HNSW_PREFETCH_LINES 4u      /* lines of the next vector prefetched */
#define HNSW_SECTIONS 11u

struct hnsw_cand {
    float d;
    uint32_t id;
};

/* Per-search (or per-build-worker) memory.  Owned by one thread at a time. */
struct hnsw_scratch {
    uint16_t *visited;          /* n epoch tags */
    uint16_t epoch;
    uint32_t n;
    struct hnsw_cand *list;     /* sorted candidate list, list_cap */
    uint32_t list_cap;
    struct hnsw_cand *res;      /* filtered search: result max-heap */
    uint32_t res_cap;
    struct hnsw_cand *heap;     /* filtered search: candidate min-heap, n */
    float *q;                   /* padded (normalised) query, dim_pad */
    uint32_t *nbr;              /* neighbour buffer, M0 + 1 */
    struct hnsw_cand *sel;      /* build: selection buffers, 2 * (M0 + 1) */
};

struct hnsw_slot {
    _Atomic int busy;
    struct hnsw_scratch *s;
} __attribute__((aligned(64)));

struct qv_hnsw {
    struct hnsw_hdr hdr;        /* copy of HNSH */
    struct hnsw_graph g;
    uint64_t *ids;
    uint32_t *n2r;
    uint32_t *r2n;
    struct hnsw_idpair *idso;
    uint64_t *dead;             /* tombstones by node (owned, writable) */
    size_t ndead;
    qv_dist_fn df;              /* L2, or IP for IP and cosine */
    enum qv_metric metric;
    struct qv_pool *pool;
    /* exactly one of: a region we mapped, or a loaded file */
    uint8_t *region;
    size_t region_size;
    struct qv_ixfile file;
    int mapped;
    struct hnsw_slot slots[HNSW_NSLOTS];
};

/* ------------------------------------------------------------------ */
/* small helpers                                                        */
/* ------------------------------------------------------------------ */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static inline const float *vec_of(const struct hnsw_graph *g, uint32_t v)
{
    return g->vecs + (size_t)v * g->dim_pad;
}

static inline uint32_t *links_of(const struct hnsw_graph *g, uint32_t v, unsigned level)
{
    if (level == 0)
        return g->lnk0 + (size_t)v * g->stride0;
    return g->lnku + ((size_t)g->uoff[v] + level - 1) * g->strideu;
}

static inline void prefetch_vec(const float *p, unsigned lines)
{
    const char *c = (const char *)p;
    for (unsigned i = 0; i < lines; i++)
        __builtin_prefetch(c + 64 * i, 0, 3);
}

/* Lines of a vector after its first, capped at HNSW_PREFETCH_LINES. */
static inline unsigned rest_lines(size_t dim_pad)
{
    size_t l = dim_pad / 16 - 1;
    return l < HNSW_PREFETCH_LINES ? (unsigned)l : HNSW_PREFETCH_LINES;
}

static inline int is_dead(const struct qv_hnsw *h, uint32_t v)
{
    return (int)(h->dead[v >> 6] >> (v & 63) & 1);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint8_t draw_level(uint64_t seed, uint64_t row, double mult)
{
    /* u in (0, 1]: 53 random bits, never 0 */
    double u = ((double)(splitmix64(seed ^ (row * 0x2545f4914f6cdd1dULL)) >> 11) + 1.0)
             / 9007199254740992.0;
    double l = floor(-log(u) * mult);
    return (uint8_t)(l > HNSW_MAX_LEVEL ? HNSW_MAX_LEVEL : l);
}

static int cmp_cand(const void *a, const void *b)
{
    const struct hnsw_cand *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_idpair(const void *a, const void *b)
{
    const struct hnsw_idpair *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* ------------------------------------------------------------------ */
/* scratch                                                              */
/* ------------------------------------------------------------------ */

static void scratch_free(struct hnsw_scratch *s)
{
    if (!s)
        return;
    qv_free(s->sel);
    qv_free(s->nbr);
    qv_free(s->q);
    qv_free(s->heap);
    qv_free(s->res);
    qv_free(s->list);
    qv_free(s->visited);
    qv_free(s);
}

static struct hnsw_scratch *scratch_create(uint32_t n, uint32_t dim_pad, uint32_t M0,
                                           uint32_t list_cap)
{
    struct hnsw_scratch *s = qv_calloc(1, sizeof *s, QV_MEM_INDEX);
    if (!s)
        return NULL;
    s->n = n;
    s->visited = qv_calloc(n, sizeof *s->visited, QV_MEM_INDEX);
    s->list = qv_malloc(((size_t)list_cap + 1) * sizeof *s->list, QV_MEM_INDEX);
    s->q = qv_calloc(dim_pad, sizeof(float), QV_MEM_INDEX);
    s->nbr = qv_malloc(((size_t)M0 + 1) * sizeof(uint32_t), QV_MEM_INDEX);
    s->sel = qv_malloc(2 * ((size_t)M0 + 2) * sizeof *s->sel, QV_MEM_INDEX);
    if (!s->visited || !s->list || !s->q || !s->nbr || !s->sel) {
        scratch_free(s);
        return NULL;
    }
    s->list_cap = list_cap;
    return s;
}

/* Make the sorted list hold ef entries (and the filtered heaps, when
 * filtered is set).  0 or QV_ENOMEM (scratch unchanged). */
static int scratch_fit(struct hnsw_scratch *s, uint32_t ef, int filtered)
{
    if (ef > s->list_cap) {
        struct hnsw_cand *l = qv_realloc(s->list, ((size_t)ef + 1) * sizeof *l, QV_MEM_INDEX);
        if (!l)
            return QV_ENOMEM;
        s->list = l;
        s->list_cap = ef;
    }
    if (filtered && ef > s->res_cap) {
        struct hnsw_cand *r = qv_realloc(s->res, ((size_t)ef + 1) * sizeof *r, QV_MEM_INDEX);
        if (!r)
            return QV_ENOMEM;
        s->res = r;
        s->res_cap = ef;
    }
    if (filtered && !s->heap) {
        s->heap = qv_malloc(((size_t)s->n + 1) * sizeof *s->heap, QV_MEM_INDEX);
        if (!s->heap)
            return QV_ENOMEM;
    }
    return 0;
}

static inline uint16_t new_epoch(struct hnsw_scratch *s)
{
    if (++s->epoch == 0) {
        memset(s->visited, 0, (size_t)s->n * sizeof *s->visited);
        s->epoch = 1;
    }
    return s->epoch;
}

/* Take a scratch slot: a cached one when free, else a temporary one
 * (*slot = -1).  NULL on QV_ENOMEM. */
static struct hnsw_scratch *slot_take(struct qv_hnsw *h, int *slot)
{
    for (unsigned i = 0; i < HNSW_NSLOTS; i++) {
        if (atomic_load_explicit(&h->slots[i].busy, memory_order_relaxed))
            continue;
        if (atomic_exchange_explicit(&h->slots[i].busy, 1, memory_order_acquire))
            continue;
        if (!h->slots[i].s) {
            h->slots[i].s = scratch_create(h->g.n, h->g.dim_pad, h->hdr.M0, h->hdr.ef_search);
            if (!h->slots[i].s) {
                atomic_store_explicit(&h->slots[i].busy, 0, memory_order_release);
                return NULL;
            }
        }
        *slot = (int)i;
        return h->slots[i].s;
    }
    *slot = -1;
    return scratch_create(h->g.n, h->g.dim_pad, h->hdr.M0, h->hdr.ef_search);
}

static void slot_give(struct qv_hnsw *h, struct hnsw_scratch *s, int slot)
{
    if (slot < 0)
        scratch_free(s);
    else
        atomic_store_explicit(&h->slots[slot].busy, 0, memory_order_release);
}

/* ------------------------------------------------------------------ */
/* the sorted candidate list                                            */
/* ------------------------------------------------------------------ */

/* Put (d, id) in list[0..*size) sorted by d, capacity cap; the caller has
 * checked that it belongs (not full, or d < the last).  Returns its
 * position. */
static inline uint32_t list_insert(struct hnsw_cand *list, uint32_t *size, uint32_t cap,
                                   float d, uint32_t id)
{
    uint32_t lo = 0, hi = *size;
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (list[mid].d <= d)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint32_t keep = *size < cap ? *size : cap - 1;
    if (keep > lo)
        memmove(list + lo + 1, list + lo, (size_t)(keep - lo) * sizeof *list);
    list[lo].d = d;
    list[lo].id = id;
    if (*size < cap)
        (*size)++;
    return lo;
}

/* ------------------------------------------------------------------ */
/* per-node spin locks (build only)                                     */
/* ------------------------------------------------------------------ */

static inline void node_lock(uint8_t *locks, uint32_t v)
{
    while (__atomic_exchange_n(&locks[v], 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&locks[v], __ATOMIC_RELAXED))
            __builtin_ia32_pause();
}

static inline void node_unlock(uint8_t *locks, uint32_t v)
{
    __atomic_store_n(&locks[v], 0, __ATOMIC_RELEASE);
}

/* Copy v's list on level into buf (under v's lock when locks != NULL);
 * returns the count. */
static inline uint32_t read_links(const struct hnsw_graph *g, uint8_t *locks, uint32_t v,
                                  unsigned level, uint32_t *buf)
{
    const uint32_t *l = links_of(g, v, level);
    if (!locks) {
        uint32_t c = l[0];
        memcpy(buf, l + 1, (size_t)c * sizeof *buf);
        return c;
    }
    node_lock(locks, v);
    uint32_t c = l[0];
    memcpy(buf, l + 1, (size_t)c * sizeof *buf);
    node_unlock(locks, v);
    return c;
}

/* ------------------------------------------------------------------ */
/* graph walks                                                          */
/* ------------------------------------------------------------------ */

/* Greedy descent on one level from (*cur, *curd). */
static void greedy(const struct hnsw_graph *g, qv_dist_fn df, const float *q,
                   struct hnsw_scratch *s, uint8_t *locks, unsigned level,
                   uint32_t *cur, float *curd)
{
    int changed = 1;
    while (changed) {
        changed = 0;
        uint32_t c = read_links(g, locks, *cur, level, s->nbr);
        for (uint32_t i = 0; i < c; i++)
            prefetch_vec(vec_of(g, s->nbr[i]), 1);
        for (uint32_t i = 0; i < c; i++) {
            uint32_t v = s->nbr[i];
            float d = df(q, vec_of(g, v), g->dim_pad);
            if (d < *curd) {
                *curd = d;
                *cur = v;
                changed = 1;
            }
        }
    }
}

/*
 * Best-first search on one level with a sorted list of ef candidates,
 * from entry (ep, epd).  Leaves the list (ascending, EXPANDED bits
 * cleared) in s->list and returns its size.  No filter, no tombstones.
 */
static uint32_t search_list(const struct hnsw_graph *g, qv_dist_fn df, const float *q,
                            struct hnsw_scratch *s, uint8_t *locks, unsigned level,
                            uint32_t ep, float epd, uint32_t ef)
{
    const uint16_t epoch = new_epoch(s);
    uint16_t *vis = s->visited;
    struct hnsw_cand *list = s->list;
    uint32_t *nbr = s->nbr;
    const size_t dp = g->dim_pad;
    const unsigned lines = rest_lines(dp);
    uint32_t size = 1, cur = 0;
    list[0].d = epd;
    list[0].id = ep;
    vis[ep] = epoch;
    while (cur < size) {
        if (list[cur].id & HNSW_EXPANDED) {
            cur++;
            continue;
        }
        uint32_t v = list[cur].id;
        list[cur].id = v | HNSW_EXPANDED;
        uint32_t c, m = 0;
        if (locks) {
            c = read_links(g, locks, v, level, nbr);
            for (uint32_t i = 0; i < c; i++) {
                uint32_t u = nbr[i];
                if (vis[u] != epoch) {
                    vis[u] = epoch;
                    nbr[m++] = u;
                    __builtin_prefetch(vec_of(g, u), 0, 3);
                }
            }
        } else {
            const uint32_t *l = links_of(g, v, level);
            c = l[0];
            for (uint32_t i = 1; i <= c; i++) {
                uint32_t u = l[i];
                if (vis[u] != epoch) {
                    vis[u] = epoch;
                    nbr[m++] = u;
                    __builtin_prefetch(vec_of(g, u), 0, 3);
                }
            }
        }
        uint32_t lowest = size;
        for (uint32_t i = 0; i < m; i++) {
            uint32_t u = nbr[i];
            if (i + 1 < m)
                prefetch_vec(vec_of(g, nbr[i + 1]) + 16, lines);
            float d = df(q, vec_of(g, u), dp);
            if (size < ef || d < list[size - 1].d) {
                uint32_t pos = list_insert(list, &size, ef, d, u);
                if (pos < lowest)
                    lowest = pos;
            }
        }
        cur = lowest <= cur ? lowest : cur + 1;
        /* the next node to expand: fetch its list while we find it */
        for (uint32_t j = cur; j < size; j++)
            if (!(list[j].id & HNSW_EXPANDED)) {
                __builtin_prefetch(links_of(g, list[j].id, level), 0, 3);
                break;
            }
    }
    for (uint32_t i = 0; i < size; i++)
        list[i].id &= ~HNSW_EXPANDED;
    return size;
}

/* binary heaps of candidates: min-heap (cand) and max-heap (res) */
static inline void minheap_push(struct hnsw_cand *h, uint32_t *n, struct hnsw_cand c)
{
    uint32_t i = (*n)++;
    while (i > 0) {
        uint32_t p = (i - 1) >> 1;
        if (h[p].d <= c.d)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static inline struct hnsw_cand minheap_pop(struct hnsw_cand *h, uint32_t *n)
{
    struct hnsw_cand top = h[0], last = h[--(*n)];
    uint32_t i = 0, cnt = *n;
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= cnt)
            break;
        if (l + 1 < cnt && h[l + 1].d < h[l].d)
            l++;
        if (last.d <= h[l].d)
            break;
        h[i] = h[l];
        i = l;
    }
    if (cnt)
        h[i] = last;
    return top;
}

static inline void maxheap_sift_down(struct hnsw_cand *h, uint32_t cnt, struct hnsw_cand c)
{
    uint32_t i = 0;
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= cnt)
            break;
        if (l + 1 < cnt && h[l + 1].d > h[l].d)
            l++;
        if (c.d >= h[l].d)
            break;
        h[i] = h[l];
        i = l;
    }
    h[i] = c;
}

static inline void maxheap_push(struct hnsw_cand *h, uint32_t *n, struct hnsw_cand c)
{
    uint32_t i = (*n)++;
    while (i > 0) {
        uint32_t p = (i - 1) >> 1;
        if (h[p].d >= c.d)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

/* Level-0 search that walks every node but keeps only eligible ones (live,
 * and the row's filter bit set when filter != NULL).  Results in s->res
 * (unordered max-heap); returns their count. */
static uint32_t search_filtered(const struct qv_hnsw *h, const float *q, struct hnsw_scratch *s,
                                uint32_t ep, float epd, uint32_t ef, const uint64_t *filter)
{
    const struct hnsw_graph *g = &h->g;
    const qv_dist_fn df = h->df;
    const uint16_t epoch = new_epoch(s);
    uint16_t *vis = s->visited;
    struct hnsw_cand *cand = s->heap, *res = s->res;
    uint32_t nc = 0, nr = 0, *nbr = s->nbr;
    const size_t dp = g->dim_pad;
    const unsigned lines = rest_lines(dp);
#define ELIGIBLE(v) (!is_dead(h, (v)) && \
                     (!filter || (filter[h->n2r[v] >> 6] >> (h->n2r[v] & 63) & 1)))
    vis[ep] = epoch;
    minheap_push(cand, &nc, (struct hnsw_cand){ epd, ep });
    if (ELIGIBLE(ep))
        maxheap_push(res, &nr, (struct hnsw_cand){ epd, ep });
    while (nc) {
        struct hnsw_cand c = minheap_pop(cand, &nc);
        if (nr == ef && c.d > res[0].d)
            break;
        const uint32_t *l = links_of(g, c.id, 0);
        uint32_t cnt = l[0], m = 0;
        for (uint32_t i = 1; i <= cnt; i++) {
            uint32_t u = l[i];
            if (vis[u] != epoch) {
                vis[u] = epoch;
                nbr[m++] = u;
                __builtin_prefetch(vec_of(g, u), 0, 3);
            }
        }
        for (uint32_t i = 0; i < m; i++) {
            uint32_t u = nbr[i];
            if (i + 1 < m)
                prefetch_vec(vec_of(g, nbr[i + 1]) + 16, lines);
            float d = df(q, vec_of(g, u), dp);
            if (nr < ef || d < res[0].d) {
                minheap_push(cand, &nc, (struct hnsw_cand){ d, u });
                if (ELIGIBLE(u)) {
                    if (nr < ef)
                        maxheap_push(res, &nr, (struct hnsw_cand){ d, u });
                    else
                        maxheap_sift_down(res, nr, (struct hnsw_cand){ d, u });
                }
            }
        }
    }
#undef ELIGIBLE
    return nr;
}

/* ------------------------------------------------------------------ */
/* build                                                                */
/* ------------------------------------------------------------------ */

struct hnsw_build {
    struct hnsw_graph g;        /* nodes = rows */
    qv_dist_fn df;
    uint32_t M, M0, efc;
    uint8_t *locks;             /* NULL with one worker */
    _Atomic uint64_t top;       /* max_level << 32 | entry */
    pthread_mutex_t top_lock;
    struct hnsw_scratch **scratch;  /* per worker */
};

/* Keep at most keep of cands[0..n) (ascending by distance to the base
 * point) with the diversity heuristic; result in out, returns its size. */
static uint32_t select_heuristic(const struct hnsw_build *b, const struct hnsw_cand *cands,
                                 uint32_t n, uint32_t keep, struct hnsw_cand *out)
{
    const struct hnsw_graph *g = &b->g;
    uint32_t m = 0;
    for (uint32_t i = 0; i < n && m < keep; i++) {
        const float *cv = vec_of(g, cands[i].id);
        int good = 1;
        for (uint32_t j = 0; j < m; j++)
            if (b->df(cv, vec_of(g, out[j].id), g->dim_pad) < cands[i].d) {
                good = 0;
                break;
            }
        if (good)
            out[m++] = cands[i];
    }
    return m;
}

/* Add link v -> u (distance d) on level, shrinking v's list with the
 * heuristic when full.  Holds v's lock. */
static void add_link(struct hnsw_build *b, struct hnsw_scratch *s, uint32_t v, uint32_t u,
                     float d, unsigned level)
{
    const struct hnsw_graph *g = &b->g;
    const uint32_t cap = level ? b->M : b->M0;
    if (b->locks)
        node_lock(b->locks, v);
    uint32_t *l = links_of(g, v, level);
    uint32_t c = l[0];
    int present = 0;
    for (uint32_t i = 1; i <= c; i++)
        present |= l[i] == u;
    if (present) {
        /* already linked (a list may already name a node when the other
         * side's search found it) */
    } else if (c < cap) {
        l[1 + c] = u;
        l[0] = c + 1;
    } else {
        struct hnsw_cand *cands = s->sel, *out = s->sel + cap + 2;
        const float *vv = vec_of(g, v);
        for (uint32_t i = 0; i < c; i++) {
            cands[i].id = l[1 + i];
            cands[i].d = b->df(vv, vec_of(g, l[1 + i]), g->dim_pad);
        }
        cands[c].id = u;
        cands[c].d = d;
        qsort(cands, c + 1, sizeof *cands, cmp_cand);
        uint32_t m = select_heuristic(b, cands, c + 1, cap, out);
        for (uint32_t i = 0; i < m; i++)
            l[1 + i] = out[i].id;
        l[0] = m;
    }
    if (b->locks)
        node_unlock(b->locks, v);
}

static void insert_node(struct hnsw_build *b, struct hnsw_scratch *s, uint32_t v)
{
    const struct hnsw_graph *g = &b->g;
    const float *q = vec_of(g, v);
    const unsigned lvl = g->level[v];
    uint64_t top = atomic_load_explicit(&b->top, memory_order_acquire);
    int holding = 0;
    if (lvl > (top >> 32)) {
        pthread_mutex_lock(&b->top_lock);
        top = atomic_load_explicit(&b->top, memory_order_acquire);
        if (lvl > (top >> 32))
            holding = 1;
        else
            pthread_mutex_unlock(&b->top_lock);
    }
    const unsigned maxl = (unsigned)(top >> 32);
    uint32_t cur = (uint32_t)top;
    float curd = b->df(q, vec_of(g, cur), g->dim_pad);
    for (unsigned l = maxl; l > lvl; l--)
        greedy(g, b->df, q, s, b->locks, l, &cur, &curd);
    for (int l = (int)(lvl < maxl ? lvl : maxl); l >= 0; l--) {
        uint32_t n = search_list(g, b->df, q, s, b->locks, (unsigned)l, cur, curd, b->efc);
        cur = s->list[0].id;
        curd = s->list[0].d;
        struct hnsw_cand *out = s->sel;
        uint32_t m = select_heuristic(b, s->list, n, b->M, out);
        /* own list first, so v is complete before anyone can reach it */
        if (b->locks)
            node_lock(b->locks, v);
        uint32_t *own = links_of(g, v, (unsigned)l);
        for (uint32_t i = 0; i < m; i++)
            own[1 + i] = out[i].id;
        own[0] = m;
        if (b->locks)
            node_unlock(b->locks, v);
        /* out aliases s->sel, which add_link reuses: keep a copy */
        uint32_t *targets = s->nbr;
        float dists[QV_HNSW_MAX_M];
        for (uint32_t i = 0; i < m; i++) {
            targets[i] = out[i].id;
            dists[i] = out[i].d;
        }
        for (uint32_t i = 0; i < m; i++)
            add_link(b, s, targets[i], v, dists[i], (unsigned)l);
    }
    if (holding) {
        atomic_store_explicit(&b->top, (uint64_t)lvl << 32 | v, memory_order_release);
        pthread_mutex_unlock(&b->top_lock);
    }
}

static void build_task(void *arg, unsigned task, unsigned worker)
{
    struct hnsw_build *b = arg;
    uint32_t first = 1 + task * HNSW_BUILD_CHUNK;
    uint32_t end = first + HNSW_BUILD_CHUNK;
    if (end > b->g.n)
        end = b->g.n;
    for (uint32_t v = first; v < end; v++)
        insert_node(b, b->scratch[worker], v);
}

/* Sizes of the sections of a region for these counts; offsets[i] where
 * section i starts (4096-aligned), returns the total. */
struct hnsw_layout {
    uint32_t tags[HNSW_SECTIONS];
    size_t off[HNSW_SECTIONS];
    size_t size[HNSW_SECTIONS];
    size_t total;
};

enum { S_HDR, S_VECS, S_LNK0, S_LNKU, S_UOFF, S_LEVL, S_IDS, S_N2R, S_R2N, S_IDSO, S_TOMB };

static void layout(struct hnsw_layout *L, uint64_t n, uint32_t dim_pad, uint32_t stride0,
                   uint32_t strideu, uint64_t upper_slots)
{
    static const uint32_t tags[HNSW_SECTIONS] = {
        HNSW_TAG_HDR, HNSW_TAG_VECS, HNSW_TAG_LNK0, HNSW_TAG_LNKU, HNSW_TAG_UOFF,
        HNSW_TAG_LEVL, HNSW_TAG_IDS, HNSW_TAG_N2R, HNSW_TAG_R2N, HNSW_TAG_IDSO,
        HNSW_TAG_TOMB,
    };
    memcpy(L->tags, tags, sizeof tags);
    L->size[S_HDR] = sizeof(struct hnsw_hdr);
    L->size[S_VECS] = n * dim_pad * sizeof(float);
    L->size[S_LNK0] = n * stride0 * sizeof(uint32_t);
    L->size[S_LNKU] = upper_slots * strideu * sizeof(uint32_t);
    L->size[S_UOFF] = n * sizeof(uint32_t);
    L->size[S_LEVL] = n;
    L->size[S_IDS] = n * sizeof(uint64_t);
    L->size[S_N2R] = n * sizeof(uint32_t);
    L->size[S_R2N] = n * sizeof(uint32_t);
    L->size[S_IDSO] = n * sizeof(struct hnsw_idpair);
    L->size[S_TOMB] = (n + 63) / 64 * sizeof(uint64_t);
    size_t off = 0;
    for (unsigned i = 0; i < HNSW_SECTIONS; i++) {
        L->off[i] = off;
        off = align_up(off + (L->size[i] ? L->size[i] : 1), QV_IXFILE_ALIGN);
    }
    L->total = off;
}

static uint8_t *region_map(size_t size, const struct qv_hnsw_opts *o)
{
    uint8_t *p = qv_vmem_map(size, o->hugepages, o->numa_node, NULL);
    if (p)
        qv_mem_account(QV_MEM_INDEX, (int64_t)size, 1);
    return p;
}

static void region_unmap(uint8_t *p, size_t size)
{
    if (!p)
        return;
    qv_vmem_unmap(p, size);
    qv_mem_account(QV_MEM_INDEX, -(int64_t)size, -1);
}

/* Point h->g and the maps at the sections of base laid out by L. */
static void attach(struct qv_hnsw *h, const uint8_t *base, const struct hnsw_layout *L)
{
    uint8_t *b = (uint8_t *)base;
    h->g.vecs = (float *)(b + L->off[S_VECS]);
    h->g.lnk0 = (uint32_t *)(b + L->off[S_LNK0]);
    h->g.lnku = (uint32_t *)(b + L->off[S_LNKU]);
    h->g.uoff = (uint32_t *)(b + L->off[S_UOFF]);
    h->g.level = b + L->off[S_LEVL];
    h->g.n = h->hdr.n;
    h->g.dim_pad = h->hdr.dim_pad;
    h->g.stride0 = h->hdr.stride0;
    h->g.strideu = h->hdr.strideu;
    h->ids = (uint64_t *)(b + L->off[S_IDS]);
    h->n2r = (uint32_t *)(b + L->off[S_N2R]);
    h->r2n = (uint32_t *)(b + L->off[S_R2N]);
    h->idso = (struct hnsw_idpair *)(b + L->off[S_IDSO]);
}

static qv_dist_fn dist_for(enum qv_metric m)
{
    return qv_kernels()->dist[m == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP][QV_ELEM_F32];
}

/* Renumber the build graph b->g (nodes = rows) into h's region in BFS
 * order from entry. */
static void renumber(struct qv_hnsw *h, const struct hnsw_build *b, uint32_t entry,
                     const uint64_t *ids, uint32_t *order, uint32_t *newof)
{
    const struct hnsw_graph *src = &b->g;
    struct hnsw_graph *dst = &h->g;
    const uint32_t n = src->n;
    for (uint32_t i = 0; i < n; i++)
        newof[i] = UINT32_MAX;
    uint32_t head = 0, tail = 0;
    order[tail++] = entry;
    newof[entry] = 0;
    uint32_t next_row = 0;
    while (tail < n) {
        if (head == tail) {             /* unreachable from the entry */
            while (newof[next_row] != UINT32_MAX)
                next_row++;
            newof[next_row] = tail;
            order[tail++] = next_row;
        }
        uint32_t v = order[head++];
        const uint32_t *l = links_of(src, v, 0);
        for (uint32_t i = 1; i <= l[0]; i++)
            if (newof[l[i]] == UINT32_MAX) {
                newof[l[i]] = tail;
                order[tail++] = l[i];
            }
    }
    uint64_t slot = 0, links0 = 0;
    for (uint32_t p = 0; p < n; p++) {
        uint32_t o = order[p];
        memcpy(dst->vecs + (size_t)p * dst->dim_pad, vec_of(src, o),
               (size_t)dst->dim_pad * sizeof(float));
        unsigned lvl = src->level[o];
        dst->level[p] = (uint8_t)lvl;
        dst->uoff[p] = lvl ? (uint32_t)slot : 0;
        slot += lvl;
        for (unsigned l = 0; l <= lvl; l++) {
            const uint32_t *sl = links_of(src, o, l);
            uint32_t *dl = links_of(dst, p, l);
            dl[0] = sl[0];
            for (uint32_t i = 1; i <= sl[0]; i++)
                dl[i] = newof[sl[i]];
            if (l == 0)
                links0 += sl[0];
        }
        h->ids[p] = ids ? ids[o] : o;
        h->n2r[p] = o;
        h->r2n[o] = p;
        h->idso[p].id = h->ids[p];
        h->idso[p].node = p;
        h->idso[p].zero = 0;
    }
    qsort(h->idso, n, sizeof *h->idso, cmp_idpair);
    h->hdr.links0 = links0;
}

static struct qv_hnsw *fail_null(int rc)
{
    qv_errno = rc;
    return NULL;
}

struct qv_hnsw *qv_hnsw_build(const struct qv_hnsw_opts *o, size_t n, const float *vecs,
                              const uint64_t *ids)
{
    if (!o || o->dim == 0 || o->dim > QV_HNSW_MAX_DIM) {
        qv_seterr(QV_EINVAL, "hnsw build: dim %u is out of range; use 1..%u",
                  o ? o->dim : 0, QV_HNSW_MAX_DIM);
        return NULL;
    }
    if ((unsigned)o->metric >= QV_METRIC__COUNT) {
        qv_seterr(QV_EINVAL, "hnsw build: unknown metric %d; use l2, ip or cosine",
                  (int)o->metric);
        return NULL;
    }
    const uint32_t M = o->M ? o->M : HNSW_DEFAULT_M;
    const uint32_t efc = o->ef_construction ? o->ef_construction : HNSW_DEFAULT_EFC;
    const uint32_t efs = o->ef_search ? o->ef_search : HNSW_DEFAULT_EF;
    if (M < 2 || M > QV_HNSW_MAX_M) {
        qv_seterr(QV_EINVAL, "hnsw build: M = %u is out of range; use 2..%u (16 is usual)",
                  M, QV_HNSW_MAX_M);
        return NULL;
    }
    if (efc < M || efc > QV_HNSW_MAX_EF) {
        qv_seterr(QV_EINVAL, "hnsw build: ef_construction = %u must be in M (%u)..%u",
                  efc, M, QV_HNSW_MAX_EF);
        return NULL;
    }
    if (efs > QV_HNSW_MAX_EF) {
        qv_seterr(QV_EINVAL, "hnsw build: ef_search = %u is above %u", efs, QV_HNSW_MAX_EF);
        return NULL;
    }
    if (n == 0 || n > QV_HNSW_MAX_N || !vecs) {
        qv_seterr(QV_EINVAL, "hnsw build: %zu vectors%s; use 1..%u", n,
                  vecs ? "" : " (NULL array)", QV_HNSW_MAX_N);
        return NULL;
    }
    const size_t dim = o->dim;
    for (size_t i = 0; i < n * dim; i++)
        if (!isfinite(vecs[i])) {
            qv_seterr(QV_EINVAL, "hnsw build: vector %zu element %zu is %f; only finite "
                      "values can be indexed", i / dim, i % dim, (double)vecs[i]);
            return NULL;
        }

    const uint32_t M0 = 2 * M;
    const uint32_t dim_pad = (uint32_t)align_up(dim, 16);
    const uint32_t stride0 = (uint32_t)align_up(M0 + 1, 4);
    const uint32_t strideu = (uint32_t)align_up(M + 1, 4);
    const uint64_t seed = o->seed;
    const double mult = 1.0 / log((double)M);
    const unsigned T = qv_pool_threads(o->pool);

    struct qv_hnsw *h = NULL;
    struct hnsw_build b = { 0 };
    struct hnsw_layout BL, FL;
    uint8_t *build_region = NULL;
    uint32_t *order = NULL, *newof = NULL;
    int rc = QV_ENOMEM;

    /* levels first: they size the upper slots */
    uint8_t *levels = qv_malloc(n, QV_MEM_INDEX);
    if (!levels)
        goto fail_levels;
    uint64_t upper_slots = 0;
    uint32_t entry = 0;
    for (size_t i = 0; i < n; i++) {
        levels[i] = draw_level(seed, i, mult);
        upper_slots += levels[i];
    }

    h = qv_calloc(1, sizeof *h, QV_MEM_INDEX);
    if (!h)
        goto fail_h;
    h->metric = o->metric;
    h->df = dist_for(o->metric);
    h->pool = o->pool;
    h->hdr = (struct hnsw_hdr){
        .magic = HNSW_MAGIC, .version = HNSW_LAYOUT_VERSION, .dim = (uint32_t)dim,
        .dim_pad = dim_pad, .metric = (uint32_t)o->metric, .M = M, .M0 = M0,
        .ef_construction = efc, .ef_search = efs, .n = (uint32_t)n,
        .stride0 = stride0, .strideu = strideu, .upper_slots = upper_slots,
        .seed = seed,
        .flat_below = o->flat_below != 0.0 ? o->flat_below : QV_HNSW_DEFAULT_FLAT_BELOW,
    };

    /* the final region now, so that everything that can fail fails early;
     * the id checks use its IDSO section */
    layout(&FL, n, dim_pad, stride0, strideu, upper_slots);
    h->region = region_map(FL.total, o);
    if (!h->region) {
        rc = qv_errno ? qv_errno : QV_ENOMEM;      /* QV_ENOTSUP: hugepages = on */
        goto fail_region;
    }
    h->region_size = FL.total;
    attach(h, h->region, &FL);
    for (size_t i = 0; i < n; i++) {
        h->idso[i].id = ids ? ids[i] : i;
        h->idso[i].node = (uint32_t)i;
    }
    qsort(h->idso, n, sizeof *h->idso, cmp_idpair);
    for (size_t i = 0; i < n; i++) {
        if (h->idso[i].id == QV_ID_NONE) {
            rc = qv_seterr(QV_EINVAL, "hnsw build: id %llu (row %u) is reserved; use ids "
                           "below 2^64-1", (unsigned long long)QV_ID_NONE, h->idso[i].node);
            goto fail_ids;
        }
        if (i && h->idso[i].id == h->idso[i - 1].id) {
            rc = qv_seterr(QV_EINVAL, "hnsw build: id %llu is repeated (rows %u and %u); "
                           "ids must be distinct", (unsigned long long)h->idso[i].id,
                           h->idso[i - 1].node, h->idso[i].node);
            goto fail_ids;
        }
    }
    h->dead = qv_calloc((n + 63) / 64, sizeof(uint64_t), QV_MEM_INDEX);
    if (!h->dead)
        goto fail_dead;

    /* the build region: same shapes, nodes = rows */
    layout(&BL, n, dim_pad, stride0, strideu, upper_slots);
    build_region = region_map(BL.total, o);
    if (!build_region) {
        rc = qv_errno ? qv_errno : QV_ENOMEM;
        goto fail_build_region;
    }
    b.g.vecs = (float *)(build_region + BL.off[S_VECS]);
    b.g.lnk0 = (uint32_t *)(build_region + BL.off[S_LNK0]);
    b.g.lnku = (uint32_t *)(build_region + BL.off[S_LNKU]);
    b.g.uoff = (uint32_t *)(build_region + BL.off[S_UOFF]);
    b.g.level = levels;
    b.g.n = (uint32_t)n;
    b.g.dim_pad = dim_pad;
    b.g.stride0 = stride0;
    b.g.strideu = strideu;
    b.df = h->df;
    b.M = M;
    b.M0 = M0;
    b.efc = efc;
    /* The build region's LEVL section (n zeroed bytes; the build reads
     * levels from `levels`) serves as the per-node locks. */
    if (T > 1)
        b.locks = build_region + BL.off[S_LEVL];
    b.scratch = qv_calloc(T, sizeof *b.scratch, QV_MEM_INDEX);
    if (!b.scratch)
        goto fail_scratch;
    for (unsigned w = 0; w < T; w++) {
        b.scratch[w] = scratch_create((uint32_t)n, dim_pad, M0, efc);
        if (!b.scratch[w])
            goto fail_scratch;
    }
    order = qv_malloc(n * sizeof *order, QV_MEM_INDEX);
    newof = qv_malloc(n * sizeof *newof, QV_MEM_INDEX);
    if (!order || !newof)
        goto fail_order;

    /* copy (normalise for cosine), assign upper slots */
    const struct qv_dist_ops *k = qv_kernels();
    uint64_t slot = 0;
    for (size_t i = 0; i < n; i++) {
        float *dv = b.g.vecs + i * dim_pad;
        memcpy(dv, vecs + i * dim, dim * sizeof(float));
        if (o->metric == QV_METRIC_COSINE)
            k->normalize_f32(dv, dim);
        b.g.uoff[i] = levels[i] ? (uint32_t)slot : 0;
        slot += levels[i];
    }

    /* insert: row 0 seeds, the rest in parallel */
    pthread_mutex_init(&b.top_lock, NULL);
    atomic_store(&b.top, (uint64_t)levels[0] << 32 | 0u);
    if (n > 1)
        qv_pool_run(o->pool, (unsigned)((n - 1 + HNSW_BUILD_CHUNK - 1) / HNSW_BUILD_CHUNK),
                    build_task, &b);
    pthread_mutex_destroy(&b.top_lock);
    uint64_t top = atomic_load(&b.top);
    entry = (uint32_t)top;

    renumber(h, &b, entry, ids, order, newof);
    h->hdr.entry = 0;
    h->hdr.max_level = (uint32_t)(top >> 32);
    memcpy(h->region + FL.off[S_HDR], &h->hdr, sizeof h->hdr);
    rc = 0;

fail_order:
    qv_free(newof);
    qv_free(order);
fail_scratch:
    if (b.scratch)
        for (unsigned w = 0; w < T; w++)
            scratch_free(b.scratch[w]);
    qv_free(b.scratch);
    region_unmap(build_region, BL.total);
fail_build_region:
fail_dead:
fail_ids:
fail_region:
    if (rc) {
        qv_hnsw_free(h);
        h = NULL;
    }
fail_h:
    qv_free(levels);
fail_levels:
    if (rc == QV_ENOMEM)
        qv_seterr(QV_ENOMEM, "hnsw build: no memory for %zu vectors of dim %zu", n, dim);
    return rc ? fail_null(rc) : h;
}

void qv_hnsw_free(struct qv_hnsw *h)
{
    if (!h)
        return;
    for (unsigned i = 0; i < HNSW_NSLOTS; i++)
        scratch_free(h->slots[i].s);
    qv_free(h->dead);
    if (h->mapped)
        qv_ixfile_close(&h->file);
    else
        region_unmap(h->region, h->region_size);
    qv_free(h);
}

/* ------------------------------------------------------------------ */
/* search                                                               */
/* ------------------------------------------------------------------ */

struct hnsw_search {
    struct qv_hnsw *h;
    const float *queries;
    size_t nq;
    uint32_t k, ef;
    const uint64_t *filter;
    int mode;                   /* 0 list, 1 filtered walk, 2 flat scan */
    float *dist;
    uint64_t *ids;
    _Atomic int rc;
};

static int cmp_cand_id(const struct qv_hnsw *h, const struct hnsw_cand *a,
                       const struct hnsw_cand *b)
{
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    uint64_t x = h->ids[a->id], y = h->ids[b->id];
    return x < y ? -1 : x > y;
}

/* Write the best k of c[0..n) (any order) as (distance, id) ascending. */
static void emit(const struct qv_hnsw *h, struct hnsw_cand *c, uint32_t n, uint32_t k,
                 float *dist, uint64_t *ids)
{
    /* by distance first (the list path is sorted already), then an
     * insertion sort puts equal distances in id order: O(n) when sorted */
    if (n > 32)
        qsort(c, n, sizeof *c, cmp_cand);
    for (uint32_t i = 1; i < n; i++) {
        struct hnsw_cand x = c[i];
        uint32_t j = i;
        while (j > 0 && cmp_cand_id(h, &x, &c[j - 1]) < 0) {
            c[j] = c[j - 1];
            j--;
        }
        c[j] = x;
    }
    const float add = h->metric == QV_METRIC_COSINE ? 1.0f : 0.0f;
    uint32_t m = n < k ? n : k;
    for (uint32_t j = 0; j < m; j++) {
        dist[j] = c[j].d + add;
        ids[j] = h->ids[c[j].id];
    }
    for (uint32_t j = m; j < k; j++) {
        dist[j] = INFINITY;
        ids[j] = QV_ID_NONE;
    }
}

static void search_one(const struct hnsw_search *S, struct hnsw_scratch *s, size_t qi)
{
    const struct qv_hnsw *h = S->h;
    const struct hnsw_graph *g = &h->g;
    const uint32_t k = S->k;
    float *dist = S->dist + qi * k;
    uint64_t *ids = S->ids + qi * k;
    const size_t dim = h->hdr.dim;
    float *q = s->q;
    memcpy(q, S->queries + qi * dim, dim * sizeof(float));
    if (h->metric == QV_METRIC_COSINE)
        qv_kernels()->normalize_f32(q, dim);

    if (S->mode == 2) {
        struct qv_topk t;
        qv_topk_init(&t, k, dist, ids);
        const uint64_t *f = S->filter;
        const float add = h->metric == QV_METRIC_COSINE ? 1.0f : 0.0f;
        for (uint64_t w = 0; w < ((uint64_t)g->n + 63) / 64; w++) {
            uint64_t bits = f[w];
            if ((w + 1) * 64 > g->n && (g->n & 63))
                bits &= (1ULL << (g->n & 63)) - 1;
            while (bits) {
                uint32_t row = (uint32_t)(w * 64 + (uint64_t)__builtin_ctzll(bits));
                bits &= bits - 1;
                uint32_t v = h->r2n[row];
                if (is_dead(h, v))
                    continue;
                qv_topk_push(&t, h->df(q, vec_of(g, v), g->dim_pad) + add, h->ids[v]);
            }
        }
        qv_topk_sort(&t);
        return;
    }

    uint32_t cur = h->hdr.entry;
    float curd = h->df(q, vec_of(g, cur), g->dim_pad);
    for (unsigned l = h->hdr.max_level; l > 0; l--)
        greedy(g, h->df, q, s, NULL, l, &cur, &curd);
    if (S->mode == 0) {
        uint32_t n = search_list(g, h->df, q, s, NULL, 0, cur, curd, S->ef);
        emit(h, s->list, n < k ? n : k, k, dist, ids);
    } else {
        uint32_t n = search_filtered(h, q, s, cur, curd, S->ef, S->filter);
        emit(h, s->res, n, k, dist, ids);
    }
}

static void search_task(void *arg, unsigned task, unsigned worker)
{
    struct hnsw_search *S = arg;
    int slot;
    struct hnsw_scratch *s = slot_take(S->h, &slot);
    if (!s || scratch_fit(s, S->ef, S->mode == 1)) {
        atomic_store(&S->rc, QV_ENOMEM);
        if (s)
            slot_give(S->h, s, slot);
        return;
    }
    size_t q0 = (size_t)task * HNSW_SEARCH_CHUNK, q1 = q0 + HNSW_SEARCH_CHUNK;
    if (q1 > S->nq)
        q1 = S->nq;
    for (size_t i = q0; i < q1; i++)
        search_one(S, s, i);
    slot_give(S->h, s, slot);
}

int qv_hnsw_search(struct qv_hnsw *h, const float *queries, size_t nq, uint32_t k,
                   uint32_t ef, const uint64_t *filter, float *dist, uint64_t *ids)
{
    if (!h || !queries || !dist || !ids)
        return qv_seterr(QV_EINVAL, "hnsw search: NULL index, queries or result arrays");
    if (nq == 0)
        return qv_seterr(QV_EINVAL, "hnsw search: no queries (nq = 0)");
    if (k == 0 || k > QV_HNSW_MAX_EF)
        return qv_seterr(QV_EINVAL, "hnsw search: k = %u is out of range; use 1..%u",
                         k, QV_HNSW_MAX_EF);
    if (ef == 0)
        ef = h->hdr.ef_search > k ? h->hdr.ef_search : k;
    if (ef < k || ef > QV_HNSW_MAX_EF)
        return qv_seterr(QV_EINVAL, "hnsw search: ef = %u must be in k (%u)..%u", ef, k,
                         QV_HNSW_MAX_EF);
    struct hnsw_search S = {
        .h = h, .queries = queries, .nq = nq, .k = k, .ef = ef, .filter = filter,
        .dist = dist, .ids = ids,
    };
    S.mode = filter || h->ndead ? 1 : 0;
    if (filter && h->hdr.flat_below > 0.0) {
        const uint32_t n = h->g.n;
        uint64_t pass = 0;
        for (uint32_t w = 0; w < n / 64; w++)
            pass += (uint64_t)__builtin_popcountll(filter[w]);
        if (n & 63)
            pass += (uint64_t)__builtin_popcountll(filter[n / 64] & ((1ULL << (n & 63)) - 1));
        if ((double)pass < h->hdr.flat_below * (double)n)
            S.mode = 2;
    }
    unsigned ntasks = (unsigned)((nq + HNSW_SEARCH_CHUNK - 1) / HNSW_SEARCH_CHUNK);
    qv_pool_run(h->pool, ntasks, search_task, &S);
    int rc = atomic_load(&S.rc);
    if (rc)
        return qv_seterr(rc, "hnsw search: no memory for the search scratch (%u nodes, "
                         "ef %u)", h->g.n, ef);
    return 0;
}

/* ------------------------------------------------------------------ */
/* ids, tombstones, stats                                               */
/* ------------------------------------------------------------------ */

static int64_t node_of_id(const struct qv_hnsw *h, uint64_t id)
{
    size_t lo = 0, hi = h->g.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (h->idso[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < h->g.n && h->idso[lo].id == id)
        return h->idso[lo].node;
    return -1;
}

long qv_hnsw_remove(struct qv_hnsw *h, size_t n, const uint64_t *ids)
{
    long removed = 0;
    if (!h || !ids)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int64_t v = node_of_id(h, ids[i]);
        if (v < 0 || is_dead(h, (uint32_t)v))
            continue;
        h->dead[v >> 6] |= 1ULL << (v & 63);
        h->ndead++;
        removed++;
    }
    return removed;
}

size_t qv_hnsw_size(const struct qv_hnsw *h) { return h->g.n - h->ndead; }
uint64_t qv_hnsw_rows(const struct qv_hnsw *h) { return h->g.n; }
uint32_t qv_hnsw_dim(const struct qv_hnsw *h) { return h->hdr.dim; }
enum qv_metric qv_hnsw_metric(const struct qv_hnsw *h) { return h->metric; }

int64_t qv_hnsw_row_of(const struct qv_hnsw *h, uint64_t id)
{
    int64_t v = node_of_id(h, id);
    if (v < 0 || is_dead(h, (uint32_t)v))
        return -1;
    return h->n2r[v];
}

void qv_hnsw_stats(const struct qv_hnsw *h, struct qv_hnsw_stats *out)
{
    *out = (struct qv_hnsw_stats){
        .M = h->hdr.M, .M0 = h->hdr.M0, .ef_construction = h->hdr.ef_construction,
        .ef_search = h->hdr.ef_search, .max_level = h->hdr.max_level,
        .links0 = h->hdr.links0,
        .region_bytes = h->mapped ? h->file.size : h->region_size,
        .mapped = h->mapped,
    };
}

/* ------------------------------------------------------------------ */
/* save / load                                                          */
/* ------------------------------------------------------------------ */

int qv_hnsw_save(const struct qv_hnsw *h, const char *path)
{
    struct hnsw_layout L;
    layout(&L, h->g.n, h->g.dim_pad, h->g.stride0, h->g.strideu, h->hdr.upper_slots);
    const void *ptr[HNSW_SECTIONS] = {
        &h->hdr, h->g.vecs, h->g.lnk0, h->g.lnku, h->g.uoff, h->g.level, h->ids,
        h->n2r, h->r2n, h->idso, h->dead,
    };
    struct qv_ixfile_writer *w = qv_malloc(sizeof *w, QV_MEM_INDEX);
    if (!w)
        return qv_seterr(QV_ENOMEM, "hnsw save %s: no memory", path);
    qv_ixfile_writer_init(w, path, QV_IX_HNSW);
    int rc = 0;
    for (unsigned i = 0; i < HNSW_SECTIONS && rc == 0; i++)
        rc = qv_ixfile_add(w, L.tags[i], ptr[i], L.size[i]);
    if (rc == 0)
        rc = qv_ixfile_commit(w);
    else
        qv_seterr(rc, "hnsw save %s: cannot add a section", path);
    qv_free(w);
    return rc;
}

#define CORRUPT(...) do { rc = qv_seterr(QV_ECORRUPT, __VA_ARGS__); goto fail; } while (0)

/* Check that every field of a mapped index is in range, so searches can
 * trust it.  0 or QV_ECORRUPT with a message. */
static int validate(struct qv_hnsw *h, const char *path)
{
    const struct hnsw_hdr *H = &h->hdr;
    const struct hnsw_graph *g = &h->g;
    int rc = 0;
    uint64_t slots = 0;
    for (uint32_t v = 0; v < H->n; v++) {
        unsigned lvl = g->level[v];
        if (lvl > H->max_level)
            CORRUPT("%s: node %u has level %u above the top level %u", path, v, lvl,
                    H->max_level);
        if (lvl && ((uint64_t)g->uoff[v] + lvl > H->upper_slots))
            CORRUPT("%s: node %u's upper links (slot %u + %u) are past the %llu slots",
                    path, v, g->uoff[v], lvl, (unsigned long long)H->upper_slots);
        slots += lvl;
        for (unsigned l = 0; l <= lvl; l++) {
            const uint32_t *ls = links_of(g, v, l);
            if (ls[0] > (l ? H->M : H->M0))
                CORRUPT("%s: node %u level %u has %u links (at most %u)", path, v, l,
                        ls[0], l ? H->M : H->M0);
            for (uint32_t i = 1; i <= ls[0]; i++)
                if (ls[i] >= H->n || (l && g->level[ls[i]] < l))
                    CORRUPT("%s: node %u level %u links to node %u, which does not "
                            "exist there", path, v, l, ls[i]);
        }
        if (h->n2r[v] >= H->n || h->r2n[h->n2r[v]] != v)
            CORRUPT("%s: the row map of node %u is inconsistent", path, v);
        if (h->idso[v].node >= H->n || h->ids[h->idso[v].node] != h->idso[v].id ||
            (v && h->idso[v].id <= h->idso[v - 1].id))
            CORRUPT("%s: the id index at %u is inconsistent", path, v);
    }
    if (slots != H->upper_slots)
        CORRUPT("%s: levels need %llu upper slots, the file has %llu", path,
                (unsigned long long)slots, (unsigned long long)H->upper_slots);
    if (H->max_level && g->level[H->entry] != H->max_level)
        CORRUPT("%s: the entry node %u is not on the top level", path, H->entry);
fail:
    return rc;
}

struct qv_hnsw *qv_hnsw_load(const char *path, struct qv_pool *pool)
{
    struct qv_hnsw *h = qv_calloc(1, sizeof *h, QV_MEM_INDEX);
    if (!h) {
        qv_seterr(QV_ENOMEM, "hnsw load %s: no memory", path ? path : "(null)");
        return NULL;
    }
    int rc;
    if (!path) {
        rc = qv_seterr(QV_EINVAL, "hnsw load: path is NULL");
        goto fail;
    }
    rc = qv_ixfile_open(&h->file, path, QV_IX_HNSW);
    if (rc)
        goto fail;
    h->mapped = 1;
    uint64_t sz;
    const struct hnsw_hdr *H = qv_ixfile_section(&h->file, HNSW_TAG_HDR, &sz);
    if (!H || sz != sizeof *H)
        CORRUPT("%s: the HNSW header section is missing or %llu bytes (want %zu)", path,
                (unsigned long long)sz, sizeof *H);
    if (H->magic != HNSW_MAGIC || H->version != HNSW_LAYOUT_VERSION) {
        rc = qv_seterr(QV_EFORMAT, "%s: HNSW layout version %u, this build reads %u",
                       path, H->version, HNSW_LAYOUT_VERSION);
        goto fail;
    }
    if (H->dim == 0 || H->dim > QV_HNSW_MAX_DIM || H->dim_pad != align_up(H->dim, 16) ||
        H->metric >= QV_METRIC__COUNT || H->M < 2 || H->M > QV_HNSW_MAX_M ||
        H->M0 != 2 * H->M || H->n == 0 || H->n > QV_HNSW_MAX_N || H->entry >= H->n ||
        H->max_level > HNSW_MAX_LEVEL || H->stride0 != align_up(H->M0 + 1, 4) ||
        H->strideu != align_up(H->M + 1, 4) || H->upper_slots > (uint64_t)H->n * 31 ||
        H->ef_search > QV_HNSW_MAX_EF || H->ef_search == 0)
        CORRUPT("%s: the HNSW header holds values out of range", path);
    h->hdr = *H;
    struct hnsw_layout L;
    layout(&L, H->n, H->dim_pad, H->stride0, H->strideu, H->upper_slots);
    const void *sec[HNSW_SECTIONS];
    for (unsigned i = 0; i < HNSW_SECTIONS; i++) {
        sec[i] = qv_ixfile_section(&h->file, L.tags[i], &sz);
        if (!sec[i] || sz != L.size[i])
            CORRUPT("%s: section %.4s is %s (want %zu bytes)", path, (const char *)&L.tags[i],
                    sec[i] ? "the wrong size" : "missing", L.size[i]);
    }
    h->g.vecs = (float *)sec[S_VECS];
    h->g.lnk0 = (uint32_t *)sec[S_LNK0];
    h->g.lnku = (uint32_t *)sec[S_LNKU];
    h->g.uoff = (uint32_t *)sec[S_UOFF];
    h->g.level = (uint8_t *)sec[S_LEVL];
    h->g.n = H->n;
    h->g.dim_pad = H->dim_pad;
    h->g.stride0 = H->stride0;
    h->g.strideu = H->strideu;
    h->ids = (uint64_t *)sec[S_IDS];
    h->n2r = (uint32_t *)sec[S_N2R];
    h->r2n = (uint32_t *)sec[S_R2N];
    h->idso = (struct hnsw_idpair *)sec[S_IDSO];
    rc = validate(h, path);
    if (rc)
        goto fail;
    h->dead = qv_malloc(L.size[S_TOMB], QV_MEM_INDEX);
    if (!h->dead) {
        rc = qv_seterr(QV_ENOMEM, "hnsw load %s: no memory", path);
        goto fail;
    }
    memcpy(h->dead, sec[S_TOMB], L.size[S_TOMB]);
    if (H->n & 63)
        h->dead[H->n / 64] &= (1ULL << (H->n & 63)) - 1;
    for (size_t w = 0; w < L.size[S_TOMB] / 8; w++)
        h->ndead += (size_t)__builtin_popcountll(h->dead[w]);
    h->metric = (enum qv_metric)H->metric;
    h->df = dist_for(h->metric);
    h->pool = pool;
    return h;

fail:
    qv_hnsw_free(h);
    qv_errno = rc;
    return NULL;
}
