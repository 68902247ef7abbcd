/* The CPU kernels of the local model (loaded and compiled by kernels.py; see its docstring). */
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
/* The same source is compiled once per instruction set (kernels.py picks the flags and, at run time,
 * the library the CPU can run): AVX2 + FMA, AVX-512 (F, BW, VL, DQ) with VNNI, and the AMX build
 * (AVX-512 plus the tile extensions). Each wider path reuses the narrower code where it does not pay. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1
#endif
#if defined(HAVE_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define HAVE_AVX512 1
#endif
#if defined(HAVE_AVX512) && defined(__AVX512VNNI__)
#define HAVE_VNNI 1
#endif
#if defined(HAVE_AVX512) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__)
#define HAVE_AMX 1
#endif

/* FP4 e2m1 values doubled (small integers); the block scale is halved to match: 2^(s-128). */
static const int8_t LUT2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
static float SCALE[256];
static void init_scales(void) {
    if (SCALE[255] != 0.0f) return;
    for (int s = 0; s < 256; s++) SCALE[s] = ldexpf(1.0f, s - 128);
}

typedef void (*rows_fn)(void *args, int begin, int end);
typedef struct { rows_fn fn; void *args; int begin, end; } job_t;
static void run_job(job_t *j) { if (j->begin < j->end) j->fn(j->args, j->begin, j->end); }

/* ---- a persistent thread pool: starting a thread costs ~90 us here, a decode step makes ~270 calls ----
 * Workers spin for a while after each job (the next call usually comes within tens of microseconds),
 * then sleep on a condition variable. One job runs at a time; a forked child starts a fresh pool.
 * A job's rows go in chunks that the threads take in turn (run_chunks): against fixed halves, a 5,120 x
 * 2,880 bf16 matvec 1.23 -> 0.88 ms (median of pairs) with another process on both vCPUs, the same to
 * 3% unloaded.
 * Both spin loops (a worker's, and the caller's waiting for its workers) yield the CPU after 50 us:
 * on a busy machine Linux may wake a worker on its caller's CPU, and a spinning worker then keeps the
 * caller off it until the next tick. Measured on 2 vCPUs with another process on both: a 1,024-row
 * matvec took 391 us on two threads (77 us on one) without the yields, 187-212 us with them; unloaded
 * the same with or without (43-56 us). */
#define MAX_THREADS 16
#define SPIN_SECONDS 3e-4
#define YIELD_SECONDS 5e-5  /* spinning longer than this yields between checks */
#define CHUNKS_PER_THREAD 8
static pthread_mutex_t pool_job = PTHREAD_MUTEX_INITIALIZER, pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static atomic_uint pool_gen;
static atomic_int pool_left;
static int pool_workers, pool_n, pool_atfork;
static job_t pool_job_all;  /* the whole range; threads take CHUNKS_PER_THREAD * threads chunks of it in turn */
static int pool_chunk;
static atomic_int pool_next;

static double mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}
typedef struct { int id; unsigned seen; } worker_t;
/* Take chunks of the current job until none is left. Rows are independent, so which thread computes
 * which chunk changes no result; taking them in turn lets a thread that runs slower (a vCPU the host
 * holds back, another process on that core) take fewer instead of making every call wait for it. */
static void run_chunks(void) {
    for (;;) {
        int b = atomic_fetch_add_explicit(&pool_next, pool_chunk, memory_order_relaxed);
        if (b >= pool_job_all.end) return;
        job_t j = pool_job_all;
        j.begin = b;
        if (b + pool_chunk < j.end) j.end = b + pool_chunk;
        run_job(&j);
    }
}
static worker_t worker_args[MAX_THREADS];

static void *pool_worker(void *p) {
    int id = ((worker_t *)p)->id;
    unsigned seen = ((worker_t *)p)->seen, g;
    for (;;) {
        double t0 = mono();
        int spins = 0;
        while ((g = atomic_load_explicit(&pool_gen, memory_order_acquire)) == seen) {
            cpu_relax();
            if (++spins % 256) continue;
            double waited = mono() - t0;
            if (waited > YIELD_SECONDS) sched_yield();
            if (waited > SPIN_SECONDS) {
                pthread_mutex_lock(&pool_mu);
                while (atomic_load_explicit(&pool_gen, memory_order_acquire) == seen) pthread_cond_wait(&pool_cv, &pool_mu);
                pthread_mutex_unlock(&pool_mu);
            }
        }
        seen = g;
        if (id < pool_n) run_chunks();
        atomic_fetch_sub_explicit(&pool_left, 1, memory_order_acq_rel);
    }
    return 0;
}
static void pool_after_fork(void) {  /* the child has no workers; its locks may be held by dead threads */
    pool_workers = 0;
    pthread_mutex_init(&pool_job, 0);
    pthread_mutex_init(&pool_mu, 0);
    pthread_cond_init(&pool_cv, 0);
}

/* Split rows [0, n) over nthreads threads (the caller runs the first share). */
static void parallel_rows(rows_fn fn, void *args, int n, int nthreads) {
    if (nthreads > n) nthreads = n;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads <= 1) {
        job_t j = {fn, args, 0, n};
        run_job(&j);
        return;
    }
    pthread_mutex_lock(&pool_job);
    if (!pool_atfork) pool_atfork = !pthread_atfork(0, 0, pool_after_fork);
    while (pool_workers < nthreads - 1) {
        worker_t *w = &worker_args[pool_workers];
        w->id = pool_workers + 1;
        w->seen = atomic_load(&pool_gen);
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&th, &attr, pool_worker, w);
        pthread_attr_destroy(&attr);
        if (failed) break;
        pool_workers++;
    }
    if (nthreads > pool_workers + 1) nthreads = pool_workers + 1;
    pool_job_all = (job_t){fn, args, 0, n};
    pool_chunk = (n + nthreads * CHUNKS_PER_THREAD - 1) / (nthreads * CHUNKS_PER_THREAD);
    atomic_store_explicit(&pool_next, 0, memory_order_relaxed);
    pool_n = nthreads;
    atomic_store_explicit(&pool_left, pool_workers, memory_order_release);
    pthread_mutex_lock(&pool_mu);
    atomic_fetch_add_explicit(&pool_gen, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    run_chunks();
    double t0 = 0.0;
    for (int spins = 0; atomic_load_explicit(&pool_left, memory_order_acquire) > 0;) {
        cpu_relax();
        if (++spins % 256) continue;
        if (t0 == 0.0) t0 = mono();
        else if (mono() - t0 > YIELD_SECONDS) sched_yield();
    }
    pthread_mutex_unlock(&pool_job);
}

#ifdef HAVE_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* 16 packed bytes -> their low and high nibbles' doubled e2m1 values, as int8. */
static inline void nibbles(const uint8_t *b, __m128i *lo, __m128i *hi) {
    const __m128i lut = _mm_loadu_si128((const __m128i *)LUT2);
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)b);
    *lo = _mm_shuffle_epi8(lut, _mm_and_si128(v, mask));
    *hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(v, 4), mask));
}
/* 16 int8 -> two vectors of 8 floats. */
static inline void widen16(__m128i v, __m256 *first, __m256 *second) {
    *first = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    *second = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
}
/* 16 packed bytes -> 32 floats (doubled e2m1), low nibble first. */
static inline void decode_block(const uint8_t *b, __m256 out[4]) {
    __m128i lo, hi;
    nibbles(b, &lo, &hi);
    widen16(_mm_unpacklo_epi8(lo, hi), &out[0], &out[1]);
    widen16(_mm_unpackhi_epi8(lo, hi), &out[2], &out[3]);
}
/* 16 packed bytes -> 32 floats in split order: the 16 low nibbles, then the 16 high nibbles. */
static inline void decode_block_split(const uint8_t *b, __m256 out[4]) {
    __m128i lo, hi;
    nibbles(b, &lo, &hi);
    widen16(lo, &out[0], &out[1]);
    widen16(hi, &out[2], &out[3]);
}
#endif

/* ---- y[t, o] = sum_i W[o, i] x[t, i] + bias[o], W packed MXFP4 (out, G, 16) + (out, G) ---- */
typedef struct { const uint8_t *blocks, *scales; const float *x, *bias; float *y; int T, out, G; const float *xperm; } mx_args;

static void mx_rows(void *p, int begin, int end) {
    mx_args *a = (mx_args *)p;
    int G = a->G, in = G * 32, T = a->T;
    for (int o = begin; o < end; o++) {
        const uint8_t *b = a->blocks + (size_t)o * G * 16;
        const uint8_t *s = a->scales + (size_t)o * G;
#ifdef HAVE_AVX2
        if (T == 1) {  /* decode: x pre-permuted (even positions first), two groups per step */
            const float *xp = a->xperm;
            __m256 c0 = _mm256_setzero_ps(), c1 = c0;
            int g = 0;
            for (; g + 2 <= G; g += 2) {
                __m256 w[4], v[4];
                decode_block_split(b + g * 16, w);
                decode_block_split(b + g * 16 + 16, v);
                const float *xa = xp + g * 32, *xb = xa + 32;
                __m256 d = _mm256_mul_ps(w[0], _mm256_loadu_ps(xa));
                __m256 e = _mm256_mul_ps(w[1], _mm256_loadu_ps(xa + 8));
                d = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xa + 16), d);
                e = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xa + 24), e);
                __m256 f = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb));
                __m256 h = _mm256_mul_ps(v[1], _mm256_loadu_ps(xb + 8));
                f = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb + 16), f);
                h = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24), h);
                c0 = _mm256_fmadd_ps(_mm256_add_ps(d, e), _mm256_set1_ps(SCALE[s[g]]), c0);
                c1 = _mm256_fmadd_ps(_mm256_add_ps(f, h), _mm256_set1_ps(SCALE[s[g + 1]]), c1);
            }
            for (; g < G; g++) {
                __m256 w[4];
                decode_block_split(b + g * 16, w);
                const float *xa = xp + g * 32;
                __m256 d = _mm256_mul_ps(w[0], _mm256_loadu_ps(xa));
                __m256 e = _mm256_mul_ps(w[1], _mm256_loadu_ps(xa + 8));
                d = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xa + 16), d);
                e = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xa + 24), e);
                c0 = _mm256_fmadd_ps(_mm256_add_ps(d, e), _mm256_set1_ps(SCALE[s[g]]), c0);
            }
            a->y[o] = hsum(_mm256_add_ps(c0, c1)) + (a->bias ? a->bias[o] : 0.0f);
            continue;
        }
        for (int t0 = 0; t0 < T; t0 += 8) {  /* tokens in tiles of 8: each block decoded once per tile */
            int tb = T - t0 < 8 ? T - t0 : 8;
            __m256 acc[8];
            for (int t = 0; t < tb; t++) acc[t] = _mm256_setzero_ps();
            for (int g = 0; g < G; g++) {
                __m256 w[4];
                decode_block(b + g * 16, w);
                __m256 sc = _mm256_set1_ps(SCALE[s[g]]);
                for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(w[k], sc);
                for (int t = 0; t < tb; t++) {
                    const float *x = a->x + (size_t)(t0 + t) * in + g * 32;
                    __m256 d = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x), acc[t]);
                    __m256 e = _mm256_mul_ps(w[1], _mm256_loadu_ps(x + 8));
                    d = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + 16), d);
                    e = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + 24), e);
                    acc[t] = _mm256_add_ps(d, e);
                }
            }
            for (int t = 0; t < tb; t++)
                a->y[(size_t)(t0 + t) * a->out + o] = hsum(acc[t]) + (a->bias ? a->bias[o] : 0.0f);
        }
#else
        for (int t = 0; t < T; t++) {
            const float *x = a->x + (size_t)t * in;
            float acc = 0.0f;
            for (int g = 0; g < G; g++) {
                float d = 0.0f;
                for (int j = 0; j < 16; j++) {
                    uint8_t byte = b[g * 16 + j];
                    d += LUT2[byte & 15] * x[g * 32 + 2 * j] + LUT2[byte >> 4] * x[g * 32 + 2 * j + 1];
                }
                acc += d * SCALE[s[g]];
            }
            a->y[(size_t)t * a->out + o] = acc + (a->bias ? a->bias[o] : 0.0f);
        }
#endif
    }
}

void mxfp4_gemv(const uint8_t *blocks, const uint8_t *scales, const float *x, const float *bias, float *y,
                int T, int out, int G, int nthreads) {
    init_scales();
    float xperm[T == 1 ? G * 32 : 1];
    if (T == 1)  /* the order decode_block_split produces: per group, even positions then odd */
        for (int g = 0; g < G; g++)
            for (int k = 0; k < 16; k++) {
                xperm[g * 32 + k] = x[g * 32 + 2 * k];
                xperm[g * 32 + 16 + k] = x[g * 32 + 2 * k + 1];
            }
    mx_args a = {blocks, scales, x, bias, y, T, out, G, xperm};
    parallel_rows(mx_rows, &a, out, out < 64 * nthreads ? 1 : nthreads);
}

#ifdef HAVE_AVX2
/* dst[j * dst_stride + i] = src[i * src_stride + j] for an 8 x 8 block (32-byte aligned rows). */
static inline void transpose8(const float *src, int src_stride, float *dst, int dst_stride) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_load_ps(src + i * src_stride);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    static const int lo[4] = {0, 1, 2, 3};
    for (int i = 0; i < 4; i++) {
        _mm256_store_ps(dst + lo[i] * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_store_ps(dst + (lo[i] + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}
#endif

/* ---- many tokens: y (T, out) = x (T, in) @ W.T + bias, a packed GEMM that unpacks W a panel at a time ----
 * Sixteen rows of W are unpacked into a k-major float32 panel (in x 16, in L2) and multiplied with
 * six tokens at a time, x packed k-major too (in x 6): twelve accumulators, one FMA per weight and token. */
#define GM_MR 6
#define GM_NR 16
typedef struct { const uint8_t *blocks, *scales; const float *xp, *bias; float *y; int T, Tp, out, G; } gm_args;

static void gm_blocks(void *p, int begin, int end) {
    gm_args *a = (gm_args *)p;
    int G = a->G, in = G * 32;
    float *panel = aligned_alloc(32, (size_t)in * GM_NR * sizeof(float));
    if (!panel) abort();
    for (int blk = begin; blk < end; blk++) {
        int o0 = blk * GM_NR, nr = a->out - o0 < GM_NR ? a->out - o0 : GM_NR;
        for (int g = 0; g < G; g++) {  /* unpack 16 rows x 32 k into the panel, k-major */
            float row[GM_NR][32] __attribute__((aligned(32)));
            for (int r = 0; r < GM_NR; r++) {
                if (r >= nr) { memset(row[r], 0, sizeof(row[r])); continue; }
                const uint8_t *b = a->blocks + ((size_t)(o0 + r) * G + g) * 16;
                float sc = SCALE[a->scales[(size_t)(o0 + r) * G + g]];
#ifdef HAVE_AVX2
                __m256 w[4];
                decode_block(b, w);
                for (int q = 0; q < 4; q++) _mm256_store_ps(row[r] + 8 * q, _mm256_mul_ps(w[q], _mm256_set1_ps(sc)));
#else
                for (int j = 0; j < 16; j++) {
                    row[r][2 * j] = LUT2[b[j] & 15] * sc;
                    row[r][2 * j + 1] = LUT2[b[j] >> 4] * sc;
                }
#endif
            }
            float *dst = panel + (size_t)g * 32 * GM_NR;
#ifdef HAVE_AVX2
            for (int kb = 0; kb < 32; kb += 8)
                for (int rb = 0; rb < GM_NR; rb += 8) transpose8(&row[rb][kb], 32, dst + kb * GM_NR + rb, GM_NR);
#else
            for (int k = 0; k < 32; k++)
                for (int r = 0; r < GM_NR; r++) dst[k * GM_NR + r] = row[r][k];
#endif
        }
        for (int t0 = 0; t0 < a->Tp; t0 += GM_MR) {
            const float *xp = a->xp + (size_t)t0 * in;  /* k-major: xp[k * 6 + t] */
            float res[GM_MR][GM_NR];
#ifdef HAVE_AVX2
            __m256 c[GM_MR][2];
            for (int t = 0; t < GM_MR; t++) c[t][0] = c[t][1] = _mm256_setzero_ps();
            for (int k = 0; k < in; k++) {
                __m256 b0 = _mm256_load_ps(panel + k * GM_NR), b1 = _mm256_load_ps(panel + k * GM_NR + 8);
                for (int t = 0; t < GM_MR; t++) {
                    __m256 x = _mm256_broadcast_ss(xp + k * GM_MR + t);
                    c[t][0] = _mm256_fmadd_ps(x, b0, c[t][0]);
                    c[t][1] = _mm256_fmadd_ps(x, b1, c[t][1]);
                }
            }
            for (int t = 0; t < GM_MR; t++) {
                _mm256_storeu_ps(res[t], c[t][0]);
                _mm256_storeu_ps(res[t] + 8, c[t][1]);
            }
#else
            memset(res, 0, sizeof(res));
            for (int k = 0; k < in; k++)
                for (int t = 0; t < GM_MR; t++)
                    for (int r = 0; r < GM_NR; r++) res[t][r] += xp[k * GM_MR + t] * panel[k * GM_NR + r];
#endif
            for (int t = 0; t < GM_MR && t0 + t < a->T; t++)
                for (int r = 0; r < nr; r++)
                    a->y[(size_t)(t0 + t) * a->out + o0 + r] = res[t][r] + (a->bias ? a->bias[o0 + r] : 0.0f);
        }
    }
    free(panel);
}

void mxfp4_gemm(const uint8_t *blocks, const uint8_t *scales, const float *x, const float *bias, float *y,
                int T, int out, int G, int nthreads) {
    init_scales();
    int in = G * 32, Tp = (T + GM_MR - 1) / GM_MR * GM_MR;
    float *xp = aligned_alloc(32, (size_t)Tp * in * sizeof(float));
    if (!xp) abort();
    for (int t0 = 0; t0 < Tp; t0 += GM_MR)  /* pack x k-major per tile of six tokens, zero rows past T */
        for (int k = 0; k < in; k++)
            for (int t = 0; t < GM_MR; t++)
                xp[(size_t)t0 * in + k * GM_MR + t] = t0 + t < T ? x[(size_t)(t0 + t) * in + k] : 0.0f;
    gm_args a = {blocks, scales, xp, bias, y, T, Tp, out, G};
    int nblocks = (out + GM_NR - 1) / GM_NR;
    parallel_rows(gm_blocks, &a, nblocks, nthreads);
    free(xp);
}

/* ---- decode with int8 activations: y[o] = sum_g 2^(s-128) * dx[g] * sum_k LUT2[w] * qx[k] + bias[o] ----
 * x is quantized per 32-element group to int8 (dx = max|x| / 127), the nibbles are decoded to int8 by a
 * table lookup, and the products are summed in integers (maddubs/madd); only the group scale is float.
 * qx layout per pair of groups (g, g+1), 64 bytes: even positions of g, even of g+1, odd of g, odd of g+1,
 * the order a 32-byte load of both groups' packed bytes decodes to; an odd last group: even, then odd. */
typedef struct { const uint8_t *blocks, *scales; const int8_t *qx; const uint8_t *qa; const float *dx, *bias; float *y; int G; const int32_t *nc; const int8_t *qv; int T, out; } q8_args;
/* Per-row sizes of the quantized activations (rows t = 0..T-1 lie one after another). */
#define Q8_X(G) ((G) * 32)
#define Q8_DX(G) ((G) * 5 + 20)  /* each group's dx four times (+ 4 padding), then once each (+ 16) */
#define Q8_NC(G) ((G) * 4)
#define Q8_QV(G) (((G) + 3) / 4 * 128)

/* Where group g's even (and odd) positions start in qx. */
static inline int q8_even(int g, int G) { return g % 2 == 0 && g + 1 == G ? g * 32 : (g - g % 2) * 32 + (g % 2) * 16; }
static inline int q8_odd(int g, int G) { return q8_even(g, G) + (g % 2 == 0 && g + 1 == G ? 16 : 32); }

/* One group in plain C: the integer dot product of its 32 weights (doubled e2m1) and qx. */
static inline int q8_group(const uint8_t *b, const int8_t *qx, int g, int G) {
    const int8_t *qe = qx + q8_even(g, G), *qo = qx + q8_odd(g, G);
    int sum = 0;
    for (int j = 0; j < 16; j++) sum += LUT2[b[g * 16 + j] & 15] * qe[j] + LUT2[b[g * 16 + j] >> 4] * qo[j];
    return sum;
}

#ifdef HAVE_AVX2
/* Two groups (g, g+1) at once: 8 int32 partial sums, the low 4 for g, the high 4 for g+1.
 * maddubs multiplies unsigned by signed bytes: |x| (precomputed) times w with x's sign, |sums| <= 2 * 127 * 12. */
static inline __m256i q8_pair(const uint8_t *b, const int8_t *q, const uint8_t *qa) {
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)LUT2));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)b);
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, mask));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
    __m256i ae = _mm256_loadu_si256((const __m256i *)qa), ao = _mm256_loadu_si256((const __m256i *)(qa + 32));
    __m256i se = _mm256_loadu_si256((const __m256i *)q), so = _mm256_loadu_si256((const __m256i *)(q + 32));
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(ae, _mm256_sign_epi8(lo, se)),
                                 _mm256_maddubs_epi16(ao, _mm256_sign_epi8(hi, so)));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
/* The block scales of groups g..g+3 as floats 2^(s-127) (exponent bits s), each repeated in 4 lanes:
 * [g x4, g+1 x4] and [g+2 x4, g+3 x4]. Exponent 0 reads as 0 and 255 as inf (2^-127 and 2^128 exactly). */
static inline void q8_scales4(const uint8_t *s, __m256 *s01, __m256 *s23) {
    int32_t four;
    memcpy(&four, s, 4);
    __m256i v = _mm256_set1_epi32(four);
    const __m256i c01 = _mm256_setr_epi8(0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1,
                                         1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1);
    const __m256i c23 = _mm256_add_epi8(c01, _mm256_setr_epi8(2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0,
                                                              2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0));
    *s01 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_shuffle_epi8(v, c01), 23));
    *s23 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_shuffle_epi8(v, c23), 23));
}
#endif

#ifdef HAVE_VNNI
/* Four groups (g..g+3, 64 packed bytes) at once with vpdpbusd, which multiplies unsigned by signed bytes:
 * the weights are made unsigned (doubled e2m1 + 12, 0..24) and the excess, 12 * sum(qx) per group, starts
 * the accumulator negated (nc: -3 * sum(qx) in each of the group's four lanes). Lanes 4j..4j+3 hold group g+j. */
static const uint8_t LUT2U[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
static inline __m512i q8_quad(const uint8_t *b, const int8_t *q, const int32_t *nc) {  /* q: qv's quad layout */
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)LUT2U));
    const __m512i mask = _mm512_set1_epi8(0x0F);
    __m512i v = _mm512_loadu_si512(b);
    __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, mask));
    __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask));
    __m512i acc = _mm512_loadu_si512(nc);
    acc = _mm512_dpbusd_epi32(acc, lo, _mm512_loadu_si512(q));
    return _mm512_dpbusd_epi32(acc, hi, _mm512_loadu_si512(q + 64));
}
#endif

/* Output row o for activation row t; the same operations in the same order for any T, so a row's
 * result does not depend on the rows beside it. */
static inline float q8_dot(const q8_args *a, int o, int t) {
    int G = a->G;
    const int8_t *qx = a->qx + (size_t)t * Q8_X(G);
    const float *dx = a->dx + (size_t)t * Q8_DX(G);
    const int32_t *nc = a->nc + (size_t)t * Q8_NC(G);
    const int8_t *qv = a->qv + (size_t)t * Q8_QV(G);
    const uint8_t *b = a->blocks + (size_t)o * G * 16;
    const uint8_t *s = a->scales + (size_t)o * G;
    float r = 0.0f;
    (void)nc; (void)qv;
    int g = 0;
#ifdef HAVE_VNNI
    {
        const __m128i rep4 = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        const float *dg = dx + G * 4 + 4;  /* dx once per group */
        __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
        for (; g + 16 <= G; g += 16) {
            /* 16 groups: four quads' integer lanes summed per group first (lane 4l + i of u is group
             * 4i + l; `order` puts them in group order), then one float conversion and scale for all */
            for (int l = 0; l < 256; l += 64) _mm_prefetch((const char *)(b + g * 16 + 1024 + l), _MM_HINT_T0);
            __m512i q0 = q8_quad(b + g * 16, qv + g * 32, nc + g * 4);
            __m512i q1 = q8_quad(b + g * 16 + 64, qv + g * 32 + 128, nc + g * 4 + 16);
            __m512i q2 = q8_quad(b + g * 16 + 128, qv + g * 32 + 256, nc + g * 4 + 32);
            __m512i q3 = q8_quad(b + g * 16 + 192, qv + g * 32 + 384, nc + g * 4 + 48);
            __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(q0, q1), _mm512_unpackhi_epi32(q0, q1));
            __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(q2, q3), _mm512_unpackhi_epi32(q2, q3));
            __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
            __m512 f = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(order, u));
            __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(s + g))), 23));
            acc1 = _mm512_fmadd_ps(f, _mm512_mul_ps(sc, _mm512_loadu_ps(dg + g)), acc1);
        }
        for (; g + 8 <= G; g += 8) {  /* two independent quads per step */
            _mm_prefetch((const char *)(b + g * 16 + 1024), _MM_HINT_T0);
            _mm_prefetch((const char *)(b + g * 16 + 1088), _MM_HINT_T0);
            int32_t four[2];
            memcpy(four, s + g, 8);
            __m512 s0 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_set1_epi32(four[0]), rep4)), 23));
            __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_set1_epi32(four[1]), rep4)), 23));
            __m512 f0 = _mm512_cvtepi32_ps(q8_quad(b + g * 16, qv + g * 32, nc + g * 4));
            __m512 f1 = _mm512_cvtepi32_ps(q8_quad(b + g * 16 + 64, qv + g * 32 + 128, nc + g * 4 + 16));
            acc0 = _mm512_fmadd_ps(f0, _mm512_mul_ps(s0, _mm512_loadu_ps(dx + g * 4)), acc0);
            acc1 = _mm512_fmadd_ps(f1, _mm512_mul_ps(s1, _mm512_loadu_ps(dx + g * 4 + 16)), acc1);
        }
        if (g + 4 <= G) {
            int32_t four;
            memcpy(&four, s + g, 4);
            __m512 s0 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_set1_epi32(four), rep4)), 23));
            __m512 f0 = _mm512_cvtepi32_ps(q8_quad(b + g * 16, qv + g * 32, nc + g * 4));
            acc0 = _mm512_fmadd_ps(f0, _mm512_mul_ps(s0, _mm512_loadu_ps(dx + g * 4)), acc0);
            g += 4;
        }
        r = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
#endif
#ifdef HAVE_AVX2
    const uint8_t *qa = a->qa + (size_t)t * Q8_X(G);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (; g + 4 <= G; g += 4) {  /* two independent pairs per step; dx is pre-halved: 2^(s-127) * dx/2 */
        _mm_prefetch((const char *)(b + g * 16 + 1024), _MM_HINT_T0);
        __m256 s01, s23;
        q8_scales4(s + g, &s01, &s23);
        __m256 f0 = _mm256_cvtepi32_ps(q8_pair(b + g * 16, qx + g * 32, qa + g * 32));
        __m256 f1 = _mm256_cvtepi32_ps(q8_pair(b + g * 16 + 32, qx + g * 32 + 64, qa + g * 32 + 64));
        acc0 = _mm256_fmadd_ps(f0, _mm256_mul_ps(s01, _mm256_loadu_ps(dx + g * 4)), acc0);
        acc1 = _mm256_fmadd_ps(f1, _mm256_mul_ps(s23, _mm256_loadu_ps(dx + g * 4 + 8)), acc1);
    }
    if (g + 2 <= G) {
        __m256 sc = _mm256_set_m128(_mm_set1_ps(SCALE[s[g + 1]]), _mm_set1_ps(SCALE[s[g]]));
        __m256 f0 = _mm256_cvtepi32_ps(q8_pair(b + g * 16, qx + g * 32, qa + g * 32));
        acc0 = _mm256_fmadd_ps(f0, _mm256_mul_ps(_mm256_add_ps(sc, sc), _mm256_loadu_ps(dx + g * 4)), acc0);
        g += 2;
    }
    r += hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; g < G; g++) r += (float)q8_group(b, qx, g, G) * (dx[g * 4] * (2.0f * SCALE[s[g]]));
    return r + (a->bias ? a->bias[o] : 0.0f);
}

static void q8_rows(void *p, int begin, int end) {
    q8_args *a = (q8_args *)p;
    for (int o = begin; o < end; o++)
        for (int t = 0; t < a->T; t++) a->y[(size_t)t * a->out + o] = q8_dot(a, o, t);
}

/* Row x (G groups of 32) quantized into one row of each buffer (sizes: Q8_X, Q8_DX, Q8_NC, Q8_QV). */
/* One group of 32 values rounded to int8 steps of max|x| / 127 (to nearest even); returns max|x|. */
static inline float q8_round32(const float *xg, int32_t q[32]) {
    float amax = 0.0f;
#ifdef HAVE_AVX2
    const __m256 nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 32; k += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xg + k), nosign));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    __m256 inv8 = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int k = 0; k < 32; k += 8)  /* rounds to nearest even, as lrintf */
        _mm256_storeu_si256((__m256i *)(q + k), _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + k), inv8)));
#else
    for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(xg[k]));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int k = 0; k < 32; k++) q[k] = (int32_t)lrintf(xg[k] * inv);
#endif
    return amax;
}

static void q8_quantize(const float *x, int G, int8_t *qx, uint8_t *qa, float *dx, int32_t *nc, int8_t *qv) {
    for (int g = 0; g < G; g++) {
        int32_t q[32];
        float amax = q8_round32(x + g * 32, q);
        for (int k = 0; k < 4; k++) dx[g * 4 + k] = amax / 254.0f;
        int32_t sum = 0;
        for (int k = 0; k < 32; k++) sum += q[k];
        for (int k = 0; k < 4; k++) nc[g * 4 + k] = -3 * sum;
        for (int k = 0; k < 16; k++) {
            qv[(g & ~3) * 32 + (g & 3) * 16 + k] = (int8_t)q[2 * k];
            qv[(g & ~3) * 32 + 64 + (g & 3) * 16 + k] = (int8_t)q[2 * k + 1];
        }
        int e = q8_even(g, G), od = q8_odd(g, G);
        for (int k = 0; k < 16; k++) {
            qx[e + k] = (int8_t)q[2 * k];
            qx[od + k] = (int8_t)q[2 * k + 1];
            qa[e + k] = (uint8_t)abs(q[2 * k]);
            qa[od + k] = (uint8_t)abs(q[2 * k + 1]);
        }
    }
    for (int k = 0; k < 4; k++) dx[G * 4 + k] = 0.0f;
    for (int g = 0; g < G + 16; g++) dx[G * 4 + 4 + g] = g < G ? dx[g * 4] : 0.0f;
}

/* y[t] = W x[t] + bias for T rows (decode steps of T sequences): W is read once for all of them. */
void mxfp4_gemv_q8(const uint8_t *blocks, const uint8_t *scales, const float *x, const float *bias, float *y,
                   int T, int out, int G, int nthreads) {
    init_scales();
    int8_t qx[T * Q8_X(G)];
    uint8_t qa[T * Q8_X(G)];  /* |qx| */
    float dx[T * Q8_DX(G)];  /* each group's scale / 2, four times (one per int32 lane), padded for the pair loads */
    int32_t nc[T * Q8_NC(G)];  /* VNNI: -3 * the group's sum of qx, four times (see q8_quad) */
    int8_t qv[T * Q8_QV(G)];  /* VNNI: qx per quad of groups: the even positions of all four, then the odd */
    for (int t = 0; t < T; t++)
        q8_quantize(x + (size_t)t * G * 32, G, qx + t * Q8_X(G), qa + t * Q8_X(G), dx + t * Q8_DX(G),
                    nc + t * Q8_NC(G), qv + t * Q8_QV(G));
    q8_args a = {blocks, scales, qx, qa, dx, bias, y, G, nc, qv, T, out};
    parallel_rows(q8_rows, &a, out, out * T < 64 * nthreads ? 1 : nthreads);
}

/* Decode through several experts in one call: job j is expert ids[j] on its rows[j] rows of x (one
 * after another; rows NULL: one each), y[j's rows] = W[ids[j]] x[those rows] + bias[ids[j]], W packed
 * (E, out, G, 16) / (E, out, G) and bias (E, out). x_rows == 1 (a token's k experts, mlp1): every job
 * reads that one row. One job over all the jobs' output rows: fewer waits than a call per expert, and
 * each y row is what mxfp4_gemv_q8 gives for that expert and row alone (the same q8_dot). */
#define Q8_MAX_EXPERTS 64
typedef struct { q8_args a[Q8_MAX_EXPERTS]; int out; } q8_multi;
static void q8_multi_rows(void *p, int begin, int end) {
    q8_multi *m = (q8_multi *)p;
    for (int r = begin; r < end; r++) {
        const q8_args *a = &m->a[r / m->out];
        int o = r % m->out;
        for (int t = 0; t < a->T; t++) a->y[(size_t)t * a->out + o] = q8_dot(a, o, t);
    }
}

static void q8_experts(const uint8_t *blocks, const uint8_t *scales, const float *bias, const int64_t *ids,
                       const int *rows, int k, const float *x, int x_rows, float *y, int out, int G, int nthreads) {
    init_scales();
    if (k > Q8_MAX_EXPERTS) abort();
    int8_t qx[x_rows * Q8_X(G)];
    uint8_t qa[x_rows * Q8_X(G)];
    float dx[x_rows * Q8_DX(G)];
    int32_t nc[x_rows * Q8_NC(G)];
    int8_t qv[x_rows * Q8_QV(G)];
    for (int t = 0; t < x_rows; t++)
        q8_quantize(x + (size_t)t * G * 32, G, qx + t * Q8_X(G), qa + t * Q8_X(G), dx + t * Q8_DX(G),
                    nc + t * Q8_NC(G), qv + t * Q8_QV(G));
    q8_multi m;
    m.out = out;
    for (int j = 0, first = 0; j < k; j++) {
        int t = x_rows > 1 ? first : 0, n = rows ? rows[j] : 1;
        size_t e = (size_t)ids[j];
        q8_args a = {blocks + e * out * G * 16, scales + e * out * G, qx + t * Q8_X(G), qa + t * Q8_X(G),
                     dx + t * Q8_DX(G), bias ? bias + e * out : 0, y + (size_t)first * out, G, nc + t * Q8_NC(G),
                     qv + t * Q8_QV(G), n, out};
        m.a[j] = a;
        first += n;
    }
    parallel_rows(q8_multi_rows, &m, k * out, k * out < 64 * nthreads ? 1 : nthreads);
}

void mxfp4_gemv_q8_experts(const uint8_t *blocks, const uint8_t *scales, const float *bias, const int64_t *ids, int k,
                           const float *x, int x_rows, float *y, int out, int G, int nthreads) {
    if (k > 16) abort();  /* the Python wrapper's bound */
    q8_experts(blocks, scales, bias, ids, 0, k, x, x_rows, y, out, G, nthreads);
}

/* ---- many tokens with int8 activations: y (T, out) = q8(x) (T, in) @ W.T + bias ----
 * The prefill counterpart of mxfp4_gemv_q8, for the engines that compute in bf16: each token is
 * quantized per 32-element group exactly as there (dx = max|x| / 127), and each y[t, o] is
 * sum_g float(sum_k w[o, k] qx[t, k]) * 2^(s-128) * dx[t, g] (w doubled e2m1): the same terms, summed
 * over g in the same order for any T, so a token's row does not depend on the rows beside it.
 * VNNI: 32 rows of W are unpacked once into a panel of unsigned bytes (doubled e2m1 + 12, as q8_quad)
 * laid out for vpdpbusd (per group and quad of k: 16 rows x 4 bytes, twice) and multiplied with four
 * tokens at a time, each token's 4 bytes broadcast: 64 multiply-adds per instruction, the group's
 * excess (12 * sum qx) starting the accumulator negated, one float FMA per group, row and token.
 * Other builds: mxfp4_gemv_q8 over 16 tokens at a time (the same quantization and terms). */
#define GQ_NR 32
#define GQ_MR 4
#ifdef HAVE_VNNI
typedef struct { const uint8_t *blocks, *scales; const int8_t *xq; const float *dx; const int32_t *nc; const float *bias;
                 float *y; int T, Tp, out, G; } gq_args;

/* Rows o0..o0+31 (nr of them real) unpacked: panel[g * 1024 + q * 128 + v * 64 + r * 4 + i] is the
 * weight of row o0 + 16v + r at k = 32g + 4q + i; ws[g * 32 + r'] the block scale 2^(s-128) of row o0 + r'. */
static void gq_unpack(const gq_args *a, int o0, int nr, uint8_t *panel, float *ws) {
    const __m128i lut = _mm_loadu_si128((const __m128i *)LUT2U), mask = _mm_set1_epi8(0x0F);
    int G = a->G;
    for (int r0 = 0; r0 < GQ_NR; r0 += 4) {
        for (int g = 0; g < G; g++) {
            __m128i lo4[4], hi4[4];  /* row r0+j: k 0..15 and 16..31 of group g, as u8 */
            for (int j = 0; j < 4; j++) {
                int r = r0 + j;
                __m128i b = r < nr ? _mm_loadu_si128((const __m128i *)(a->blocks + ((size_t)(o0 + r) * G + g) * 16))
                                   : _mm_setzero_si128();  /* code 0: weight 0 (unsigned 12) */
                __m128i l = _mm_shuffle_epi8(lut, _mm_and_si128(b, mask));
                __m128i h = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), mask));
                lo4[j] = _mm_unpacklo_epi8(l, h);
                hi4[j] = _mm_unpackhi_epi8(l, h);
                ws[g * GQ_NR + r] = r < nr ? SCALE[a->scales[(size_t)(o0 + r) * G + g]] : 0.0f;
            }
            /* 4 x 4 dword transposes: quad q of rows r0..r0+3 becomes 16 contiguous bytes */
            uint8_t *dst = panel + (size_t)g * 1024 + (r0 / 16) * 64 + (r0 % 16) * 4;
            for (int half = 0; half < 2; half++) {
                __m128i *s = half ? hi4 : lo4;
                __m128i t0 = _mm_unpacklo_epi32(s[0], s[1]), t1 = _mm_unpacklo_epi32(s[2], s[3]);
                __m128i t2 = _mm_unpackhi_epi32(s[0], s[1]), t3 = _mm_unpackhi_epi32(s[2], s[3]);
                int q0 = half * 4;
                _mm_storeu_si128((__m128i *)(dst + (q0 + 0) * 128), _mm_unpacklo_epi64(t0, t1));
                _mm_storeu_si128((__m128i *)(dst + (q0 + 1) * 128), _mm_unpackhi_epi64(t0, t1));
                _mm_storeu_si128((__m128i *)(dst + (q0 + 2) * 128), _mm_unpacklo_epi64(t2, t3));
                _mm_storeu_si128((__m128i *)(dst + (q0 + 3) * 128), _mm_unpackhi_epi64(t2, t3));
            }
        }
    }
}

static void gq_blocks(void *p, int begin, int end) {
    gq_args *a = (gq_args *)p;
    int G = a->G, in = G * 32;
    uint8_t *panel = aligned_alloc(64, (size_t)G * 1024);
    float *ws = aligned_alloc(64, (size_t)G * GQ_NR * sizeof(float));
    if (!panel || !ws) abort();
    for (int blk = begin; blk < end; blk++) {
        int o0 = blk * GQ_NR, nr = a->out - o0 < GQ_NR ? a->out - o0 : GQ_NR;
        gq_unpack(a, o0, nr, panel, ws);
        for (int t0 = 0; t0 < a->Tp; t0 += GQ_MR) {
            __m512 c[GQ_MR][2];
            for (int t = 0; t < GQ_MR; t++) c[t][0] = c[t][1] = _mm512_setzero_ps();
            for (int g = 0; g < G; g++) {
                const uint8_t *wp = panel + (size_t)g * 1024;
                __m512i acc[GQ_MR][2];
                for (int t = 0; t < GQ_MR; t++) acc[t][0] = acc[t][1] = _mm512_set1_epi32(a->nc[(size_t)(t0 + t) * G + g]);
                for (int q = 0; q < 8; q++) {
                    __m512i w0 = _mm512_load_si512(wp + q * 128), w1 = _mm512_load_si512(wp + q * 128 + 64);
                    for (int t = 0; t < GQ_MR; t++) {
                        int32_t four;
                        memcpy(&four, a->xq + (size_t)(t0 + t) * in + g * 32 + q * 4, 4);
                        __m512i xb = _mm512_set1_epi32(four);
                        acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], w0, xb);
                        acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], w1, xb);
                    }
                }
                __m512 s0 = _mm512_load_ps(ws + g * GQ_NR), s1 = _mm512_load_ps(ws + g * GQ_NR + 16);
                for (int t = 0; t < GQ_MR; t++) {
                    __m512 d = _mm512_set1_ps(a->dx[(size_t)(t0 + t) * G + g]);
                    c[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][0]), _mm512_mul_ps(s0, d), c[t][0]);
                    c[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][1]), _mm512_mul_ps(s1, d), c[t][1]);
                }
            }
            for (int t = 0; t < GQ_MR && t0 + t < a->T; t++) {
                float res[GQ_NR];
                _mm512_storeu_ps(res, c[t][0]);
                _mm512_storeu_ps(res + 16, c[t][1]);
                float *y = a->y + (size_t)(t0 + t) * a->out + o0;
                for (int r = 0; r < nr; r++) y[r] = res[r] + (a->bias ? a->bias[o0 + r] : 0.0f);
            }
        }
    }
    free(panel);
    free(ws);
}
#endif

void mxfp4_gemm_q8(const uint8_t *blocks, const uint8_t *scales, const float *x, const float *bias, float *y,
                   int T, int out, int G, int nthreads) {
    init_scales();
#ifdef HAVE_VNNI
    int in = G * 32, Tp = (T + GQ_MR - 1) / GQ_MR * GQ_MR;
    int8_t *xq = aligned_alloc(64, (size_t)Tp * in + 64);
    float *dx = malloc((size_t)Tp * G * sizeof(float));
    int32_t *nc = malloc((size_t)Tp * G * sizeof(int32_t));
    if (!xq || !dx || !nc) abort();
    memset(xq, 0, (size_t)Tp * in + 64);  /* rows past T: zero (their results are not stored) */
    memset(dx, 0, (size_t)Tp * G * sizeof(float));
    memset(nc, 0, (size_t)Tp * G * sizeof(int32_t));
    for (int t = 0; t < T; t++)
        for (int g = 0; g < G; g++) {  /* as the matvec's q8_quantize rounds them */
            int32_t q[32], sum = 0;
            float amax = q8_round32(x + (size_t)t * in + g * 32, q);
            for (int k = 0; k < 32; k++) {
                xq[(size_t)t * in + g * 32 + k] = (int8_t)q[k];
                sum += q[k];
            }
            dx[(size_t)t * G + g] = amax / 127.0f;
            nc[(size_t)t * G + g] = -12 * sum;
        }
    gq_args a = {blocks, scales, xq, dx, nc, bias, y, T, Tp, out, G};
    parallel_rows(gq_blocks, &a, (out + GQ_NR - 1) / GQ_NR, nthreads);
    free(xq);
    free(dx);
    free(nc);
#else
    for (int t0 = 0; t0 < T; t0 += 16) {
        int n = T - t0 < 16 ? T - t0 : 16;
        mxfp4_gemv_q8(blocks, scales, x + (size_t)t0 * G * 32, bias, y + (size_t)t0 * out, n, out, G, nthreads);
    }
#endif
}

/* ---- y[t, o] = sum_i W[o, i] x[t, i] + bias[o], W bf16 (out, in) ---- */
typedef struct { const uint16_t *w; const float *x, *bias; float *y; int T, out, in; const float *xs; } bf_args;

/* Decode streams each weight row once. The hardware prefetchers stop at a 4 KB page boundary, and
 * a row of the 20b shape is 5,760 bytes, so the loads of one row in three start a page cold; a
 * software prefetch 2 KB ahead into L2 (into L1 it evicts lines still in use) keeps the stream going
 * across pages. Paired on this project's Zen 4 VM, 2 threads: the unembedding 1.17-1.24x, the QKV
 * projections 1.10-1.28x, the output projection 1.07-1.09x. */
#define ROW_PREFETCH(p) _mm_prefetch((const char *)(p) + 2048, _MM_HINT_T1)

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#ifdef HAVE_AVX512
/* Output rows w0 and w1 for tb <= 4 token rows of xs (even/odd split per 32, row t at xs + t * in): each
 * 64-byte load of weights (32 of them, split into even and odd lanes as in decode) serves every token and
 * each load of xs both rows. The full 32-blocks only; r0[t] and r1[t] get the sums. Inlined with a
 * constant tb, the accumulators stay in registers. */
static inline __attribute__((always_inline)) void bf_tile512x2(const uint16_t *w0, const uint16_t *w1, const float *xs, int in,
                                                               int tb, float *r0, float *r1) {
    const __m512i odd = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 ae[4], ao[4], be[4], bo[4];
    for (int t = 0; t < tb; t++) ae[t] = ao[t] = be[t] = bo[t] = _mm512_setzero_ps();
    for (int i = 0; i + 32 <= in; i += 32) {
        __m512i v = _mm512_loadu_si512(w0 + i), u = _mm512_loadu_si512(w1 + i);
        __m512 ve = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), vo = _mm512_castsi512_ps(_mm512_and_si512(v, odd));
        __m512 ue = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16)), uo = _mm512_castsi512_ps(_mm512_and_si512(u, odd));
        for (int t = 0; t < tb; t++) {
            __m512 xe = _mm512_loadu_ps(xs + (size_t)t * in + i), xo = _mm512_loadu_ps(xs + (size_t)t * in + i + 16);
            ae[t] = _mm512_fmadd_ps(ve, xe, ae[t]);
            ao[t] = _mm512_fmadd_ps(vo, xo, ao[t]);
            be[t] = _mm512_fmadd_ps(ue, xe, be[t]);
            bo[t] = _mm512_fmadd_ps(uo, xo, bo[t]);
        }
    }
    for (int t = 0; t < tb; t++) {
        r0[t] = _mm512_reduce_add_ps(_mm512_add_ps(ae[t], ao[t]));
        r1[t] = _mm512_reduce_add_ps(_mm512_add_ps(be[t], bo[t]));
    }
}
#endif

static void bf_rows(void *p, int begin, int end) {
    bf_args *a = (bf_args *)p;
    int in = a->in, T = a->T;
    for (int o = begin; o < end; o++) {
        const uint16_t *w = a->w + (size_t)o * in;
        float bias = a->bias ? a->bias[o] : 0.0f;
#ifdef HAVE_AVX512
        if (T == 1) {  /* decode: a 64-byte load is 32 weights; shifting and masking the 32-bit lanes gives the
                        * even and the odd ones as floats (no widening shuffle), against x split to match */
            const float *xs = a->xs;
            const __m512i odd = _mm512_set1_epi32((int)0xFFFF0000u);
            __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
            int i = 0;
            for (; i + 64 <= in; i += 64) {
                ROW_PREFETCH(w + i);
                ROW_PREFETCH(w + i + 32);
                __m512i v0 = _mm512_loadu_si512(w + i), v1 = _mm512_loadu_si512(w + i + 32);
                c0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_loadu_ps(xs + i), c0);
                c1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, odd)), _mm512_loadu_ps(xs + i + 16), c1);
                c2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), _mm512_loadu_ps(xs + i + 32), c2);
                c3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, odd)), _mm512_loadu_ps(xs + i + 48), c3);
            }
            for (; i + 32 <= in; i += 32) {
                __m512i v0 = _mm512_loadu_si512(w + i);
                c0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_loadu_ps(xs + i), c0);
                c1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, odd)), _mm512_loadu_ps(xs + i + 16), c1);
            }
            float r = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)));
            for (; i < in; i++) r += bf16_to_f32(w[i]) * a->x[i];
            a->y[o] = r + bias;
            continue;
        }
        /* a batch of decode rows: output rows in pairs (the last of an odd range paired with itself,
         * its second result dropped), tokens in tiles of 4 */
        int pair = o + 1 < end;
        const uint16_t *w1 = pair ? w + in : w;
        float bias1 = pair && a->bias ? a->bias[o + 1] : 0.0f;
        for (int t0 = 0; t0 < T; t0 += 4) {
            int tb = T - t0 < 4 ? T - t0 : 4;
            float r[4], r1[4];
            const float *xs = a->xs + (size_t)t0 * in;
            switch (tb) {
                case 4: bf_tile512x2(w, w1, xs, in, 4, r, r1); break;
                case 3: bf_tile512x2(w, w1, xs, in, 3, r, r1); break;
                case 2: bf_tile512x2(w, w1, xs, in, 2, r, r1); break;
                default: bf_tile512x2(w, w1, xs, in, 1, r, r1); break;
            }
            for (int t = 0; t < tb; t++) {
                const float *x = a->x + (size_t)(t0 + t) * in;
                for (int k = in / 32 * 32; k < in; k++) {
                    r[t] += bf16_to_f32(w[k]) * x[k];
                    if (pair) r1[t] += bf16_to_f32(w1[k]) * x[k];
                }
                a->y[(size_t)(t0 + t) * a->out + o] = r[t] + bias;
                if (pair) a->y[(size_t)(t0 + t) * a->out + o + 1] = r1[t] + bias1;
            }
        }
        o += pair;
        continue;
#endif
#ifdef HAVE_AVX2
#define BF16X8(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
        if (T == 1) {  /* decode: four independent accumulators */
            const float *x = a->x;
            __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
            int i = 0;
            for (; i + 32 <= in; i += 32) {
                ROW_PREFETCH(w + i);
                c0 = _mm256_fmadd_ps(BF16X8(w + i), _mm256_loadu_ps(x + i), c0);
                c1 = _mm256_fmadd_ps(BF16X8(w + i + 8), _mm256_loadu_ps(x + i + 8), c1);
                c2 = _mm256_fmadd_ps(BF16X8(w + i + 16), _mm256_loadu_ps(x + i + 16), c2);
                c3 = _mm256_fmadd_ps(BF16X8(w + i + 24), _mm256_loadu_ps(x + i + 24), c3);
            }
            float r = hsum(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
            for (; i < in; i++) r += bf16_to_f32(w[i]) * x[i];
            a->y[o] = r + bias;
            continue;
        }
        for (int t0 = 0; t0 < T; t0 += 8) {  /* tokens in tiles of 8 */
            int tb = T - t0 < 8 ? T - t0 : 8;
            __m256 acc[8];
            for (int t = 0; t < tb; t++) acc[t] = _mm256_setzero_ps();
            int j = 0;
            for (; j + 8 <= in; j += 8) {
                __m256 wf = BF16X8(w + j);
                for (int t = 0; t < tb; t++)
                    acc[t] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(a->x + (size_t)(t0 + t) * in + j), acc[t]);
            }
            for (int t = 0; t < tb; t++) {
                float r = hsum(acc[t]);
                for (int k = j; k < in; k++) r += bf16_to_f32(w[k]) * a->x[(size_t)(t0 + t) * in + k];
                a->y[(size_t)(t0 + t) * a->out + o] = r + bias;
            }
        }
#else
        for (int t = 0; t < T; t++) {
            float r = 0.0f;
            for (int k = 0; k < in; k++) r += bf16_to_f32(w[k]) * a->x[(size_t)t * in + k];
            a->y[(size_t)t * a->out + o] = r + bias;
        }
#endif
    }
}

void bf16_gemv(const uint16_t *w, const float *x, const float *bias, float *y, int T, int out, int in, int nthreads) {
    float *xs = 0;
#ifdef HAVE_AVX512
    if (T < 64) {  /* each row, per 32 values: the 16 at even positions, then the 16 at odd ones (tails stay in x) */
        /* 64-byte aligned (rows too when in % 16 == 0): a 64-byte load across two cache lines costs two */
        xs = aligned_alloc(64, ((size_t)T * in + 32) * sizeof(float) / 64 * 64 + 64);
        if (!xs) abort();
        for (int t = 0; t < T; t++)
            for (int b = 0; b + 32 <= in; b += 32)
                for (int k = 0; k < 16; k++) {
                    xs[(size_t)t * in + b + k] = x[(size_t)t * in + b + 2 * k];
                    xs[(size_t)t * in + b + 16 + k] = x[(size_t)t * in + b + 2 * k + 1];
                }
    }
#endif
    bf_args a = {w, x, bias, y, T, out, in, xs};
    parallel_rows(bf_rows, &a, out, out < 64 * nthreads ? 1 : nthreads);
    free(xs);
}

/* ---- y = bf16(x) @ W.T + bias, W bf16: activations rounded to bf16 (to nearest even), products summed in float32 ----
 * For engines computing with bf16 weights on CPUs with AVX-512 BF16 (Zen 4, Sapphire Rapids and later;
 * kernels.py decides at run time, so the functions carry that target themselves): vdpbf16ps multiplies 32
 * weights read as they lie by 32 activations, two products per float lane, no widening. Rows in groups of
 * 4 (one at a time for up to 16 tokens: decode steps), tokens in tiles of 4 and blocks of 64 (their
 * activations stay in L2 while the rows stream). Each y[t, o] is summed in the same order for any T: a row comes out the same alone and in a batch.
 * Other builds: the activations rounded the same way, then bf16_gemv. */
static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even; a NaN stays one (torch's 0x7FC0) */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
#define BD_ROWS 4
#define BD_BLOCK 64
#define BD_FEW 16
#ifdef HAVE_AVX512
#define BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
typedef struct { const uint16_t *w; const uint16_t *xb; const float *bias; float *y; int T, out, in, rows; } bd_args;

static inline BF16_TARGET __attribute__((always_inline)) void bd_tile(const uint16_t *const w[BD_ROWS], int rows,
                                                                      const uint16_t *xb, int in, int tb, float r[BD_ROWS][4]) {
    /* one row at a time (up to BD_FEW tokens: decode): four accumulators per token, one per 32-value
     * chunk of each 128, so that a token alone still has four chains of vdpbf16ps in flight (it
     * streams the weights as fast as the float32 matvec); groups of 4 rows (prefill): one each, 16
     * in all. Either way a token's sums come in the same order for any tb. */
    const int split = rows == 1 ? 4 : 1;
    __m512 acc[BD_ROWS][4][4];
    for (int j = 0; j < rows; j++)
        for (int t = 0; t < tb; t++)
            for (int h = 0; h < split; h++) acc[j][t][h] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 128 <= in; i += 128)
        for (int h = 0; h < 4; h++) {
            __m512bh v[BD_ROWS];
            if (rows == 1) ROW_PREFETCH(w[0] + i + 32 * h);
            for (int j = 0; j < rows; j++) v[j] = (__m512bh)_mm512_loadu_si512(w[j] + i + 32 * h);
            for (int t = 0; t < tb; t++) {
                __m512bh x = (__m512bh)_mm512_loadu_si512(xb + (size_t)t * in + i + 32 * h);
                for (int j = 0; j < rows; j++) acc[j][t][h % split] = _mm512_dpbf16_ps(acc[j][t][h % split], v[j], x);
            }
        }
    for (; i + 32 <= in; i += 32) {
        __m512bh v[BD_ROWS];
        for (int j = 0; j < rows; j++) v[j] = (__m512bh)_mm512_loadu_si512(w[j] + i);
        for (int t = 0; t < tb; t++) {
            __m512bh x = (__m512bh)_mm512_loadu_si512(xb + (size_t)t * in + i);
            for (int j = 0; j < rows; j++) acc[j][t][0] = _mm512_dpbf16_ps(acc[j][t][0], v[j], x);
        }
    }
    for (int j = 0; j < rows; j++)
        for (int t = 0; t < tb; t++) {
            __m512 sum = acc[j][t][0];
            if (split == 4)
                sum = _mm512_add_ps(_mm512_add_ps(acc[j][t][0], acc[j][t][1]), _mm512_add_ps(acc[j][t][2], acc[j][t][3]));
            float s = _mm512_reduce_add_ps(sum);
            for (int k = i; k < in; k++) s += bf16_to_f32(w[j][k]) * bf16_to_f32(xb[(size_t)t * in + k]);
            r[j][t] = s;
        }
}

static BF16_TARGET void bd_rows(void *p, int begin, int end) {
    bd_args *a = (bd_args *)p;
    int in = a->in, rows = a->rows;
    for (int b0 = 0; b0 < a->T; b0 += BD_BLOCK) {
        int b1 = a->T - b0 < BD_BLOCK ? a->T : b0 + BD_BLOCK;
        for (int g = begin; g < end; g++) {
            int o0 = g * rows, nr = a->out - o0 < rows ? a->out - o0 : rows;
            const uint16_t *w[BD_ROWS];
            for (int j = 0; j < rows; j++) w[j] = a->w + (size_t)(o0 + (j < nr ? j : 0)) * in;  /* a ragged group repeats its first row */
            for (int t0 = b0; t0 < b1; t0 += 4) {
                int tb = b1 - t0 < 4 ? b1 - t0 : 4;
                float r[BD_ROWS][4];
                const uint16_t *xb = a->xb + (size_t)t0 * in;
                switch (rows * 8 + tb) {  /* constant tile shapes, so the accumulators stay in registers */
                    case 36: bd_tile(w, 4, xb, in, 4, r); break;
                    case 35: bd_tile(w, 4, xb, in, 3, r); break;
                    case 34: bd_tile(w, 4, xb, in, 2, r); break;
                    case 33: bd_tile(w, 4, xb, in, 1, r); break;
                    case 12: bd_tile(w, 1, xb, in, 4, r); break;
                    case 11: bd_tile(w, 1, xb, in, 3, r); break;
                    case 10: bd_tile(w, 1, xb, in, 2, r); break;
                    default: bd_tile(w, 1, xb, in, 1, r); break;
                }
                for (int t = 0; t < tb; t++)
                    for (int j = 0; j < nr; j++)
                        a->y[(size_t)(t0 + t) * a->out + o0 + j] = r[j][t] + (a->bias ? a->bias[o0 + j] : 0.0f);
            }
        }
    }
}

static BF16_TARGET void bd_round(const float *x, uint16_t *xb, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        _mm512_storeu_si512(xb + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
    for (; i < n; i++) xb[i] = f32_to_bf16(x[i]);
}
#endif

void bf16_gemv_bf16x(const uint16_t *w, const float *x, const float *bias, float *y, int T, int out, int in, int nthreads) {
    size_t n = (size_t)T * in;
#ifdef HAVE_AVX512
    uint16_t *xb = aligned_alloc(64, (n * 2 + 63) / 64 * 64);
    if (!xb) abort();
    bd_round(x, xb, n);
    int rows = T > BD_FEW ? BD_ROWS : 1;  /* a few tokens: one row at a time streams the weights fastest */
    bd_args a = {w, xb, bias, y, T, out, in, rows};
    int groups = (out + rows - 1) / rows;
    parallel_rows(bd_rows, &a, groups, out < 64 * nthreads ? 1 : nthreads);
    free(xb);
#else
    float *xr = malloc(n * sizeof(float));
    if (!xr) abort();
    for (size_t i = 0; i < n; i++) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    bf16_gemv(w, xr, bias, y, T, out, in, nthreads);
    free(xr);
#endif
}

/* ---- causal grouped-query attention with a sink logit per head, one query row at a time ----
 * q (T, n_kv * rep, d), k and v (rows, n_kv, d), out (T, n_kv * rep, d). Query t sits at key row
 * pos0 + t and sees rows [first, pos0 + t] (first = that minus window - 1, or 0 without a window).
 * Online softmax over tiles of keys (the sink starts the running max with an empty value); no score
 * matrix, no mask, no copy of the cache. Jobs are (group, row) pairs, groups outermost. */
typedef struct { const float *q; const void *k, *v; const float *sinks; float *out; int first, rows, n_kv, rep, d, kv_bf16; float scale; } at_args;
typedef struct { at_args a; int T, pos0, window, per_job; } at_call;

#define AT_TILE 32
#ifdef HAVE_AVX2
/* e^x for x <= 0 (Cephes' polynomial; relative error ~2e-7); below -87 it flushes towards 0. */
static inline __m256 exp_neg(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 fx = _mm256_round_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)),
                                _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

#ifdef HAVE_AVX2
/* Eight vectors -> one vector of their eight horizontal sums, in order. */
static inline __m256 hsum8(const __m256 v[8]) {
    __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* head_dim 64 (every gpt-oss size): up to eight query heads of one KV group per unit, one head per
 * lane, so the scores of a key for all eight heads form one vector (running max, exp and sums are
 * vector ops). A job runs the units of several groups tile by tile, so that each key row is read
 * as one contiguous stretch rather than once per group. */
typedef struct {
    const float *q[8];
    int g, h0, nh;
    __m256 m8, l8;
    float acc[8][64];
} at_unit;

static void at_unit_init(at_unit *u, const at_args *a, int g, int h0, int nh) {
    static const float zero[64];
    float sinks[8];
    u->g = g, u->h0 = h0, u->nh = nh;
    for (int r = 0; r < 8; r++) {
        u->q[r] = r < nh ? a->q + ((size_t)g * a->rep + h0 + r) * 64 : zero;
        sinks[r] = r < nh ? a->sinks[g * a->rep + h0 + r] : 0.0f;
    }
    u->m8 = _mm256_loadu_ps(sinks);
    u->l8 = _mm256_set1_ps(1.0f);
    memset(u->acc, 0, sizeof(u->acc));
}

/* Rows s0..s0+n of one group's keys or values (float32 or bf16 cache), as float32 rows of 64. The copy also
 * keeps the tile in L1: rows 2 KB apart share a few L1 sets and were evicted between heads (3x slower). */
static void at_rows64(const void *base, int bf16, size_t first, int stride, int n, float (*dst)[64]) {
    for (int j = 0; j < n; j++) {
        size_t at = first + (size_t)j * stride;
        for (int c = 0; c < 64; c += 8)
            _mm256_store_ps(dst[j] + c, bf16 ? BF16X8((const uint16_t *)base + at + c) : _mm256_loadu_ps((const float *)base + at + c));
    }
}

/* The online softmax step of a tile: the n rows of scores p become their weights e^(s - max) against
 * the new running max tmax; corr_s gets each head's factor for the sums so far, and the unit's max
 * and denominator move on. */
static inline void at_softmax_tile(at_unit *u, float (*p)[8], int n, __m256 tmax, float corr_s[8]) {
    __m256 corr = exp_neg(_mm256_sub_ps(u->m8, tmax)), sum = _mm256_setzero_ps();
    u->m8 = tmax;
    for (int j = 0; j < n; j++) {
        __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(p[j]), tmax));
        _mm256_storeu_ps(p[j], e);
        sum = _mm256_add_ps(sum, e);
    }
    u->l8 = _mm256_fmadd_ps(u->l8, corr, sum);
    _mm256_storeu_ps(corr_s, corr);
}

static void at_unit_tile(at_unit *u, const at_args *a, int s0, int n) {
    const int stride = a->n_kv * 64;
    const size_t first = (size_t)s0 * stride + u->g * 64;
    float kt[AT_TILE][64] __attribute__((aligned(32))), vt[AT_TILE][64] __attribute__((aligned(32)));
    at_rows64(a->k, a->kv_bf16, first, stride, n, kt);
    float p[AT_TILE][8], corr_s[8];
    __m256 tmax = u->m8, scale = _mm256_set1_ps(a->scale);
    for (int j = 0; j < n; j++) {
        const float *kj = kt[j];
        __m256 dot[8];
        for (int r = 0; r < 8; r++) dot[r] = _mm256_setzero_ps();
        for (int c = 0; c < 64; c += 8) {
            __m256 kc = _mm256_load_ps(kj + c);
            for (int r = 0; r < 8; r++) dot[r] = _mm256_fmadd_ps(_mm256_loadu_ps(u->q[r] + c), kc, dot[r]);
        }
        __m256 sc = _mm256_mul_ps(hsum8(dot), scale);
        _mm256_storeu_ps(p[j], sc);
        tmax = _mm256_max_ps(tmax, sc);
    }
    at_softmax_tile(u, p, n, tmax, corr_s);
    at_rows64(a->v, a->kv_bf16, first, stride, n, vt);
    for (int r = 0; r < u->nh; r++) {
        __m256 o[8], cr = _mm256_set1_ps(corr_s[r]);
        for (int c = 0; c < 8; c++) o[c] = _mm256_mul_ps(_mm256_loadu_ps(u->acc[r] + 8 * c), cr);
        for (int j = 0; j < n; j++) {
            __m256 pj = _mm256_set1_ps(p[j][r]);
            for (int c = 0; c < 8; c++) o[c] = _mm256_fmadd_ps(pj, _mm256_load_ps(vt[j] + 8 * c), o[c]);
        }
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(u->acc[r] + 8 * c, o[c]);
    }
}

static void at_unit_store(const at_unit *u, const at_args *a) {
    float inv[8];
    _mm256_storeu_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.0f), u->l8));
    for (int r = 0; r < u->nh; r++) {
        float *out = a->out + ((size_t)u->g * a->rep + u->h0 + r) * 64;
        for (int c = 0; c < 64; c += 8)
            _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(u->acc[r] + c), _mm256_set1_ps(inv[r])));
    }
}

#ifdef HAVE_AVX512
/* The same unit with bf16 products (kv_bf16 == 2: a bf16 cache on a CPU with AVX-512 BF16, where
 * kernels.py's bf16_activations() holds). The query is rounded to bf16 once; a key's eight scores are
 * 16 vdpbf16ps on the row as it lies in the cache (no copy; each key row is read once for all eight
 * heads). The probabilities are rounded to bf16 and two keys' values go into one vdpbf16ps: rows j and
 * j + 1 interleaved (unpacklo/hi_epi16), so each float32 sum holds its 16 dimensions in the lane order
 * that interleave gives (BD_DIM; at_bd_store puts them back). About twice the work per instruction of
 * the float32 path, at the rounding error a bf16 cache already has. */
#define BD_DIM(c, i) (32 * ((c) >> 1) + 8 * ((i) >> 2) + 4 * ((c) & 1) + ((i) & 3))

static BF16_TARGET void at_bd_tile(at_unit *u, const at_args *a, int s0, int n) {
    static const uint16_t zero_row[64] __attribute__((aligned(64)));
    const int stride = a->n_kv * 64;
    const uint16_t *K = (const uint16_t *)a->k + (size_t)s0 * stride + u->g * 64;
    const uint16_t *V = (const uint16_t *)a->v + (size_t)s0 * stride + u->g * 64;
    __m512bh q[8][2];
    for (int r = 0; r < 8; r++)
        for (int h = 0; h < 2; h++)
            q[r][h] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(u->q[r] + 32 * h + 16), _mm512_loadu_ps(u->q[r] + 32 * h));
    float p[AT_TILE + 1][8] __attribute__((aligned(32))), corr_s[8];
    __m256 tmax = u->m8, scale = _mm256_set1_ps(a->scale);
    for (int j = 0; j < n; j++) {
        const uint16_t *kj = K + (size_t)j * stride;
        __m512bh k0 = (__m512bh)_mm512_loadu_si512(kj), k1 = (__m512bh)_mm512_loadu_si512(kj + 32);
        __m256 h[8];
        for (int r = 0; r < 8; r++) {
            __m512 s = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), q[r][0], k0), q[r][1], k1);
            h[r] = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
        }
        __m256 sc = _mm256_mul_ps(hsum8(h), scale);
        _mm256_store_ps(p[j], sc);
        tmax = _mm256_max_ps(tmax, sc);
    }
    at_softmax_tile(u, p, n, tmax, corr_s);
    _mm256_store_ps(p[n], _mm256_setzero_ps());  /* an odd tile's last key pairs with nothing */
    int pairs = (n + 1) / 2;
    uint32_t pp[AT_TILE / 2][8] __attribute__((aligned(32)));  /* per key pair, per head: (p_j, p_j+1) as bf16 */
    __m512i vt[AT_TILE / 2][4];  /* per key pair: the two value rows interleaved */
    for (int jp = 0; jp < pairs; jp++) {
        __m128i e = (__m128i)_mm256_cvtneps_pbh(_mm256_load_ps(p[2 * jp]));
        __m128i o = (__m128i)_mm256_cvtneps_pbh(_mm256_load_ps(p[2 * jp + 1]));
        _mm_store_si128((__m128i *)pp[jp], _mm_unpacklo_epi16(e, o));
        _mm_store_si128((__m128i *)pp[jp] + 1, _mm_unpackhi_epi16(e, o));
        const uint16_t *va = V + (size_t)(2 * jp) * stride, *vb = 2 * jp + 1 < n ? va + stride : zero_row;
        __m512i a0 = _mm512_loadu_si512(va), a1 = _mm512_loadu_si512(va + 32);
        __m512i b0 = _mm512_loadu_si512(vb), b1 = _mm512_loadu_si512(vb + 32);
        vt[jp][0] = _mm512_unpacklo_epi16(a0, b0), vt[jp][1] = _mm512_unpackhi_epi16(a0, b0);
        vt[jp][2] = _mm512_unpacklo_epi16(a1, b1), vt[jp][3] = _mm512_unpackhi_epi16(a1, b1);
    }
    for (int h0 = 0; h0 < 8; h0 += 4) {  /* four heads' sums (16 registers) at a time */
        __m512 o[4][4];
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++)
                o[r][c] = _mm512_mul_ps(_mm512_loadu_ps(u->acc[h0 + r] + 16 * c), _mm512_set1_ps(corr_s[h0 + r]));
        for (int jp = 0; jp < pairs; jp++)
            for (int r = 0; r < 4; r++) {
                __m512bh pr = (__m512bh)_mm512_set1_epi32((int)pp[jp][h0 + r]);
                for (int c = 0; c < 4; c++) o[r][c] = _mm512_dpbf16_ps(o[r][c], (__m512bh)vt[jp][c], pr);
            }
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(u->acc[h0 + r] + 16 * c, o[r][c]);
    }
}

static void at_bd_store(const at_unit *u, const at_args *a) {
    for (int r = 0; r < u->nh; r++) {
        float *out = a->out + ((size_t)u->g * a->rep + u->h0 + r) * 64, inv = 1.0f / u->l8[r];
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < 16; i++) out[BD_DIM(c, i)] = u->acc[r][16 * c + i] * inv;
    }
}
#endif

/* Groups [g0, g1) of one query row. */
static void at_groups64(const at_args *a, int g0, int g1) {
    int per = (a->rep + 7) / 8, nu = 0;
    at_unit *units = aligned_alloc(32, sizeof(at_unit) * (size_t)(g1 - g0) * per);
    if (!units) abort();
    for (int g = g0; g < g1; g++)
        for (int h0 = 0; h0 < a->rep; h0 += 8) at_unit_init(&units[nu++], a, g, h0, a->rep - h0 < 8 ? a->rep - h0 : 8);
    const int stride = a->n_kv * 64, span = (g1 - g0) * 64;
    for (int s0 = a->first; s0 < a->rows; s0 += AT_TILE) {
        int n = a->rows - s0 < AT_TILE ? a->rows - s0 : AT_TILE;
        /* the next tile's rows, into L2: a tile of this job's groups is up to 32 KB, L1's size (into
         * L1 they evicted the tile in use: 8k keys 1.45x slower; two or four tiles ahead: no better) */
        for (int j = s0 + AT_TILE; j < s0 + 2 * AT_TILE && j < a->rows; j++)
            for (int c = 0; c < span; c += 16) {
                size_t at = ((size_t)j * stride + g0 * 64 + c) * (a->kv_bf16 ? 2 : 4);
                _mm_prefetch((const char *)a->k + at, _MM_HINT_T1);
                _mm_prefetch((const char *)a->v + at, _MM_HINT_T1);
            }
#ifdef HAVE_AVX512
        if (a->kv_bf16 == 2) {
            for (int i = 0; i < nu; i++) at_bd_tile(&units[i], a, s0, n);
            continue;
        }
#endif
        for (int i = 0; i < nu; i++) at_unit_tile(&units[i], a, s0, n);
    }
#ifdef HAVE_AVX512
    if (a->kv_bf16 == 2) {
        for (int i = 0; i < nu; i++) at_bd_store(&units[i], a);
        free(units);
        return;
    }
#endif
    for (int i = 0; i < nu; i++) at_unit_store(&units[i], a);
    free(units);
}
#endif

static void at_group(const at_args *a, int g) {
    int d = a->d, rep = a->rep, stride = a->n_kv * d;
    float acc[rep * d], m[rep], l[rep], sc[rep * AT_TILE];
    const float *q = a->q + (size_t)g * rep * d;
    for (int r = 0; r < rep; r++) {
        m[r] = a->sinks[g * rep + r];
        l[r] = 1.0f;
    }
    memset(acc, 0, sizeof(acc));
    for (int s0 = a->first; s0 < a->rows; s0 += AT_TILE) {
        int n = a->rows - s0 < AT_TILE ? a->rows - s0 : AT_TILE;
        const float *k = (const float *)a->k + (size_t)s0 * stride + g * d, *v = (const float *)a->v + (size_t)s0 * stride + g * d;
        for (int r = 0; r < rep; r++) {
            const float *qr = q + r * d;
            float *sr = sc + r * AT_TILE, mt = m[r];
            for (int j = 0; j < n; j++) {
                const float *kj = k + (size_t)j * stride;
                float dot = 0.0f;
                int i = 0;
#ifdef HAVE_AVX2
                __m256 c0 = _mm256_setzero_ps(), c1 = c0;
                for (; i + 16 <= d; i += 16) {
                    c0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i), _mm256_loadu_ps(kj + i), c0);
                    c1 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i + 8), _mm256_loadu_ps(kj + i + 8), c1);
                }
                dot = hsum(_mm256_add_ps(c0, c1));
#endif
                for (; i < d; i++) dot += qr[i] * kj[i];
                sr[j] = dot * a->scale;
                mt = sr[j] > mt ? sr[j] : mt;
            }
            float corr = expf(m[r] - mt), sum = 0.0f;
            int j = 0;
#ifdef HAVE_AVX2
            __m256 s8 = _mm256_setzero_ps(), mt8 = _mm256_set1_ps(mt);
            for (; j + 8 <= n; j += 8) {
                __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mt8));
                _mm256_storeu_ps(sr + j, e);
                s8 = _mm256_add_ps(s8, e);
            }
            sum = hsum(s8);
#endif
            for (; j < n; j++) {
                sr[j] = expf(sr[j] - mt);
                sum += sr[j];
            }
            l[r] = l[r] * corr + sum;
            m[r] = mt;
            float *ar = acc + r * d;
            int i = 0;
#ifdef HAVE_AVX2
            for (; i + 8 <= d; i += 8) {
                __m256 o = _mm256_mul_ps(_mm256_loadu_ps(ar + i), _mm256_set1_ps(corr));
                for (int jj = 0; jj < n; jj++)
                    o = _mm256_fmadd_ps(_mm256_set1_ps(sr[jj]), _mm256_loadu_ps(v + (size_t)jj * stride + i), o);
                _mm256_storeu_ps(ar + i, o);
            }
#endif
            for (; i < d; i++) {
                float o = ar[i] * corr;
                for (int jj = 0; jj < n; jj++) o += sr[jj] * v[(size_t)jj * stride + i];
                ar[i] = o;
            }
        }
    }
    for (int r = 0; r < rep; r++)
        for (int i = 0; i < d; i++) a->out[((size_t)g * rep + r) * d + i] = acc[r * d + i] / l[r];
}

static void at_jobs(void *p, int begin, int end) {
    const at_call *c = (const at_call *)p;
    size_t row = (size_t)c->a.n_kv * c->a.rep * c->a.d;
    for (int j = begin; j < end; j++) {
        int chunk = j / c->T, t = j % c->T;
        int g0 = chunk * c->per_job, g1 = g0 + c->per_job < c->a.n_kv ? g0 + c->per_job : c->a.n_kv;
        at_args a = c->a;
        a.q += t * row;
        a.out += t * row;
        a.rows = c->pos0 + t + 1;
        a.first = c->window > 0 && a.rows > c->window ? a.rows - c->window : 0;
#ifdef HAVE_AVX2
        if (a.d == 64) {
            at_groups64(&a, g0, g1);
            continue;
        }
#endif
        for (int g = g0; g < g1; g++) at_group(&a, g);
    }
}

/* ---- the small steps between a layer's big products, one call each instead of several torch ops ----
 * For decode these cost more in dispatch than in arithmetic (~1 ms a layer as torch ops on the 20b
 * shape); rows are independent, so a row comes out the same alone and in a batch. */

/* y = x / sqrt(mean(x^2) + eps) * scale, per row of n. */
void rms_norm(const float *x, const float *scale, float eps, float *y, int T, int n) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * n;
        float *yr = y + (size_t)t * n;
        float ss[8] = {0};
        int i = 0;
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) ss[j] += xr[i + j] * xr[i + j];
        float sum = ((ss[0] + ss[1]) + (ss[2] + ss[3])) + ((ss[4] + ss[5]) + (ss[6] + ss[7]));
        for (; i < n; i++) sum += xr[i] * xr[i];
        float r = 1.0f / sqrtf(sum / (float)n + eps);
        for (i = 0; i < n; i++) yr[i] = xr[i] * r * scale[i];
    }
}

/* Rotate, in place, `heads` heads of d values in each of T rows (row t at x + t * stride): the first
 * and second halves of a head are the pairs, turned by cos/sin row t (d/2 each). */
void rope_rows(float *x, int T, int heads, int d, int stride, const float *cos_t, const float *sin_t) {
    int h2 = d / 2;
    for (int t = 0; t < T; t++) {
        const float *c = cos_t + (size_t)t * h2, *sn = sin_t + (size_t)t * h2;
        for (int h = 0; h < heads; h++) {
            float *a = x + (size_t)t * stride + (size_t)h * d, *b = a + h2;
            for (int i = 0; i < h2; i++) {
                float x1 = a[i], x2 = b[i];
                a[i] = x1 * c[i] - x2 * sn[i];
                b[i] = x2 * c[i] + x1 * sn[i];
            }
        }
    }
}

/* Clamped SwiGLU over interleaved halves, per row: x (T, 2n) -> y (T, n):
 * g = min(x[2i], limit), l = clamp(x[2i+1], +-limit), y = g * sigmoid(alpha * g) * (l + 1). */
void swiglu_rows(const float *x, float *y, int T, int n, float alpha, float limit) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * 2 * n;
        float *yr = y + (size_t)t * n;
        int i = 0;
#ifdef HAVE_AVX2
        const __m256 lim = _mm256_set1_ps(limit), nlim = _mm256_set1_ps(-limit), al = _mm256_set1_ps(alpha);
        const __m256 one = _mm256_set1_ps(1.0f), nosign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
        for (; i + 8 <= n; i += 8) {
            __m256 a = _mm256_loadu_ps(xr + 2 * i), b = _mm256_loadu_ps(xr + 2 * i + 8);
            __m256 g = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
            __m256 l = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
            g = _mm256_min_ps(g, lim);
            l = _mm256_max_ps(_mm256_min_ps(l, lim), nlim);
            __m256 z = _mm256_mul_ps(al, g);
            __m256 e = exp_neg(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_and_ps(z, nosign)));  /* e^-|z| */
            __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
            __m256 sig = _mm256_blendv_ps(_mm256_mul_ps(e, inv), inv, _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GE_OQ));
            _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_add_ps(l, one)));
        }
#endif
        for (; i < n; i++) {
            float g = fminf(xr[2 * i], limit), l = fmaxf(fminf(xr[2 * i + 1], limit), -limit);
            yr[i] = g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
        }
    }
}

/* The MoE's sum with the residual, per row: y = x + sum_j w[j] * parts[j] over the k experts in
 * their top-k order; x (T, n), parts (T, k, n), w (T, k). */
void moe_combine(const float *x, const float *parts, const float *w, float *y, int T, int k, int n) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * n, *pr = parts + (size_t)t * k * n, *wr = w + (size_t)t * k;
        float *yr = y + (size_t)t * n;  /* the sum, then the residual added (y must not be x) */
        for (int i = 0; i < n; i++) yr[i] = 0.0f;
        for (int j = 0; j < k; j++)
            for (int i = 0; i < n; i++) yr[i] += wr[j] * pr[(size_t)j * n + i];
        for (int i = 0; i < n; i++) yr[i] += xr[i];
    }
}

/* The router's choice per row of logits (T, E): the k largest in descending order (ties: the lower
 * index first), and their softmax. */
void moe_route(const float *logits, int T, int E, int k, int64_t *ids, float *w) {
    for (int t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * E;
        int64_t *id = ids + (size_t)t * k;
        float *wt = w + (size_t)t * k;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= id[i] == e;
                if (!taken && (best < 0 || l[e] > l[best])) best = e;
            }
            id[j] = best;
        }
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += wt[j] = expf(l[id[j]] - l[id[0]]);
        for (int j = 0; j < k; j++) wt[j] /= sum;
    }
}

/* ---- decode tokens through a whole layer in one call ----
 * The same kernels, in the same order, on the same values as the layer's Python path (transformer.py:
 * AttentionBlock.forward / forward_batch, then MLPBlock.forward for decode rows with int8 experts): bit
 * for bit its result, without a return to Python between the steps (~0.4 ms a layer of dispatch on the
 * 20b shape, against ~5.5 ms of products). B rows, one per sequence: row b has claimed cache row
 * rows[b].row in its own buffers (kv_mode 0 float32, else bf16, 2 with bf16 products) and brings its
 * position's RoPE row. The experts run as the Python batch path runs them: each chosen expert once, on
 * its rows in row order (q8_experts: one job for all), then the outputs go back to (row, slot). */
typedef struct {
    const float *attn_norm, *qkv_b, *sinks, *out_b, *mlp_norm, *gate_b, *mlp1_bias, *mlp2_bias;
    const uint16_t *qkv_w, *out_w, *gate_w;
    const uint8_t *mlp1_blocks, *mlp1_scales, *mlp2_blocks, *mlp2_scales;
    float *scratch;  /* decode_layer_scratch(s, B) floats */
    int hidden, nq, nkv, d, experts, top_k, inter, window, kv_mode, bf16x, nthreads;
    float eps, alpha, limit, scale;
} layer_step;
typedef struct { void *k_cache, *v_cache; const float *cos, *sin; int row; } layer_row;

void attention_rows(const float *q, const void *k, const void *v, int kv_bf16, const float *sinks, float *out,
                    int T, int pos0, int window, int n_kv, int rep, int d, float scale, int nthreads);

int decode_layer_scratch(const layer_step *s, int B) {
    int h = s->hidden, k = s->top_k;
    return B * (4 * h + (s->nq + 2 * s->nkv) * s->d + s->nq * s->d + s->experts + k * (3 * s->inter + 3 * h + 1)) + 16;
}

static void dl_linear(const layer_step *s, const uint16_t *w, const float *x, const float *b, float *y, int T, int out, int in) {
    if (s->bf16x) bf16_gemv_bf16x(w, x, b, y, T, out, in, s->nthreads);
    else bf16_gemv(w, x, b, y, T, out, in, s->nthreads);
}

void decode_layer_batch(const layer_step *s, int B, const layer_row *r, float *x) {
    int h = s->hidden, d = s->d, width = (s->nq + 2 * s->nkv) * d, k = s->top_k, E = s->experts, I = s->inter;
    if (B * k > Q8_MAX_EXPERTS || B < 1) abort();
    float *t = s->scratch, *qkv = t + B * h, *att = qkv + (size_t)B * width, *o = att + (size_t)B * s->nq * d;
    float *logits = o + B * h, *wts = logits + B * E, *gath = wts + B * k, *up = gath + (size_t)B * k * h;
    float *act = up + (size_t)B * k * 2 * I, *down = act + (size_t)B * k * I, *parts = down + (size_t)B * k * h;
    float *y = parts + (size_t)B * k * h;
    int64_t ids[Q8_MAX_EXPERTS], uniq[Q8_MAX_EXPERTS];
    int count[Q8_MAX_EXPERTS], at[Q8_MAX_EXPERTS];
    /* attention: norm, QKV, then per row RoPE on q and k, the new row into its cache, attention; output, residual */
    rms_norm(x, s->attn_norm, s->eps, t, B, h);
    dl_linear(s, s->qkv_w, t, s->qkv_b, qkv, B, width, h);
    size_t n = (size_t)s->nkv * d;
    for (int b = 0; b < B; b++) {
        float *q = qkv + (size_t)b * width;
        rope_rows(q, 1, s->nq + s->nkv, d, width, r[b].cos, r[b].sin);
        size_t row = (size_t)r[b].row * n;
        const float *kn = q + s->nq * d, *vn = kn + n;
        if (s->kv_mode) {
            for (size_t i = 0; i < n; i++) {
                ((uint16_t *)r[b].k_cache)[row + i] = f32_to_bf16(kn[i]);
                ((uint16_t *)r[b].v_cache)[row + i] = f32_to_bf16(vn[i]);
            }
        } else {
            memcpy((float *)r[b].k_cache + row, kn, n * sizeof(float));
            memcpy((float *)r[b].v_cache + row, vn, n * sizeof(float));
        }
        attention_rows(q, r[b].k_cache, r[b].v_cache, s->kv_mode, s->sinks, att + (size_t)b * s->nq * d, 1, r[b].row,
                       s->window, s->nkv, s->nq / s->nkv, d, s->scale, s->nthreads);
    }
    dl_linear(s, s->out_w, att, s->out_b, o, B, h, s->nq * d);
    for (int i = 0; i < B * h; i++) x[i] += o[i];
    /* MoE: norm, router, each chosen expert once on its rows (int8), SwiGLU, back to (row, slot), the sum */
    rms_norm(x, s->mlp_norm, s->eps, t, B, h);
    dl_linear(s, s->gate_w, t, s->gate_b, logits, B, E, h);
    moe_route(logits, B, E, k, ids, wts);
    int nu = 0, rows = 0;
    for (int e = 0; e < E; e++) {
        int c = 0;
        for (int j = 0; j < B * k; j++)
            if (ids[j] == e) {
                memcpy(gath + (size_t)rows * h, t + (size_t)(j / k) * h, (size_t)h * sizeof(float));
                at[j] = rows++;
                c++;
            }
        if (c) uniq[nu] = e, count[nu++] = c;
    }
    q8_experts(s->mlp1_blocks, s->mlp1_scales, s->mlp1_bias, uniq, count, nu, gath, rows, up, 2 * I, h / 32, s->nthreads);
    swiglu_rows(up, act, rows, I, s->alpha, s->limit);
    q8_experts(s->mlp2_blocks, s->mlp2_scales, s->mlp2_bias, uniq, count, nu, act, rows, down, h, I / 32, s->nthreads);
    for (int j = 0; j < B * k; j++) memcpy(parts + (size_t)j * h, down + (size_t)at[j] * h, (size_t)h * sizeof(float));
    moe_combine(x, parts, wts, y, B, k, h);
    memcpy(x, y, (size_t)B * h * sizeof(float));
}

int has_avx2(void) {
#ifdef HAVE_AVX2
    return 1;
#else
    return 0;
#endif
}

/* The instruction sets this build was compiled for: 1 AVX2, 2 AVX-512, 4 AVX-512-VNNI, 8 AMX. */
int kernel_isa(void) {
    int bits = 0;
#ifdef HAVE_AVX2
    bits |= 1;
#endif
#ifdef HAVE_AVX512
    bits |= 2;
#endif
#ifdef HAVE_VNNI
    bits |= 4;
#endif
#ifdef HAVE_AMX
    bits |= 8;
#endif
    return bits;
}

void attention_rows(const float *q, const void *k, const void *v, int kv_bf16, const float *sinks, float *out,
                    int T, int pos0, int window, int n_kv, int rep, int d, float scale, int nthreads) {
    /* split over threads only when there is enough to read; each thread takes a share of the groups */
    if ((size_t)T * (pos0 + 1) * n_kv * d < 65536 || nthreads < 1) nthreads = 1;
    int chunks = nthreads < n_kv ? nthreads : n_kv, per_job = (n_kv + chunks - 1) / chunks;
    chunks = (n_kv + per_job - 1) / per_job;
    at_call c = {{q, k, v, sinks, out, 0, 0, n_kv, rep, d, kv_bf16, scale}, T, pos0, window, per_job};
    parallel_rows(at_jobs, &c, chunks * T, nthreads);
}
