/*
 * test_filter.c - predicates evaluate to the same bitmap as a row-by-row
 * model, on random attributes and random predicate trees; the parser
 * builds the trees it should and names the position of an error; bad
 * trees are refused; the estimate tracks the true selectivity.
 */
#include <CUnit/Basic.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/filter.h"

#define ROWS 5000

static int64_t col_color[ROWS], col_size[ROWS], col_price[ROWS];
static struct qv_attrs attrs;

static uint64_t rng = 0x5eed5eed5eedULL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int init(void)
{
    for (int i = 0; i < ROWS; i++) {
        col_color[i] = (int64_t)(next() % 8);
        col_size[i] = (int64_t)(next() % 100) - 50;
        col_price[i] = (int64_t)(next() % 100000);
    }
    attrs.nattrs = 3;
    attrs.names[0] = "color";
    attrs.names[1] = "size";
    attrs.names[2] = "price";
    attrs.cols[0] = col_color;
    attrs.cols[1] = col_size;
    attrs.cols[2] = col_price;
    attrs.rows = ROWS;
    return 0;
}

static int model(const struct qv_pred *p, uint32_t node, uint64_t r)
{
    const struct qv_pred_node *n = &p->nodes[node];
    int64_t v;
    switch (n->op) {
    case QV_PRED_EQ: return attrs.cols[n->attr][r] == n->lo;
    case QV_PRED_RANGE: v = attrs.cols[n->attr][r]; return v >= n->lo && v <= n->hi;
    case QV_PRED_IN:
        for (uint32_t i = 0; i < n->nset; i++)
            if (attrs.cols[n->attr][r] == n->set[i])
                return 1;
        return 0;
    case QV_PRED_NOT: return !model(p, n->left, r);
    case QV_PRED_AND: return model(p, n->left, r) && model(p, n->right, r);
    case QV_PRED_OR: return model(p, n->left, r) || model(p, n->right, r);
    }
    return -1;
}

static int check_against_model(const struct qv_pred *p)
{
    uint64_t bm[(ROWS + 63) / 64];
    uint64_t count = 0, want = 0;
    memset(bm, 0xA5, sizeof bm);
    if (qv_filter_eval(p, &attrs, bm, &count) != 0)
        return 0;
    for (uint64_t r = 0; r < ROWS; r++) {
        int m = model(p, p->root, r);
        want += (uint64_t)m;
        if (((bm[r / 64] >> (r % 64)) & 1) != (uint64_t)m)
            return 0;
    }
    /* bits past the last row are clear */
    if (ROWS % 64 && (bm[ROWS / 64] >> (ROWS % 64)) != 0)
        return 0;
    return count == want;
}

static int64_t sets[64][8];

/* a random tree of up to `budget` nodes, children before parents */
static uint32_t random_tree(struct qv_pred *p, int budget)
{
    uint32_t i;
    if (budget <= 1 || next() % 3 == 0) {
        struct qv_pred_node n = { .attr = (uint32_t)(next() % 3) };
        int64_t span = n.attr == 0 ? 8 : n.attr == 1 ? 100 : 100000;
        int64_t base = n.attr == 1 ? -50 : 0;
        switch (next() % 3) {
        case 0:
            n.op = QV_PRED_EQ;
            n.lo = base + (int64_t)(next() % (uint64_t)span);
            break;
        case 1:
            n.op = QV_PRED_RANGE;
            n.lo = base + (int64_t)(next() % (uint64_t)span);
            n.hi = n.lo + (int64_t)(next() % (uint64_t)span);
            break;
        default:
            n.op = QV_PRED_IN;
            n.nset = 1 + (uint32_t)(next() % 8);
            for (uint32_t k = 0; k < n.nset; k++)
                sets[p->nnodes][k] = base + (int64_t)(next() % (uint64_t)span);
            n.set = sets[p->nnodes];
            break;
        }
        i = p->nnodes++;
        p->nodes[i] = n;
        return i;
    }
    uint32_t kind = (uint32_t)(next() % 3);
    uint32_t l = random_tree(p, budget / 2);
    struct qv_pred_node n = { .left = l };
    if (kind == 2) {
        n.op = QV_PRED_NOT;
    } else {
        n.op = kind ? QV_PRED_OR : QV_PRED_AND;
        n.right = random_tree(p, budget / 2);
    }
    i = p->nnodes++;
    p->nodes[i] = n;
    return i;
}

static void test_random_trees(void)
{
    int ok = 1;
    for (int t = 0; t < 300; t++) {
        struct qv_pred p;
        memset(&p, 0, sizeof p);
        p.root = random_tree(&p, 12);
        CU_ASSERT_EQUAL_FATAL(qv_pred_validate(&p, &attrs), 0);
        if (!check_against_model(&p))
            ok = 0;
    }
    CU_ASSERT_TRUE(ok);
}

static void test_parse(void)
{
    struct qv_pred p;
    int64_t store[64];
    CU_ASSERT_EQUAL(qv_pred_parse("color = 3", &attrs, &p, store, 64), 0);
    CU_ASSERT_EQUAL(p.nnodes, 1);
    CU_ASSERT_EQUAL(p.nodes[0].op, QV_PRED_EQ);
    CU_ASSERT_TRUE(check_against_model(&p));
    CU_ASSERT_EQUAL(qv_pred_parse("color = 3 and (size in (1, 2, -5) or not price "
                                  "between 10 and 20000)", &attrs, &p, store, 64), 0);
    CU_ASSERT_EQUAL(p.nodes[p.root].op, QV_PRED_AND);
    CU_ASSERT_TRUE(check_against_model(&p));
    CU_ASSERT_EQUAL(qv_pred_parse("size < 0 or size >= 40 AND color != 2", &attrs, &p,
                                  store, 64), 0);
    CU_ASSERT_EQUAL(p.nodes[p.root].op, QV_PRED_OR);      /* and binds tighter */
    CU_ASSERT_TRUE(check_against_model(&p));
    /* every row: size < 0 must match the model of RANGE(MIN, -1) */
    CU_ASSERT_EQUAL(qv_pred_parse("size<0", &attrs, &p, store, 64), 0);
    CU_ASSERT_EQUAL(p.nodes[0].hi, -1);

    CU_ASSERT_EQUAL(qv_pred_parse("colour = 3", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "position 1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "attribute"));
    CU_ASSERT_EQUAL(qv_pred_parse("color = ", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "integer"));
    CU_ASSERT_EQUAL(qv_pred_parse("color = 1 and", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pred_parse("(color = 1", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "')'"));
    CU_ASSERT_EQUAL(qv_pred_parse("color = 1 color = 2", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pred_parse("size between 5 and 1", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pred_parse("color in (1, 2", &attrs, &p, store, 64), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pred_parse("color in (1, 2, 3)", &attrs, &p, store, 2), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pred_parse("price = 99999999999999999999", &attrs, &p, store, 64),
                    QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pred_parse("color ~ 1", &attrs, &p, store, 64), QV_EINVAL);
}

static void test_validate(void)
{
    struct qv_pred p;
    memset(&p, 0, sizeof p);
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);      /* no nodes */
    p.nnodes = 1;
    p.nodes[0] = (struct qv_pred_node){ .op = QV_PRED_EQ, .attr = 7 };
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "attribute 7"));
    p.nodes[0] = (struct qv_pred_node){ .op = QV_PRED_RANGE, .attr = 0, .lo = 5, .hi = 1 };
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);
    p.nodes[0] = (struct qv_pred_node){ .op = QV_PRED_AND, .left = 0, .right = 0 };
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);      /* self cycle */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "before its parent"));
    p.nodes[0] = (struct qv_pred_node){ .op = QV_PRED_IN, .attr = 0, .nset = 1000,
                                        .set = sets[0] };
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);
    p.nodes[0] = (struct qv_pred_node){ .op = (enum qv_pred_op)42 };
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);
    p.nodes[0] = (struct qv_pred_node){ .op = QV_PRED_EQ, .attr = 0 };
    p.root = 3;
    CU_ASSERT_EQUAL(qv_pred_validate(&p, &attrs), QV_EINVAL);
    uint64_t bm[(ROWS + 63) / 64];
    CU_ASSERT_EQUAL(qv_filter_eval(&p, &attrs, bm, NULL), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_filter_estimate(&p, &attrs), 1.0);
}

static void test_estimate_and_enomem(void)
{
    struct qv_pred p;
    int64_t store[8];
    uint64_t bm[(ROWS + 63) / 64], count;
    CU_ASSERT_EQUAL(qv_pred_parse("price < 10000 and color in (1, 2)", &attrs, &p, store, 8), 0);
    CU_ASSERT_EQUAL(qv_filter_eval(&p, &attrs, bm, &count), 0);
    double truth = (double)count / ROWS, est = qv_filter_estimate(&p, &attrs);
    CU_ASSERT_TRUE(est > truth - 0.03 && est < truth + 0.03);
    qv_alloc_fail_after(0);
    CU_ASSERT_EQUAL(qv_filter_eval(&p, &attrs, bm, &count), QV_ENOMEM);
    qv_alloc_fail_after(1);
    CU_ASSERT_EQUAL(qv_filter_eval(&p, &attrs, bm, &count), QV_ENOMEM);
    qv_alloc_fail_after(-1);
    struct qv_mem_stats st;
    qv_mem_stats(QV_MEM_INDEX, &st);
    CU_ASSERT_EQUAL(st.live_blocks, 0);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("filter", init, NULL);
    CU_add_test(s, "random predicate trees equal a row-by-row model", test_random_trees);
    CU_add_test(s, "parser: trees, precedence and error positions", test_parse);
    CU_add_test(s, "invalid trees are refused with a message", test_validate);
    CU_add_test(s, "estimate tracks selectivity; ENOMEM clean", test_estimate_and_enomem);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
