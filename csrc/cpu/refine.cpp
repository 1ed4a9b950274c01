// Refinement: re-rank candidate rows with exact distances to stored vectors (float32, float16 or 8-bit scalar
// quantized), parallel over queries, one top-k per query by (distance, label).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

namespace sqret {

namespace {

// float16 bits -> float (IEEE binary16: subnormals, inf and NaN included), without F16C.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man) {  // subnormal: normalize
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while (!(man & 0x400u));
    bits = sign | ((112 - e) << 23) | ((man & 0x3ffu) << 13);
  } else {
    bits = sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Distance of query v to stored row r: float32 / float16 / sq8, 16 lanes accumulated (two AVX2 registers), the
// lanes then folded as a fixed tree (fold16): the same value for a row whatever else is computed. For l2 a lane
// only grows as dimensions are added, and float addition is monotone, so a partial sum above `bound` proves the
// whole one is: the row is abandoned there (every 32 dimensions), and what is returned is that partial sum (still
// above the bound; the caller keeps only distances <= bound). Inner products are always summed whole.
// 8 decoded values of row r from dimension at.
template <int Kind>
__attribute__((target("avx2,f16c"))) inline __m256 load8(const void* rows, int64_t d, int64_t r, int64_t at,
                                                          const float* vmin, const float* scale) {
  if constexpr (Kind == 0) return _mm256_loadu_ps(static_cast<const float*>(rows) + r * d + at);
  if constexpr (Kind == 1)
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(rows) + r * d + at)));
  const __m128i c8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(rows) + r * d + at));
  const __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c8));
  return _mm256_add_ps(_mm256_loadu_ps(vmin + at), _mm256_mul_ps(c, _mm256_loadu_ps(scale + at)));
}

// lanes i + i+8, then i + i+4, then i + i+2, then 0 + 1: fold16_scalar's order.
__attribute__((target("avx2"))) inline float fold16(__m256 a0, __m256 a1) {
  const __m256 s = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

inline float fold16_scalar(const float* l) {
  float s[8], h[4];
  for (int i = 0; i < 8; ++i) s[i] = l[i] + l[i + 8];
  for (int i = 0; i < 4; ++i) h[i] = s[i] + s[i + 4];
  return (h[0] + h[2]) + (h[1] + h[3]);
}

// Whether to look at the bound after the first `done` of d dimensions: every 32 (on CIFAR-10 PCA a look every 16
// cost more folds than it saved).
inline bool look_at(int64_t done, int64_t d) { return done % 32 == 0 && done < d; }

template <int Kind>
__attribute__((target("avx2,f16c"))) float row_dist_avx2(const float* v, const void* rows, int64_t d, int64_t r,
                                                         const float* vmin, const float* scale, int metric,
                                                         float bound) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    const __m256 x0 = load8<Kind>(rows, d, r, j, vmin, scale), x1 = load8<Kind>(rows, d, r, j + 8, vmin, scale);
    const __m256 q0 = _mm256_loadu_ps(v + j), q1 = _mm256_loadu_ps(v + j + 8);
    if (metric == 0) {
      const __m256 e0 = _mm256_sub_ps(q0, x0), e1 = _mm256_sub_ps(q1, x1);
      acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(e0, e0));
      acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(e1, e1));
      if (look_at(j + 16, d)) {
        const float part = fold16(acc0, acc1);
        if (part > bound) return part;
      }
    } else {
      acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(q0, x0));
      acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(q1, x1));
    }
  }
  float s = fold16(acc0, acc1);
  for (; j < d; ++j) {  // the tail, in order
    float x;
    if constexpr (Kind == 0) x = static_cast<const float*>(rows)[r * d + j];
    else if constexpr (Kind == 1) x = half_to_float(static_cast<const uint16_t*>(rows)[r * d + j]);
    else x = vmin[j] + static_cast<float>(static_cast<const uint8_t*>(rows)[r * d + j]) * scale[j];
    s += metric == 0 ? (v[j] - x) * (v[j] - x) : v[j] * x;
  }
  return s;
}

// The same sums without AVX2 (16 lanes, the same fold, the same looks at the bound).
template <int Kind>
float row_dist_scalar(const float* v, const void* rows, int64_t d, int64_t r, const float* vmin, const float* scale,
                      int metric, float bound) {
  float lanes[16] = {0.f};
  int64_t j = 0;
  auto get = [&](int64_t at) -> float {
    if constexpr (Kind == 0) return static_cast<const float*>(rows)[r * d + at];
    if constexpr (Kind == 1) return half_to_float(static_cast<const uint16_t*>(rows)[r * d + at]);
    return vmin[at] + static_cast<float>(static_cast<const uint8_t*>(rows)[r * d + at]) * scale[at];
  };
  for (; j + 16 <= d; j += 16) {
    for (int i = 0; i < 16; ++i) {
      const float x = get(j + i);
      lanes[i] += metric == 0 ? (v[j + i] - x) * (v[j + i] - x) : v[j + i] * x;
    }
    if (metric == 0 && look_at(j + 16, d)) {
      const float part = fold16_scalar(lanes);
      if (part > bound) return part;
    }
  }
  float s = fold16_scalar(lanes);
  for (; j < d; ++j) {
    const float x = get(j);
    s += metric == 0 ? (v[j] - x) * (v[j] - x) : v[j] * x;
  }
  return s;
}

using RowDist = float (*)(const float*, const void*, int64_t, int64_t, const float*, const float*, int, float);

RowDist row_dist(int kind, bool simd) {
  static const RowDist fast[3] = {row_dist_avx2<0>, row_dist_avx2<1>, row_dist_avx2<2>};
  static const RowDist slow[3] = {row_dist_scalar<0>, row_dist_scalar<1>, row_dist_scalar<2>};
  return simd ? fast[kind] : slow[kind];
}

// Candidate rows are scattered over the stored vectors (the billion-scale case: far beyond the caches): each
// row's cache lines are requested kPrefetch candidates ahead of its distance.
constexpr int64_t kPrefetch = 4;

// As an asm statement: GCC 12 at -O1 and above deleted every _mm_prefetch / __builtin_prefetch of this loop (the
// module held no prefetch instruction at all), and the re-rank ran a third slower without them.
inline void prefetch_line(const char* p) { asm volatile("prefetcht0 %0" : : "m"(*p)); }

inline void prefetch_row(const void* rows, int64_t row_bytes, int64_t nrows, int64_t r) {
  if (r < 0 || r >= nrows) return;
  const char* p = static_cast<const char*>(rows) + r * row_bytes;
  for (int64_t off = 0; off < row_bytes; off += 64) prefetch_line(p + off);
}

}  // namespace

bool refine_query(const float* v, int64_t d, const RefineRows& r, const int64_t* cand, int64_t kc, int metric,
                  TopK& tk, float* out_d, int64_t* out_i) {
  static const bool f16c = (__builtin_cpu_init(), __builtin_cpu_supports("f16c"));
  const RowDist dist_of = row_dist(r.kind, active_simd() != Simd::scalar && f16c);
  const float sign = metric == 0 ? 1.f : -1.f;  // the heap keeps the smallest: ip negated
  const int64_t row_bytes = d * (r.kind == 0 ? 4 : r.kind == 1 ? 2 : 1);
  if (!all_in_range(cand, kc, r.nrows)) return false;
  tk.reset();
  for (int64_t c = 0; c < std::min<int64_t>(kPrefetch, kc); ++c) prefetch_row(r.rows, row_bytes, r.nrows, cand[c]);
  for (int64_t c = 0; c < kc; ++c) {
    if (c + kPrefetch < kc) prefetch_row(r.rows, row_bytes, r.nrows, cand[c + kPrefetch]);
    const int64_t row = cand[c];
    if (row < 0) continue;  // no candidate
    const int64_t label = r.labels ? r.labels[row] : row;
    if (label < 0) continue;  // a removed row
    // l2: abandoned once above the k-th kept distance (what admits_any would refuse); ip: summed whole.
    const float bound = metric == 0 ? tk.threshold() : std::numeric_limits<float>::infinity();
    const float dist = sign * dist_of(v, r.rows, d, row, r.vmin, r.scale, metric, bound);
    if (tk.admits_any(dist)) tk.push(dist, label);
  }
  tk.write(sign, out_d, out_i);
  return true;
}

void refine_topk(const float* queries, int64_t Q, int64_t d, const void* rows, int kind, int64_t nrows,
                 const float* vmin, const float* scale, const int64_t* cand, int64_t kc, const int64_t* labels,
                 int64_t k, int metric, int nthreads, float* out_d, int64_t* out_i) {
  if (Q < 0 || d < 1 || nrows < 0 || kc < 0 || k < 1 || kind < 0 || kind > 2 || (metric != 0 && metric != 1))
    throw std::invalid_argument("refine_topk: bad sizes, kind or metric");
  const RefineRows r{rows, kind, nrows, vmin, scale, labels, k};
  std::atomic<bool> bad{false};
  in_team(team(nthreads, Q), [&] {
    TopK tk(k);
#pragma omp for schedule(dynamic)
    for (int64_t q = 0; q < Q; ++q)
      if (!refine_query(queries + q * d, d, r, cand + q * kc, kc, metric, tk, out_d + q * k, out_i + q * k))
        bad.store(true, std::memory_order_relaxed);
  });
  if (bad.load())
    throw std::invalid_argument("refine_topk: candidates must be rows in [-1, " + std::to_string(nrows) + ")");
}

}  // namespace sqret
