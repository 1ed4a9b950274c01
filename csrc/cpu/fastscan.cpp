// 4-bit fast scan: per block of 32 codes, 16-entry uint8 LUTs in SIMD registers (shuffle lookup), uint16
// accumulators, then an exact float re-rank of every code whose lower bound can still enter the top-k.
//
// Exactness: the LUT of sub-space m is quantized as L[m][j] ~ min_m + a * q[m][j] with one scale a for all
// sub-spaces, so |L - (min_m + a q)| <= a / 2 and the exact distance d >= bias + a * Qsum - emax with
// emax = M a / 2 (+ a margin for float rounding). A code is re-ranked exactly when that lower bound does not
// exceed the current k-th best distance; all others provably cannot enter the top-k.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "kernels.h"

namespace sqret {

namespace {

inline uint8_t nibble(const uint8_t* row, int64_t m) {
  uint8_t b = row[m >> 1];
  return (m & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 15);
}

// Code of vector j (0..31) of a block for sub-space m.
inline int code_in_block(const uint8_t* blk, int64_t m, int j) {
  return j < 16 ? (blk[m * 16 + j] & 15) : (blk[m * 16 + j - 16] >> 4);
}

inline float exact_in_block(const float* L, int64_t M, const uint8_t* blk, int j) {
  float d = 0.f;
  for (int64_t m = 0; m < M; ++m) d += L[m * 16 + code_in_block(blk, m, j)];
  return d;
}

struct QuantLut {
  std::vector<uint8_t> q;  // [M][16] (+64 bytes of padding for wide loads)
  double a = 1.0, bias = 0.0, emax = 0.0;

  QuantLut(const float* L, int64_t M) : q(static_cast<size_t>(M * 16 + 64), 0) {
    std::vector<float> mins(M);
    double range = 0.0, absmax_sum = 0.0;
    for (int64_t m = 0; m < M; ++m) {
      float mn = L[m * 16], mx = L[m * 16], am = 0.f;
      for (int j = 0; j < 16; ++j) {
        mn = std::min(mn, L[m * 16 + j]);
        mx = std::max(mx, L[m * 16 + j]);
        am = std::max(am, std::fabs(L[m * 16 + j]));
      }
      mins[m] = mn;
      bias += mn;
      range = std::max(range, static_cast<double>(mx) - mn);
      absmax_sum += am;
    }
    a = range > 0 ? range / 255.0 : 1.0;
    const double inv_a = 1.0 / a;  // a multiply per entry instead of a divide (the error is far below a / 2)
    for (int64_t m = 0; m < M; ++m) {
      const double mn = mins[m];
      for (int j = 0; j < 16; ++j) {
        double v = std::nearbyint((static_cast<double>(L[m * 16 + j]) - mn) * inv_a);
        q[m * 16 + j] = static_cast<uint8_t>(std::min(255.0, std::max(0.0, v)));
      }
    }
    // rounding of the quantization (a/2 per sub-space) + float32 rounding of the exact sum and of the bound
    emax = M * a * 0.5 * (1 + 1e-6) + 4.0 * M * 1.2e-7 * (absmax_sum + std::fabs(bias)) + 1e-30;
  }

  // Largest Qsum whose lower bound can still enter a top-k whose k-th best is thr.
  inline int qthreshold(const TopK& tk) const {
    if (!tk.full()) return 65535;
    double t = std::floor((static_cast<double>(tk.threshold()) - bias + emax) / a) + 1.0;
    if (!(t < 65535.0)) return 65535;  // also +inf / NaN
    return t < 0 ? -1 : static_cast<int>(t);
  }
};

// Exact distances of 16 codes (half 0: codes 0..15 of the block, half 1: codes 16..31), summed over
// sub-spaces in order m = 0..M-1 like the reference, so the values are bit-identical.
__attribute__((target("avx512f,avx512bw"))) void exact16_avx512(const float* L, int64_t M, const uint8_t* blk,
                                                                int half, float* out) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t m = 0; m < M; ++m) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + m * 16));
    __m128i c = _mm_and_si128(half ? _mm_srli_epi16(raw, 4) : raw, low4);
    acc = _mm512_add_ps(acc, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c), _mm512_loadu_ps(L + m * 16)));
  }
  _mm512_storeu_ps(out, acc);
}

__attribute__((target("avx2"))) void exact16_avx2(const float* L, int64_t M, const uint8_t* blk, int half,
                                                  float* out) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const __m256i seven = _mm256_set1_epi32(7);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int64_t m = 0; m < M; ++m) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + m * 16));
    __m128i c = _mm_and_si128(half ? _mm_srli_epi16(raw, 4) : raw, low4);
    __m256 lo = _mm256_loadu_ps(L + m * 16), hi = _mm256_loadu_ps(L + m * 16 + 8);
    __m256i i0 = _mm256_cvtepu8_epi32(c), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(c, 8));
    __m256 v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i0), _mm256_permutevar8x32_ps(hi, i0),
                                 _mm256_castsi256_ps(_mm256_cmpgt_epi32(i0, seven)));
    __m256 v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i1), _mm256_permutevar8x32_ps(hi, i1),
                                 _mm256_castsi256_ps(_mm256_cmpgt_epi32(i1, seven)));
    acc0 = _mm256_add_ps(acc0, v0);
    acc1 = _mm256_add_ps(acc1, v1);
  }
  _mm256_storeu_ps(out, acc0);
  _mm256_storeu_ps(out + 8, acc1);
}

using Exact16 = void (*)(const float*, int64_t, const uint8_t*, int, float*);

// Offer the candidates of one block (mask bit j: code j may enter), ascending ids; exact distances are
// computed 16 at a time for the halves that hold candidates.
inline void rerank(uint32_t mask, const uint16_t* sums, const QuantLut& ql, const float* L, int64_t M,
                   const uint8_t* blk, int64_t base, int64_t N, TopK& tk, int& qthr, Exact16 exact16) {
  alignas(64) float exact[32];
  if (mask & 0xffffu) exact16(L, M, blk, 0, exact);
  if (mask >> 16) exact16(L, M, blk, 1, exact + 16);
  while (mask) {
    int j = __builtin_ctz(mask);
    mask &= mask - 1;
    if (base + j >= N) break;
    if (sums[j] > qthr) continue;
    if (tk.admits(exact[j])) {
      tk.push(exact[j], base + j);
      qthr = ql.qthreshold(tk);
    }
  }
}

void scan_scalar(const float* L, int64_t M, const uint8_t* blocks, int64_t b0, int64_t b1, int64_t N, TopK& tk) {
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = blocks + b * M * 16;
    for (int j = 0; j < 32 && b * 32 + j < N; ++j) tk.offer(exact_in_block(L, M, blk, j), b * 32 + j);
  }
}

__attribute__((target("avx2"))) inline __m128i le(__m128i a, __m128i t) {  // 0xffff where a <= t (unsigned)
  return _mm_cmpeq_epi16(_mm_max_epu16(a, t), t);
}

__attribute__((target("avx2"))) inline __m128i fold256(__m256i a) {
  return _mm_add_epi16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

__attribute__((target("avx512f,avx512bw,avx2"))) inline __m128i fold512(__m512i a) {
  return fold256(_mm256_add_epi16(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1)));
}

// The shuffled bytes of 16 codes sit in one 128-bit lane; as uint16 lanes, (v & 0xff) holds the even codes
// and (v >> 8) the odd ones, so sums accumulate without widening (cross-lane) instructions.
// e_lo/o_lo: even/odd codes 0..15 of the block, e_hi/o_hi: codes 16..31; 8 uint16 lanes each.
__attribute__((target("avx2,bmi2"))) inline uint32_t candidates(__m128i e_lo, __m128i o_lo, __m128i e_hi,
                                                                 __m128i o_hi, int qthr, uint16_t* sums) {
  const __m128i t = _mm_set1_epi16(static_cast<short>(static_cast<uint16_t>(qthr)));
  uint32_t even = static_cast<uint32_t>(_mm_movemask_epi8(_mm_packs_epi16(le(e_lo, t), le(e_hi, t))));
  uint32_t odd = static_cast<uint32_t>(_mm_movemask_epi8(_mm_packs_epi16(le(o_lo, t), le(o_hi, t))));
  uint32_t mask = _pdep_u32(even, 0x55555555u) | _pdep_u32(odd, 0xAAAAAAAAu);
  if (mask) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), _mm_unpacklo_epi16(e_lo, o_lo));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums + 8), _mm_unpackhi_epi16(e_lo, o_lo));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums + 16), _mm_unpacklo_epi16(e_hi, o_hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums + 24), _mm_unpackhi_epi16(e_hi, o_hi));
  }
  return mask;
}

// One sub-space with 128-bit shuffles (the remainder of M).
__attribute__((target("avx2"))) inline void accumulate_one(const uint8_t* raw_p, const uint8_t* tab_p, __m128i& e_lo,
                                                           __m128i& o_lo, __m128i& e_hi, __m128i& o_hi) {
  const __m128i low4 = _mm_set1_epi8(0x0f), byte = _mm_set1_epi16(0x00ff);
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(raw_p));
  __m128i tab = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tab_p));
  __m128i sl = _mm_shuffle_epi8(tab, _mm_and_si128(raw, low4));
  __m128i sh = _mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(raw, 4), low4));
  e_lo = _mm_add_epi16(e_lo, _mm_and_si128(sl, byte));
  o_lo = _mm_add_epi16(o_lo, _mm_srli_epi16(sl, 8));
  e_hi = _mm_add_epi16(e_hi, _mm_and_si128(sh, byte));
  o_hi = _mm_add_epi16(o_hi, _mm_srli_epi16(sh, 8));
}

template <int NQ>
__attribute__((target("avx2,bmi2"))) void scan_avx2(const QuantLut* const* ql, const float* const* L, TopK* const* tk,
                                                    int64_t M, const uint8_t* blocks, int64_t b0, int64_t b1,
                                                    int64_t N) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), byte = _mm256_set1_epi16(0x00ff);
  const int64_t M2 = M / 2 * 2;
  int qthr[NQ];
  for (int i = 0; i < NQ; ++i) qthr[i] = ql[i]->qthreshold(*tk[i]);
  alignas(32) uint16_t sums[32];
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = blocks + b * M * 16;
    __m256i e_lo[NQ], o_lo[NQ], e_hi[NQ], o_hi[NQ];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) e_lo[i] = o_lo[i] = e_hi[i] = o_hi[i] = _mm256_setzero_si256();
    for (int64_t m = 0; m < M2; m += 2) {  // two sub-spaces: one 128-bit lane each
      __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + m * 16));
      __m256i lo = _mm256_and_si256(raw, low4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
#pragma GCC unroll 4
      for (int i = 0; i < NQ; ++i) {
        __m256i tab = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&ql[i]->q[m * 16]));
        __m256i sl = _mm256_shuffle_epi8(tab, lo), sh = _mm256_shuffle_epi8(tab, hi);
        e_lo[i] = _mm256_add_epi16(e_lo[i], _mm256_and_si256(sl, byte));
        o_lo[i] = _mm256_add_epi16(o_lo[i], _mm256_srli_epi16(sl, 8));
        e_hi[i] = _mm256_add_epi16(e_hi[i], _mm256_and_si256(sh, byte));
        o_hi[i] = _mm256_add_epi16(o_hi[i], _mm256_srli_epi16(sh, 8));
      }
    }
    for (int i = 0; i < NQ; ++i) {
      __m128i el = fold256(e_lo[i]), ol = fold256(o_lo[i]), eh = fold256(e_hi[i]), oh = fold256(o_hi[i]);
      if (M2 < M) accumulate_one(blk + M2 * 16, &ql[i]->q[M2 * 16], el, ol, eh, oh);
      if (qthr[i] < 0) continue;
      uint32_t mask = candidates(el, ol, eh, oh, qthr[i], sums);
      if (mask) rerank(mask, sums, *ql[i], L[i], M, blk, b * 32, N, *tk[i], qthr[i], exact16_avx2);
    }
  }
}

// NQ queries per loaded block: the nibble decode of the codes is shared, each query has its accumulators.
template <int NQ>
__attribute__((target("avx512f,avx512bw,avx2,bmi2"))) void scan_avx512(const QuantLut* const* ql, const float* const* L,
                                                                        TopK* const* tk, int64_t M,
                                                                        const uint8_t* blocks, int64_t b0,
                                                                        int64_t b1, int64_t N) {
  const __m512i low4 = _mm512_set1_epi8(0x0f), byte = _mm512_set1_epi16(0x00ff);
  const int64_t M4 = M / 4 * 4;
  int qthr[NQ];
  for (int i = 0; i < NQ; ++i) qthr[i] = ql[i]->qthreshold(*tk[i]);
  alignas(64) uint16_t sums[32];
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = blocks + b * M * 16;
    __m512i e_lo[NQ], o_lo[NQ], e_hi[NQ], o_hi[NQ];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) e_lo[i] = o_lo[i] = e_hi[i] = o_hi[i] = _mm512_setzero_si512();
    for (int64_t m = 0; m < M4; m += 4) {  // four sub-spaces: one 128-bit lane each
      __m512i raw = _mm512_loadu_si512(blk + m * 16);
      __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
#pragma GCC unroll 4
      for (int i = 0; i < NQ; ++i) {
        __m512i tab = _mm512_loadu_si512(&ql[i]->q[m * 16]);
        __m512i sl = _mm512_shuffle_epi8(tab, lo), sh = _mm512_shuffle_epi8(tab, hi);
        e_lo[i] = _mm512_add_epi16(e_lo[i], _mm512_and_si512(sl, byte));
        o_lo[i] = _mm512_add_epi16(o_lo[i], _mm512_srli_epi16(sl, 8));
        e_hi[i] = _mm512_add_epi16(e_hi[i], _mm512_and_si512(sh, byte));
        o_hi[i] = _mm512_add_epi16(o_hi[i], _mm512_srli_epi16(sh, 8));
      }
    }
    for (int i = 0; i < NQ; ++i) {
      __m128i el = fold512(e_lo[i]), ol = fold512(o_lo[i]), eh = fold512(e_hi[i]), oh = fold512(o_hi[i]);
      for (int64_t m = M4; m < M; ++m) accumulate_one(blk + m * 16, &ql[i]->q[m * 16], el, ol, eh, oh);
      if (qthr[i] < 0) continue;
      uint32_t mask = candidates(el, ol, eh, oh, qthr[i], sums);
      if (mask) rerank(mask, sums, *ql[i], L[i], M, blk, b * 32, N, *tk[i], qthr[i], exact16_avx512);
    }
  }
}

}  // namespace

void pack_fastscan(const uint8_t* packed, int64_t N, int64_t M, uint8_t* blocks, int nthreads) {
  const int64_t W = (M + 1) / 2, nb = (N + 31) / 32;
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads))
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* out = blocks + b * M * 16;
    for (int64_t m = 0; m < M; ++m)
      for (int j = 0; j < 16; ++j) {
        int64_t v0 = b * 32 + j, v1 = v0 + 16;
        uint8_t lo = v0 < N ? nibble(packed + v0 * W, m) : 0;
        uint8_t hi = v1 < N ? nibble(packed + v1 * W, m) : 0;
        out[m * 16 + j] = static_cast<uint8_t>(lo | (hi << 4));
      }
  }
}

void unpack_fastscan(const uint8_t* blocks, int64_t N, int64_t M, uint8_t* packed, int nthreads) {
  const int64_t W = (M + 1) / 2;
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads))
  for (int64_t v = 0; v < N; ++v) {
    const uint8_t* blk = blocks + (v / 32) * M * 16;
    uint8_t* row = packed + v * W;
    for (int64_t w = 0; w < W; ++w) row[w] = 0;
    for (int64_t m = 0; m < M; ++m) {
      uint8_t c = static_cast<uint8_t>(code_in_block(blk, m, static_cast<int>(v % 32)));
      row[m >> 1] |= (m & 1) ? static_cast<uint8_t>(c << 4) : c;
    }
  }
}

void adc_topk_fastscan(const float* lut, int64_t Q, int64_t M, const uint8_t* blocks, int64_t N, int64_t k,
                       int nthreads, float* out_d, int64_t* out_i) {
  if (Q < 0 || M < 1 || N < 0 || k < 1) throw std::invalid_argument("adc_topk_fastscan: bad sizes");
  nthreads = std::max(1, nthreads);
  const Simd simd = M > 257 ? Simd::scalar : active_simd();  // uint16 accumulators hold M * 255
  TaskPlan p = plan_tasks(Q, N, k, nthreads, 32);
  const int64_t kk = std::min(k, N);
  std::vector<std::vector<TopK>> partial(p.qblocks * p.parts);
  const int64_t BB = std::max<int64_t>(8, (16 * 1024) / (M * 16));  // blocks per cache tile
#pragma omp parallel for schedule(dynamic) num_threads(team(nthreads, p.qblocks * p.parts))
  for (int64_t t = 0; t < p.qblocks * p.parts; ++t) {
    int64_t qb = t / p.parts, part = t % p.parts;
    int64_t q0 = qb * p.qblock, q1 = std::min(Q, q0 + p.qblock);
    int64_t n0 = part * p.part_len, n1 = std::min(N, n0 + p.part_len);
    int64_t blk0 = n0 / 32, blk1 = (n1 + 31) / 32;
    std::vector<TopK>& heaps = partial[t];
    std::vector<QuantLut> qluts;
    heaps.reserve(q1 - q0);
    qluts.reserve(q1 - q0);
    for (int64_t q = q0; q < q1; ++q) {
      heaps.emplace_back(kk);
      qluts.emplace_back(lut + q * M * 16, M);
    }
    std::vector<const QuantLut*> qp;
    std::vector<const float*> lp;
    std::vector<TopK*> tp;
    for (int64_t q = q0; q < q1; ++q) {
      qp.push_back(&qluts[q - q0]);
      lp.push_back(lut + q * M * 16);
      tp.push_back(&heaps[q - q0]);
    }
    for (int64_t c0 = blk0; c0 < blk1; c0 += BB) {
      int64_t c1 = std::min(blk1, c0 + BB);
      int64_t j = 0;
      if (simd == Simd::avx512) {
        for (; j < q1 - q0; ++j) scan_avx512<1>(&qp[j], &lp[j], &tp[j], M, blocks, c0, c1, n1);
      } else if (simd == Simd::avx2) {
        for (; j < q1 - q0; ++j) scan_avx2<1>(&qp[j], &lp[j], &tp[j], M, blocks, c0, c1, n1);
      } else {
        for (; j < q1 - q0; ++j) scan_scalar(lp[j], M, blocks, c0, c1, n1, *tp[j]);
      }
    }
  }
  merge_partial(p, Q, k, partial, out_d, out_i, nthreads);
}

}  // namespace sqret
