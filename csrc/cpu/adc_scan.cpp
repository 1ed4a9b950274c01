// ADC scan fused with top-k for byte (or wider) codes, query-blocked, OpenMP over (query block, code range).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "kernels.h"

namespace sqret {

// ---------------------------------------------------------------- SIMD capability

Simd best_simd() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("bmi2")) return Simd::scalar;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Simd::avx512;
  return Simd::avx2;
#endif
  return Simd::scalar;
}

static Simd initial_simd() {
  Simd best = best_simd();
  const char* env = std::getenv("SQRET_CPU_SIMD");
  if (!env) return best;
  Simd want = best;
  if (!std::strcmp(env, "scalar")) want = Simd::scalar;
  if (!std::strcmp(env, "avx2")) want = Simd::avx2;
  if (!std::strcmp(env, "avx512")) want = Simd::avx512;
  return static_cast<int>(want) <= static_cast<int>(best) ? want : best;
}

static Simd g_simd = initial_simd();

Simd active_simd() { return g_simd; }

namespace {

bool has_nan_scalar(const float* p, int64_t n) {
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) nan |= p[i] != p[i];
  return nan;
}

__attribute__((target("avx2"))) bool has_nan_avx2(const float* p, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(p + i);
    acc = _mm256_or_ps(acc, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  return _mm256_movemask_ps(acc) != 0 || has_nan_scalar(p + i, n - i);
}

}  // namespace

bool has_nan(const float* p, int64_t n) {
  return g_simd == Simd::scalar ? has_nan_scalar(p, n) : has_nan_avx2(p, n);
}

// The largest exponent field all ones: NaN or inf (an integer max, which vectorizes).
__attribute__((target_clones("avx2", "default"))) bool has_nonfinite(const float* p, int64_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(p);
  uint32_t top = 0;
  for (int64_t i = 0; i < n; ++i) top = std::max(top, bits[i] & 0x7f800000u);
  return top == 0x7f800000u;
}

void set_simd(Simd s) {
  if (static_cast<int>(s) > static_cast<int>(best_simd()))
    throw std::invalid_argument(std::string("this CPU does not support ") + simd_name(s));
  g_simd = s;
}

const char* simd_name(Simd s) {
  switch (s) {
    case Simd::avx512:
      return "avx512";
    case Simd::avx2:
      return "avx2";
    default:
      return "scalar";
  }
}

// ---------------------------------------------------------------- tasks and merge

TaskPlan plan_tasks(int64_t Q, int64_t N, int64_t k, int nthreads, int64_t align) {
  TaskPlan p;
  nthreads = std::max(1, nthreads);
  p.qblock = std::max<int64_t>(1, std::min<int64_t>(8, (Q + nthreads - 1) / nthreads));
  p.qblocks = (Q + p.qblock - 1) / p.qblock;
  p.parts = 1;
  if (p.qblocks > 0 && p.qblocks < nthreads) p.parts = (nthreads + p.qblocks - 1) / p.qblocks;
  // each part scans at least 16K items and holds its own k-heap: do not split past that
  p.parts = std::max<int64_t>(1, std::min<int64_t>(p.parts, N / std::max<int64_t>(16384, 2 * k)));
  p.part_len = (N + p.parts - 1) / p.parts;
  p.part_len = std::max<int64_t>(align, (p.part_len + align - 1) / align * align);
  p.parts = std::max<int64_t>(1, (N + p.part_len - 1) / p.part_len);
  return p;
}

namespace {

// Per-task heaps -> final sorted [Q, k] rows. partial[t][j] is query (qb*qblock + j) of task t = qb*parts + part.
void merge_write(const TaskPlan& p, int64_t Q, int64_t k, std::vector<std::vector<TopK>>& partial, float* out_d,
                 int64_t* out_i, int nthreads) {
  for_tasks(team(nthreads, Q / 64), Q, [&](int64_t q) {  // a fork costs more than a few merges
    int64_t qb = q / p.qblock, j = q % p.qblock;
    std::vector<Cand> best;
    for (int64_t part = 0; part < p.parts; ++part) {
      const TopK& items = partial[qb * p.parts + part][j];
      best.insert(best.end(), items.begin(), items.end());
    }
    best_k(best, k);
    float* od = out_d + q * k;
    int64_t* oi = out_i + q * k;
    int64_t n = static_cast<int64_t>(best.size());
    for (int64_t r = 0; r < n; ++r) {
      od[r] = best[r].d;
      oi[r] = best[r].id;
    }
    for (int64_t r = n; r < k; ++r) {
      od[r] = std::numeric_limits<float>::infinity();
      oi[r] = -1;
    }
  });
}

// One code: sum over sub-spaces in order m = 0..M-1 (the reference's order, so values are bit-identical).
template <int M, typename CodeT>
inline float dist_fixed(const float* L, int64_t K, const CodeT* c) {
  float d = 0.f;
#pragma GCC unroll 64
  for (int m = 0; m < M; ++m) d += L[m * K + c[m]];
  return d;
}

template <typename CodeT>
inline float dist_any(const float* L, int64_t M, int64_t K, const CodeT* c) {
  float d = 0.f;
  for (int64_t m = 0; m < M; ++m) d += L[m * K + c[m]];
  return d;
}

// Scan codes [n0, n1) for one query; four codes at a time for instruction-level parallelism.
template <int M, typename CodeT>
void scan_fixed(const float* L, int64_t K, const CodeT* codes, int64_t n0, int64_t n1, TopK& tk) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const CodeT* c = codes + n * M;
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma GCC unroll 64
    for (int m = 0; m < M; ++m) {
      const float* Lm = L + m * K;
      d0 += Lm[c[m]];
      d1 += Lm[c[M + m]];
      d2 += Lm[c[2 * M + m]];
      d3 += Lm[c[3 * M + m]];
    }
    tk.offer(d0, n);
    tk.offer(d1, n + 1);
    tk.offer(d2, n + 2);
    tk.offer(d3, n + 3);
  }
  for (; n < n1; ++n) tk.offer(dist_fixed<M>(L, K, codes + n * M), n);
}

template <typename CodeT>
void scan_any(const float* L, int64_t M, int64_t K, const CodeT* codes, int64_t n0, int64_t n1, TopK& tk) {
  for (int64_t n = n0; n < n1; ++n) tk.offer(dist_any(L, M, K, codes + n * M), n);
}

template <typename CodeT>
void scan(const float* L, int64_t M, int64_t K, const CodeT* codes, int64_t n0, int64_t n1, TopK& tk) {
  switch (M) {
    case 4:
      return scan_fixed<4>(L, K, codes, n0, n1, tk);
    case 8:
      return scan_fixed<8>(L, K, codes, n0, n1, tk);
    case 16:
      return scan_fixed<16>(L, K, codes, n0, n1, tk);
    case 32:
      return scan_fixed<32>(L, K, codes, n0, n1, tk);
    case 64:
      return scan_fixed<64>(L, K, codes, n0, n1, tk);
    default:
      return scan_any(L, M, K, codes, n0, n1, tk);
  }
}

}  // namespace

template <typename CodeT>
void adc_topk_codes(const float* lut, int64_t Q, int64_t M, int64_t K, const CodeT* codes, int64_t N, int64_t k,
                    int nthreads, float* out_d, int64_t* out_i) {
  if (Q < 0 || M < 1 || K < 1 || N < 0 || k < 1) throw std::invalid_argument("adc_topk: bad sizes");
  nthreads = std::max(1, nthreads);
  TaskPlan p = plan_tasks(Q, N, k, nthreads, 4);
  const int64_t kk = std::min(k, N);
  std::vector<std::vector<TopK>> partial(p.qblocks * p.parts);
  // a block of codes is read once per block of queries while it is hot in cache
  const int64_t NB = std::max<int64_t>(256, (32 * 1024) / (M * static_cast<int64_t>(sizeof(CodeT))));
  std::atomic<bool> nan{false};
  for_tasks(team(nthreads, p.qblocks * p.parts), p.qblocks * p.parts, [&](int64_t t) {
    int64_t qb = t / p.parts, part = t % p.parts;
    int64_t q0 = qb * p.qblock, q1 = std::min(Q, q0 + p.qblock);
    int64_t n0 = part * p.part_len, n1 = std::min(N, n0 + p.part_len);
    std::vector<TopK>& heaps = partial[t];
    heaps.reserve(q1 - q0);
    for (int64_t q = q0; q < q1; ++q) heaps.emplace_back(kk);
    if (has_nan(lut + q0 * M * K, (q1 - q0) * M * K)) {
      nan.store(true, std::memory_order_relaxed);
      return;
    }
    for (int64_t b0 = n0; b0 < n1; b0 += NB) {
      int64_t b1 = std::min(n1, b0 + NB);
      for (int64_t q = q0; q < q1; ++q) scan(lut + q * M * K, M, K, codes, b0, b1, heaps[q - q0]);
    }
  });
  if (nan.load()) throw std::invalid_argument("lut contains NaN");
  merge_write(p, Q, k, partial, out_d, out_i, nthreads);
}

template void adc_topk_codes<uint8_t>(const float*, int64_t, int64_t, int64_t, const uint8_t*, int64_t, int64_t, int,
                                      float*, int64_t*);
template void adc_topk_codes<int16_t>(const float*, int64_t, int64_t, int64_t, const int16_t*, int64_t, int64_t, int,
                                      float*, int64_t*);
template void adc_topk_codes<int32_t>(const float*, int64_t, int64_t, int64_t, const int32_t*, int64_t, int64_t, int,
                                      float*, int64_t*);

void pq_search(const float* x, int64_t Q, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
               bool negate, const void* codes, int code_bytes, int64_t N, int64_t k, int nthreads, float* out_d,
               int64_t* out_i, bool exact, const int64_t* labels, bool check_finite) {
  if (code_bytes == 0 && K != 16) throw std::invalid_argument("pq_search: fast-scan codes need K = 16");
  if (check_finite && has_nonfinite(x, std::max<int64_t>(Q, 0) * M * d))
    throw std::invalid_argument("queries contains NaN or inf");
  if (check_finite && has_nonfinite(codebooks, M * K * d)) throw std::invalid_argument("codebooks contains NaN or inf");
  // the calling thread's buffer, reused across calls: a fresh one of a kilobyte or more costs a consolidation of
  // malloc's fast bins each call, which the Python around it refills
  thread_local std::vector<float> lut;
  const size_t size = static_cast<size_t>(std::max<int64_t>(Q, 0) * M * K);
  if (lut.size() < size) lut.resize(size);
  if (lut.size() > (size_t{1} << 24) && size < lut.size() / 4) lut = std::vector<float>(size);  // a past peak
  build_lut(x, Q, codebooks, M, K, d, metric, lut.data(), nthreads);
  if (negate)
    for (size_t i = 0; i < size; ++i) lut[i] = -lut[i];
  const float* L = lut.data();
  switch (code_bytes) {
    case 0:
      adc_topk_fastscan(L, Q, M, static_cast<const uint8_t*>(codes), N, k, nthreads, out_d, out_i, exact);
      break;
    case 1:
      adc_topk_codes(L, Q, M, K, static_cast<const uint8_t*>(codes), N, k, nthreads, out_d, out_i);
      break;
    case 2:
      adc_topk_codes(L, Q, M, K, static_cast<const int16_t*>(codes), N, k, nthreads, out_d, out_i);
      break;
    case 4:
      adc_topk_codes(L, Q, M, K, static_cast<const int32_t*>(codes), N, k, nthreads, out_d, out_i);
      break;
    default:
      throw std::invalid_argument("pq_search: codes must be 1, 2 or 4 bytes wide, or fast-scan blocks (0)");
  }
  const int64_t n_out = std::max<int64_t>(Q, 0) * k;
  if (negate)  // back to the metric's own sign (largest first)
    for (int64_t i = 0; i < n_out; ++i) out_d[i] = -out_d[i];
  if (labels)  // positions -> ids (-1 stays: no code)
    for (int64_t i = 0; i < n_out; ++i) out_i[i] = out_i[i] >= 0 ? labels[out_i[i]] : -1;
}

// exported for fastscan.cpp
void merge_partial(const TaskPlan& p, int64_t Q, int64_t k, std::vector<std::vector<TopK>>& partial, float* out_d,
                   int64_t* out_i, int nthreads) {
  merge_write(p, Q, k, partial, out_d, out_i, nthreads);
}

}  // namespace sqret
