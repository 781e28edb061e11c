/*
 * replay_int.h - the request handler's table of write answers, which makes
 * a retried write idempotent (docs/PROTOCOL.md "Request ids, retries,
 * idempotency"; quiver/handler.h).  Private to host/server/handler.c.
 *
 * What it holds.  One entry per write (CREATE, DROP, UPSERT, DELETE) that
 * the handler ran, keyed by (carrier, client address and port, request
 * id): either IN PROGRESS (the write is being applied) or DONE with the
 * answer's bytes exactly as they were sent (signed, when the node has a
 * key).  A DONE entry lives ttl_ms from the moment its answer was stored.
 *
 *   handler                              table
 *   -------                              -----
 *   decode a write                       begin(key):
 *                                          DONE, not expired  -> HIT: the
 *                                            stored answer is sent again
 *                                          IN PROGRESS       -> BUSY
 *                                          absent / expired  -> NEW: an
 *                                            IN PROGRESS entry is inserted
 *   NEW: apply the write, encode         end(key, answer, keep):
 *                                          keep: the entry becomes DONE
 *                                            with a copy of the answer
 *                                          else: the entry is removed
 *
 * Why BUSY for a repeat in progress, not a wait.  Writes run on the
 * transport's thread; a UDP worker that waited for another worker's write
 * (which may wait for a DROP's drain, up to a class budget) would stall
 * every datagram behind it.  BUSY ("retry after a backoff") costs the
 * client one more round trip, and its next retry finds the DONE entry.
 * The first copy's own answer still goes to the same address.
 *
 * Layout.  S stripes (S = 16, fewer for small tables: one stripe under
 * 1024 entries, so eviction order is exact there), each with its own
 * mutex, a chained hash table of 2 x its entry budget buckets (allocated
 * at create) and a list of its entries in the order they were inserted or
 * finished (so DONE entries are ordered by expiry).  A stripe holds at
 * most ceil(entries / S) entries and ceil(bytes / S) bytes (an entry
 * costs sizeof(struct entry) + its answer).  Making room frees expired
 * entries from the list's head, then the oldest DONE ones; IN PROGRESS
 * entries are never evicted (they are moved to the tail), so begin() on a
 * stripe full of writes in progress refuses (QV_EBUSY).  Lookups also
 * check expiry, so an expired entry is never answered from.
 *
 * Cost.  begin / end: one stripe lock, O(1) expected, plus one qv_malloc
 * per stored answer.  Writes are not the UDP hot path; searches never
 * come here.
 */
#ifndef QUIVER_REPLAY_INT_H
#define QUIVER_REPLAY_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct qv_replay;

/* Who asked: the carrier, the client's address and port, the id. */
struct qv_replay_key {
    uint8_t carrier;                /* enum qv_proto_carrier */
    uint8_t family;                 /* AF_INET, AF_INET6, other: 0 */
    uint16_t port;                  /* network order, as received */
    uint8_t addr[16];               /* IPv4: the first 4 bytes */
    uint64_t request_id;
};

/* Build a key from a peer address (any family; unknown ones key on the
 * request id alone, with family 0).  Cannot fail. */
void qv__replay_key(struct qv_replay_key *k, int carrier, const struct sockaddr_storage *peer,
                    socklen_t peer_len, uint64_t request_id);

/* entries >= 1, bytes >= 4096, ttl_ms >= 1.  NULL with qv_errno QV_EINVAL
 * (the message names the field) or QV_ENOMEM. */
struct qv_replay *qv__replay_create(uint64_t entries, uint64_t bytes, uint64_t ttl_ms);
void qv__replay_free(struct qv_replay *r);      /* NULL: no-op */

enum qv_replay_verdict {
    QV_REPLAY_NEW = 0,              /* apply it; call end() afterwards */
    QV_REPLAY_HIT = 1,              /* *len bytes of the answer are in buf */
    QV_REPLAY_BUSY = 2,             /* the first copy is still being applied */
};

/*
 * qv__replay_begin - look key up at now (qv_now_ns clock).  Returns a
 * verdict (above), or QV_EBUSY (the stripe is full of writes in
 * progress: nothing inserted), QV_ENOMEM (nothing inserted), QV_ENOSPC
 * (a stored answer larger than cap: a programming error, the handler's
 * buffers are sized for every write answer).  Thread-safe.
 */
int qv__replay_begin(struct qv_replay *r, const struct qv_replay_key *key, int64_t now,
                     void *buf, size_t cap, size_t *len);

/*
 * qv__replay_end - after a NEW: keep != 0 stores len bytes of answer
 * (copied) and starts the entry's ttl at now; keep == 0 (no answer, or a
 * status that says nothing was applied) removes the entry, so a retry is
 * applied anew.  An entry that cannot be stored (no memory, larger than a
 * stripe's bytes) is removed.  Thread-safe; cannot fail.
 */
void qv__replay_end(struct qv_replay *r, const struct qv_replay_key *key, int64_t now,
                    const void *answer, size_t len, int keep);

struct qv_replay_stats {
    uint64_t hits;                  /* repeats answered from the table */
    uint64_t busy;                  /* repeats of a write in progress */
    uint64_t stored;                /* answers stored */
    uint64_t evictions;             /* DONE entries removed for room */
    uint64_t expirations;           /* removed past their ttl */
    uint64_t entries, bytes;        /* held now */
};
void qv__replay_stats(struct qv_replay *r, struct qv_replay_stats *out);

#endif
