/* The Mixup blend and the CutMix paste.
 *
 * The blend reproduces torch's vectorised lerp exactly (one fma on the small-weight or the
 * large-weight side; uint8 then rounds half to even), so both paths give the same bytes. Eager
 * torch needs six passes to blend uint8 images (widen, widen, lerp, round, narrow, gather); this
 * is one.
 */
#include "kernels.h"

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

#endif

/* The same lerp on float32 rows (n counts bytes): torch's float kernel, one fma per element. */
static void mix_row_f32_scalar(uint8_t *out_bytes, const uint8_t *own_bytes, const uint8_t *partner_bytes, int64_t n,
                               float w) {
    float *out = (float *)out_bytes;
    const float *own = (const float *)own_bytes, *partner = (const float *)partner_bytes;
    const int small = fabsf(w) < 0.5f;
    const float coeff = small ? w : w - 1.0f;
    for (int64_t i = 0; i < n / 4; i++) out[i] = fmaf(coeff, own[i] - partner[i], small ? partner[i] : own[i]);
}

#ifdef TAXAUG_X86
__attribute__((target("avx2,fma"))) static void mix_row_f32_avx2(uint8_t *out_bytes, const uint8_t *own_bytes,
                                                                  const uint8_t *partner_bytes, int64_t n, float w) {
    float *out = (float *)out_bytes;
    const float *own = (const float *)own_bytes, *partner = (const float *)partner_bytes;
    const int64_t count = n / 4;
    const int small = fabsf(w) < 0.5f;
    const __m256 coeff = _mm256_set1_ps(small ? w : w - 1.0f);
    int64_t i = (int64_t)(((32 - ((uintptr_t)out & 31)) & 31) / 4); /* float-aligned out: whole floats */
    if (i > count) i = count;
    mix_row_f32_scalar(out_bytes, own_bytes, partner_bytes, 4 * i, w);
    for (; i + 8 <= count; i += 8) {
        const __m256 o = _mm256_loadu_ps(own + i), p = _mm256_loadu_ps(partner + i);
        _mm256_stream_ps(out + i, _mm256_fmadd_ps(coeff, _mm256_sub_ps(o, p), small ? p : o));
    }
    _mm_sfence();
    mix_row_f32_scalar((uint8_t *)(out + i), (const uint8_t *)(own + i), (const uint8_t *)(partner + i),
                       4 * (count - i), w);
}
#endif

static mix_row_fn pick_mix_row(int is_float) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return is_float ? mix_row_f32_avx2 : mix_row_avx2;
#endif
    return is_float ? mix_row_f32_scalar : mix_row_scalar;
}

/* Mixup walks the permutation's cycles a byte range at a time: out[m] needs x[m] and x[perm[m]],
 * and the next member of the cycle is perm[m], so each range of each image is read from memory
 * once (as a partner) and again from cache (as its own sample): about the traffic of a copy,
 * where sample by sample every image is read twice. `order` lists the samples cycle by cycle.
 * A job item is one range (MIX_RANGE bytes: 64 KB measured best; 16 KB runs are too short for the
 * prefetcher, whole samples fall out of cache) of one segment of `order`; segments give the
 * threads enough items when samples are few ranges long (a 224x224 RGB image is three), at the
 * cost of one more read from memory where a segment starts. */
#define MIX_RANGE 65536

void run_mix(const job_t *job, int64_t first, int64_t last) {
    const int64_t n = job->batch_size, segment_len = job->segment_len;
    const int64_t segments = (n + segment_len - 1) / segment_len;
    for (int64_t item = first; item < last; item++) {
        const int64_t lo = item / segments * MIX_RANGE, segment = item % segments;
        const int64_t len = job->sample_bytes - lo < MIX_RANGE ? job->sample_bytes - lo : MIX_RANGE;
        const int64_t stop = (segment + 1) * segment_len < n ? (segment + 1) * segment_len : n;
        for (int64_t k = segment * segment_len; k < stop; k++) {
            const int64_t i = job->rows[k], offset = i * job->sample_bytes + lo;
            uint8_t *dst = job->out + offset;
            const uint8_t *own = job->images + offset;
            if (job->perm[i] == i)
                memcpy(dst, own, (size_t)len);
            else
                job->mix_row(dst, own, job->images + job->perm[i] * job->sample_bytes + lo, len, job->weights[i]);
        }
    }
}

/* memcpy whose stores go around the caches (the batch is far larger than they are, so this saves
 * reading each output line in first); short runs and CPUs without AVX2 take plain memcpy. The
 * caller fences once it has written a sample. */
static void copy_plain(uint8_t *dst, const uint8_t *src, int64_t n) { memcpy(dst, src, (size_t)n); }

#ifdef TAXAUG_X86
__attribute__((target("avx2"))) static void copy_streaming(uint8_t *dst, const uint8_t *src, int64_t n) {
    if (n < 512) {
        memcpy(dst, src, (size_t)n);
        return;
    }
    const int64_t head = (int64_t)((32 - ((uintptr_t)dst & 31)) & 31);
    memcpy(dst, src, (size_t)head);
    int64_t i = head;
    for (; i + 64 <= n; i += 64) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        _mm256_stream_si256((__m256i *)(dst + i), a);
        _mm256_stream_si256((__m256i *)(dst + i + 32), b);
    }
    memcpy(dst + i, src + i, (size_t)(n - i));
}
#endif

static copy_fn pick_copy(void) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return copy_streaming;
#endif
    return copy_plain;
}

/* out[i] = images[i] with box (y1, x1, y2, x2) taken from images[perm[i]], every output byte
 * written once: the rows above and below the box as one run each per plane, and each box row as
 * own | partner | own. Samples go cycle by cycle (`rows`), so the partner read for one sample is
 * in cache when it comes next as a sample of its own. */
void run_paste(const job_t *job, int64_t first, int64_t last) {
    const int64_t es = job->elem_size, c = job->channels, h = job->height, w = job->width;
    const copy_fn copy = job->copy;
    /* the layout as planes of H rows: NCHW has C planes of W elements a row; NHWC one plane of W * C */
    const int64_t planes = job->channels_last ? 1 : c, row_bytes = (job->channels_last ? w * c : w) * es;
    const int64_t px = job->channels_last ? c * es : es; /* bytes per box column */
    for (int64_t k = first; k < last; k++) {
        const int64_t i = job->rows[k];
        uint8_t *dst = job->out + i * job->sample_bytes;
        const uint8_t *own = job->images + i * job->sample_bytes;
        const uint8_t *partner = job->images + job->perm[i] * job->sample_bytes;
        const int64_t *box = job->boxes + 4 * i;
        const int64_t y1 = box[0], x1 = box[1], y2 = box[2], x2 = box[3];
        if (job->perm[i] == i || y2 <= y1 || x2 <= x1) {
            copy(dst, own, job->sample_bytes);
            continue;
        }
        for (int64_t plane = 0; plane < planes; plane++) {
            const int64_t base = plane * h * row_bytes;
            copy(dst + base, own + base, y1 * row_bytes);
            for (int64_t y = y1; y < y2; y++) {
                const int64_t row = base + y * row_bytes, left = x1 * px, right = x2 * px;
                copy(dst + row, own + row, left);
                copy(dst + row + left, partner + row + left, right - left);
                copy(dst + row + right, own + row + right, row_bytes - right);
            }
            copy(dst + base + y2 * row_bytes, own + base + y2 * row_bytes, (h - y2) * row_bytes);
        }
    }
#ifdef TAXAUG_X86
    _mm_sfence();
#endif
}

/* The samples listed cycle by cycle: start -> perm[start] -> perm[perm[start]] ... (malloc'd; NULL if
 * memory ran out). */
static int64_t *cycle_order(const int64_t *perm, int64_t batch) {
    int64_t *order = malloc(sizeof(int64_t) * (size_t)(batch > 0 ? batch : 1));
    uint8_t *seen = calloc((size_t)(batch > 0 ? batch : 1), 1);
    if (!order || !seen) {
        free(order);
        free(seen);
        return NULL;
    }
    int64_t listed = 0;
    for (int64_t start = 0; start < batch; start++)
        for (int64_t m = start; !seen[m]; m = perm[m]) {
            seen[m] = 1;
            order[listed++] = m;
        }
    free(seen);
    return order;
}

/* out[i] = lerp(images[perm[i]], images[i], weights[i]) for uint8 (rounded half to even) or float32
 * samples of sample_bytes each; -1 if memory ran out. */
TAXAUG_EXPORT int taxaug_mix(uint8_t *out, const uint8_t *images, const int64_t *perm, const float *weights,
                             int64_t batch, int64_t sample_bytes, int is_float, int threads) {
    int64_t *order = cycle_order(perm, batch);
    if (!order) return -1;
    if (threads < 1) threads = 1;
    const int64_t ranges = batch > 0 ? (sample_bytes + MIX_RANGE - 1) / MIX_RANGE : 0;
    const int64_t wanted = 8 * (int64_t)threads; /* items, so that no thread is left with the longest tail */
    int64_t segments = ranges > 0 && ranges < wanted ? (wanted + ranges - 1) / ranges : 1;
    if (segments > batch) segments = batch > 0 ? batch : 1;
    const job_t job = {.kind = 0, .out = out, .images = images, .perm = perm, .weights = weights, .rows = order,
                       .batch_size = batch, .segment_len = batch > 0 ? (batch + segments - 1) / segments : 1,
                       .sample_bytes = sample_bytes, .mix_row = pick_mix_row(is_float)};
    const int status = run_parallel(job, ranges * ((batch + job.segment_len - 1) / job.segment_len), threads);
    free(order);
    return status;
}

TAXAUG_EXPORT int taxaug_paste_boxes(uint8_t *out, const uint8_t *images, const int64_t *perm, const int64_t *boxes,
                                     int64_t batch, int64_t channels, int64_t height, int64_t width,
                                     int64_t elem_size, int channels_last, int threads) {
    int64_t *order = cycle_order(perm, batch);
    if (!order) return -1;
    const job_t job = {.kind = 1, .out = out, .images = images, .perm = perm, .boxes = boxes, .rows = order,
                       .copy = pick_copy(),
                       .channels = channels, .height = height, .width = width, .elem_size = elem_size,
                       .channels_last = channels_last, .sample_bytes = channels * height * width * elem_size};
    const int status = run_parallel(job, batch, threads);
    free(order);
    return status;
}
