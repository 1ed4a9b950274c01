// Nearest codeword per sub-space (PQ encoding / the k-means assignment step).
#include <omp.h>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernels.h"

namespace sqret {

namespace {

// dist[k] = base[k] + sum_j coef * xv_j * Ct[j][k], vectorized over k; compiled per SIMD level and chosen at
// load time by the CPU's features (GCC function multi-versioning).
__attribute__((target_clones("avx512f", "avx2", "default"))) int32_t nearest(const float* xs, const float* Ct,
                                                                              const float* base, int64_t d,
                                                                              int64_t K, float coef, float* dist) {
  for (int64_t k = 0; k < K; ++k) dist[k] = base[k];
  for (int64_t j = 0; j < d; ++j) {
    const float c = coef * xs[j];
    const float* row = Ct + j * K;
    for (int64_t k = 0; k < K; ++k) dist[k] += c * row[k];
  }
  int32_t best = 0;
  float bd = dist[0];
  for (int64_t k = 1; k < K; ++k)
    if (dist[k] < bd) {  // strict: ties keep the smaller index
      bd = dist[k];
      best = static_cast<int32_t>(k);
    }
  return best;
}

}  // namespace

void encode(const float* x, int64_t N, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
            int32_t* codes, int nthreads) {
  if (N < 0 || M < 1 || K < 1 || d < 1 || (metric != 0 && metric != 1))
    throw std::invalid_argument("encode: bad sizes or metric");
  // codebooks transposed to [M][d][K]; base: ||c||^2 for l2 (argmin ||c||^2 - 2 x.c), 0 for ip (argmin -x.c)
  std::vector<float> Ct(static_cast<size_t>(M * d * K)), base(static_cast<size_t>(M * K), 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const float* c = codebooks + (m * K + k) * d;
      float nrm = 0.f;
      for (int64_t j = 0; j < d; ++j) {
        Ct[(m * d + j) * K + k] = c[j];
        nrm += c[j] * c[j];
      }
      if (metric == 0) base[m * K + k] = nrm;
    }
  const float coef = metric == 0 ? -2.f : -1.f;
#pragma omp parallel num_threads(std::max(1, nthreads))
  {
    std::vector<float> dist(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m)
        codes[n * M + m] =
            nearest(x + n * M * d + m * d, Ct.data() + m * d * K, base.data() + m * K, d, K, coef, dist.data());
  }
}

}  // namespace sqret
