/*
 * kmeans.h - k-means clustering for coarse quantisers and codebooks.
 *
 * k-means++ seeding, then Lloyd iterations whose assignment step runs on
 * the batched scan kernel (dist.h) over the centroids; a centroid that
 * ends an iteration empty is repaired by splitting the largest cluster
 * (its centroid is copied and both are nudged apart by a small symmetric
 * perturbation).  Training uses a sample of at most max_points points
 * (chosen with the seed); the same inputs and seed give the same
 * centroids on any machine and any thread count.
 */
#ifndef QUIVER_KMEANS_H
#define QUIVER_KMEANS_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_pool;

struct qv_kmeans_opts {
    uint32_t k;                 /* clusters, >= 1 */
    uint32_t dim;
    uint32_t iters;             /* Lloyd iterations; 0 = 20 */
    uint64_t seed;
    size_t max_points;          /* training sample; 0 = 256 * k */
    enum qv_metric metric;      /* L2, or IP (spherical: centroids
                                   renormalised after each update) */
    struct qv_pool *pool;       /* borrowed; NULL = caller's thread */
};

/* Train on n points (n x dim, row-major) into centroids (k x dim,
 * caller's memory).  Returns 0, QV_EINVAL (n < k, k == 0, dim == 0),
 * QV_ENOMEM.  Reports the final objective (sum of squared distances of
 * the sample) in *objective when not NULL. */
int qv_kmeans_train(const struct qv_kmeans_opts *o, const float *x, size_t n,
                    float *centroids, double *objective);

/* Nearest centroid of each of n points (L2; IP: largest dot) into
 * assign[n], optionally its distance into dist[n] (NULL allowed).
 * Returns 0 or QV_ENOMEM. */
int qv_kmeans_assign(const float *centroids, uint32_t k, uint32_t dim,
                     enum qv_metric metric, const float *x, size_t n,
                     uint32_t *assign, float *dist, struct qv_pool *pool);

#endif
