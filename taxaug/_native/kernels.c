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
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if defined(_WIN32)
#define TAXAUG_EXPORT __declspec(dllexport)
#else
#define TAXAUG_EXPORT __attribute__((visibility("default")))
#include <dlfcn.h>
#include <pthread.h>
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

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

typedef void (*mix_row_fn)(uint8_t *, const uint8_t *, const uint8_t *, int64_t, float);

static mix_row_fn pick_mix_row(int is_float) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return is_float ? mix_row_f32_avx2 : mix_row_avx2;
#endif
    return is_float ? mix_row_f32_scalar : mix_row_scalar;
}

/* One call of a kernel: the threads take chunks of samples from a shared counter, so a thread
 * that the OS holds back does not leave the others waiting on a fixed half of the batch. */
typedef struct {
    int kind; /* 0 = mix, 1 = paste, 2 = pointwise, 3 = warp */
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
    int op, is_float;               /* pointwise: which op, on uint8 or float32 samples */
    const int64_t *rows;            /* pointwise: the samples to transform (index into the batch) */
    const float *param, *param2;    /* pointwise: per listed sample */
    int64_t plane;                  /* pointwise: H * W */
    const double *data;             /* warp: (n_rows, 6) Pillow affine data per listed sample */
    const uint8_t *fill;            /* warp: one element per channel */
    int failed;                     /* set by a thread that could not do its part */
} job_t;

/* Mixup walks the permutation's cycles a byte range at a time: out[m] needs x[m] and x[perm[m]],
 * and the next member of the cycle is perm[m], so each range of each image is read from memory
 * once (as a partner) and again from cache (as its own sample): about the traffic of a copy,
 * where sample by sample every image is read twice. `order` lists the samples cycle by cycle.
 * A job item is one range (MIX_RANGE bytes: 64 KB measured best; 16 KB runs are too short for the
 * prefetcher, whole samples fall out of cache) of one segment of `order`; segments give the
 * threads enough items when samples are few ranges long (a 224x224 RGB image is three), at the
 * cost of one more read from memory where a segment starts. */
#define MIX_RANGE 65536

static void run_mix(const job_t *job, int64_t first, int64_t last) {
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

/* ------------------------------------------------------------------------------------------------
 * Policy ops that map each pixel through a per-sample rule (some from per-sample statistics:
 * contrast's mean luma, autocontrast's range, equalize's histogram), on the listed samples, from
 * `images` into `out` (the same layout; they may be the same buffer). Each reproduces the float32 arithmetic of the torch kernel in
 * taxaug/functional/photometric.py operation by operation (compiled with -ffp-contract=off), so
 * the bytes are the same; the dispatcher then needs no gather and scatter for these ops.
 */
enum { OP_BRIGHTNESS = 0, OP_POSTERIZE = 1, OP_SOLARIZE = 2, OP_INVERT = 3, OP_COLOR = 4, OP_CONTRAST = 5, OP_HUE = 6,
       OP_AUTOCONTRAST = 7, OP_EQUALIZE = 8, OP_SHARPNESS = 9 };

static const float GRAY_R = 19595.0f / 65536.0f, GRAY_G = 38470.0f / 65536.0f, GRAY_B = 7471.0f / 65536.0f;

static inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }
static inline uint8_t to_u8(float v) { return (uint8_t)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v)); }
static inline int32_t gray_u8(const uint8_t *x, int64_t i, int64_t plane, int64_t c) {
    if (c == 1) return x[i];
    return (x[i] * 19595 + x[plane + i] * 38470 + x[2 * plane + i] * 7471 + 0x8000) >> 16;
}
static inline float gray_f32(const float *x, int64_t i, int64_t plane, int64_t c) {
    if (c == 1) return x[i];
    const float r = x[i] * GRAY_R, g = x[plane + i] * GRAY_G;
    return (r + g) + x[2 * plane + i] * GRAY_B;
}

/* Hue rotation of n RGB pixels in [0, 1] (planes r, g, b), as _k_hue computes it (see photometric.py);
 * `shift6` = 6 * shift with |shift| <= 0.5, so the hue before the wrap lies in [-4, 8] and
 * torch.remainder(h, 6) is h + 6, h or h - 6 exactly. Branch-free, so the loop vectorises. */
static inline void hue_pixels(const float *restrict r, const float *restrict g, const float *restrict b, int64_t n,
                              float shift6, float *restrict out_r, float *restrict out_g, float *restrict out_b) {
    for (int64_t i = 0; i < n; i++) {
        const float red = r[i], green = g[i], blue = b[i];
        const float max_rg = red > green ? red : green, min_rg = red < green ? red : green;
        const float maxc = max_rg > blue ? max_rg : blue, minc = min_rg < blue ? min_rg : blue;
        const float delta = maxc - minc;
        const float safe_delta = delta + (delta == 0.0f ? 1.0f : 0.0f);
        /* 0/1 masks as floats: products, not &&, keep the loop vectorisable (GCC 12 gives up on mixed masks) */
        const float is_r = maxc == red ? 1.0f : 0.0f, eq_g = maxc == green ? 1.0f : 0.0f;
        const float is_g = eq_g * (1.0f - is_r), is_b = (1.0f - is_r) * (1.0f - eq_g);
        const float num = ((green - blue) * is_r + (blue - red) * is_g) + (red - green) * is_b;
        const float hue6 = num / safe_delta + (is_g * 2.0f + is_b * 4.0f);
        const float sat = delta / (maxc + (maxc == 0.0f ? 1.0f : 0.0f));
        const float turned = hue6 + shift6;
        const float wrapped = turned < 0.0f ? turned + 6.0f : (turned >= 6.0f ? turned - 6.0f : turned);
        const float chroma = sat * maxc;
        float k = wrapped + 5.0f;
        k = k - (k >= 6.0f ? 6.0f : 0.0f);
        float side = k < 4.0f - k ? k : 4.0f - k;
        out_r[i] = clamp01(maxc - (side < 0.0f ? 0.0f : (side > 1.0f ? 1.0f : side)) * chroma);
        k = wrapped + 3.0f;
        k = k - (k >= 6.0f ? 6.0f : 0.0f);
        side = k < 4.0f - k ? k : 4.0f - k;
        out_g[i] = clamp01(maxc - (side < 0.0f ? 0.0f : (side > 1.0f ? 1.0f : side)) * chroma);
        k = wrapped + 1.0f;
        k = k - (k >= 6.0f ? 6.0f : 0.0f);
        side = k < 4.0f - k ? k : 4.0f - k;
        out_b[i] = clamp01(maxc - (side < 0.0f ? 0.0f : (side > 1.0f ? 1.0f : side)) * chroma);
    }
}

/* Smallest and largest of n > 0 floats (no NaNs in images). */
static void range_scalar(const float *s, int64_t n, float *lo, float *hi) {
    float l = s[0], h = s[0];
    for (int64_t i = 1; i < n; i++) {
        l = s[i] < l ? s[i] : l;
        h = s[i] > h ? s[i] : h;
    }
    *lo = l;
    *hi = h;
}

#ifdef TAXAUG_X86
__attribute__((target("avx2"))) static void range_avx2(const float *s, int64_t n, float *lo, float *hi) {
    if (n < 8) {
        range_scalar(s, n, lo, hi);
        return;
    }
    __m256 l = _mm256_loadu_ps(s), h = l;
    int64_t i = 8;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(s + i);
        l = _mm256_min_ps(v, l);
        h = _mm256_max_ps(v, h);
    }
    float lanes_lo[8], lanes_hi[8];
    _mm256_storeu_ps(lanes_lo, l);
    _mm256_storeu_ps(lanes_hi, h);
    float lo_all = lanes_lo[0], hi_all = lanes_hi[0];
    for (int k = 1; k < 8; k++) {
        lo_all = lanes_lo[k] < lo_all ? lanes_lo[k] : lo_all;
        hi_all = lanes_hi[k] > hi_all ? lanes_hi[k] : hi_all;
    }
    for (; i < n; i++) {
        lo_all = s[i] < lo_all ? s[i] : lo_all;
        hi_all = s[i] > hi_all ? s[i] : hi_all;
    }
    *lo = lo_all;
    *hi = hi_all;
}
#endif

static void float_range(const float *s, int64_t n, float *lo, float *hi) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) {
        range_avx2(s, n, lo, hi);
        return;
    }
#endif
    range_scalar(s, n, lo, hi);
}

/* Pillow's ImageOps.equalize lut of one 8-bit plane, from its histogram (as _equalize_lut). */
static void equalize_lut(const int64_t hist[256], int64_t pixels, uint8_t lut[256]) {
    int levels = 0, last = 0;
    for (int i = 0; i < 256; i++)
        if (hist[i] > 0) {
            levels++;
            last = i;
        }
    const int64_t step = (pixels - hist[last]) / 255;
    if (levels <= 1 || step <= 0) {
        for (int i = 0; i < 256; i++) lut[i] = (uint8_t)i;
        return;
    }
    int64_t before = 0;
    for (int i = 0; i < 256; i++) {
        const int64_t v = (step / 2 + before) / step;
        lut[i] = (uint8_t)(v > 255 ? 255 : v);
        before += hist[i];
    }
}

/* The 8-bit level of a float pixel as quantize_uint8 makes it: round(x * 255), clamped. */
static inline uint8_t float_level(float v) {
    const float scaled = nearbyintf(v * 255.0f);
    return (uint8_t)(scaled < 0.0f ? 0.0f : (scaled > 255.0f ? 255.0f : scaled));
}

#define CHUNK 1024 /* pixels whose luma is kept at once (on the stack) */

TAXAUG_CLONES static void pointwise_u8(const job_t *job, uint8_t *dst, const uint8_t *src, float p, float q) {
    const int64_t plane = job->plane, c = job->channels, n = plane * c;
    switch (job->op) {
    case OP_BRIGHTNESS:
        for (int64_t i = 0; i < n; i++) dst[i] = to_u8((float)src[i] * p);
        break;
    case OP_POSTERIZE: { /* p: the bit mask */
        const uint8_t mask = (uint8_t)p;
        for (int64_t i = 0; i < n; i++) dst[i] = src[i] & mask;
        break;
    }
    case OP_SOLARIZE: { /* p: threshold level, q: 255 or 0 (threshold 256 inverts nothing) */
        const uint8_t level = (uint8_t)p, flip = (uint8_t)q;
        for (int64_t i = 0; i < n; i++) dst[i] = src[i] >= level ? (uint8_t)(src[i] ^ flip) : src[i];
        break;
    }
    case OP_INVERT:
        for (int64_t i = 0; i < n; i++) dst[i] = (uint8_t)(255 - src[i]);
        break;
    case OP_COLOR: /* blend with the luma of the same pixel, a chunk of pixels at a time */
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float gray[CHUNK];
            for (int64_t i = 0; i < len; i++) gray[i] = (float)gray_u8(src, start + i, plane, c);
            for (int64_t ch = 0; ch < c; ch++) {
                const uint8_t *s = src + ch * plane + start;
                uint8_t *o = dst + ch * plane + start;
                for (int64_t i = 0; i < len; i++) o[i] = to_u8(((float)s[i] - gray[i]) * p + gray[i]);
            }
        }
        break;
    case OP_CONTRAST: { /* blend with the rounded mean luma of the sample */
        int64_t total = 0;
        for (int64_t i = 0; i < plane; i++) total += gray_u8(src, i, plane, c);
        const double mean = floor((double)total / (double)(plane > 0 ? plane : 1) + 0.5);
        const float d = (float)(uint8_t)mean;
        for (int64_t i = 0; i < n; i++) dst[i] = to_u8(((float)src[i] - d) * p + d);
        break;
    }
    case OP_HUE: { /* p: the shift in turns, |p| <= 0.5; RGB only */
        const float shift6 = 6.0f * p;
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float rgb[3][CHUNK], turned[3][CHUNK];
            for (int ch = 0; ch < 3; ch++)
                for (int64_t i = 0; i < len; i++) rgb[ch][i] = (float)src[ch * plane + start + i] / 255.0f;
            hue_pixels(rgb[0], rgb[1], rgb[2], len, shift6, turned[0], turned[1], turned[2]);
            for (int ch = 0; ch < 3; ch++)
                for (int64_t i = 0; i < len; i++) dst[ch * plane + start + i] = (uint8_t)nearbyintf(turned[ch][i] * 255.0f);
        }
        break;
    }
    case OP_AUTOCONTRAST: /* Pillow's lut from each channel's range, in double precision */
        for (int64_t ch = 0; ch < c; ch++) {
            const uint8_t *s = src + ch * plane;
            uint8_t *o = dst + ch * plane, lut[256];
            uint8_t lo = 255, hi = 0;
            for (int64_t i = 0; i < plane; i++) {
                lo = s[i] < lo ? s[i] : lo;
                hi = s[i] > hi ? s[i] : hi;
            }
            const int flat = hi <= lo;
            const double span = (double)hi - (double)lo;
            const double scale = flat ? 1.0 : 255.0 / (span < 1.0 ? 1.0 : span);
            const double offset = flat ? 0.0 : -(double)lo * scale;
            for (int level = 0; level < 256; level++) {
                const double v = (double)level * scale + offset;
                lut[level] = (uint8_t)(v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v));
            }
            for (int64_t i = 0; i < plane; i++) o[i] = lut[s[i]];
        }
        break;
    case OP_EQUALIZE:
        for (int64_t ch = 0; ch < c; ch++) {
            const uint8_t *s = src + ch * plane;
            uint8_t *o = dst + ch * plane, lut[256];
            int64_t hist[256] = {0};
            for (int64_t i = 0; i < plane; i++) hist[s[i]]++;
            equalize_lut(hist, plane, lut);
            for (int64_t i = 0; i < plane; i++) o[i] = lut[s[i]];
        }
        break;
    }
}

TAXAUG_CLONES static void pointwise_f32(const job_t *job, float *dst, const float *src, float p, float q) {
    const int64_t plane = job->plane, c = job->channels, n = plane * c;
    switch (job->op) {
    case OP_BRIGHTNESS:
        for (int64_t i = 0; i < n; i++) dst[i] = clamp01(src[i] * p);
        break;
    case OP_POSTERIZE: /* p: the step 2 ** (8 - bits) */
        for (int64_t i = 0; i < n; i++) dst[i] = floorf(nearbyintf(src[i] * 255.0f) / p) * p / 255.0f;
        break;
    case OP_SOLARIZE: /* p: threshold / 255 */
        for (int64_t i = 0; i < n; i++) dst[i] = fabsf((src[i] >= p ? 1.0f : 0.0f) - src[i]);
        break;
    case OP_INVERT:
        for (int64_t i = 0; i < n; i++) dst[i] = 1.0f - src[i];
        break;
    case OP_COLOR:
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float gray[CHUNK];
            for (int64_t i = 0; i < len; i++) gray[i] = gray_f32(src, start + i, plane, c);
            for (int64_t ch = 0; ch < c; ch++) {
                const float *s = src + ch * plane + start;
                float *o = dst + ch * plane + start;
                for (int64_t i = 0; i < len; i++) o[i] = clamp01((s[i] - gray[i]) * p + gray[i]);
            }
        }
        break;
    case OP_HUE: /* writes each chunk only after reading it: src may be dst */
        for (int64_t start = 0; start < plane; start += CHUNK) {
            const int64_t len = plane - start < CHUNK ? plane - start : CHUNK;
            float turned[3][CHUNK];
            hue_pixels(src + start, src + plane + start, src + 2 * plane + start, len, 6.0f * p, turned[0], turned[1],
                       turned[2]);
            for (int ch = 0; ch < 3; ch++) memcpy(dst + ch * plane + start, turned[ch], (size_t)len * sizeof(float));
        }
        break;
    case OP_AUTOCONTRAST: /* each channel stretched to [0, 1] */
        for (int64_t ch = 0; ch < c; ch++) {
            const float *s = src + ch * plane;
            float *o = dst + ch * plane;
            float lo, hi;
            float_range(s, plane, &lo, &hi);
            const int flat = hi <= lo;
            const float span = flat ? 1.0f : hi - lo, low = flat ? 0.0f : lo;
            for (int64_t i = 0; i < plane; i++) o[i] = clamp01((s[i] - low) / span);
        }
        break;
    case OP_EQUALIZE: /* on the 8-bit levels; the lut read back as level / 255 */
        for (int64_t ch = 0; ch < c; ch++) {
            const float *s = src + ch * plane;
            float *o = dst + ch * plane, table[256];
            int64_t hist[256] = {0};
            uint8_t lut[256];
            for (int64_t i = 0; i < plane; i++) hist[float_level(s[i])]++;
            equalize_lut(hist, plane, lut);
            for (int level = 0; level < 256; level++) table[level] = (float)lut[level] / 255.0f;
            for (int64_t i = 0; i < plane; i++) o[i] = table[float_level(s[i])];
        }
        break;
    }
    (void)q;
}

/* Sharpness of one plane (h x w, read as float levels by `level`): Pillow's SMOOTH filter
 * ([[1,1,1],[1,5,1],[1,1,1]] / 13, border unchanged) as _smooth computes it, then the blend of
 * _k_sharpness. `sums` holds 3 * w floats. */
#define SHARPEN_PLANE(in_type, LEVEL, STORE)                                                            \
    do {                                                                                                \
        const in_type *s = (const in_type *)src_plane;                                                  \
        for (int64_t x = 0; x < w; x++) { /* the border rows are the image's own */                   \
            STORE(x, LEVEL(s[x]), LEVEL(s[x]));                                                         \
            STORE((h - 1) * w + x, LEVEL(s[(h - 1) * w + x]), LEVEL(s[(h - 1) * w + x]));               \
        }                                                                                               \
        for (int k = 0; k < 2; k++) {                                                                   \
            float *row = sums + k * w;                                                                  \
            const in_type *line = s + k * w;                                                            \
            for (int64_t x = 0; x + 2 < w; x++) row[x] = (LEVEL(line[x]) + LEVEL(line[x + 1])) + LEVEL(line[x + 2]); \
        }                                                                                               \
        for (int64_t y = 1; y + 1 < h; y++) {                                                           \
            float *above = sums + ((y - 1) % 3) * w, *here = sums + (y % 3) * w, *below = sums + ((y + 1) % 3) * w; \
            const in_type *line = s + (y + 1) * w;                                                      \
            for (int64_t x = 0; x + 2 < w; x++) below[x] = (LEVEL(line[x]) + LEVEL(line[x + 1])) + LEVEL(line[x + 2]); \
            const in_type *mid = s + y * w;                                                             \
            STORE(y * w, LEVEL(mid[0]), LEVEL(mid[0]));                                                 \
            STORE(y * w + w - 1, LEVEL(mid[w - 1]), LEVEL(mid[w - 1]));                                 \
            for (int64_t x = 1; x + 1 < w; x++) {                                                       \
                const float box = (above[x - 1] + here[x - 1]) + below[x - 1];                          \
                const float smooth = (box + 4.0f * LEVEL(mid[x])) / 13.0f;                              \
                STORE(y * w + x, smooth, LEVEL(mid[x]));                                                \
            }                                                                                           \
        }                                                                                               \
    } while (0)

#define LEVEL_U8(v) ((float)(v))
#define LEVEL_F32(v) (v)
/* uint8: the smoothed level rounds half up and clamps (then floors); the blend truncates */
#define STORE_U8(i, smooth, own)                                                                        \
    do {                                                                                                \
        const float rounded = (smooth) + 0.5f;                                                          \
        const float d = floorf(rounded < 0.0f ? 0.0f : (rounded > 255.0f ? 255.0f : rounded));          \
        ((uint8_t *)dst_plane)[i] = to_u8(((own) - d) * p + d);                                          \
    } while (0)
/* float: the smoothed value clamps to [0, 1]; the blend is d + f * (x - d), clamped */
#define STORE_F32(i, smooth, own)                                                                       \
    do {                                                                                                \
        const float sm = (smooth), d = sm < 0.0f ? 0.0f : (sm > 1.0f ? 1.0f : sm);                      \
        ((float *)dst_plane)[i] = clamp01(d + p * ((own) - d));                                         \
    } while (0)

TAXAUG_CLONES static void sharpen_sample(const job_t *job, uint8_t *dst, const uint8_t *src, float p, float *sums) {
    const int64_t c = job->channels, h = job->height, w = job->width, es = job->is_float ? 4 : 1;
    for (int64_t ch = 0; ch < c; ch++) {
        const uint8_t *src_plane = src + ch * h * w * es;
        uint8_t *dst_plane = dst + ch * h * w * es;
        if (h < 3 || w < 3) { /* too small to filter: the blend of an image with itself */
            for (int64_t i = 0; i < h * w; i++) {
                if (job->is_float) {
                    const float v = ((const float *)src_plane)[i];
                    ((float *)dst_plane)[i] = clamp01(v + p * (v - v));
                } else {
                    const float v = (float)src_plane[i];
                    dst_plane[i] = to_u8((v - v) * p + v);
                }
            }
            continue;
        }
        if (job->is_float)
            SHARPEN_PLANE(float, LEVEL_F32, STORE_F32);
        else
            SHARPEN_PLANE(uint8_t, LEVEL_U8, STORE_U8);
    }
}

static void run_pointwise(job_t *job, int64_t first, int64_t last) {
    float *sums = NULL;
    uint8_t *scratch = NULL; /* sharpness in place reads neighbours it has already written: filter into this */
    if (job->op == OP_SHARPNESS) {
        sums = malloc(sizeof(float) * (size_t)(3 * job->width));
        scratch = job->out == job->images ? malloc((size_t)job->sample_bytes) : NULL;
        if (!sums || (job->out == job->images && !scratch)) {
            free(sums);
            free(scratch);
            job->failed = 1;
            return;
        }
    }
    for (int64_t r = first; r < last; r++) {
        const int64_t offset = job->rows[r] * job->sample_bytes;
        const float p = job->param[r], q = job->param2 ? job->param2[r] : 0.0f;
        if (job->op == OP_SHARPNESS && scratch) {
            sharpen_sample(job, scratch, job->images + offset, p, sums);
            memcpy(job->out + offset, scratch, (size_t)job->sample_bytes);
        } else if (job->op == OP_SHARPNESS)
            sharpen_sample(job, job->out + offset, job->images + offset, p, sums);
        else if (job->is_float)
            pointwise_f32(job, (float *)(job->out + offset), (const float *)(job->images + offset), p, q);
        else
            pointwise_u8(job, job->out + offset, job->images + offset, p, q);
    }
    free(sums);
    free(scratch);
}

/* ------------------------------------------------------------------------------------------------
 * Nearest-neighbour affine warp of the listed samples (any element size), as _warp_nearest in
 * geometry.py computes it: the output pixel (x, y) reads the input at
 * floor(a (x + .5) + (b (y + .5) + c)), floor(d (x + .5) + (e (y + .5) + f)), in double precision
 * operation by operation, and `fill` where that falls outside the image.
 */
#define WARP_COPY(type)                                                                          \
    do {                                                                                         \
        const type *s = (const type *)src, fill_value = ((const type *)job->fill)[ch];           \
        type *o = (type *)dst;                                                                   \
        for (int64_t x = 0; x < w; x++) o[y * w + x] = at[x] >= 0 ? s[at[x]] : fill_value;     \
    } while (0)

TAXAUG_CLONES static void run_warp(job_t *job, int64_t first, int64_t last) {
    const int64_t c = job->channels, h = job->height, w = job->width, es = job->elem_size, plane = h * w;
    const int in_place = job->out == job->images; /* then each sample is warped into scratch, then copied */
    double *ax = malloc(sizeof(double) * (size_t)(2 * w));
    int32_t *at = malloc(sizeof(int32_t) * (size_t)w); /* planes under 2**31 pixels (checked by the caller) */
    uint8_t *scratch = in_place ? malloc((size_t)job->sample_bytes) : NULL;
    if (!ax || !at || (in_place && !scratch)) {
        free(ax);
        free(at);
        free(scratch);
        job->failed = 1;
        return;
    }
    double *dx = ax + w;
    for (int64_t r = first; r < last; r++) {
        const double *d = job->data + 6 * r;
        const int64_t offset = job->rows[r] * job->sample_bytes;
        uint8_t *target = in_place ? scratch : job->out + offset;
        for (int64_t x = 0; x < w; x++) {
            ax[x] = d[0] * ((double)x + 0.5);
            dx[x] = d[3] * ((double)x + 0.5);
        }
        for (int64_t y = 0; y < h; y++) {
            const double ys = (double)y + 0.5;
            const double row_x = d[1] * ys + d[2], row_y = d[4] * ys + d[5];
            for (int64_t x = 0; x < w; x++) { /* clamped to [-1, w] x [-1, h] as torch does; -1 = outside */
                double sx = floor(ax[x] + row_x), sy = floor(dx[x] + row_y);
                sx = sx < -1.0 ? -1.0 : (sx > (double)w ? (double)w : sx);
                sy = sy < -1.0 ? -1.0 : (sy > (double)h ? (double)h : sy);
                const int32_t ix = (int32_t)sx, iy = (int32_t)sy;
                const int32_t inside = ((uint32_t)ix < (uint32_t)w) & ((uint32_t)iy < (uint32_t)h);
                at[x] = inside ? iy * (int32_t)w + ix : -1;
            }
            for (int64_t ch = 0; ch < c; ch++) {
                const uint8_t *src = job->images + offset + ch * plane * es;
                uint8_t *dst = target + ch * plane * es;
                switch (es) {
                case 1: WARP_COPY(uint8_t); break;
                case 2: WARP_COPY(uint16_t); break;
                case 4: WARP_COPY(uint32_t); break;
                default: WARP_COPY(uint64_t); break;
                }
            }
        }
        if (in_place) memcpy(job->out + offset, scratch, (size_t)job->sample_bytes);
    }
    free(ax);
    free(at);
    free(scratch);
}

static void run_job(job_t *job) {
    for (;;) {
        const int64_t first = __atomic_fetch_add(job->next, job->chunk, __ATOMIC_RELAXED);
        if (first >= job->batch) return;
        const int64_t last = first + job->chunk < job->batch ? first + job->chunk : job->batch;
        if (job->kind == 0)
            run_mix(job, first, last);
        else if (job->kind == 1)
            run_paste(job, first, last);
        else if (job->kind == 2)
            run_pointwise(job, first, last);
        else
            run_warp(job, first, last);
    }
}

#ifndef _WIN32
static void *thread_main(void *arg) {
    run_job((job_t *)arg);
    return NULL;
}

static void openmp_main(void *arg) { run_job((job_t *)arg); }

/* The OpenMP runtime that torch already runs, when one is loaded (libgomp, or a runtime with its
 * GOMP entry points): its worker threads are the ones torch's last op left spinning, so a kernel
 * run on them starts at once, where a thread of our own waits for a core behind them. Looked up at
 * run time, so the library links no OpenMP. Not after a fork: an OpenMP pool does not survive one,
 * and a forked child (a DataLoader worker) starts threads of its own instead. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
static gomp_parallel_t gomp_parallel;
static pthread_once_t openmp_lookup = PTHREAD_ONCE_INIT;
static volatile int forked_child;

static void on_fork_child(void) { forked_child = 1; }

__attribute__((constructor)) static void watch_forks(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static void find_openmp(void) { gomp_parallel = (gomp_parallel_t)dlsym(RTLD_DEFAULT, "GOMP_parallel"); }

/* 0 = as found, 1 = never use the OpenMP pool (for tests and benchmarks). */
static int openmp_disabled;
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
    if (threads > 1) {
        pthread_once(&openmp_lookup, find_openmp);
        if (gomp_parallel && !forked_child && !openmp_disabled) {
            gomp_parallel(openmp_main, &job, (unsigned)threads, 0);
            return job.failed ? -1 : 0;
        }
    }
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
    return job.failed ? -1 : 0;
}

/* Which threads run a kernel: 1 = the OpenMP pool torch runs on (when loaded, not in a forked
 * child), 0 = threads of our own. `use_openmp` < 0 only asks. */
TAXAUG_EXPORT int taxaug_thread_pool(int use_openmp) {
#ifndef _WIN32
    pthread_once(&openmp_lookup, find_openmp);
    if (use_openmp >= 0) openmp_disabled = !use_openmp;
    return gomp_parallel && !forked_child && !openmp_disabled;
#else
    (void)use_openmp;
    return 0;
#endif
}

/* out[i] = lerp(images[perm[i]], images[i], weights[i]) for uint8 (rounded half to even) or float32
 * samples of sample_bytes each; -1 if memory ran out. */
TAXAUG_EXPORT int taxaug_mix(uint8_t *out, const uint8_t *images, const int64_t *perm, const float *weights,
                             int64_t batch, int64_t sample_bytes, int is_float, int threads) {
    int64_t *order = malloc(sizeof(int64_t) * (size_t)(batch > 0 ? batch : 1));
    uint8_t *seen = calloc((size_t)(batch > 0 ? batch : 1), 1);
    if (!order || !seen) {
        free(order);
        free(seen);
        return -1;
    }
    int64_t listed = 0;
    for (int64_t start = 0; start < batch; start++) /* each cycle start -> perm[start] -> ... */
        for (int64_t m = start; !seen[m]; m = perm[m]) {
            seen[m] = 1;
            order[listed++] = m;
        }
    free(seen);
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
    const job_t job = {.kind = 1, .out = out, .images = images, .perm = perm, .boxes = boxes,
                       .channels = channels, .height = height, .width = width, .elem_size = elem_size,
                       .channels_last = channels_last, .sample_bytes = channels * height * width * elem_size};
    return run_parallel(job, batch, threads);
}

/* Pointwise op `op` (OP_* above) on samples rows[0..n_rows) of a (B, C, H, W) uint8 or float32 batch,
 * from `images` into `out`; param (and param2) hold one value per listed sample. */
TAXAUG_EXPORT int taxaug_pointwise(int op, int is_float, uint8_t *out, const uint8_t *images, const int64_t *rows,
                                   const float *param, const float *param2, int64_t n_rows, int64_t channels,
                                   int64_t height, int64_t plane, int threads) {
    if (op < OP_BRIGHTNESS || op > OP_SHARPNESS || (is_float && op == OP_CONTRAST) || (op == OP_HUE && channels != 3))
        return -1;
    const job_t job = {.kind = 2, .op = op, .is_float = is_float, .out = out, .images = images, .rows = rows,
                       .param = param, .param2 = param2, .channels = channels, .plane = plane,
                       .height = height, .width = plane / (height > 0 ? height : 1),
                       .sample_bytes = channels * plane * (is_float ? 4 : 1)};
    return run_parallel(job, n_rows, threads);
}

/* Nearest-neighbour warp of samples rows[0..n_rows) of a (B, C, H, W) batch from `images` into `out`
 * (the same layout; the same buffer warps in place), with data (n_rows, 6) and fill (C elements);
 * -1 if memory ran out. */
TAXAUG_EXPORT int taxaug_warp_nearest(uint8_t *out, const uint8_t *images, const int64_t *rows, const double *data,
                                      const uint8_t *fill, int64_t n_rows, int64_t channels, int64_t height,
                                      int64_t width, int64_t elem_size, int threads) {
    const job_t job = {.kind = 3, .out = out, .images = images, .rows = rows, .data = data, .fill = fill,
                       .channels = channels, .height = height, .width = width, .elem_size = elem_size,
                       .sample_bytes = channels * height * width * elem_size};
    return run_parallel(job, n_rows, threads);
}

/* ingroup_permutation's pairing, the same perm as its torch code: `shuffled` is the random order the
 * caller drew (torch.randperm); members of a group keep that order (a stable sort by group id, here
 * an LSD radix sort of keys packing the group above the position in `shuffled`), and each member
 * of a group with at least `min_size` members gets the next one round the group as its partner.
 * Negative ids never mix. -1 if the ids are too large to pack beside a position in 64 bits, or
 * memory ran out (the caller then runs the torch code). */
TAXAUG_EXPORT int taxaug_ingroup_perm(int64_t *perm, const int64_t *group_ids, const int64_t *shuffled, int64_t n,
                                      int64_t min_size) {
    if (n <= 0) return 0;
    int position_bits = 1;
    while (position_bits < 62 && ((int64_t)1 << position_bits) < n) position_bits++;
    uint64_t top = 0; /* group keys: 0 for negative ids (never mixed), id + 1 otherwise */
    for (int64_t i = 0; i < n; i++)
        if (group_ids[i] >= 0 && (uint64_t)group_ids[i] + 1 > top) top = (uint64_t)group_ids[i] + 1;
    int key_bits = position_bits;
    while (key_bits < 64 && (top >> (key_bits - position_bits)) != 0) key_bits++;
    if (key_bits > 63 || (top >> (key_bits - position_bits)) != 0) return -1;
    uint64_t *keys = malloc(2 * sizeof(uint64_t) * (size_t)n);
    if (!keys) return -1;
    uint64_t *spare = keys + n;
    for (int64_t k = 0; k < n; k++) {
        const int64_t g = group_ids[shuffled[k]];
        keys[k] = ((g < 0 ? 0 : (uint64_t)g + 1) << position_bits) | (uint64_t)k;
    }
    for (int shift = 0; shift < key_bits; shift += 8) { /* keys are unique, so any order of passes is exact */
        int64_t count[257] = {0};
        for (int64_t k = 0; k < n; k++) count[((keys[k] >> shift) & 255) + 1]++;
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (int64_t k = 0; k < n; k++) spare[count[(keys[k] >> shift) & 255]++] = keys[k];
        uint64_t *sorted = spare;
        spare = keys;
        keys = sorted;
    }
    const uint64_t position_mask = ((uint64_t)1 << position_bits) - 1;
    for (int64_t start = 0, end; start < n; start = end) {
        const uint64_t group = keys[start] >> position_bits;
        for (end = start + 1; end < n && keys[end] >> position_bits == group; end++) {}
        const int64_t members = end - start;
        const int mixes = group != 0 && members >= min_size;
        for (int64_t j = start; j < end; j++) {
            const int64_t i = shuffled[keys[j] & position_mask];
            perm[i] = mixes ? shuffled[keys[start + (j - start + 1) % members] & position_mask] : i;
        }
    }
    free(keys < spare ? keys : spare); /* the start of the one allocation */
    return 0;
}

/* Reports which row kernel this CPU gets, for benchmarks and bug reports. */
TAXAUG_EXPORT const char *taxaug_kernel_isa(void) {
#ifdef TAXAUG_X86
    if (cpu_has_avx2()) return "avx2";
#endif
    return "scalar";
}
