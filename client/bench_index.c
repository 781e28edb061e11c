/*
 * bench_index.c - the table of index types `quiverbench offline` knows.
 * Each entry lives in client/bench_index_<name>.c (see bench_index.h).
 */
#include <string.h>

#include "bench_index.h"

extern const struct qv_bench_index qv__bench_index_ivf;
extern const struct qv_bench_index qv__bench_index_sq8;
extern const struct qv_bench_index qv__bench_index_ivfpq;
extern const struct qv_bench_index qv__bench_index_hnsw;

const struct qv_bench_index *const qv__bench_indexes[] = {
    &qv__bench_index_flat,
    &qv__bench_index_ivf,
    &qv__bench_index_sq8,
    &qv__bench_index_ivfpq,
    &qv__bench_index_hnsw,
    NULL,
};

const struct qv_bench_index *qv__bench_index_find(const char *name)
{
    for (int i = 0; qv__bench_indexes[i]; i++)
        if (strcmp(qv__bench_indexes[i]->name, name) == 0)
            return qv__bench_indexes[i];
    return NULL;
}
