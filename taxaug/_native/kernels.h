/* Shared parts of taxaug's CPU kernels: one library, built by setup.py from the .c files beside
 * this header and loaded through ctypes by taxaug/_native/__init__.py, which runs the torch code
 * instead when it was not built. Plain C, no Python or torch headers.
 *
 * - mix.c: the Mixup blend (uint8, float32) and the CutMix paste;
 * - pointwise.c: the policies' per-pixel ops;
 * - warp.c: the nearest-neighbour affine warp;
 * - pairing.c: ingroup_permutation's pairing;
 * - topk.c: RankMetrics' per-row top-k;
 * - parallel.c: the job runner (torch's OpenMP pool, or threads of its own) and CPU checks.
 *
 * Every kernel reproduces the float arithmetic of the torch code operation by operation (built with
 * -ffp-contract=off), so both paths give the same bytes.
 */
#ifndef TAXAUG_KERNELS_H
#define TAXAUG_KERNELS_H

#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define TAXAUG_EXPORT __declspec(dllexport)
#define TAXAUG_INTERNAL
#else
#define TAXAUG_EXPORT __attribute__((visibility("default")))
#define TAXAUG_INTERNAL __attribute__((visibility("hidden"))) /* shared by the .c files, not exported */
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define TAXAUG_X86 1
#include <immintrin.h>
#endif

#define MAX_THREADS 64

/* An AVX2 build of a function beside the baseline one, picked when the library loads. */
#if defined(TAXAUG_X86) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define TAXAUG_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef TAXAUG_CLONES
#define TAXAUG_CLONES
#endif

typedef void (*mix_row_fn)(uint8_t *, const uint8_t *, const uint8_t *, int64_t, float);
typedef void (*copy_fn)(uint8_t *, const uint8_t *, int64_t);

#define TOPK_MAX 64 /* the largest k taxaug_topk takes */

/* A taxaug_topk call: see topk.c. */
typedef struct {
    const void *const *mats;
    const int64_t *widths, *strides, *counts;
    int64_t rows, k, skip;
    int is_double;
    int64_t *out;
} topk_job_t;

/* One call of a kernel: the threads take chunks of samples from a shared counter, so a thread
 * that the OS holds back does not leave the others waiting on a fixed half of the batch. */
typedef struct {
    int kind; /* 0 = mix, 1 = paste, 2 = pointwise, 3 = warp, 4 = topk */
    uint8_t *out;
    const uint8_t *images;
    const int64_t *perm;
    const float *weights;
    const int64_t *boxes;
    int64_t batch, chunk;           /* items to share out (samples, or byte ranges for mix) */
    int64_t batch_size;             /* mix: samples in the batch */
    int64_t segment_len;            /* mix: samples of `rows` per job item */
    int64_t *next;
    int64_t sample_bytes;
    int64_t channels, height, width, elem_size;
    int channels_last;
    mix_row_fn mix_row;
    copy_fn copy;                   /* paste: the row copy this CPU gets */
    int op, is_float;               /* pointwise: which op, on uint8 or float32 samples */
    const int64_t *rows;            /* pointwise: the samples to transform (index into the batch) */
    const float *param, *param2;    /* pointwise: per listed sample */
    int64_t plane;                  /* pointwise: H * W */
    const double *data;             /* warp: (n_rows, 6) Pillow affine data per listed sample */
    const uint8_t *fill;            /* warp: one element per channel */
    const topk_job_t *topk;         /* topk: the whole call */
    int failed;                     /* set by a thread that could not do its part */
} job_t;

/* Whether this CPU has AVX2 and FMA (x86-64 only). */
TAXAUG_INTERNAL int cpu_has_avx2(void);

/* Runs the job's `batch` items on `threads` threads, the calling thread among them; -1 if a thread
 * could not do its part. */
TAXAUG_INTERNAL int run_parallel(job_t job, int64_t batch, int threads);

/* The per-kind item runners that run_parallel dispatches to. */
TAXAUG_INTERNAL void run_mix(const job_t *job, int64_t first, int64_t last);
TAXAUG_INTERNAL void run_paste(const job_t *job, int64_t first, int64_t last);
TAXAUG_INTERNAL void run_pointwise(job_t *job, int64_t first, int64_t last);
TAXAUG_INTERNAL void run_warp(job_t *job, int64_t first, int64_t last);
TAXAUG_INTERNAL void run_topk(const job_t *job, int64_t first, int64_t last);

#endif
