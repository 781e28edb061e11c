/*
 * crash_client.c - the client of tests/integration/crash.sh: streams
 * upserts and deletes to a quiverd that the script kills with SIGKILL,
 * keeping a log of what was acknowledged, and checks after the restart
 * that every acknowledged write is there and no deleted id came back.
 *
 *   crash_client write  --server H:UDP:TCP --log FILE [--seconds S] [--index T]
 *   crash_client verify --server H:UDP:TCP --log FILE
 *
 * Collection "crash" (dim 8, index T: flat (default) or hnsw; created
 * when missing).  Ids are new in
 * every upsert (batches of 16, continuing after the largest id in the
 * log), each row's vector a function of its id (vec_of), so a check needs
 * only the id.  Every third batch deletes 8 ids acknowledged alive.  The
 * log, appended and flushed after each acknowledgement (the client is not
 * killed, only the server):
 *   U FIRST N      ids FIRST .. FIRST+N-1 upserted, acknowledged
 *   d ID ...       a delete of these ids was SENT (before its answer)
 *   D ID ...       that delete was acknowledged
 * verify: ids upserted and not in any d line must be present with their
 * vector; ids in a D line must be absent; ids in a d line without its D
 * may be either (the kill came between the log and the answer).  Then
 * searches (k 10, the vectors of up to 500 acknowledged live ids) must
 * never answer an acknowledged deleted id (the recovered indexes honour
 * the deletes) and must find the id itself at least 95% of the time (an
 * approximate index over the recovered rows).  write
 * stops at the first failed request (the server is gone) or after S
 * seconds, exit 0; verify exits 1 on the first difference (ASSERT,
 * check.h), as does either mode when the ack log cannot be written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "quiver/client.h"

#define DIM 8
#define BATCH 16
#define DEL 8

/* A vector per id, distinct for distinct ids (splitmix64 of id and
 * coordinate, 24 bits each), so a search for it should find the id. */
static void vec_of(uint64_t id, float *v)
{
    for (int j = 0; j < DIM; j++) {
        uint64_t z = id * DIM + (uint64_t)j + 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v[j] = (float)(z >> 40) / (float)(1u << 24);
    }
}

/* id states, indexed by id */
enum { ABSENT = 0, ALIVE = 1, DEL_SENT = 2, DELETED = 3 };

struct state {
    uint8_t *st;
    uint64_t cap, max_id;
};

static void grow(struct state *s, uint64_t id)
{
    if (id < s->cap)
        return;
    uint64_t cap = s->cap ? s->cap : 1024;
    while (cap <= id)
        cap *= 2;
    s->st = realloc(s->st, cap);
    memset(s->st + s->cap, 0, cap - s->cap);
    s->cap = cap;
}

static void set(struct state *s, uint64_t id, uint8_t v)
{
    grow(s, id);
    s->st[id] = v;
    if (id + 1 > s->max_id)
        s->max_id = id + 1;
}

static int read_log(const char *path, struct state *s)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    if (!f)
        return errno == ENOENT ? 0 : -1;
    while (fgets(line, sizeof line, f)) {
        char *p = line + 1, *end;
        if (line[0] == 'U') {
            uint64_t first = strtoull(p, &end, 10), n = strtoull(end, NULL, 10);
            for (uint64_t i = 0; i < n; i++)
                set(s, first + i, ALIVE);
        } else if (line[0] == 'd' || line[0] == 'D') {
            for (;;) {
                uint64_t id = strtoull(p, &end, 10);
                if (end == p)
                    break;
                p = end;
                set(s, id, line[0] == 'd' ? DEL_SENT : DELETED);
            }
        }
    }
    fclose(f);
    return 0;
}

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "", *server = NULL, *log = NULL;
    check_prog = "crash_client";
    double seconds = 10;
    const char *index = "flat";
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--server"))
            server = argv[i + 1];
        else if (!strcmp(argv[i], "--log"))
            log = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--index"))
            index = argv[i + 1];
    }
    char host[256];
    unsigned up, tp;
    if ((strcmp(mode, "write") && strcmp(mode, "verify")) || !server || !log ||
        sscanf(server, "%255[^:]:%u:%u", host, &up, &tp) != 3 ||
        (strcmp(index, "flat") && strcmp(index, "hnsw"))) {
        fprintf(stderr, "usage: crash_client write|verify --server H:UDP:TCP --log FILE "
                "[--seconds S] [--index flat|hnsw]\n");
        return 2;
    }
    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.tcp_timeout_ms = 5000;
    struct qv_client *c = qv_client_connect(host, (uint16_t)up, (uint16_t)tp, &o);
    ASSERT(c != NULL, "connect: %s", qv_client_connect_errmsg());
    struct state s = { 0 };
    ASSERT(read_log(log, &s) == 0, "%s: %s", log, strerror(errno));
    uint64_t coll = 0;

    if (!strcmp(mode, "verify")) {
        if (qv_client_lookup(c, "crash", &coll)) {
            /* nothing acknowledged yet: nothing to find */
            ASSERT(s.max_id == 0, "verify: no collection 'crash' after %llu acknowledged "
                  "ids: %s", (unsigned long long)s.max_id, qv_client_errmsg(c));
            return 0;
        }
        uint64_t alive = 0, deleted = 0, either = 0;
        static uint64_t ids[1024];
        static float got[1024 * DIM];
        static uint8_t found[1024];
        for (uint64_t base = 0; base < s.max_id; base += 1024) {
            uint32_t n = 0;
            for (uint64_t id = base; id < s.max_id && id < base + 1024; id++)
                ids[n++] = id;
            ASSERT(qv_client_get(c, coll, n, ids, DIM, got, found) == 0, "verify: GET: %s",
                  qv_client_errmsg(c));
            for (uint32_t i = 0; i < n; i++) {
                uint64_t id = ids[i];
                uint8_t st = id < s.cap ? s.st[id] : ABSENT;
                float want[DIM];
                vec_of(id, want);
                int same = found[i] && memcmp(got + (size_t)i * DIM, want, sizeof want) == 0;
                if (st == ALIVE) {
                    alive++;
                    ASSERT(same, "verify: acknowledged id %llu is %s after the restart",
                          (unsigned long long)id,
                          found[i] ? "there with another vector" : "missing");
                } else if (st == DELETED) {
                    deleted++;
                    ASSERT(!found[i], "verify: id %llu, deleted and acknowledged, came back",
                          (unsigned long long)id);
                } else if (st == DEL_SENT) {
                    either++;
                } else {
                    ASSERT(!found[i] || same, "verify: unacknowledged id %llu has a vector no "
                          "client sent", (unsigned long long)id);
                }
            }
        }
        /* searches: the vectors of up to 500 live ids spread over the range */
        uint64_t step = s.max_id / 500 + 1, searched = 0, self = 0;
        for (uint64_t id = 0; id < s.max_id; id += step) {
            uint64_t q = id;
            while (q < s.max_id && (q >= s.cap || s.st[q] != ALIVE))
                q++;
            if (q >= s.max_id)
                break;
            float v[DIM];
            uint64_t hit[10];
            uint32_t n = 0;
            vec_of(q, v);
            ASSERT(qv_client_search(c, coll, v, DIM, 10, NULL, hit, NULL, &n) == 0,
                  "verify: SEARCH: %s", qv_client_errmsg(c));
            searched++;
            for (uint32_t i = 0; i < n; i++) {
                ASSERT(hit[i] >= s.cap || s.st[hit[i]] != DELETED, "verify: a search for id "
                      "%llu answered id %llu, deleted and acknowledged",
                      (unsigned long long)q, (unsigned long long)hit[i]);
                self += hit[i] == q;
            }
        }
        ASSERT(self * 100 >= searched * 95, "verify: searches found the queried id itself "
              "in %llu of %llu", (unsigned long long)self, (unsigned long long)searched);
        printf("crash_client: verify: %llu acknowledged ids present, %llu deleted ids "
               "absent, %llu in flight at the kill; %llu searches found their id %llu "
               "times, no deleted id\n", (unsigned long long)alive,
               (unsigned long long)deleted, (unsigned long long)either,
               (unsigned long long)searched, (unsigned long long)self);
        return 0;
    }

    /* write */
    struct qv_client_create cr = { .name = "crash", .dim = DIM, .metric = QV_CLIENT_L2,
                                   .index = strcmp(index, "hnsw") ? QV_CLIENT_FLAT
                                                                  : QV_CLIENT_HNSW };
    int rc = qv_client_create(c, &cr, &coll);
    if (rc == QV_CLIENT_EEXISTS)
        rc = qv_client_lookup(c, "crash", &coll);
    ASSERT(rc == 0, "write: create: %s", qv_client_errmsg(c));
    FILE *f = fopen(log, "a");
    ASSERT(f != NULL, "%s: %s", log, strerror(errno));
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t next = s.max_id, x = 0x9E3779B97F4A7C15ull ^ s.max_id, batches = 0, dels = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > seconds)
            break;
        uint64_t ids[BATCH];
        float v[BATCH * DIM];
        for (int i = 0; i < BATCH; i++) {
            ids[i] = next + (uint64_t)i;
            vec_of(ids[i], v + i * DIM);
        }
        struct qv_client_rows r = { .n = BATCH, .dim = DIM, .ids = ids, .vectors = v };
        if (qv_client_upsert(c, coll, &r, NULL, NULL, NULL)) {
            printf("crash_client: write: stopped at an upsert: %s\n", qv_client_errmsg(c));
            break;
        }
        fprintf(f, "U %llu %d\n", (unsigned long long)next, BATCH);
        ASSERT(fflush(f) == 0, "%s: %s", log, strerror(errno));     /* verify reads it */
        for (int i = 0; i < BATCH; i++)
            set(&s, next + (uint64_t)i, ALIVE);
        next += BATCH;
        if (++batches % 3)
            continue;
        uint64_t del[DEL];
        int nd = 0;
        for (int tries = 0; tries < 64 && nd < DEL; tries++) {
            uint64_t id = rnd(&x) % next;
            int dup = 0;
            for (int j = 0; j < nd; j++)
                dup |= del[j] == id;
            if (!dup && s.st[id] == ALIVE)
                del[nd++] = id;
        }
        if (!nd)
            continue;
        fputc('d', f);
        for (int j = 0; j < nd; j++)
            fprintf(f, " %llu", (unsigned long long)del[j]);
        fputc('\n', f);
        ASSERT(fflush(f) == 0, "%s: %s", log, strerror(errno));     /* verify reads it */
        for (int j = 0; j < nd; j++)
            set(&s, del[j], DEL_SENT);
        if (qv_client_delete(c, coll, (uint64_t)nd, del, NULL)) {
            printf("crash_client: write: stopped at a delete: %s\n", qv_client_errmsg(c));
            break;
        }
        fputc('D', f);
        for (int j = 0; j < nd; j++)
            fprintf(f, " %llu", (unsigned long long)del[j]);
        fputc('\n', f);
        ASSERT(fflush(f) == 0, "%s: %s", log, strerror(errno));     /* verify reads it */
        for (int j = 0; j < nd; j++)
            set(&s, del[j], DELETED);
        dels++;
    }
    printf("crash_client: write: %llu upserts of %d and %llu deletes acknowledged\n",
           (unsigned long long)batches, BATCH, (unsigned long long)dels);
    fclose(f);
    qv_client_close(c);
    free(s.st);
    return 0;
}
