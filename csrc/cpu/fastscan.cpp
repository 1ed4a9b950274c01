// 4-bit fast scan: per block of 64 codes, 16-entry uint8 LUTs in SIMD registers (shuffle lookup), uint16
// accumulators, then an exact float re-rank of every code whose lower bound can still enter the top-k.
//
// Layout: block b, sub-space m is a row of 32 bytes; byte j holds vector 64b+j in its low nibble and vector
// 64b+32+j in its high nibble. One row fills a 256-bit register (AVX2), two fill a 512-bit one (AVX-512),
// so the sums of a block need at most one fold of register halves.
//
// Exactness: the LUT of sub-space m is quantized as L[m][j] ~ min_m + a * q[m][j] with one scale a for all
// sub-spaces, so |L - (min_m + a q)| <= a / 2 and the exact distance d >= bias + a * Qsum - emax with
// emax = M a / 2 (+ a margin for float rounding). A code is re-ranked exactly when that lower bound exceeds
// neither the current k-th best exact distance nor U = bias + a Qk + emax, where Qk bounds the k-th smallest
// quantized sum seen (GroupMins); all others provably cannot enter the top-k.
//
// Passes: per tile of 128 KB of codes, (1) the quantized sums of every code (two queries at a time on
// AVX-512), (2) the cap from the group minima, (3) the exact re-rank of the codes under it, in ascending ids.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "kernels.h"

namespace sqret {

namespace {

constexpr int kB = kFastScanBlock;  // codes per block (64)
constexpr int kRow = kB / 2;        // bytes per (block, sub-space) row

inline uint8_t nibble(const uint8_t* row, int64_t m) {
  uint8_t b = row[m >> 1];
  return (m & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 15);
}

// Code of vector j (0..63) of a block for sub-space m.
inline int code_in_block(const uint8_t* blk, int64_t m, int j) {
  return j < kRow ? (blk[m * kRow + j] & 15) : (blk[m * kRow + j - kRow] >> 4);
}

inline float exact_in_block(const float* L, int64_t M, const uint8_t* blk, int j) {
  float d = 0.f;
  for (int64_t m = 0; m < M; ++m) d += L[m * 16 + code_in_block(blk, m, j)];
  return d;
}

// Horizontal min / max of 8 floats.
__attribute__((target("avx2"))) inline float hmin(__m256 v) {
  __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_min_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_min_ss(x, _mm_movehdup_ps(x)));
}
__attribute__((target("avx2"))) inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

struct QuantLut {
  std::vector<uint8_t> q;  // [M][32]: each sub-space's 16 entries twice (one per 128-bit lane), + padding
  double a = 1.0, inv_a = 1.0, bias = 0.0, emax = 0.0;

  // AVX2 (only the SIMD scans use it). Entries are quantized in float: (L - min) * (1 / a) is within
  // 3 * 2^-24 * 255 < 1e-4 of the exact (L - min) / a, which the bound's 0.5 + 1e-4 per sub-space covers.
  __attribute__((target("avx2"))) QuantLut(const float* L, int64_t M) : q(static_cast<size_t>(M * 32 + 64), 0) {
    std::vector<float> mins(M);
    float range = 0.f, absmax_sum = 0.f;
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int64_t m = 0; m < M; ++m) {
      const __m256 lo = _mm256_loadu_ps(L + m * 16), hi = _mm256_loadu_ps(L + m * 16 + 8);
      const float mn = hmin(_mm256_min_ps(lo, hi)), mx = hmax(_mm256_max_ps(lo, hi));
      absmax_sum += hmax(_mm256_max_ps(_mm256_andnot_ps(sign, lo), _mm256_andnot_ps(sign, hi)));
      mins[m] = mn;
      bias += mn;
      range = std::max(range, mx - mn);
    }
    a = range > 0 ? static_cast<double>(range) / 255.0 : 1.0;
    inv_a = 1.0 / a;
    const __m256 s = _mm256_set1_ps(static_cast<float>(inv_a)), top = _mm256_set1_ps(255.f);
    for (int64_t m = 0; m < M; ++m) {
      const __m256 mn = _mm256_set1_ps(mins[m]);
      __m256i lo = _mm256_cvtps_epi32(_mm256_min_ps(top, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(L + m * 16), mn), s)));
      __m256i hi =
          _mm256_cvtps_epi32(_mm256_min_ps(top, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(L + m * 16 + 8), mn), s)));
      __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);  // 16 uint16 in order
      __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&q[m * 32]), b);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&q[m * 32 + 16]), b);
    }
    // rounding of the quantization (a/2 per sub-space, + the float slack above) + float32 rounding of the
    // exact sum and of the bound
    emax = M * a * (0.5 + 1e-4) + 4.0 * M * 1.2e-7 * (absmax_sum + std::fabs(bias)) + 1e-30;
  }

  // Largest Qsum whose lower bound can still enter a top-k whose k-th best is thr.
  inline int qthreshold(const TopK& tk) const {
    if (!tk.full()) return 65535;
    double t = std::floor((static_cast<double>(tk.threshold()) - bias + emax) * inv_a) + 1.0;
    if (!(t < 65535.0)) return 65535;  // also +inf / NaN
    return t < 0 ? -1 : static_cast<int>(t);
  }
};

// Exact distances of the 16 codes 16g..16g+15 of a block (g = 0..3), summed over sub-spaces in order
// m = 0..M-1 like the reference, so the values are bit-identical.
__attribute__((target("avx512f,avx512bw"))) void exact16_avx512(const float* L, int64_t M, const uint8_t* blk,
                                                                int g, float* out) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const uint8_t* p = blk + (g & 1) * 16;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t m = 0; m < M; ++m) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + m * kRow));
    __m128i c = _mm_and_si128(g >> 1 ? _mm_srli_epi16(raw, 4) : raw, low4);
    acc = _mm512_add_ps(acc, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c), _mm512_loadu_ps(L + m * 16)));
  }
  _mm512_storeu_ps(out, acc);
}

__attribute__((target("avx2"))) void exact16_avx2(const float* L, int64_t M, const uint8_t* blk, int g, float* out) {
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const __m256i seven = _mm256_set1_epi32(7);
  const uint8_t* p = blk + (g & 1) * 16;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int64_t m = 0; m < M; ++m) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + m * kRow));
    __m128i c = _mm_and_si128(g >> 1 ? _mm_srli_epi16(raw, 4) : raw, low4);
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

// Bits j (0..15) where out[j] < thr: branchless (the compiler vectorizes it).
inline uint32_t below(const float* out, float thr) {
  uint32_t bits = 0;
  for (int j = 0; j < 16; ++j) bits |= static_cast<uint32_t>(out[j] < thr) << j;
  return bits;
}

// Offer the candidates of one block (mask bit j: code j may enter), in ascending ids. Exact distances are
// computed 16 at a time for the groups that hold candidates; the exact test against the current k-th best
// is the admission test (a code whose lower bound has since passed the threshold fails it too), done for
// the 16 at once and redone only when the threshold moves.
inline void rerank(uint64_t mask, const QuantLut& ql, const float* L, int64_t M, const uint8_t* blk, int64_t base,
                   int64_t N, TopK& tk, int& qthr, int qcap, Exact16 exact16) {
  alignas(64) float exact[16];
  for (int g = 0; g < 4 && mask; ++g, mask >>= 16) {
    uint32_t m16 = static_cast<uint32_t>(mask & 0xffffu);
    if (!m16) continue;
    const int64_t first = base + g * 16;
    if (first >= N) return;
    if (N - first < 16) m16 &= (1u << (N - first)) - 1;  // padding past N
    exact16(L, M, blk, g, exact);
    float thr = tk.threshold();
    uint32_t adm = tk.full() ? m16 & below(exact, thr) : m16;  // not full: everything enters, +inf included
    while (adm) {
      int j = __builtin_ctz(adm);
      tk.push(exact[j], first + j);
      adm &= adm - 1;
      if (tk.threshold() != thr) {  // a shrink moved the k-th best
        thr = tk.threshold();
        adm &= below(exact, thr);
        qthr = std::min(ql.qthreshold(tk), qcap);
      }
    }
  }
}

void scan_scalar(const float* L, int64_t M, const uint8_t* blocks, int64_t b0, int64_t b1, int64_t N, TopK& tk) {
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = blocks + b * M * kRow;
    for (int j = 0; j < kB && b * kB + j < N; ++j) tk.offer(exact_in_block(L, M, blk, j), b * kB + j);
  }
}

// Accumulators of one block, 16 uint16 lanes each: lane i of e_lo sums codes 2i (as whole words: even +
// 256 * odd, fixed by even_sums), o_lo codes 2i+1, e_hi codes 32+2i, o_hi codes 33+2i.
struct Sums {
  __m256i e_lo, o_lo, e_hi, o_hi;
};

__attribute__((target("avx2"))) inline void add_row(Sums& s, __m256i raw, __m256i tab) {
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i sl = _mm256_shuffle_epi8(tab, _mm256_and_si256(raw, low4));
  __m256i sh = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4));
  s.e_lo = _mm256_add_epi16(s.e_lo, sl);
  s.o_lo = _mm256_add_epi16(s.o_lo, _mm256_srli_epi16(sl, 8));
  s.e_hi = _mm256_add_epi16(s.e_hi, sh);
  s.o_hi = _mm256_add_epi16(s.o_hi, _mm256_srli_epi16(sh, 8));
}

// Whole-word sums (even + 256 * odd, modulo 2^16) minus 256 * the odd sums: the even sums, exact as they stay
// below 2^16 (M <= 257).
__attribute__((target("avx2"))) inline void fix_even(Sums& s) {
  s.e_lo = _mm256_sub_epi16(s.e_lo, _mm256_slli_epi16(s.o_lo, 8));
  s.e_hi = _mm256_sub_epi16(s.e_hi, _mm256_slli_epi16(s.o_hi, 8));
}

// The quantized sums of one block, one row at a time (AVX2).
__attribute__((target("avx2"))) inline Sums block_sums(const uint8_t* tab, const uint8_t* blk, int64_t M) {
  Sums s{_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  for (int64_t m = 0; m < M; ++m)
    add_row(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + m * kRow)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab + m * 32)));
  fix_even(s);
  return s;
}

// 16 lanes <= t (unsigned) -> 16 mask bits, with AVX2 only.
__attribute__((target("avx2,bmi2"))) inline uint32_t le_mask(__m256i a, __m256i t) {
  __m256i le = _mm256_cmpeq_epi16(_mm256_max_epu16(a, t), t);
  return _pext_u32(static_cast<uint32_t>(_mm256_movemask_epi8(le)), 0x55555555u);
}

// Interleave even-lane and odd-lane masks into code order.
__attribute__((target("bmi2"))) inline uint64_t interleave(uint32_t even_lo, uint32_t odd_lo, uint32_t even_hi,
                                                           uint32_t odd_hi) {
  uint64_t lo = _pdep_u32(even_lo, 0x55555555u) | _pdep_u32(odd_lo, 0xAAAAAAAAu);
  uint64_t hi = _pdep_u32(even_hi, 0x55555555u) | _pdep_u32(odd_hi, 0xAAAAAAAAu);
  return lo | (hi << 32);
}

__attribute__((target("avx2"))) inline void store_sums(uint16_t* out, const Sums& s) {
  __m256i* o = reinterpret_cast<__m256i*>(out);
  _mm256_storeu_si256(o, s.e_lo);
  _mm256_storeu_si256(o + 1, s.o_lo);
  _mm256_storeu_si256(o + 2, s.e_hi);
  _mm256_storeu_si256(o + 3, s.o_hi);
}

// Pass 1 over a tile: the quantized sums of blocks [c0, c1) into sums (64 per block, in lane order: codes
// 0, 2, .., 30 | 1, 3, .., 31 | 32, 34, .., 62 | 33, 35, .., 63).
__attribute__((target("avx2"))) void tile_sums_avx2(const uint8_t* tab, int64_t M, const uint8_t* blocks, int64_t c0,
                                                    int64_t c1, uint16_t* sums) {
  for (int64_t b = c0; b < c1; ++b) store_sums(sums + (b - c0) * kB, block_sums(tab, blocks + b * M * kRow, M));
}

__attribute__((target("avx512f,avx2"))) inline __m256i fold(__m512i v) {
  return _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// Two rows per 512-bit register (sub-spaces m, m+1 in its halves), one fold of the halves per block; NQ
// queries at once (tables tab[0..NQ), sums into sums[0..NQ)), so that a row of codes is loaded and split
// into nibbles once for all of them.
template <int NQ>
__attribute__((target("avx512f,avx512bw,avx2"))) void tile_sums_avx512(const uint8_t* const* tab, int64_t M,
                                                                       const uint8_t* blocks, int64_t c0, int64_t c1,
                                                                       uint16_t* const* sums) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const int64_t M2 = M / 2 * 2;
  for (int64_t b = c0; b < c1; ++b) {
    const uint8_t* blk = blocks + b * M * kRow;
    __m512i acc[NQ][4];
    for (int q = 0; q < NQ; ++q)
      for (int v = 0; v < 4; ++v) acc[q][v] = _mm512_setzero_si512();
    for (int64_t m = 0; m < M2; m += 2) {
      const __m512i raw = _mm512_loadu_si512(blk + m * kRow);
      const __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
      for (int q = 0; q < NQ; ++q) {
        const __m512i t2 = _mm512_loadu_si512(tab[q] + m * 32);
        const __m512i sl = _mm512_shuffle_epi8(t2, lo), sh = _mm512_shuffle_epi8(t2, hi);
        acc[q][0] = _mm512_add_epi16(acc[q][0], sl);
        acc[q][1] = _mm512_add_epi16(acc[q][1], _mm512_srli_epi16(sl, 8));
        acc[q][2] = _mm512_add_epi16(acc[q][2], sh);
        acc[q][3] = _mm512_add_epi16(acc[q][3], _mm512_srli_epi16(sh, 8));
      }
    }
    for (int q = 0; q < NQ; ++q) {
      Sums s{fold(acc[q][0]), fold(acc[q][1]), fold(acc[q][2]), fold(acc[q][3])};
      if (M2 < M)
        add_row(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + M2 * kRow)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab[q] + M2 * 32)));
      fix_even(s);
      store_sums(sums[q] + (b - c0) * kB, s);
    }
  }
}

// Upper bound on the k-th smallest quantized sum seen, from group minima: the codes seen are split into G
// groups (lane of a block x block number mod G / 64) and each group keeps its minimum. The minima are sums
// of G distinct codes, so the k-th smallest of them (k <= G) is at least the k-th smallest sum: k codes have
// exact distances <= bias + a Qk + emax =: U, and a code whose lower bound bias + a Qsum - emax exceeds U
// cannot enter the top-k. The top-k codes mostly sit in distinct groups, so the bound is nearly tight.
class GroupMins {
 public:
  static constexpr int64_t kMaxGroups = 4 * kB;

  explicit GroupMins(int64_t k)
      : k_(k), groups_(k <= kMaxGroups ? (k + kB - 1) / kB * kB : 0), mins_(static_cast<size_t>(groups_), 0xffff) {}

  // Fold in the sums of blocks c0..c1-1 of a tile (sums[(b - c0) * 64 ..]); codes past N were set to 65535.
  __attribute__((target("avx2"))) void add(const uint16_t* sums, int64_t c0, int64_t c1) {
    const int64_t r = groups_ / kB;
    for (int64_t cls = 0; cls < r; ++cls) {  // class cls: blocks b = cls mod r, in registers
      __m256i* g = reinterpret_cast<__m256i*>(mins_.data() + cls * kB);
      __m256i m0 = _mm256_loadu_si256(g), m1 = _mm256_loadu_si256(g + 1), m2 = _mm256_loadu_si256(g + 2),
              m3 = _mm256_loadu_si256(g + 3);
      for (int64_t b = c0 + ((cls - c0 % r) + r) % r; b < c1; b += r) {
        const __m256i* s = reinterpret_cast<const __m256i*>(sums + (b - c0) * kB);
        m0 = _mm256_min_epu16(m0, _mm256_loadu_si256(s));
        m1 = _mm256_min_epu16(m1, _mm256_loadu_si256(s + 1));
        m2 = _mm256_min_epu16(m2, _mm256_loadu_si256(s + 2));
        m3 = _mm256_min_epu16(m3, _mm256_loadu_si256(s + 3));
      }
      _mm256_storeu_si256(g, m0);
      _mm256_storeu_si256(g + 1, m1);
      _mm256_storeu_si256(g + 2, m2);
      _mm256_storeu_si256(g + 3, m3);
    }
  }

  // Largest Qsum worth an exact look (65535: no cap, while fewer than k groups hold a code, or k > G).
  __attribute__((target("avx2,bmi2,popcnt"))) int cap(const QuantLut& ql) {
    if (!groups_) return 65535;
    int lo = 0, hi = kth_;  // the smallest t with #{mins <= t} >= k, by bisection; minima only decrease
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      const __m256i t = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(mid)));
      int64_t count = 0;
      for (int64_t i = 0; i < groups_; i += 16)
        count += _mm_popcnt_u32(le_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mins_.data() + i)), t));
      if (count >= k_) hi = mid;
      else lo = mid + 1;
    }
    kth_ = lo;
    if (lo == 65535) return 65535;
    const double c = lo + std::floor(2.0 * ql.emax * ql.inv_a) + 1.0;
    return c < 65535.0 ? static_cast<int>(c) : 65535;
  }

 private:
  int64_t k_, groups_;
  std::vector<uint16_t> mins_;
  int kth_ = 65535;  // the last cap's k-th smallest minimum
};

// Lane (in the lane order of store_sums) of code j of a block.
inline int lane_of(int j) { return ((j >> 5) * 2 + (j & 1)) * 16 + ((j & 31) >> 1); }

// Pass 2 over a tile: the codes whose quantized sums pass the cap (and the exact top-k's own bound) are
// re-ranked exactly, block by block in ascending ids.
__attribute__((target("avx2,bmi2"))) void rerank_tile(const QuantLut& ql, const float* L, TopK& tk, int qcap,
                                                      int64_t M, const uint8_t* blocks, int64_t c0, int64_t c1,
                                                      int64_t N, const uint16_t* sums, Exact16 exact16) {
  int qthr = std::min(ql.qthreshold(tk), qcap);
  for (int64_t b = c0; b < c1 && qthr >= 0; ++b) {
    const __m256i* s = reinterpret_cast<const __m256i*>(sums + (b - c0) * kB);
    const __m256i v0 = _mm256_loadu_si256(s), v1 = _mm256_loadu_si256(s + 1), v2 = _mm256_loadu_si256(s + 2),
                  v3 = _mm256_loadu_si256(s + 3);
    const __m256i t = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(qthr)));
    if (!le_mask(_mm256_min_epu16(_mm256_min_epu16(v0, v1), _mm256_min_epu16(v2, v3)), t)) continue;
    uint64_t mask = interleave(le_mask(v0, t), le_mask(v1, t), le_mask(v2, t), le_mask(v3, t));
    rerank(mask, ql, L, M, blocks + b * M * kRow, b * kB, N, tk, qthr, qcap, exact16);
  }
}

}  // namespace

void pack_fastscan(const uint8_t* packed, int64_t N, int64_t M, uint8_t* blocks, int nthreads) {
  const int64_t W = (M + 1) / 2, nb = (N + kB - 1) / kB;
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads))
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* out = blocks + b * M * kRow;
    for (int64_t m = 0; m < M; ++m)
      for (int j = 0; j < kRow; ++j) {
        int64_t v0 = b * kB + j, v1 = v0 + kRow;
        uint8_t lo = v0 < N ? nibble(packed + v0 * W, m) : 0;
        uint8_t hi = v1 < N ? nibble(packed + v1 * W, m) : 0;
        out[m * kRow + j] = static_cast<uint8_t>(lo | (hi << 4));
      }
  }
}

void unpack_fastscan(const uint8_t* blocks, int64_t N, int64_t M, uint8_t* packed, int nthreads) {
  const int64_t W = (M + 1) / 2;
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads))
  for (int64_t v = 0; v < N; ++v) {
    const uint8_t* blk = blocks + (v / kB) * M * kRow;
    uint8_t* row = packed + v * W;
    for (int64_t w = 0; w < W; ++w) row[w] = 0;
    for (int64_t m = 0; m < M; ++m) {
      uint8_t c = static_cast<uint8_t>(code_in_block(blk, m, static_cast<int>(v % kB)));
      row[m >> 1] |= (m & 1) ? static_cast<uint8_t>(c << 4) : c;
    }
  }
}

void adc_topk_fastscan(const float* lut, int64_t Q, int64_t M, const uint8_t* blocks, int64_t N, int64_t k,
                       int nthreads, float* out_d, int64_t* out_i) {
  if (Q < 0 || M < 1 || N < 0 || k < 1) throw std::invalid_argument("adc_topk_fastscan: bad sizes");
  nthreads = std::max(1, nthreads);
  const Simd simd = M > 257 ? Simd::scalar : active_simd();  // uint16 accumulators hold M * 255
  TaskPlan p = plan_tasks(Q, N, k, nthreads, kB);
  const int64_t kk = std::min(k, N);
  std::vector<std::vector<TopK>> partial(p.qblocks * p.parts);
  const int64_t BB = std::max<int64_t>(4, (128 * 1024) / (M * kRow));  // blocks per cache tile
  std::atomic<bool> nan{false};
  for_tasks(team(nthreads, p.qblocks * p.parts), p.qblocks * p.parts, [&](int64_t t) {
    int64_t qb = t / p.parts, part = t % p.parts;
    int64_t q0 = qb * p.qblock, q1 = std::min(Q, q0 + p.qblock);
    int64_t n0 = part * p.part_len, n1 = std::min(N, n0 + p.part_len);
    int64_t blk0 = n0 / kB, blk1 = (n1 + kB - 1) / kB;
    if (has_nan(lut + q0 * M * 16, (q1 - q0) * M * 16)) {
      nan.store(true, std::memory_order_relaxed);
      return;
    }
    std::vector<TopK>& heaps = partial[t];
    heaps.reserve(q1 - q0);
    for (int64_t q = q0; q < q1; ++q) heaps.emplace_back(kk);
    if (simd == Simd::scalar) {
      for (int64_t j = 0; j < q1 - q0; ++j) scan_scalar(lut + (q0 + j) * M * 16, M, blocks, blk0, blk1, n1, heaps[j]);
      return;
    }
    std::vector<QuantLut> qluts;  // AVX2 code: only on the SIMD paths
    qluts.reserve(q1 - q0);
    for (int64_t q = q0; q < q1; ++q) qluts.emplace_back(lut + q * M * 16, M);
    const Exact16 exact16 = simd == Simd::avx512 ? exact16_avx512 : exact16_avx2;
    std::vector<GroupMins> mins(q1 - q0, GroupMins(kk));
    const int64_t tile = std::min(BB, blk1 - blk0) * kB;
    thread_local std::vector<uint16_t> scratch;  // the tiles' sums, reused across calls: not zeroed, all written
    if (scratch.size() < static_cast<size_t>(2 * tile)) scratch.resize(2 * tile);
    uint16_t* const sums = scratch.data();
    for (int64_t c0 = blk0; c0 < blk1; c0 += BB) {  // a tile of blocks, hot in cache, for every query
      const int64_t c1 = std::min(blk1, c0 + BB), last_valid = n1 - (c1 - 1) * kB;
      for (int64_t j = 0; j < q1 - q0;) {  // two passes: the tile's quantized sums, then the re-rank
        const int nq = simd == Simd::avx512 && j + 1 < q1 - q0 ? 2 : 1;
        const uint8_t* tabs[2] = {qluts[j].q.data(), qluts[j + nq - 1].q.data()};
        uint16_t* bufs[2] = {sums, sums + tile};
        if (simd == Simd::avx2) tile_sums_avx2(tabs[0], M, blocks, c0, c1, bufs[0]);
        else if (nq == 2) tile_sums_avx512<2>(tabs, M, blocks, c0, c1, bufs);
        else tile_sums_avx512<1>(tabs, M, blocks, c0, c1, bufs);
        for (int i = 0; i < nq; ++i, ++j) {
          uint16_t* own = bufs[i];
          for (int64_t v = last_valid; v < kB; ++v) own[(c1 - 1 - c0) * kB + lane_of(static_cast<int>(v))] = 0xffff;
          mins[j].add(own, c0, c1);
          rerank_tile(qluts[j], lut + (q0 + j) * M * 16, heaps[j], mins[j].cap(qluts[j]), M, blocks, c0, c1, n1,
                      own, exact16);
        }
      }
    }
  });
  if (nan.load()) throw std::invalid_argument("lut contains NaN");
  merge_partial(p, Q, k, partial, out_d, out_i, nthreads);
}

}  // namespace sqret
