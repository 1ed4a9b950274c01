// 4-bit fast scan: per block of 64 codes, 16-entry uint8 LUTs in SIMD registers (shuffle lookup), uint16
// accumulators; then either an exact float re-rank of every code whose lower bound can still enter the top-k
// (exact mode: the results equal the exact scan) or the quantized sums themselves (approximate mode, as
// FAISS's and ScaNN's fast scans return). Flat (adc_topk_fastscan) and over inverted lists (ivf_fastscan).
//
// Layout: block b, sub-space m is a row of 32 bytes; byte j holds vector 64b+j in its low nibble and vector
// 64b+32+j in its high nibble. One row fills a 256-bit register (AVX2), two fill a 512-bit one (AVX-512),
// so the sums of a block need at most one fold of register halves.
//
// Exactness: the LUT of sub-space m is quantized as L[m][j] ~ min_m + a * q[m][j] with one scale a for all
// sub-spaces. The rounding errors e[m][j] = L[m][j] - min_m - a q[m][j] are known, so for every code the
// exact distance d lies in [bias + a Qsum + elo, bias + a Qsum + ehi], elo / ehi the sums over sub-spaces of
// the smallest / largest error of their entries (widened for float rounding). Where the tables' ranges are
// skewed across sub-spaces (PCA-like data), most sub-spaces quantize almost exactly and the bounds are far
// tighter than the worst case M a / 2. A code is re-ranked exactly when its lower bound exceeds neither the
// current k-th best exact distance nor U = bias + a Qk + ehi, where Qk bounds the k-th smallest quantized sum
// seen (GroupMins); all others provably cannot enter the top-k.
//
// Passes: per tile of 128 KB of codes, (1) the quantized sums of every code (two queries at a time on
// AVX-512), (2) the cap from the group minima, (3) the exact re-rank (or the approximate distances) of the
// codes under it, in ascending ids.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <functional>
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
  std::vector<uint8_t> q;   // [M][32]: each sub-space's 16 entries (low bytes) twice (one per 128-bit lane)
  std::vector<uint8_t> qh;  // [S][32]: the high bytes of the split sub-spaces' entries, likewise
  std::vector<int64_t> split;  // the split sub-spaces (entries of 16 bits: their range is over 255 a)
  double a = 1.0, inv_a = 1.0, bias = 0.0;
  float a_f = 1.f, bias_f = 0.f;  // as float32: the approximate distances are bias_f + a_f * Qsum in float
  // for every code: exact distance - (bias + a Qsum) in [elo, ehi] (the float slack included; only computed
  // with bounds, what the exact mode needs)
  double elo = 0.0, ehi = 0.0;
  std::vector<float> mins_, ranges_, order_;  // scratch, reused

  // The scale: one a for all sub-spaces, entries q[m][j] = round((L[m][j] - min_m) / a), of 8 bits, or of 16
  // bits in at most kMaxSplit sub-spaces whose range exceeds 255 a (their high bytes summed apart and added
  // back as 256 x, saturating: no sum ever reaches 2^16, as a >= (sum of the ranges) / 60000). Skewed ranges
  // (one sub-space of PCA-like data far wider than the rest) then no longer set a for all: a shrinks to the
  // (kMaxSplit + 1)-th largest range / 255, and the bounds tighten as much. Split only when a shrinks 2x, and
  // at most M / 8 sub-spaces: each split one costs the scan's first pass another row of shuffles (8 of 16
  // sub-spaces made every scan of 16-byte codes 1.5x slower, on any table a split halved).
  static constexpr int64_t kMaxSplit = 8;

  QuantLut() = default;
  QuantLut(const float* L, int64_t M, bool bounds = true) { assign(L, M, bounds); }

  // The quantized tables of L [M][16] (reusing this object's buffers). AVX2 (only the SIMD scans use it).
  // Entries are quantized in float; the errors are then measured from the quantized values (so the float
  // quantization itself needs no slack), in float: the slack covers their rounding and the float rounding
  // of the exact sums.
  __attribute__((target("avx2"))) void assign(const float* L, int64_t M, bool bounds = true) {
    q.resize(static_cast<size_t>(M * 32 + 64));
    split.clear();
    a = inv_a = 1.0, bias = elo = ehi = 0.0;
    std::vector<float>&mins = mins_, &ranges = ranges_, &order = order_;
    mins.resize(M), ranges.resize(M);
    float absmax_sum = 0.f;
    double range_sum = 0.0;
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int64_t m = 0; m < M; ++m) {
      const __m256 lo = _mm256_loadu_ps(L + m * 16), hi = _mm256_loadu_ps(L + m * 16 + 8);
      const float mn = hmin(_mm256_min_ps(lo, hi)), mx = hmax(_mm256_max_ps(lo, hi));
      absmax_sum += hmax(_mm256_max_ps(_mm256_andnot_ps(sign, lo), _mm256_andnot_ps(sign, hi)));
      mins[m] = mn, ranges[m] = mx - mn;
      bias += mn;
      range_sum += mx - mn;
    }
    const int64_t S = std::min(kMaxSplit, M / 8);
    float widest = 0.f, rest = 0.f;  // the largest range, and the (S + 1)-th largest
    if (M) widest = *std::max_element(ranges.begin(), ranges.end());
    int64_t wide = 0;  // ranges over half the widest: more than S of them, and a split cannot halve a
    for (int64_t m = 0; m < M; ++m) wide += ranges[m] * 2.f > widest;
    if (S > 0 && wide <= S) {
      order.assign(ranges.begin(), ranges.end());
      std::nth_element(order.begin(), order.begin() + S, order.end(), std::greater<float>());
      rest = order[S];
    } else {
      rest = widest;  // no split
    }
    double a_split = std::max(static_cast<double>(rest) / 255.0, range_sum / 60000.0);
    a = widest > 0 ? static_cast<double>(widest) / 255.0 : 1.0;
    if (S > 0 && a_split > 0 && a_split * 2.0 <= a) a = a_split;
    else a_split = 0.0;
    inv_a = 1.0 / a;
    const float af = static_cast<float>(a), top8 = 255.f;
    for (int64_t m = 0; m < M && a_split > 0; ++m)
      if (ranges[m] * static_cast<float>(inv_a) > top8) split.push_back(m);
    qh.resize(split.size() * 32 + 64);
    const __m256 s = _mm256_set1_ps(static_cast<float>(inv_a)), av = _mm256_set1_ps(af);
    const __m256i low8 = _mm256_set1_epi32(0xff);
    for (int64_t m = 0, si = 0; m < M; ++m) {
      const bool wide = si < static_cast<int64_t>(split.size()) && split[si] == m;
      const __m256 mn = _mm256_set1_ps(mins[m]), top = _mm256_set1_ps(wide ? 65535.f : top8);
      const __m256 l0 = _mm256_loadu_ps(L + m * 16), l1 = _mm256_loadu_ps(L + m * 16 + 8);
      __m256i lo = _mm256_cvtps_epi32(_mm256_min_ps(top, _mm256_mul_ps(_mm256_sub_ps(l0, mn), s)));
      __m256i hi = _mm256_cvtps_epi32(_mm256_min_ps(top, _mm256_mul_ps(_mm256_sub_ps(l1, mn), s)));
      if (bounds) {  // errors of the entries as quantized: L - (min + a q)
        const __m256 e0 = _mm256_sub_ps(_mm256_sub_ps(l0, mn), _mm256_mul_ps(av, _mm256_cvtepi32_ps(lo)));
        const __m256 e1 = _mm256_sub_ps(_mm256_sub_ps(l1, mn), _mm256_mul_ps(av, _mm256_cvtepi32_ps(hi)));
        elo += hmin(_mm256_min_ps(e0, e1));
        ehi += hmax(_mm256_max_ps(e0, e1));
      }
      store_bytes(_mm256_and_si256(lo, low8), _mm256_and_si256(hi, low8), &q[m * 32]);
      if (wide) store_bytes(_mm256_srli_epi32(lo, 8), _mm256_srli_epi32(hi, 8), &qh[si++ * 32]);
    }
    // float rounding: of the measured errors (a few ulps of each sub-space's magnitude), of the exact sum and
    // of the bound itself
    const double slack = 4.0 * M * 1.2e-7 * (absmax_sum + std::fabs(bias) + range_sum + 255.0 * a) + 1e-30;
    elo -= slack;
    ehi += slack;
    a_f = static_cast<float>(a), bias_f = static_cast<float>(bias);
  }

  // 16 int32 values in 0..255 (8 + 8 lanes) as 16 bytes, stored twice (both 128-bit lanes of a shuffle table).
  __attribute__((target("avx2"))) static void store_bytes(__m256i lo, __m256i hi, uint8_t* out) {
    __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);  // 16 uint16 in order
    __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), b);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), b);
  }

  // Largest Qsum whose lower bound can still enter a top-k whose k-th best is thr (exact mode), or whose
  // quantized distance bias + a Qsum can (approximate mode: lower = 0).
  inline int qthreshold(const TopK& tk, double lower) const {
    if (!tk.full()) return 65535;
    double t = std::floor((static_cast<double>(tk.threshold()) - bias - lower) * inv_a) + 1.0;
    if (!(t < 65535.0)) return 65535;  // also +inf / NaN
    return t < 0 ? -1 : static_cast<int>(t);
  }

  // The quantized distance of a quantized sum (approximate mode): float32 arithmetic, two roundings.
  inline float approx(int qsum) const { return bias_f + a_f * static_cast<float>(qsum); }
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

// Lane (in the lane order of store_sums) of code j of a block.
inline int lane_of(int j) { return ((j >> 5) * 2 + (j & 1)) * 16 + ((j & 31) >> 1); }

// Bits j (0..15) where out[j] < thr (or <= thr when OrEqual): branchless (the compiler vectorizes it).
template <bool OrEqual>
inline uint32_t admitted(const float* out, float thr) {
  uint32_t bits = 0;
  for (int j = 0; j < 16; ++j) bits |= static_cast<uint32_t>(OrEqual ? out[j] <= thr : out[j] < thr) << j;
  return bits;
}

// The distances of codes 16g..16g+15 of a block: exact (the float LUT) or approximate (the quantized sums).
struct BlockDist {
  const QuantLut& ql;
  const float* L;
  int64_t M;
  const uint8_t* blk;
  const uint16_t* sums;  // the block's 64 sums, in lane order
  Exact16 exact16;
  bool exact;

  inline void operator()(int g, float* out) const {
    if (exact) return exact16(L, M, blk, g, out);
    for (int j = 0; j < 16; ++j) out[j] = ql.approx(sums[lane_of(16 * g + j)]);
  }
};

__attribute__((target("avx2,bmi2"))) uint64_t block_mask(const uint16_t* sums, int t);

// Offer the candidates of one block (mask bit j: code j may enter); their distances are computed 16 at a
// time for the groups that hold candidates, and the test against the current k-th best is the admission
// test (a code whose bound has since passed the threshold fails it too), redone only when the threshold
// moves. AnyOrder: the offers' ids are not ascending (inverted lists), so a distance equal to the threshold
// may still win on its id. ids: the labels of positions base.. (nullptr: the positions themselves).
template <bool AnyOrder>
inline void offer_block(uint64_t mask, const BlockDist& dist, int64_t base, int64_t N, const int64_t* ids, TopK& tk,
                        int& qthr, int qcap, double lower) {
  if (!dist.exact) {  // approximate: each candidate's distance from its sum, one at a time (few pass)
    if (N - base < 64) mask &= N - base <= 0 ? 0 : (~uint64_t{0} >> (64 - (N - base)));  // padding past N
    float thr = tk.threshold();
    while (mask) {
      const int j = __builtin_ctzll(mask);
      mask &= mask - 1;
      const float dj = dist.ql.approx(dist.sums[lane_of(j)]);
      if (tk.full() && (AnyOrder ? !(dj <= thr) : !(dj < thr))) continue;
      tk.push(dj, ids ? ids[base + j] : base + j);
      if (tk.threshold() != thr) {
        thr = tk.threshold();
        qthr = std::min(dist.ql.qthreshold(tk, lower), qcap);
        // many codes left (the block's first offers filled the top-k): drop those the new cut excludes
        if (__builtin_popcountll(mask) > 12) mask = qthr < 0 ? 0 : mask & block_mask(dist.sums, qthr);
      }
    }
    return;
  }
  alignas(64) float d16[16];
  for (int g = 0; g < 4 && mask; ++g, mask >>= 16) {
    uint32_t m16 = static_cast<uint32_t>(mask & 0xffffu);
    if (!m16) continue;
    const int64_t first = base + g * 16;
    if (first >= N) return;
    if (N - first < 16) m16 &= (1u << (N - first)) - 1;  // padding past N
    dist(g, d16);
    float thr = tk.threshold();
    uint32_t adm = tk.full() ? m16 & admitted<AnyOrder>(d16, thr) : m16;  // not full: everything enters
    while (adm) {
      int j = __builtin_ctz(adm);
      tk.push(d16[j], ids ? ids[first + j] : first + j);
      adm &= adm - 1;
      if (tk.threshold() != thr) {  // a shrink moved the k-th best
        thr = tk.threshold();
        adm &= admitted<AnyOrder>(d16, thr);
        qthr = std::min(dist.ql.qthreshold(tk, lower), qcap);
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

// The high bytes of the split sub-spaces added to the sums s (fixed even sums), as 256 x each, saturating.
__attribute__((target("avx2"))) inline void add_high(Sums& s, const QuantLut& ql, const uint8_t* blk) {
  if (ql.split.empty()) return;
  Sums h{_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  for (size_t i = 0; i < ql.split.size(); ++i)
    add_row(h, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + ql.split[i] * kRow)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&ql.qh[i * 32])));
  fix_even(h);
  const __m256i top = _mm256_set1_epi16(255);
  s.e_lo = _mm256_adds_epu16(s.e_lo, _mm256_slli_epi16(_mm256_min_epu16(h.e_lo, top), 8));
  s.o_lo = _mm256_adds_epu16(s.o_lo, _mm256_slli_epi16(_mm256_min_epu16(h.o_lo, top), 8));
  s.e_hi = _mm256_adds_epu16(s.e_hi, _mm256_slli_epi16(_mm256_min_epu16(h.e_hi, top), 8));
  s.o_hi = _mm256_adds_epu16(s.o_hi, _mm256_slli_epi16(_mm256_min_epu16(h.o_hi, top), 8));
}

// The quantized sums of one block, one row at a time (AVX2).
__attribute__((target("avx2"))) inline Sums block_sums(const QuantLut& ql, const uint8_t* blk, int64_t M) {
  Sums s{_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  const uint8_t* tab = ql.q.data();
  for (int64_t m = 0; m < M; ++m)
    add_row(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + m * kRow)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab + m * 32)));
  fix_even(s);
  add_high(s, ql, blk);
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
__attribute__((target("avx2"))) void tile_sums_avx2(const QuantLut& ql, int64_t M, const uint8_t* blocks, int64_t c0,
                                                    int64_t c1, uint16_t* sums) {
  for (int64_t b = c0; b < c1; ++b) store_sums(sums + (b - c0) * kB, block_sums(ql, blocks + b * M * kRow, M));
}

__attribute__((target("avx512f,avx2"))) inline __m256i fold(__m512i v) {
  return _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// Two rows per 512-bit register (sub-spaces m, m+1 in its halves), one fold of the halves per block; NQ
// queries at once (tables ql[0..NQ), sums into sums[0..NQ)), so that a row of codes is loaded and split
// into nibbles once for all of them.
template <int NQ>
__attribute__((target("avx512f,avx512bw,avx2"))) void tile_sums_avx512(const QuantLut* const* ql, int64_t M,
                                                                       const uint8_t* blocks, int64_t c0, int64_t c1,
                                                                       uint16_t* const* sums) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const int64_t M2 = M / 2 * 2;
  const uint8_t* tab[NQ];
  for (int q = 0; q < NQ; ++q) tab[q] = ql[q]->q.data();
  for (int64_t b = c0; b < c1; ++b) {
    const uint8_t* blk = blocks + b * M * kRow;
    __m512i acc[NQ][4];
    #pragma GCC unroll 2
    for (int q = 0; q < NQ; ++q)
      for (int v = 0; v < 4; ++v) acc[q][v] = _mm512_setzero_si512();
    for (int64_t m = 0; m < M2; m += 2) {
      const __m512i raw = _mm512_loadu_si512(blk + m * kRow);
      const __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
      #pragma GCC unroll 2
      for (int q = 0; q < NQ; ++q) {
        const __m512i t2 = _mm512_loadu_si512(tab[q] + m * 32);
        const __m512i sl = _mm512_shuffle_epi8(t2, lo), sh = _mm512_shuffle_epi8(t2, hi);
        acc[q][0] = _mm512_add_epi16(acc[q][0], sl);
        acc[q][1] = _mm512_add_epi16(acc[q][1], _mm512_srli_epi16(sl, 8));
        acc[q][2] = _mm512_add_epi16(acc[q][2], sh);
        acc[q][3] = _mm512_add_epi16(acc[q][3], _mm512_srli_epi16(sh, 8));
      }
    }
    #pragma GCC unroll 2  // acc stays in registers (a loop over q indexes it in memory)
    for (int q = 0; q < NQ; ++q) {
      Sums s{fold(acc[q][0]), fold(acc[q][1]), fold(acc[q][2]), fold(acc[q][3])};
      if (M2 < M)
        add_row(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + M2 * kRow)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab[q] + M2 * 32)));
      fix_even(s);
      add_high(s, *ql[q], blk);
      store_sums(sums[q] + (b - c0) * kB, s);
    }
  }
}

// Upper bound on the k-th smallest quantized sum seen, from group minima: the codes seen are split into G
// groups (lane of a block x block number mod G / 64) and each group keeps its minimum. The minima are sums
// of G distinct codes, so the k-th smallest of them (k <= G) is at least the k-th smallest sum: k codes have
// exact distances <= bias + a Qk + ehi =: U, and a code whose lower bound bias + a Qsum + elo exceeds U
// cannot enter the top-k (in approximate mode, a code whose sum exceeds Qk cannot). The top-k codes mostly sit in distinct groups, so the bound is nearly tight.
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

  // Largest Qsum worth a look (65535: no cap, while fewer than k groups hold a code, or k > G): exact mode,
  // the codes whose lower bound is <= U; approximate mode, the codes whose quantized sum is <= Qk.
  __attribute__((target("avx2,bmi2,popcnt"))) int cap(const QuantLut& ql, bool exact) {
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
    if (!exact) return lo;
    const double c = lo + std::floor((ql.ehi - ql.elo) * ql.inv_a) + 1.0;
    return c < 65535.0 ? static_cast<int>(c) : 65535;
  }

 private:
  int64_t k_, groups_;
  std::vector<uint16_t> mins_;
  int kth_ = 65535;  // the last cap's k-th smallest minimum
};

// The 64-bit mask (code order) of a block's codes whose sum is <= t; sums in lane order.
__attribute__((target("avx2,bmi2"))) uint64_t block_mask(const uint16_t* sums, int t) {
  const __m256i* s = reinterpret_cast<const __m256i*>(sums);
  const __m256i v0 = _mm256_loadu_si256(s), v1 = _mm256_loadu_si256(s + 1), v2 = _mm256_loadu_si256(s + 2),
                v3 = _mm256_loadu_si256(s + 3);
  const __m256i tv = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(t)));
  if (!le_mask(_mm256_min_epu16(_mm256_min_epu16(v0, v1), _mm256_min_epu16(v2, v3)), tv)) return 0;
  return interleave(le_mask(v0, tv), le_mask(v1, tv), le_mask(v2, tv), le_mask(v3, tv));
}

// Pass 2 over a tile: the codes whose quantized sums pass the cap (and the top-k's own bound) are offered,
// block by block in ascending ids. AVX2 (block_mask and the admission tests inline; only the SIMD paths call
// it).
__attribute__((target("avx2,bmi2"))) void offer_tile(const QuantLut& ql, const float* L, TopK& tk, int qcap,
                                                     int64_t M, const uint8_t* blocks, int64_t c0, int64_t c1,
                                                     int64_t N, const uint16_t* sums, Exact16 exact16, bool exact) {
  const double lower = exact ? ql.elo : 0.0;
  int qthr = std::min(ql.qthreshold(tk, lower), qcap);
  for (int64_t b = c0; b < c1 && qthr >= 0; ++b) {
    const uint16_t* bs = sums + (b - c0) * kB;
    const uint64_t mask = block_mask(bs, qthr);
    if (!mask) continue;
    const uint8_t* blk = blocks + b * M * kRow;
    offer_block<false>(mask, BlockDist{ql, L, M, blk, bs, exact16, exact}, b * kB, N, nullptr, tk, qthr, qcap, lower);
  }
}

// The 64 sums of one block (lane order) for one table, on the active SIMD level.
inline void one_block_sums(Simd simd, const QuantLut& ql, int64_t M, const uint8_t* blk, uint16_t* out) {
  if (simd == Simd::avx512) {
    const QuantLut* tabs[1] = {&ql};
    uint16_t* outs[1] = {out};
    tile_sums_avx512<1>(tabs, M, blk, 0, 1, outs);
  } else {
    tile_sums_avx2(ql, M, blk, 0, 1, out);
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
                       int nthreads, float* out_d, int64_t* out_i, bool exact) {
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
    for (int64_t q = q0; q < q1; ++q) heaps.emplace_back(kk, false);  // the reservoir: see TopK
    if (simd == Simd::scalar) {  // no quantized tables here: exact distances in either mode
      for (int64_t j = 0; j < q1 - q0; ++j) scan_scalar(lut + (q0 + j) * M * 16, M, blocks, blk0, blk1, n1, heaps[j]);
      return;
    }
    // the quantized tables (AVX2 code: only on the SIMD paths) in this thread's buffers, reused across tasks
    // and calls: a query block holds at most 8 queries, and fresh tables cost five allocations a query
    thread_local std::vector<QuantLut> qluts;
    if (qluts.size() < static_cast<size_t>(q1 - q0)) qluts.resize(q1 - q0);
    for (int64_t q = q0; q < q1; ++q) qluts[q - q0].assign(lut + q * M * 16, M, exact);
    const Exact16 exact16 = simd == Simd::avx512 ? exact16_avx512 : exact16_avx2;
    std::vector<GroupMins> mins(q1 - q0, GroupMins(kk));
    const int64_t tile = std::min(BB, blk1 - blk0) * kB;
    thread_local std::vector<uint16_t> scratch;  // the tiles' sums, reused across calls: not zeroed, all written
    if (scratch.size() < static_cast<size_t>(2 * tile)) scratch.resize(2 * tile);
    uint16_t* const sums = scratch.data();
    for (int64_t c0 = blk0; c0 < blk1; c0 += BB) {  // a tile of blocks, hot in cache, for every query
      const int64_t c1 = std::min(blk1, c0 + BB), last_valid = n1 - (c1 - 1) * kB;
      for (int64_t j = 0; j < q1 - q0;) {  // two passes: the tile's quantized sums, then the offers
        const int nq = simd == Simd::avx512 && j + 1 < q1 - q0 ? 2 : 1;
        const QuantLut* tabs[2] = {&qluts[j], &qluts[j + nq - 1]};
        uint16_t* bufs[2] = {sums, sums + tile};
        if (simd == Simd::avx2) tile_sums_avx2(*tabs[0], M, blocks, c0, c1, bufs[0]);
        else if (nq == 2) tile_sums_avx512<2>(tabs, M, blocks, c0, c1, bufs);
        else tile_sums_avx512<1>(tabs, M, blocks, c0, c1, bufs);
        for (int i = 0; i < nq; ++i, ++j) {
          uint16_t* own = bufs[i];
          for (int64_t v = last_valid; v < kB; ++v) own[(c1 - 1 - c0) * kB + lane_of(static_cast<int>(v))] = 0xffff;
          mins[j].add(own, c0, c1);
          offer_tile(qluts[j], lut + (q0 + j) * M * 16, heaps[j], mins[j].cap(qluts[j], exact), M, blocks, c0, c1,
                     n1, own, exact16, exact);
        }
      }
    }
  });
  if (nan.load()) throw std::invalid_argument("lut contains NaN");
  merge_partial(p, Q, k, partial, out_d, out_i, nthreads);
}

// The k-th smallest (k in 1..64) of a block's 64 sums, by bisection on counts of sums <= t.
__attribute__((target("avx2,bmi2,popcnt"))) int kth_sum(const uint16_t* sums, int64_t k) {
  const __m256i* s = reinterpret_cast<const __m256i*>(sums);
  const __m256i v0 = _mm256_loadu_si256(s), v1 = _mm256_loadu_si256(s + 1), v2 = _mm256_loadu_si256(s + 2),
                v3 = _mm256_loadu_si256(s + 3);
  int lo = 0, hi = 65535;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const __m256i t = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(mid)));
    const int64_t count = _mm_popcnt_u32(le_mask(v0, t)) + _mm_popcnt_u32(le_mask(v1, t)) +
                          _mm_popcnt_u32(le_mask(v2, t)) + _mm_popcnt_u32(le_mask(v3, t));
    if (count >= k) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// One inverted list's n codes (fast-scan blocks, labels ids) offered to tk, block by block; AVX2 (block_mask and
// the offers inline; only the SIMD paths call it). A query's first block of at least k codes offers only the
// codes that can beat its k-th smallest sum (approximate: whose distance is at most that sum's; exact: whose
// lower bound is at most that sum's upper bound, as GroupMins::cap), not every code until k are held.
__attribute__((target("avx2,bmi2"))) void offer_list(Simd simd, const QuantLut& ql, const float* L, int64_t M,
                                                     const uint8_t* blocks, int64_t n, const int64_t* ids, TopK& tk,
                                                     Exact16 exact16, bool exact) {
  alignas(64) uint16_t sums[kB];
  const double lower = exact ? ql.elo : 0.0;
  int qthr = ql.qthreshold(tk, lower);
  for (int64_t b = 0, nb = (n + kB - 1) / kB; b < nb && qthr >= 0; ++b) {
    const uint8_t* blk = blocks + b * M * kRow;
    one_block_sums(simd, ql, M, blk, sums);
    int cut = qthr;
    const int64_t valid = std::min<int64_t>(kB, n - b * kB);
    if (tk.empty() && valid >= tk.k()) {
      for (int64_t v = valid; v < kB; ++v) sums[lane_of(static_cast<int>(v))] = 0xffff;  // padding: never counted
      cut = kth_sum(sums, tk.k());
      if (exact) {  // k codes lie within bias + a cut + ehi: none whose lower bound passes it can enter (cap's)
        const double c = cut + std::floor((ql.ehi - ql.elo) * ql.inv_a) + 1.0;
        cut = c < 65535.0 ? static_cast<int>(c) : 65535;
      } else {
        const float at = ql.approx(cut);
        while (cut < 65535 && !(ql.approx(cut + 1) > at)) ++cut;  // equal distances may still win on their ids
      }
    }
    const uint64_t mask = block_mask(sums, cut);
    if (mask)
      offer_block<true>(mask, BlockDist{ql, L, M, blk, sums, exact16, exact}, b * kB, n, ids, tk, qthr, 65535, lower);
  }
}

void ivf_fastscan(const float* queries, int64_t Q, int64_t d, const float* centroids, const float* codebooks,
                  int64_t M, const int64_t* list_blocks, const int64_t* list_ids, const int64_t* list_sizes,
                  int64_t nlist, const int64_t* probes, int64_t nprobe, int64_t k, int metric, const float* precomputed,
                  bool residual, bool exact, int nthreads, float* out_d, int64_t* out_i, bool sorted,
                  const RefineRows* refine, const float* ct, const float* norms) {
  if (Q < 0 || d < 1 || M < 1 || d % M || M > 257 || nlist < 1 || nprobe < 1 || k < 1 ||
      (metric != 0 && metric != 1) || (refine && refine->k < 1))
    throw std::invalid_argument("ivf_fastscan: bad sizes or metric");
  std::vector<int64_t> nearest;
  if (probes) {
    check_probes(probes, Q * nprobe, nlist, "ivf_fastscan");
  } else {
    check_coarse(Q, d, ct, norms, nlist, nprobe, metric, "ivf_fastscan");
    nearest.resize(static_cast<size_t>(Q * nprobe));
  }
  const int64_t* lists_of = probes ? probes : nearest.data();
  const int64_t dsub = d / M, K = 16;
  const Simd simd = active_simd();
  Transposed t(codebooks, M, K, dsub, false);
  const float sign = metric == 0 ? 1.f : -1.f;  // the heap keeps the smallest: ip tables and base negated
  const Exact16 exact16 = simd == Simd::avx512 ? exact16_avx512 : exact16_avx2;
  std::atomic<bool> nan{false}, bad_row{false};
  in_team(team(nthreads, Q), [&] {
    if (!probes) nearest_lists(queries, Q, d, ct, norms, nlist, nprobe, metric, nearest.data());
    std::vector<float> qr(static_cast<size_t>(M * K)), L(static_cast<size_t>(M * K)), resid(static_cast<size_t>(d));
    TopK tk(k);
    Reranker rr(refine, k);
    QuantLut shared, own;  // !residual: one quantized table for every list; residual: one per list
#pragma omp for schedule(dynamic)
    for (int64_t q = 0; q < Q; ++q) {
      const float* x = queries + q * d;
      tk.reset();
      if (!residual) {
        lut_rows(x, t.Ct.data(), M, dsub, K, metric, L.data());
        if (metric == 1)
          for (int64_t i = 0; i < M * K; ++i) L[i] = -L[i];
        if (has_nonfinite(L.data(), M * K)) {
          nan.store(true, std::memory_order_relaxed);
          continue;
        }
        if (simd != Simd::scalar) shared.assign(L.data(), M, exact);
      } else if (metric == 1 || precomputed) {  // <q_m, r_mk>: the ip table, or the query term of the l2 one
        lut_rows(x, t.Ct.data(), M, dsub, K, 1, qr.data());
        if (has_nonfinite(qr.data(), M * K)) {
          nan.store(true, std::memory_order_relaxed);
          continue;
        }
      }
      for (int64_t p = 0; p < nprobe; ++p) {
        const int64_t l = lists_of[q * nprobe + p];
        if (l < 0 || list_sizes[l] == 0) continue;
        const uint8_t* blocks = reinterpret_cast<const uint8_t*>(list_blocks[l]);
        const int64_t* ids = reinterpret_cast<const int64_t*>(list_ids[l]);
        const int64_t n = list_sizes[l], nb = (n + kB - 1) / kB;
        if (residual) {
          const float* c = centroids + l * d;
          float base = 0.f;
          if (metric == 0 && precomputed) {
            // ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2 <c, r>) - 2 <q, r>: the middle term is per list
            axpy_table(precomputed + l * M * K, qr.data(), -2.f, M * K, L.data());
            for (int64_t j = 0; j < d; ++j) base += (x[j] - c[j]) * (x[j] - c[j]);
          } else if (metric == 0) {
            for (int64_t j = 0; j < d; ++j) resid[j] = x[j] - c[j];
            lut_rows(resid.data(), t.Ct.data(), M, dsub, K, 0, L.data());
          } else {
            for (int64_t j = 0; j < d; ++j) base += x[j] * c[j];
            for (int64_t i = 0; i < M * K; ++i) L[i] = -qr[i];
            base = -base;
          }
          for (int64_t j = 0; j < K; ++j) L[j] += base;  // the list's base term in sub-space 0: bias carries it
          if (!std::isfinite(base) || has_nonfinite(L.data(), M * K)) {
            nan.store(true, std::memory_order_relaxed);
            continue;
          }
          if (simd != Simd::scalar) own.assign(L.data(), M, exact);
        }
        if (simd == Simd::scalar) {  // exact distances in either mode
          for (int64_t b = 0; b < nb; ++b)
            for (int j = 0; j < kB && b * kB + j < n; ++j) {
              const float dj = exact_in_block(L.data(), M, blocks + b * M * kRow, j);
              if (tk.admits_any(dj)) tk.push(dj, ids[b * kB + j]);
            }
          continue;
        }
        offer_list(simd, residual ? own : shared, L.data(), M, blocks, n, ids, tk, exact16, exact);
      }
      if (!refine) tk.write(sign, out_d + q * k, out_i + q * k, sorted);
      else if (!rr.run(tk, sign, x, d, metric, out_d + q * refine->k, out_i + q * refine->k))
        bad_row.store(true, std::memory_order_relaxed);
    }
  });
  if (nan.load()) throw std::invalid_argument("ivf_fastscan: the distance tables contain NaN or inf");
  if (bad_row.load()) throw std::invalid_argument("ivf_fastscan: list ids outside the refinement's rows");
}

}  // namespace sqret
