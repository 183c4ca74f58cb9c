/* CPU kernels for the two image passes of selective Mixup and CutMix.
 *
 * Eager torch needs six passes to blend uint8 images (widen, widen, lerp,
 * round, narrow, gather); these do it in one. Loaded through ctypes by
 * taxaug/functional/_native.py, which falls back to the torch code when this
 * library was not built. Plain C with no Python or torch headers.
 *
 * mix_u8 reproduces torch's vectorised lerp exactly (fma on the small-weight
 * or large-weight side, then round half to even), so both paths give the
 * same bytes.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(_WIN32)
#define TAXAUG_EXPORT __declspec(dllexport)
#else
#define TAXAUG_EXPORT __attribute__((visibility("default")))
#include <pthread.h>
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define TAXAUG_X86 1
#include <immintrin.h>
#endif

#define MAX_THREADS 64

/* out = lerp(partner, own, w), as torch computes it, rounded half to even. */
static void mix_row_scalar(uint8_t *out, const uint8_t *own, const uint8_t *partner, int64_t n, float w) {
    const int small = fabsf(w) < 0.5f;
    const float coeff = small ? w : w - 1.0f;
    for (int64_t i = 0; i < n; i++) {
        const float o = own[i], p = partner[i];
        out[i] = (uint8_t)nearbyintf(fmaf(coeff, o - p, small ? p : o));
    }
}

#ifdef TAXAUG_X86
__attribute__((target("avx2,fma"))) static void mix_row_avx2(uint8_t *out, const uint8_t *own,
                                                              const uint8_t *partner, int64_t n, float w) {
    const int small = fabsf(w) < 0.5f;
    const __m256 coeff = _mm256_set1_ps(small ? w : w - 1.0f);
    const __m256i lane_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /* scalar up to a 32-byte boundary, then streaming stores: the batch is far larger than the
     * caches, so writing around them saves reading each output line in first */
    int64_t i = (int64_t)((32 - ((uintptr_t)out & 31)) & 31);
    if (i > n) i = n;
    mix_row_scalar(out, own, partner, i, w);
    for (; i + 32 <= n; i += 32) {
        __m256i rounded[4];
        for (int k = 0; k < 4; k++) {
            const __m256 o = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(own + i + 8 * k))));
            const __m256 p =
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(partner + i + 8 * k))));
            /* cvtps rounds with the default MXCSR mode: to nearest, ties to even. */
            rounded[k] = _mm256_cvtps_epi32(_mm256_fmadd_ps(coeff, _mm256_sub_ps(o, p), small ? p : o));
        }
        const __m256i words_lo = _mm256_packus_epi32(rounded[0], rounded[1]);
        const __m256i words_hi = _mm256_packus_epi32(rounded[2], rounded[3]);
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words_lo, words_hi), lane_order);
        _mm256_stream_si256((__m256i *)(out + i), bytes);
    }
    _mm_sfence();
    mix_row_scalar(out + i, own + i, partner + i, n - i, w);
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

typedef void (*mix_row_fn)(uint8_t *, const uint8_t *, const uint8_t *, int64_t, float);

static mix_row_fn pick_mix_row(void) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return mix_row_avx2;
#endif
    return mix_row_scalar;
}

/* One call of a kernel: the threads take chunks of samples from a shared counter, so a thread
 * that the OS holds back does not leave the others waiting on a fixed half of the batch. */
typedef struct {
    int kind; /* 0 = mix, 1 = paste */
    uint8_t *out;
    const uint8_t *images;
    const int64_t *perm;
    const float *weights;
    const int64_t *boxes;
    int64_t batch, chunk;
    int64_t *next;
    int64_t sample_bytes;
    int64_t channels, height, width, elem_size;
    int channels_last;
    mix_row_fn mix_row;
} job_t;

static void run_mix(const job_t *job, int64_t first, int64_t last) {
    for (int64_t i = first; i < last; i++) {
        uint8_t *dst = job->out + i * job->sample_bytes;
        const uint8_t *own = job->images + i * job->sample_bytes;
        const uint8_t *partner = job->images + job->perm[i] * job->sample_bytes;
        if (job->perm[i] == i)
            memcpy(dst, own, (size_t)job->sample_bytes);
        else
            job->mix_row(dst, own, partner, job->sample_bytes, job->weights[i]);
    }
}

/* out[i] = images[i] with box (y1, x1, y2, x2) taken from images[perm[i]]. */
static void run_paste(const job_t *job, int64_t first, int64_t last) {
    const int64_t es = job->elem_size, c = job->channels, h = job->height, w = job->width;
    for (int64_t i = first; i < last; i++) {
        uint8_t *dst = job->out + i * job->sample_bytes;
        const uint8_t *own = job->images + i * job->sample_bytes;
        const uint8_t *partner = job->images + job->perm[i] * job->sample_bytes;
        const int64_t *box = job->boxes + 4 * i;
        const int64_t y1 = box[0], x1 = box[1], y2 = box[2], x2 = box[3];
        memcpy(dst, own, (size_t)job->sample_bytes);
        if (job->perm[i] == i || y2 <= y1 || x2 <= x1) continue;
        if (job->channels_last) { /* (H, W, C): one run of (x2 - x1) * C elements per row */
            const int64_t run = (x2 - x1) * c * es;
            for (int64_t y = y1; y < y2; y++) {
                const int64_t offset = (y * w + x1) * c * es;
                memcpy(dst + offset, partner + offset, (size_t)run);
            }
        } else { /* (C, H, W): one run of (x2 - x1) elements per row and plane */
            const int64_t run = (x2 - x1) * es;
            for (int64_t plane = 0; plane < c; plane++)
                for (int64_t y = y1; y < y2; y++) {
                    const int64_t offset = ((plane * h + y) * w + x1) * es;
                    memcpy(dst + offset, partner + offset, (size_t)run);
                }
        }
    }
}

static void run_job(const job_t *job) {
    for (;;) {
        const int64_t first = __atomic_fetch_add(job->next, job->chunk, __ATOMIC_RELAXED);
        if (first >= job->batch) return;
        const int64_t last = first + job->chunk < job->batch ? first + job->chunk : job->batch;
        if (job->kind == 0)
            run_mix(job, first, last);
        else
            run_paste(job, first, last);
    }
}

#ifndef _WIN32
static void *thread_main(void *arg) {
    run_job((const job_t *)arg);
    return NULL;
}
#endif

/* Runs the job on `threads` threads, the calling thread among them. */
static int run_parallel(job_t job, int64_t batch, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > batch) threads = (int)(batch > 0 ? batch : 1);
#ifdef _WIN32
    threads = 1;
#endif
    int64_t next = 0;
    job.batch = batch;
    job.next = &next;
    job.chunk = batch / (4 * threads) > 1 ? batch / (4 * threads) : 1; /* about four chunks a thread */
#ifndef _WIN32
    pthread_t handles[MAX_THREADS];
    int started = 0;
    for (int t = 0; t < threads - 1; t++) {
        if (pthread_create(&handles[t], NULL, thread_main, &job) != 0) break; /* the rest runs here */
        started++;
    }
    run_job(&job);
    for (int t = 0; t < started; t++) pthread_join(handles[t], NULL);
#else
    run_job(&job);
#endif
    return 0;
}

TAXAUG_EXPORT int taxaug_mix_u8(uint8_t *out, const uint8_t *images, const int64_t *perm, const float *weights,
                                int64_t batch, int64_t sample_bytes, int threads) {
    const job_t job = {.kind = 0, .out = out, .images = images, .perm = perm, .weights = weights,
                       .sample_bytes = sample_bytes, .mix_row = pick_mix_row()};
    return run_parallel(job, batch, threads);
}

TAXAUG_EXPORT int taxaug_paste_boxes(uint8_t *out, const uint8_t *images, const int64_t *perm, const int64_t *boxes,
                                     int64_t batch, int64_t channels, int64_t height, int64_t width,
                                     int64_t elem_size, int channels_last, int threads) {
    const job_t job = {.kind = 1, .out = out, .images = images, .perm = perm, .boxes = boxes,
                       .channels = channels, .height = height, .width = width, .elem_size = elem_size,
                       .channels_last = channels_last, .sample_bytes = channels * height * width * elem_size};
    return run_parallel(job, batch, threads);
}

/* Reports which row kernel this CPU gets, for benchmarks and bug reports. */
TAXAUG_EXPORT const char *taxaug_kernel_isa(void) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return "avx2";
#endif
    return "scalar";
}
