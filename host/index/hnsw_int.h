/*
 * hnsw_int.h - internal: the layout of an HNSW index, in memory and on disk.
 *
 * The graph.  Every vector is a node on level 0; a node drawn at level L
 * (L = floor(-ln(u) / ln(M)), u uniform in (0, 1], from a hash of the seed
 * and the row, so levels do not depend on thread timing) is also on levels
 * 1..L.  A search enters at the one node of the top level, descends
 * greedily to level 1, then runs a best-first search with ef candidates on
 * level 0.  Level 0 links to at most M0 = 2 M neighbours, upper levels to
 * at most M; neighbours are chosen with the diversity heuristic (a
 * candidate is kept only when it is nearer to the new node than to every
 * neighbour kept before it), as in Malkov & Yashunin, 2016.
 *
 * The region.  All of an index except its tombstones is one region made
 * of sections, each starting on a 4096-byte boundary; saving writes the
 * same sections through ixfile.h, and loading maps the file and points the
 * index at them: nothing holds a pointer, every reference is a 32-bit node
 * number or a slot number.  Nodes are numbered in graph order (BFS over
 * level 0 from the entry point, which becomes node 0), so a node's
 * neighbours are mostly numbered near it and their vectors share pages
 * and cache lines with the ones just computed.
 *
 *   TAG   SIZE (bytes)               MEANING
 *   HNSH  sizeof(struct hnsw_hdr)    parameters and counts (below)
 *   VECS  n * dim_pad * 4            float32 vectors by node; dim_pad =
 *                                    dim rounded up to 16 (zeros after
 *                                    dim), so each vector starts a cache
 *                                    line and the kernels need no tail
 *   LNK0  n * stride0 * 4            level-0 slot of each node: u32 count,
 *                                    then count u32 neighbour nodes;
 *                                    stride0 = M0 + 1 rounded up to 4
 *   LNKU  upper_slots * strideu * 4  upper-level slots (count + M nodes;
 *                                    strideu = M + 1 rounded up to 4);
 *                                    node v's level l >= 1 is slot
 *                                    uoff[v] + l - 1
 *   UOFF  n * 4                      first upper slot of each node (0 when
 *                                    the node is on level 0 only)
 *   LEVL  n                          level of each node (u8)
 *   IDS_  n * 8                      user id of each node
 *   N2R_  n * 4                      node -> row (row = build order)
 *   R2N_  n * 4                      row -> node
 *   IDSO  n * 16                     (u64 id, u32 node, u32 0) sorted by id:
 *                                    id lookups by binary search, so a
 *                                    loaded file needs no hash rebuild
 *   TOMB  ceil(n / 64) * 8           tombstones by node (file only; in
 *                                    memory they are a private, writable
 *                                    copy)
 *
 * struct hnsw_hdr (HNSH), all little-endian:
 *   OFFSET SIZE MEANING
 *   0      4    magic "HNSW" (QV_FOURCC)
 *   4      4    layout version (HNSW_LAYOUT_VERSION)
 *   8      4    dim            12  4  dim_pad
 *   16     4    metric         20  4  M
 *   24     4    M0             28  4  ef_construction
 *   32     4    ef_search      36  4  n
 *   40     4    entry node     44  4  max_level
 *   48     4    stride0        52  4  strideu
 *   56     8    upper_slots    64  8  seed
 *   72     8    flat_below (double)
 *   80     8    level-0 links in use
 *
 * Build.  Levels and upper slots are assigned before any insertion, so the
 * whole build region is allocated up front and insertion never allocates.
 * Node 0 (row 0) seeds the graph; rows 1..n-1 are inserted by the pool's
 * workers in chunks claimed in row order.  Each node has a one-byte spin
 * lock: a worker holds it while it copies the node's list out (searching)
 * or rewrites it (linking); no worker holds two locks, so there is no lock
 * order to get wrong.  The entry point and top level are one 64-bit atomic
 * word; a node drawn above the top level holds the global mutex for its
 * whole insertion, as it becomes the new entry point.  With one worker the
 * locks are skipped.  After all insertions, the graph is renumbered into
 * the final region (BFS order) and the build region is released.
 *
 * Search.  Upper levels: greedy descent.  Level 0, no filter and no
 * tombstones: a sorted candidate list of ef entries (distance, node | the
 * "expanded" bit 31); the nearest unexpanded entry is expanded next, new
 * candidates are put in place by binary search and a memmove of at most ef
 * entries; the search ends when every entry is expanded.  This keeps the
 * same set as the two-heap formulation and is a single array walked in
 * order.  With a filter or tombstones: a min-heap of candidates and a
 * max-heap of at most ef eligible results; every node is walked through,
 * only eligible ones enter the results.  Before computing distances of an
 * expanded node's neighbours, the unvisited ones are collected and their
 * vectors' first lines prefetched; while neighbour i is computed, the rest
 * of neighbour i+1 is prefetched.  Visited sets are 16-bit epoch tags per
 * node in the scratch slot: a new query bumps the epoch, and clears the
 * array only when the epoch wraps (every 65535 queries).
 */
#ifndef QV_HNSW_INT_H
#define QV_HNSW_INT_H

#include <stdint.h>

#include "quiver/ixfile.h"

#define HNSW_LAYOUT_VERSION 1u
#define HNSW_MAGIC QV_FOURCC('H', 'N', 'S', 'W')
#define HNSW_MAX_LEVEL 30u
#define HNSW_EXPANDED 0x80000000u

#define HNSW_TAG_HDR  QV_FOURCC('H', 'N', 'S', 'H')
#define HNSW_TAG_VECS QV_FOURCC('V', 'E', 'C', 'S')
#define HNSW_TAG_LNK0 QV_FOURCC('L', 'N', 'K', '0')
#define HNSW_TAG_LNKU QV_FOURCC('L', 'N', 'K', 'U')
#define HNSW_TAG_UOFF QV_FOURCC('U', 'O', 'F', 'F')
#define HNSW_TAG_LEVL QV_FOURCC('L', 'E', 'V', 'L')
#define HNSW_TAG_IDS  QV_FOURCC('I', 'D', 'S', '_')
#define HNSW_TAG_N2R  QV_FOURCC('N', '2', 'R', '_')
#define HNSW_TAG_R2N  QV_FOURCC('R', '2', 'N', '_')
#define HNSW_TAG_IDSO QV_FOURCC('I', 'D', 'S', 'O')
#define HNSW_TAG_TOMB QV_FOURCC('T', 'O', 'M', 'B')

struct hnsw_hdr {
    uint32_t magic;
    uint32_t version;
    uint32_t dim;
    uint32_t dim_pad;
    uint32_t metric;
    uint32_t M;
    uint32_t M0;
    uint32_t ef_construction;
    uint32_t ef_search;
    uint32_t n;
    uint32_t entry;
    uint32_t max_level;
    uint32_t stride0;
    uint32_t strideu;
    uint64_t upper_slots;
    uint64_t seed;
    double flat_below;
    uint64_t links0;
};

struct hnsw_idpair {
    uint64_t id;
    uint32_t node;
    uint32_t zero;
};

/* The arrays of a graph: the final region's sections, or during build the
 * build region (nodes = rows). */
struct hnsw_graph {
    float *vecs;
    uint32_t *lnk0;
    uint32_t *lnku;
    uint32_t *uoff;
    uint8_t *level;
    uint32_t n;
    uint32_t dim_pad;
    uint32_t stride0;
    uint32_t strideu;
};

#endif
