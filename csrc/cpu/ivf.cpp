// IVF-PQ search in one call: parallel over queries; each query builds the LUT of every probed list and
// scans that list's codes where they lie (tensors or memory-mapped files), keeping one reservoir top-k.
#include <immintrin.h>
#include <omp.h>

#include <atomic>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernels.h"

namespace sqret {

namespace {

// A code as a table column: codes of a list are read as stored (a memory-mapped file opened without
// verification may hold bytes >= K); below K = 256 they are clamped to K - 1, so no read leaves the table.
template <bool Clamp>
inline int64_t col(uint8_t c, int64_t K) {
  if constexpr (Clamp) return std::min<int64_t>(c, K - 1);
  return c;
}

// sum over sub-spaces in order, then the list's base term; four codes at a time
template <int M, bool Clamp>
void scan_list(const float* L, int64_t K, const uint8_t* codes, const int64_t* ids, int64_t n, float base, float sign,
               TopK& tk) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint8_t* c = codes + i * M;
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma GCC unroll 64
    for (int m = 0; m < M; ++m) {
      const float* Lm = L + m * K;
      d0 += Lm[col<Clamp>(c[m], K)];
      d1 += Lm[col<Clamp>(c[M + m], K)];
      d2 += Lm[col<Clamp>(c[2 * M + m], K)];
      d3 += Lm[col<Clamp>(c[3 * M + m], K)];
    }
    const float e[4] = {sign * (d0 + base), sign * (d1 + base), sign * (d2 + base), sign * (d3 + base)};
    for (int j = 0; j < 4; ++j)
      if (tk.admits_any(e[j])) tk.push(e[j], ids[i + j]);
  }
  for (; i < n; ++i) {
    float d = 0.f;
    for (int m = 0; m < M; ++m) d += L[m * K + col<Clamp>(codes[i * M + m], K)];
    d = sign * (d + base);
    if (tk.admits_any(d)) tk.push(d, ids[i]);
  }
}

template <bool Clamp>
void scan_list_any(const float* L, int64_t M, int64_t K, const uint8_t* codes, const int64_t* ids, int64_t n,
                   float base, float sign, TopK& tk) {
  for (int64_t i = 0; i < n; ++i) {
    float d = 0.f;
    for (int64_t m = 0; m < M; ++m) d += L[m * K + col<Clamp>(codes[i * M + m], K)];
    d = sign * (d + base);
    if (tk.admits_any(d)) tk.push(d, ids[i]);
  }
}

template <bool Clamp>
void scan_k(const float* L, int64_t M, int64_t K, const uint8_t* codes, const int64_t* ids, int64_t n, float base,
            float sign, TopK& tk) {
  switch (M) {
    case 4:
      return scan_list<4, Clamp>(L, K, codes, ids, n, base, sign, tk);
    case 8:
      return scan_list<8, Clamp>(L, K, codes, ids, n, base, sign, tk);
    case 16:
      return scan_list<16, Clamp>(L, K, codes, ids, n, base, sign, tk);
    case 32:
      return scan_list<32, Clamp>(L, K, codes, ids, n, base, sign, tk);
    default:
      return scan_list_any<Clamp>(L, M, K, codes, ids, n, base, sign, tk);
  }
}

void scan(const float* L, int64_t M, int64_t K, const uint8_t* codes, const int64_t* ids, int64_t n, float base,
          float sign, TopK& tk) {
  if (K >= 256) return scan_k<false>(L, M, K, codes, ids, n, base, sign, tk);
  return scan_k<true>(L, M, K, codes, ids, n, base, sign, tk);
}

}  // namespace

bool all_in_range(const int64_t* p, int64_t n, int64_t hi) {
  uint64_t bad = 0;  // -1 + 1 = 0 .. hi: in range; below -1 wraps to a huge value
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint64_t>(p[i] + 1) > static_cast<uint64_t>(hi);
  return !bad;
}

void check_probes(const int64_t* probes, int64_t n, int64_t nlist, const char* who) {
  if (!all_in_range(probes, n, nlist))
    throw std::invalid_argument(std::string(who) + ": probes must be list numbers in [-1, " + std::to_string(nlist) +
                                ")");
}

void ivf_search(const float* queries, int64_t Q, int64_t d, const float* centroids, const float* codebooks,
                int64_t M, int64_t K, const int64_t* list_codes, const int64_t* list_ids, const int64_t* list_sizes,
                int64_t nlist, const int64_t* probes, int64_t nprobe, int64_t k, int metric, const float* precomputed,
                bool residual, int nthreads, float* out_d, int64_t* out_i, bool sorted, const RefineRows* refine,
                const float* ct, const float* norms) {
  if (Q < 0 || d < 1 || M < 1 || d % M || K < 1 || K > 256 || nlist < 1 || nprobe < 1 || k < 1 ||
      (metric != 0 && metric != 1) || (refine && refine->k < 1))
    throw std::invalid_argument("ivf_search: bad sizes or metric");
  std::vector<int64_t> nearest;
  if (probes) {
    check_probes(probes, Q * nprobe, nlist, "ivf_search");
  } else {
    check_coarse(Q, d, ct, norms, nlist, nprobe, metric, "ivf_search");
    nearest.resize(static_cast<size_t>(Q * nprobe));
  }
  const int64_t* lists_of = probes ? probes : nearest.data();
  const int64_t dsub = d / M;
  Transposed t(codebooks, M, K, dsub, false);
  const float sign = metric == 0 ? 1.f : -1.f;  // the reservoir keeps the smallest: negate ip scores
  std::atomic<bool> bad_row{false};
  in_team(team(nthreads, Q), [&] {
    if (!probes) nearest_lists(queries, Q, d, ct, norms, nlist, nprobe, metric, nearest.data());
    std::vector<float> lut(static_cast<size_t>(M * K)), qr(static_cast<size_t>(M * K)), resid(static_cast<size_t>(d));
    TopK tk(k);
    Reranker rr(refine, k);
#pragma omp for schedule(dynamic)
    for (int64_t q = 0; q < Q; ++q) {
      const float* x = queries + q * d;
      tk.reset();
      if (!residual)  // codes of the vectors themselves: one table for every list
        lut_rows(x, t.Ct.data(), M, dsub, K, metric, lut.data());
      else if (metric == 1 || precomputed)  // <q_m, r_mk>: the ip LUT, or the query term of the l2 decomposition
        lut_rows(x, t.Ct.data(), M, dsub, K, 1, metric == 1 ? lut.data() : qr.data());
      for (int64_t p = 0; p < nprobe; ++p) {
        const int64_t l = lists_of[q * nprobe + p];
        if (l < 0 || list_sizes[l] == 0) continue;
        const float* c = centroids + l * d;
        float base = 0.f;
        if (!residual) {
        } else if (metric == 0 && precomputed) {
          // ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2 <c, r>) - 2 <q, r>: the middle term is per list
          const float* pre = precomputed + l * M * K;
          axpy_table(pre, qr.data(), -2.f, M * K, lut.data());
          for (int64_t j = 0; j < d; ++j) base += (x[j] - c[j]) * (x[j] - c[j]);
        } else if (metric == 0) {
          for (int64_t j = 0; j < d; ++j) resid[j] = x[j] - c[j];
          lut_rows(resid.data(), t.Ct.data(), M, dsub, K, 0, lut.data());
        } else {
          for (int64_t j = 0; j < d; ++j) base += x[j] * c[j];
        }
        scan(lut.data(), M, K, reinterpret_cast<const uint8_t*>(list_codes[l]),
             reinterpret_cast<const int64_t*>(list_ids[l]), list_sizes[l], base, sign, tk);
      }
      if (!refine) tk.write(sign, out_d + q * k, out_i + q * k, sorted);
      else if (!rr.run(tk, sign, x, d, metric, out_d + q * refine->k, out_i + q * refine->k))
        bad_row.store(true, std::memory_order_relaxed);
    }
  });
  if (bad_row.load()) throw std::invalid_argument("ivf_search: list ids outside the refinement's rows");
}

namespace {

// The k best of row [n] into the sorted buffer bv / bi (held of them so far): insertion behind one predictable
// test against the k-th (positions ascend, so an equal value never displaces an earlier one: ties by position).
inline void insert_best(float v, int64_t j, int64_t k, float* bv, int64_t* bi, int64_t& held, float& thr) {
  if (held == k && !(v < thr)) return;
  int64_t at = held < k ? held++ : k - 1;
  while (at > 0 && v < bv[at - 1]) {
    bv[at] = bv[at - 1], bi[at] = bi[at - 1];
    --at;
  }
  bv[at] = v, bi[at] = j;
  if (held == k) thr = bv[k - 1];
}

// The same offers, 8 values at a time tested against the k-th in one compare: only those below it (or all,
// while fewer than k are held) are offered, in ascending position, so the result is the scalar loop's.
__attribute__((target("avx2,bmi"))) void smallest_k_avx2(const float* row, int64_t n, int64_t k, float* bv,
                                                          int64_t* bi) {
  int64_t held = 0, j = 0;
  float thr = std::numeric_limits<float>::infinity();
  for (; j + 8 <= n; j += 8) {
    unsigned mask = held < k ? 0xffu
                             : static_cast<unsigned>(_mm256_movemask_ps(
                                   _mm256_cmp_ps(_mm256_loadu_ps(row + j), _mm256_set1_ps(thr), _CMP_LT_OQ)));
    for (; mask; mask = _blsr_u32(mask)) {
      const int64_t at = j + static_cast<int64_t>(__builtin_ctz(mask));
      insert_best(row[at], at, k, bv, bi, held, thr);
    }
  }
  for (; j < n; ++j) insert_best(row[j], j, k, bv, bi, held, thr);
}

// The k smallest of row [n] into bv / bi, sorted, ties by position: 8 at a time where SIMD, else one by one.
void smallest_k(const float* row, int64_t n, int64_t k, float* bv, int64_t* bi, bool simd) {
  if (simd) return smallest_k_avx2(row, n, k, bv, bi);
  int64_t held = 0;
  float thr = std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) insert_best(row[j], j, k, bv, bi, held, thr);
}

// Coarse distances of nb blocks of NQ queries (rows x[b * NQ + i], each [d]) to every centroid, from the
// centroids transposed (ct [d][nlist]): out [nb * NQ][nlist] = norms[c] - 2 <x, c> (l2: ||x - c||^2 less
// ||x||^2) or -<x, c> (ip). Per (query, centroid) one fused multiply-add per dimension in dimension order,
// whatever the SIMD level or the block: the same distances (and probes) everywhere. A chunk of 32 (16)
// centroids' columns stays in L1 across the blocks.
template <int NQ>
__attribute__((target("avx512f"))) void coarse_block_avx512(const float* const* xs, int nb, int64_t d,
                                                            const float* ct, const float* norms, int64_t nlist,
                                                            int metric, float* outs) {
  for (int64_t c0 = 0; c0 < nlist; c0 += 32) {
    const int64_t left = nlist - c0;
    const __mmask16 m0 = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1);
    const __mmask16 m1 = left >= 32 ? 0xffff : left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1);
    for (int blk = 0; blk < nb; ++blk) {
      const float* const* x = xs + blk * NQ;
      float* out = outs + blk * NQ * nlist;
      __m512 acc[NQ][2];
      for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
      for (int64_t j = 0; j < d; ++j) {
        const float* row = ct + j * nlist + c0;
        const __m512 a = _mm512_maskz_loadu_ps(m0, row), b = _mm512_maskz_loadu_ps(m1, row + 16);
        for (int i = 0; i < NQ; ++i) {
          const __m512 v = _mm512_set1_ps(x[i][j]);
          acc[i][0] = _mm512_fmadd_ps(v, a, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(v, b, acc[i][1]);
        }
      }
      const __m512 zero = _mm512_setzero_ps(), two = _mm512_set1_ps(metric == 0 ? 2.f : 1.f);
      const __m512 n0 = metric == 0 ? _mm512_maskz_loadu_ps(m0, norms + c0) : zero;  // ip: 0 - <x, c>
      const __m512 n1 = metric == 0 ? _mm512_maskz_loadu_ps(m1, norms + c0 + 16) : zero;
      for (int i = 0; i < NQ; ++i) {
        const __m512 d0 = _mm512_sub_ps(n0, _mm512_mul_ps(two, acc[i][0]));
        const __m512 d1 = _mm512_sub_ps(n1, _mm512_mul_ps(two, acc[i][1]));
        _mm512_mask_storeu_ps(out + i * nlist + c0, m0, d0);
        _mm512_mask_storeu_ps(out + i * nlist + c0 + 16, m1, d1);
      }
    }
  }
}

template <int NQ>
__attribute__((target("avx2,fma"))) void coarse_block_avx2(const float* const* xs, int nb, int64_t d,
                                                           const float* ct, const float* norms, int64_t nlist,
                                                           int metric, float* outs) {
  alignas(32) float tail[NQ][16];
  for (int64_t c0 = 0; c0 < nlist; c0 += 16) {
    const int64_t left = std::min<int64_t>(16, nlist - c0);
    const bool full = left == 16;
    __m256i m0, m1;
    {
      alignas(32) int32_t lanes[16];
      for (int i = 0; i < 16; ++i) lanes[i] = i < left ? -1 : 0;
      m0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
      m1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes + 8));
    }
    for (int blk = 0; blk < nb; ++blk) {
      const float* const* x = xs + blk * NQ;
      float* out = outs + blk * NQ * nlist;
      __m256 acc[NQ][2];
      for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
      for (int64_t j = 0; j < d; ++j) {
        const float* row = ct + j * nlist + c0;
        const __m256 a = full ? _mm256_loadu_ps(row) : _mm256_maskload_ps(row, m0);  // masked: the tail only
        const __m256 b = full ? _mm256_loadu_ps(row + 8) : _mm256_maskload_ps(row + 8, m1);
        for (int i = 0; i < NQ; ++i) {
          const __m256 v = _mm256_set1_ps(x[i][j]);
          acc[i][0] = _mm256_fmadd_ps(v, a, acc[i][0]);
          acc[i][1] = _mm256_fmadd_ps(v, b, acc[i][1]);
        }
      }
      for (int i = 0; i < NQ; ++i) {
        _mm256_store_ps(tail[i], acc[i][0]);
        _mm256_store_ps(tail[i] + 8, acc[i][1]);
        for (int64_t c = 0; c < left; ++c)
          out[i * nlist + c0 + c] = metric == 0 ? norms[c0 + c] - 2.f * tail[i][c] : 0.f - tail[i][c];
      }
    }
  }
}

void coarse_block_scalar(const float* const* x, int nq, int64_t d, const float* ct, const float* norms,
                         int64_t nlist, int metric, float* out) {
  for (int i = 0; i < nq; ++i)
    for (int64_t c = 0; c < nlist; ++c) {
      float acc = 0.f;
      for (int64_t j = 0; j < d; ++j) acc = std::fma(x[i][j], ct[j * nlist + c], acc);
      out[i * nlist + c] = metric == 0 ? norms[c] - 2.f * acc : 0.f - acc;
    }
}

}  // namespace

void smallest_k_rows(const float* dist, int64_t Q, int64_t n, int64_t k, int64_t* out, int nthreads) {
  if (Q < 0 || n < 0 || k < 1 || k > n) throw std::invalid_argument("smallest_k_rows: bad sizes");
  const bool simd = active_simd() != Simd::scalar;
  for_tasks(team(nthreads, Q / 64 + 1), Q, [&](int64_t q) {
    const float* row = dist + q * n;
    thread_local std::vector<float> bv;
    thread_local std::vector<int64_t> bi;
    bv.resize(static_cast<size_t>(k)), bi.resize(static_cast<size_t>(k));
    smallest_k(row, n, k, bv.data(), bi.data(), simd);
    std::copy(bi.begin(), bi.begin() + k, out + q * k);
  });
}

namespace {

// One block of n <= NQ queries (rows x[0..n), a shorter block padded with its last row), through the
// smallest instantiation that holds it: the distances are the same whatever the block.
template <int NQ>
void coarse_tail_avx512(const float* const* x, int n, int64_t d, const float* ct, const float* norms, int64_t nlist,
                        int metric, float* out) {
  if constexpr (NQ > 1) {
    if (n <= NQ / 2) return coarse_tail_avx512<NQ / 2>(x, n, d, ct, norms, nlist, metric, out);
  }
  coarse_block_avx512<NQ>(x, 1, d, ct, norms, nlist, metric, out);
}

template <int NQ>
void coarse_tail_avx2(const float* const* x, int n, int64_t d, const float* ct, const float* norms, int64_t nlist,
                      int metric, float* out) {
  if constexpr (NQ > 1) {
    if (n <= NQ / 2) return coarse_tail_avx2<NQ / 2>(x, n, d, ct, norms, nlist, metric, out);
  }
  coarse_block_avx2<NQ>(x, 1, d, ct, norms, nlist, metric, out);
}

// A task: 8 queries, one AVX-512 block (a centroid load serves 8: 16 accumulators of its 32) or two AVX2
// blocks of 4 (8 of its 16 registers); a short task runs the smallest block that holds it.
constexpr int kProbeTask = 8;

}  // namespace

void nearest_lists(const float* x, int64_t Q, int64_t d, const float* ct, const float* norms, int64_t nlist,
                   int64_t nprobe, int metric, int64_t* out) {
  const Simd simd = active_simd();
  const int64_t tasks = (Q + kProbeTask - 1) / kProbeTask;
#pragma omp for schedule(dynamic)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t q0 = t * kProbeTask;
    const int nq = static_cast<int>(std::min<int64_t>(kProbeTask, Q - q0));
    thread_local std::vector<float> dist, bv;
    thread_local std::vector<int64_t> bi;
    dist.resize(static_cast<size_t>(kProbeTask * nlist)), bv.resize(static_cast<size_t>(nprobe));
    bi.resize(static_cast<size_t>(nprobe));
    const float* rows[kProbeTask];
    for (int i = 0; i < kProbeTask; ++i) rows[i] = x + (q0 + std::min(i, nq - 1)) * d;
    if (simd == Simd::avx512) {
      coarse_tail_avx512<8>(rows, nq, d, ct, norms, nlist, metric, dist.data());
    } else if (simd == Simd::avx2) {
      coarse_block_avx2<4>(rows, nq / 4, d, ct, norms, nlist, metric, dist.data());
      if (nq % 4) coarse_tail_avx2<4>(rows + nq / 4 * 4, nq % 4, d, ct, norms, nlist, metric,
                                      dist.data() + nq / 4 * 4 * nlist);
    } else {
      coarse_block_scalar(rows, nq, d, ct, norms, nlist, metric, dist.data());
    }
    for (int i = 0; i < nq; ++i) {
      smallest_k(dist.data() + i * nlist, nlist, nprobe, bv.data(), bi.data(), simd != Simd::scalar);
      std::copy(bi.begin(), bi.begin() + nprobe, out + (q0 + i) * nprobe);
    }
  }
}

void check_coarse(int64_t Q, int64_t d, const float* ct, const float* norms, int64_t nlist, int64_t nprobe,
                  int metric, const char* who) {
  if (Q < 0 || d < 1 || nlist < 1 || nprobe < 1 || nprobe > nlist || (metric != 0 && metric != 1) || !ct ||
      (metric == 0 && !norms))
    throw std::invalid_argument(std::string(who) + ": bad sizes or metric for the coarse probe");
}

void coarse_probe(const float* x, int64_t Q, int64_t d, const float* ct, const float* norms, int64_t nlist,
                  int64_t nprobe, int metric, int nthreads, int64_t* out) {
  check_coarse(Q, d, ct, norms, nlist, nprobe, metric, "coarse_probe");
  in_team(team(nthreads, (Q + kProbeTask - 1) / kProbeTask),
          [&] { nearest_lists(x, Q, d, ct, norms, nlist, nprobe, metric, out); });
}

}  // namespace sqret
