// Per-row distance tables: LUT construction (ADC) and nearest codeword per sub-space (PQ encoding / the
// k-means assignment step). Vectorized over the K codewords of a sub-space; compiled per SIMD level and
// chosen at load time by the CPU's features (GCC function multi-versioning).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernels.h"

namespace sqret {

Transposed::Transposed(const float* C, int64_t M, int64_t K, int64_t d, bool with_norms)
    : Ct(static_cast<size_t>(M * d * K)), norms(with_norms ? static_cast<size_t>(M * K) : 0, 0.f) {
  for (int64_t m = 0; m < M; ++m)  // written in order: one pass of strided reads
    for (int64_t j = 0; j < d; ++j) {
      float* row = Ct.data() + (m * d + j) * K;
      const float* col = C + m * K * d + j;
      for (int64_t k = 0; k < K; ++k) row[k] = col[k * d];
    }
  if (with_norms)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        const float* c = C + (m * K + k) * d;
        float n = 0.f;
        for (int64_t j = 0; j < d; ++j) n += c[j] * c[j];
        norms[m * K + k] = n;
      }
}

namespace {

// The 16 sums of a K = 16 table row in two AVX2 registers, one term j at a time: the same products and sums,
// in the same order, as the generic loop (no FMA contraction anywhere), so every path through it gives
// bit-identical tables.
struct Row16 {
  __m256 a0, a1;

  __attribute__((target("avx2"))) Row16() : a0(_mm256_setzero_ps()), a1(_mm256_setzero_ps()) {}

  // term j: x = x_j, r0 / r1 = c_kj of codewords 0-7 / 8-15
  __attribute__((target("avx2"))) inline void add(float xj, __m256 r0, __m256 r1, int metric) {
    const __m256 x = _mm256_set1_ps(xj);
    if (metric == 1) {
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(x, r0));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(x, r1));
    } else {
      const __m256 t0 = _mm256_sub_ps(x, r0), t1 = _mm256_sub_ps(x, r1);
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(t0, t0));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(t1, t1));
    }
  }

  __attribute__((target("avx2"))) inline void store(int metric, float* out) const {
    _mm256_storeu_ps(out, metric == 2 ? _mm256_sqrt_ps(a0) : a0);
    _mm256_storeu_ps(out + 8, metric == 2 ? _mm256_sqrt_ps(a1) : a1);
  }
};

// lut_row for the 16 codewords of 4-bit codes from the transposed codebook Ct [d][16].
__attribute__((target("avx2"))) void lut_row16(const float* xs, const float* Ct, int64_t d, int metric, float* out) {
  Row16 row;
  for (int64_t j = 0; j < d; ++j)
    row.add(xs[j], _mm256_loadu_ps(Ct + j * 16), _mm256_loadu_ps(Ct + j * 16 + 8), metric);
  row.store(metric, out);
}

// Transpose of the 8 x 8 floats in r[0..8) (r[i] = row i -> r[j] = column j).
__attribute__((target("avx2"))) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// lut_row16 straight from the 16 codewords [16][d] of one sub-space (d a multiple of 8), transposed 8 x 8 in
// registers: the same terms in the same order. For one or two queries.
__attribute__((target("avx2"))) void lut_row16_rows(const float* xs, const float* C, int64_t d, int metric,
                                                    float* out) {
  Row16 row;
  for (int64_t j0 = 0; j0 < d; j0 += 8) {
    __m256 lo[8], hi[8];  // codewords 0-7 and 8-15, columns j0..j0+7
    for (int c = 0; c < 8; ++c) {
      lo[c] = _mm256_loadu_ps(C + c * d + j0);
      hi[c] = _mm256_loadu_ps(C + (c + 8) * d + j0);
    }
    transpose8(lo);
    transpose8(hi);
    for (int j = 0; j < 8; ++j) row.add(xs[j0 + j], lo[j], hi[j], metric);
  }
  row.store(metric, out);
}

}  // namespace

// out[k] = sum_j (x_j - c_kj)^2 (l2, l2_sqrt) or sum_j x_j c_kj (ip), one sub-space.
__attribute__((target_clones("avx512f", "avx2", "default"))) void lut_row(const float* xs, const float* Ct, int64_t d,
                                                                           int64_t K, int metric, float* out) {
  if (K == 16 && active_simd() != Simd::scalar) return lut_row16(xs, Ct, d, metric, out);
  for (int64_t k = 0; k < K; ++k) out[k] = 0.f;
  if (metric == 1) {
    for (int64_t j = 0; j < d; ++j) {
      const float xv = xs[j], *row = Ct + j * K;
      for (int64_t k = 0; k < K; ++k) out[k] += xv * row[k];
    }
    return;
  }
  for (int64_t j = 0; j < d; ++j) {
    const float xv = xs[j], *row = Ct + j * K;
    for (int64_t k = 0; k < K; ++k) {
      const float t = xv - row[k];
      out[k] += t * t;
    }
  }
  if (metric == 2)
    for (int64_t k = 0; k < K; ++k) out[k] = std::sqrt(out[k]);
}

void lut_rows(const float* x, const float* Ct, int64_t M, int64_t d, int64_t K, int metric, float* out) {
  if (K == 16 && active_simd() != Simd::scalar) {
    for (int64_t m = 0; m < M; ++m) lut_row16(x + m * d, Ct + m * d * 16, d, metric, out + m * 16);
    return;
  }
  for (int64_t m = 0; m < M; ++m) lut_row(x + m * d, Ct + m * d * K, d, K, metric, out + m * K);
}

namespace {

// lut_row straight from codebooks [K][d] (no transposed copy, for a query or two): the same sums in the same
// order (and no FMA contraction, see setup.py), so the tables are bit-identical to lut_row's.
__attribute__((target_clones("avx512f", "avx2", "default"))) void lut_row_direct(const float* xs, const float* C, int64_t d,
                                                                                 int64_t K, int metric, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    const float* c = C + k * d;
    float s = 0.f;
    if (metric == 1)
      for (int64_t j = 0; j < d; ++j) s += xs[j] * c[j];
    else
      for (int64_t j = 0; j < d; ++j) {
        const float t = xs[j] - c[j];
        s += t * t;
      }
    out[k] = metric == 2 ? std::sqrt(s) : s;
  }
}

}  // namespace

__attribute__((target_clones("avx512f", "avx2", "default"))) void axpy_table(const float* pre, const float* qr,
                                                                              float alpha, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = pre[i] + alpha * qr[i];
}

namespace {

// argmin_k of dist[k], the first index on ties; NaN never wins; when nothing is below +inf, the first +inf
// (0 when all are NaN). One pass: a running minimum and its index per SIMD lane (strict <, so each lane keeps
// its first), then the smallest index among the lanes holding the minimum.
int32_t first_min_scalar(const float* dist, int64_t K) {
  float mn = std::numeric_limits<float>::infinity();
  int64_t first = K;
  for (int64_t k = 0; k < K; ++k)
    if (dist[k] < mn) mn = dist[k], first = k;
  if (first == K)  // nothing below +inf
    for (int64_t k = 0; k < K; ++k)
      if (dist[k] == mn) return static_cast<int32_t>(k);
  return static_cast<int32_t>(first == K ? 0 : first);
}

// The lanes' minima and their indices (a register's worth, any width) -> first_min's answer; dist[tail..K)
// is then scanned after them (its indices come after every lane's).
template <typename V, typename I>
int32_t lanes_first_min(const V& best, const I& at, int lanes, int64_t K, const float* dist, int64_t tail = -1) {
  alignas(64) float bv[16];
  alignas(64) int32_t bi[16];
  std::memcpy(bv, &best, lanes * sizeof(float));
  std::memcpy(bi, &at, lanes * sizeof(int32_t));
  float mn = std::numeric_limits<float>::infinity();
  int64_t first = K;
  for (int l = 0; l < lanes; ++l)
    if (bv[l] < mn || (bv[l] == mn && bi[l] < first)) mn = bv[l], first = bi[l];
  for (int64_t k = tail < 0 ? K : tail; k < K; ++k)
    if (dist[k] < mn) mn = dist[k], first = k;
  return first < K ? static_cast<int32_t>(first) : first_min_scalar(dist, K);  // nothing below +inf
}

__attribute__((target("avx512f"))) int32_t first_min_avx512(const float* dist, int64_t K) {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 best = inf;
  __m512i at = _mm512_set1_epi32(static_cast<int>(K)), idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                                                  12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t k = 0; k < K; k += 16, idx = _mm512_add_epi32(idx, step)) {
    const __mmask16 valid = K - k >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(inf, valid, dist + k);
    const __mmask16 lt = _mm512_cmp_ps_mask(v, best, _CMP_LT_OQ);
    best = _mm512_mask_mov_ps(best, lt, v);
    at = _mm512_mask_mov_epi32(at, lt, idx);
  }
  return lanes_first_min(best, at, 16, K, dist);
}

__attribute__((target("avx2"))) int32_t first_min_avx2(const float* dist, int64_t K) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 best = inf;
  __m256i at = _mm256_set1_epi32(static_cast<int>(K)), idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8, idx = _mm256_add_epi32(idx, step)) {
    const __m256 v = _mm256_loadu_ps(dist + k);
    const __m256 lt = _mm256_cmp_ps(v, best, _CMP_LT_OQ);
    best = _mm256_blendv_ps(best, v, lt);
    at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at), _mm256_castsi256_ps(idx), lt));
  }
  return lanes_first_min(best, at, 8, K, dist, k);
}

using FirstMin = int32_t (*)(const float*, int64_t);

FirstMin first_min_for(Simd s) {
  return s == Simd::avx512 ? first_min_avx512 : s == Simd::avx2 ? first_min_avx2 : first_min_scalar;
}

// dist[r][k] = base[k] + coef * x_r . c_k for R <= 4 rows x_r = xs + r * stride (one sub-space), summed over
// j in order. Chunks of 32 codewords keep the 4 x 32 sums in registers while the d terms are added, and a
// codebook row is loaded once for the 4 rows.
__attribute__((target_clones("avx512f", "avx2", "default"))) void sub_distances(const float* xs, int64_t stride,
                                                                                int R, const float* Ct,
                                                                                const float* base, int64_t d,
                                                                                int64_t K, float coef, float* dist) {
  constexpr int64_t kC = 32;
  int64_t k0 = 0;
  if (R == 4)
    for (; k0 + kC <= K; k0 += kC) {
      float acc[4][kC];
      for (int r = 0; r < 4; ++r)
        for (int64_t k = 0; k < kC; ++k) acc[r][k] = base[k0 + k];
      for (int64_t j = 0; j < d; ++j) {
        const float* row = Ct + j * K + k0;
        const float c0 = coef * xs[j], c1 = coef * xs[stride + j], c2 = coef * xs[2 * stride + j],
                    c3 = coef * xs[3 * stride + j];
        for (int64_t k = 0; k < kC; ++k) {
          acc[0][k] += c0 * row[k];
          acc[1][k] += c1 * row[k];
          acc[2][k] += c2 * row[k];
          acc[3][k] += c3 * row[k];
        }
      }
      for (int r = 0; r < 4; ++r)
        for (int64_t k = 0; k < kC; ++k) dist[r * K + k0 + k] = acc[r][k];
    }
  for (int r = 0; r < R; ++r) {  // the rest: one row at a time, through memory
    float* out = dist + r * K;
    for (int64_t k = k0; k < K; ++k) out[k] = base[k];
    for (int64_t j = 0; j < d; ++j) {
      const float c = coef * xs[r * stride + j], *row = Ct + j * K;
      for (int64_t k = k0; k < K; ++k) out[k] += c * row[k];
    }
  }
}

}  // namespace

void build_lut(const float* x, int64_t Q, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
               float* out, int nthreads) {
  if (Q < 0 || M < 1 || K < 1 || d < 1 || metric < 0 || metric > 2)
    throw std::invalid_argument("build_lut: bad sizes or metric");
  if (Q <= 2) {  // a transposed copy of all the codebooks would cost more than the tables
    constexpr int64_t kMaxD = 64;
    for (int64_t m = 0; m < M; ++m) {
      const float* Cm = codebooks + m * K * d;
      if (K == 16 && d % 8 == 0 && active_simd() != Simd::scalar) {  // transposed in registers
        for (int64_t q = 0; q < Q; ++q) lut_row16_rows(x + q * M * d + m * d, Cm, d, metric, out + (q * M + m) * K);
      } else if (K == 16 && d <= kMaxD) {  // 16 codewords: this sub-space transposed on the stack, for lut_row16
        float ct[kMaxD * 16];
        for (int64_t j = 0; j < d; ++j)
          for (int64_t c = 0; c < 16; ++c) ct[j * 16 + c] = Cm[c * d + j];
        for (int64_t q = 0; q < Q; ++q) lut_row(x + q * M * d + m * d, ct, d, K, metric, out + (q * M + m) * K);
      } else {
        for (int64_t q = 0; q < Q; ++q) lut_row_direct(x + q * M * d + m * d, Cm, d, K, metric, out + (q * M + m) * K);
      }
    }
    return;
  }
  Transposed t(codebooks, M, K, d, false);
  in_team(Q > 64 ? nthreads : 1, [&] {
#pragma omp for schedule(static)
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t m = 0; m < M; ++m)
        lut_row(x + q * M * d + m * d, t.Ct.data() + m * d * K, d, K, metric, out + (q * M + m) * K);
  });
}

void encode(const float* x, int64_t N, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
            int32_t* codes, int nthreads) {
  if (N < 0 || M < 1 || K < 1 || d < 1 || (metric != 0 && metric != 1))
    throw std::invalid_argument("encode: bad sizes or metric");
  Transposed t(codebooks, M, K, d);
  // l2: argmin ||c||^2 - 2 x.c ; ip: argmin -x.c
  std::vector<float> zeros(static_cast<size_t>(M * K), 0.f);
  const float* base = metric == 0 ? t.norms.data() : zeros.data();
  const float coef = metric == 0 ? -2.f : -1.f;
  const FirstMin first_min = first_min_for(active_simd());
  in_team(team(nthreads, N / 64 + 1), [&] {
    std::vector<float> dist(static_cast<size_t>(4 * K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n += 4) {  // 4 rows at a time (omp for needs the step in the loop)
      const int R = static_cast<int>(std::min<int64_t>(4, N - n));
      for (int64_t m = 0; m < M; ++m) {
        sub_distances(x + n * M * d + m * d, M * d, R, t.Ct.data() + m * d * K, base + m * K, d, K, coef,
                      dist.data());
        for (int r = 0; r < R; ++r) codes[(n + r) * M + m] = first_min(dist.data() + r * K, K);
      }
    }
  });
}

}  // namespace sqret
