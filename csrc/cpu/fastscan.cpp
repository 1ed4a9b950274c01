// 4-bit fast scan: per block of 64 codes, 16-entry uint8 LUTs in SIMD registers (shuffle lookup), uint16
// accumulators, then an exact float re-rank of every code whose lower bound can still enter the top-k.
//
// Layout: block b, sub-space m is a row of 32 bytes; byte j holds vector 64b+j in its low nibble and vector
// 64b+32+j in its high nibble. One row fills a 256-bit register (AVX2), two fill a 512-bit one (AVX-512),
// so the sums of a block need at most one fold of register halves.
//
// Exactness: the LUT of sub-space m is quantized as L[m][j] ~ min_m + a * q[m][j] with one scale a for all
// sub-spaces, so |L - (min_m + a q)| <= a / 2 and the exact distance d >= bias + a * Qsum - emax with
// emax = M a / 2 (+ a margin for float rounding). A code is re-ranked exactly when that lower bound does not
// exceed the current k-th best distance; all others provably cannot enter the top-k.
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

struct QuantLut {
  std::vector<uint8_t> q;  // [M][32]: each sub-space's 16 entries twice (one per 128-bit lane), + padding
  double a = 1.0, inv_a = 1.0, bias = 0.0, emax = 0.0;

  QuantLut(const float* L, int64_t M) : q(static_cast<size_t>(M * 32 + 64), 0) {
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
    inv_a = 1.0 / a;  // multiplies instead of divides: the error is far below a / 2 and the +1 slack below
    for (int64_t m = 0; m < M; ++m) {
      const double mn = mins[m];
      for (int j = 0; j < 16; ++j) {
        const double v = std::min(255.0, std::max(0.0, (static_cast<double>(L[m * 16 + j]) - mn) * inv_a));
        q[m * 32 + j] = q[m * 32 + 16 + j] = static_cast<uint8_t>(v + 0.5);  // round to nearest, v >= 0
      }
    }
    // rounding of the quantization (a/2 per sub-space) + float32 rounding of the exact sum and of the bound
    emax = M * a * 0.5 * (1 + 1e-6) + 4.0 * M * 1.2e-7 * (absmax_sum + std::fabs(bias)) + 1e-30;
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

__attribute__((target("avx2,bmi2"))) void scan_avx2(const QuantLut& ql, const float* L, TopK& tk, int qcap,
                                                    int64_t M, const uint8_t* blocks, int64_t b0, int64_t b1,
                                                    int64_t N) {
  int qthr = std::min(ql.qthreshold(tk), qcap);
  const uint8_t* tab = ql.q.data();
  for (int64_t b = b0; b < b1 && qthr >= 0; ++b) {
    const uint8_t* blk = blocks + b * M * kRow;
    Sums s = block_sums(tab, blk, M);
    const __m256i t = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(qthr)));
    uint64_t mask = interleave(le_mask(s.e_lo, t), le_mask(s.o_lo, t), le_mask(s.e_hi, t), le_mask(s.o_hi, t));
    if (mask) rerank(mask, ql, L, M, blk, b * kB, N, tk, qthr, qcap, exact16_avx2);
  }
}

__attribute__((target("avx512f,avx2"))) inline __m256i fold(__m512i v) {
  return _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// A cap on the quantized sums worth a look, from the first blocks of a range, before any exact distance:
// with Qk the k-th smallest quantized sum there, k codes have exact distances <= U = bias + a Qk + emax,
// so a code whose lower bound bias + a Qsum - emax exceeds U is worse than k others. Returns the largest
// Qsum within that bound (65535: no cap, when the first full blocks hold fewer than k codes).
__attribute__((target("avx2,bmi2"))) int warm_cap(const QuantLut& ql, int64_t M, const uint8_t* blocks, int64_t b0,
                                                  int64_t b1, int64_t N, int64_t k) {
  constexpr int64_t kWarm = 4;  // blocks sampled
  int64_t nb = 0;
  while (nb < kWarm && b0 + nb < b1 && (b0 + nb + 1) * kB <= N) ++nb;  // full blocks only: no padding
  if (nb * kB < k) return 65535;
  alignas(32) uint16_t v[kWarm * kB];
  const uint8_t* tab = ql.q.data();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* blk = blocks + (b0 + i) * M * kRow;
    Sums s = block_sums(tab, blk, M);
    __m256i* out = reinterpret_cast<__m256i*>(v + i * kB);
    _mm256_store_si256(out, s.e_lo);
    _mm256_store_si256(out + 1, s.o_lo);
    _mm256_store_si256(out + 2, s.e_hi);
    _mm256_store_si256(out + 3, s.o_hi);
  }
  int lo = 0, hi = static_cast<int>(M) * 255;  // the smallest t with #{v <= t} >= k, by bisection
  const int n = static_cast<int>(nb * kB);
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    int64_t count = 0;
    for (int i = 0; i < n; ++i) count += v[i] <= mid;
    if (count >= k) hi = mid;
    else lo = mid + 1;
  }
  const double cap = lo + std::floor(2.0 * ql.emax * ql.inv_a) + 1.0;
  return cap < 65535.0 ? static_cast<int>(cap) : 65535;
}

// Two rows per 512-bit register (sub-spaces m, m+1 in its halves), one fold of the halves per block.
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,bmi2"))) void scan_avx512(const QuantLut& ql, const float* L,
                                                                                TopK& tk, int qcap, int64_t M,
                                                                                const uint8_t* blocks, int64_t b0,
                                                                                int64_t b1, int64_t N) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const int64_t M2 = M / 2 * 2;
  int qthr = std::min(ql.qthreshold(tk), qcap);
  const uint8_t* tab = ql.q.data();
  for (int64_t b = b0; b < b1 && qthr >= 0; ++b) {
    const uint8_t* blk = blocks + b * M * kRow;
    __m512i e_lo = _mm512_setzero_si512(), o_lo = e_lo, e_hi = e_lo, o_hi = e_lo;
    for (int64_t m = 0; m < M2; m += 2) {
      __m512i raw = _mm512_loadu_si512(blk + m * kRow), t2 = _mm512_loadu_si512(tab + m * 32);
      __m512i sl = _mm512_shuffle_epi8(t2, _mm512_and_si512(raw, low4));
      __m512i sh = _mm512_shuffle_epi8(t2, _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4));
      e_lo = _mm512_add_epi16(e_lo, sl);
      o_lo = _mm512_add_epi16(o_lo, _mm512_srli_epi16(sl, 8));
      e_hi = _mm512_add_epi16(e_hi, sh);
      o_hi = _mm512_add_epi16(o_hi, _mm512_srli_epi16(sh, 8));
    }
    Sums s{fold(e_lo), fold(o_lo), fold(e_hi), fold(o_hi)};
    if (M2 < M)
      add_row(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + M2 * kRow)),
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab + M2 * 32)));
    fix_even(s);
    const __m256i t = _mm256_set1_epi16(static_cast<short>(static_cast<uint16_t>(qthr)));
    uint64_t mask = interleave(_mm256_cmple_epu16_mask(s.e_lo, t), _mm256_cmple_epu16_mask(s.o_lo, t),
                               _mm256_cmple_epu16_mask(s.e_hi, t), _mm256_cmple_epu16_mask(s.o_hi, t));
    if (mask) rerank(mask, ql, L, M, blk, b * kB, N, tk, qthr, qcap, exact16_avx512);
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
  const int64_t BB = std::max<int64_t>(4, (16 * 1024) / (M * kRow));  // blocks per cache tile
  std::atomic<bool> nan{false};
#pragma omp parallel for schedule(dynamic) num_threads(team(nthreads, p.qblocks * p.parts))
  for (int64_t t = 0; t < p.qblocks * p.parts; ++t) {
    int64_t qb = t / p.parts, part = t % p.parts;
    int64_t q0 = qb * p.qblock, q1 = std::min(Q, q0 + p.qblock);
    int64_t n0 = part * p.part_len, n1 = std::min(N, n0 + p.part_len);
    int64_t blk0 = n0 / kB, blk1 = (n1 + kB - 1) / kB;
    if (has_nan(lut + q0 * M * 16, (q1 - q0) * M * 16)) {
      nan.store(true, std::memory_order_relaxed);
      continue;
    }
    std::vector<TopK>& heaps = partial[t];
    std::vector<QuantLut> qluts;
    heaps.reserve(q1 - q0);
    qluts.reserve(q1 - q0);
    for (int64_t q = q0; q < q1; ++q) {
      heaps.emplace_back(kk);
      qluts.emplace_back(lut + q * M * 16, M);
    }
    std::vector<int> qcap(q1 - q0, 65535);
    if (simd != Simd::scalar)
      for (int64_t j = 0; j < q1 - q0; ++j) qcap[j] = warm_cap(qluts[j], M, blocks, blk0, blk1, n1, kk);
    for (int64_t c0 = blk0; c0 < blk1; c0 += BB) {  // a tile of blocks, hot in cache, for every query
      int64_t c1 = std::min(blk1, c0 + BB);
      for (int64_t j = 0; j < q1 - q0; ++j) {
        const float* L = lut + (q0 + j) * M * 16;
        if (simd == Simd::avx512)
          scan_avx512(qluts[j], L, heaps[j], qcap[j], M, blocks, c0, c1, n1);
        else if (simd == Simd::avx2)
          scan_avx2(qluts[j], L, heaps[j], qcap[j], M, blocks, c0, c1, n1);
        else
          scan_scalar(L, M, blocks, c0, c1, n1, heaps[j]);
      }
    }
  }
  if (nan.load()) throw std::invalid_argument("lut contains NaN");
  merge_partial(p, Q, k, partial, out_d, out_i, nthreads);
}

}  // namespace sqret
