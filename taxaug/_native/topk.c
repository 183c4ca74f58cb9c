/* Top-k of score rows for RankMetrics: for each row of each matrix, the k best columns, best first,
 * one column (the null class) left out. One pass over the row: a block of 16 scores is looked at
 * one by one only when one of them beats the k-th best so far, which after the first blocks is
 * rare, so the pass runs at about the speed memory delivers the scores.
 *
 * Order as a stable descending torch.sort: larger first, NaN above every number; ties (equal scores,
 * or two NaNs) go to the lower column. */
#include "kernels.h"

#define TOPK_BLOCK 16

/* The best `count` scores seen so far, best first (floats are held as doubles: exact, same order). */
typedef struct {
    double vals[TOPK_MAX];
    int64_t cols[TOPK_MAX];
    int64_t n, count;
} best_t;

/* Whether score x, seen after `best` (so at a higher column), goes before it. */
static inline int beats(double x, double best) { return isnan(x) ? !isnan(best) : x > best; }

static inline void best_add(best_t *b, double x, int64_t column) {
    int64_t at;
    if (b->n < b->count)
        at = b->n++;
    else if (beats(x, b->vals[b->count - 1]))
        at = b->count - 1;
    else
        return;
    for (; at > 0 && beats(x, b->vals[at - 1]); at--) {
        b->vals[at] = b->vals[at - 1];
        b->cols[at] = b->cols[at - 1];
    }
    b->vals[at] = x;
    b->cols[at] = column;
}

/* Whether any of the 16 scores at x is not <= thr (beats it, or is NaN): eight-lane compares (GCC
 * vector extensions; two SSE halves in the baseline build, AVX in the avx2 clone of the caller). */
typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int64_t i64x4 __attribute__((vector_size(32)));

static inline int lanes_all_set(const void *mask) {
    int64_t lanes[4];
    memcpy(lanes, mask, sizeof lanes);
    return (lanes[0] & lanes[1] & lanes[2] & lanes[3]) == -1;
}

static inline int block_hit_f32(const float *x, float thr) {
    f32x8 a, b;
    memcpy(&a, x, sizeof a);
    memcpy(&b, x + 8, sizeof b);
    const f32x8 t = (f32x8){0} + thr;
    const i32x8 below = (a <= t) & (b <= t);
    return !lanes_all_set(&below);
}

static inline int block_hit_f64(const double *x, double thr) {
    f64x4 v[4];
    memcpy(v, x, sizeof v);
    const f64x4 t = (f64x4){0} + thr;
    const i64x4 below = (v[0] <= t) & (v[1] <= t) & (v[2] <= t) & (v[3] <= t);
    return !lanes_all_set(&below);
}

/* Adds columns lo .. hi - 1 of row x; a block is looked at column by column only when it has a hit. */
#define DEFINE_SCAN(NAME, T, HIT)                                                             \
    TAXAUG_CLONES static void NAME(best_t *b, const T *x, int64_t lo, int64_t hi) {         \
        int64_t j = lo;                                                                       \
        for (; j < hi && b->n < b->count; j++) best_add(b, x[j], j);                          \
        T thr = (T)b->vals[b->n == b->count ? b->count - 1 : 0]; /* only read once the list is full */ \
        for (; j + TOPK_BLOCK <= hi; j += TOPK_BLOCK) {                                       \
            if (!HIT(x + j, thr)) continue;                                                   \
            for (int q = 0; q < TOPK_BLOCK; q++)                                              \
                if (!(x[j + q] <= thr)) {                                                     \
                    best_add(b, x[j + q], j + q);                                             \
                    thr = (T)b->vals[b->count - 1];                                           \
                }                                                                             \
        }                                                                                     \
        for (; j < hi; j++) best_add(b, x[j], j);                                             \
    }

DEFINE_SCAN(scan_f32, float, block_hit_f32)
DEFINE_SCAN(scan_f64, double, block_hit_f64)

/* Row r of matrix m into out[m, r, :]: its best `counts[m]` columns, then the best one again in the
 * slots a short row leaves (the only column, the skipped one, where a row has no other). */
static void topk_row(const topk_job_t *t, int64_t m, int64_t r) {
    best_t b = {.n = 0, .count = t->counts[m]};
    const int64_t width = t->widths[m], skip = t->skip < width ? t->skip : width;
    if (t->is_double) {
        const double *x = (const double *)t->mats[m] + r * t->strides[m];
        scan_f64(&b, x, 0, skip);
        scan_f64(&b, x, skip + 1, width);
    } else {
        const float *x = (const float *)t->mats[m] + r * t->strides[m];
        scan_f32(&b, x, 0, skip);
        scan_f32(&b, x, skip + 1, width);
    }
    int64_t *out = t->out + (m * t->rows + r) * t->k;
    for (int64_t s = 0; s < t->k; s++) out[s] = b.n ? b.cols[s < b.n ? s : 0] : skip;
}

void run_topk(const job_t *job, int64_t first, int64_t last) {
    const topk_job_t *t = job->topk;
    for (int64_t item = first; item < last; item++) topk_row(t, item / t->rows, item % t->rows);
}

/* out (n_mats, rows, k) int64 := per row of each (rows, widths[m]) matrix mats[m] (float32, or
 * float64 with `is_double`; row r starts strides[m] elements after row r - 1, columns adjacent) the
 * best counts[m] columns other than `skip`, best first, then the best again to fill k slots.
 * -1 unless 1 <= counts[m] <= k <= TOPK_MAX. */
TAXAUG_EXPORT int taxaug_topk(int64_t *out, const void *const *mats, const int64_t *widths, const int64_t *strides,
                              const int64_t *counts, int64_t n_mats, int64_t rows, int64_t k, int64_t skip,
                              int is_double, int threads) {
    if (k < 1 || k > TOPK_MAX) return -1;
    for (int64_t m = 0; m < n_mats; m++)
        if (counts[m] < 1 || counts[m] > k) return -1;
    const topk_job_t t = {.mats = mats, .widths = widths, .strides = strides, .counts = counts, .rows = rows,
                          .k = k, .skip = skip, .is_double = is_double, .out = out};
    job_t job = {.kind = 4, .topk = &t};
    return run_parallel(job, n_mats * rows, threads);
}
