// sqret CUDA soft quantization: z = softmax(s(x_m, c) / tau) @ C_m per sub-space, forward and backward, in
// float32 (l2: s = -||x - c||^2, ip: s = x.c; cosine is rewritten as ip on normalized inputs in Python).
// No [B, M, K] probabilities are stored: the forward keeps an online softmax per row, the backward
// recomputes the probabilities (pass 1: log-sum-exp and g.z; pass 2: grad x) and a second kernel loops over
// the batch for each codeword (deterministic codebook gradients, no atomics).
#include <cuda_runtime.h>

#include <stdexcept>

#include "kernels.cuh"

namespace sqret_cuda {

namespace {

constexpr int kRows = 128;  // rows (threads) per block of the row kernels

__device__ __forceinline__ float score(const float* x, const float* c, int d, int metric) {
  float s = 0.f;
  if (metric == 0) {
    for (int j = 0; j < d; ++j) {
      const float t = x[j] - c[j];
      s -= t * t;
    }
  } else {
    for (int j = 0; j < d; ++j) s += x[j] * c[j];
  }
  return s;
}

// Codebook m into shared memory when it fits (the caller passes the dynamic size), else read from global.
__device__ __forceinline__ const float* codebook(const float* cb, float* smem, bool in_smem, int m, int K, int d) {
  const float* C = cb + static_cast<long long>(m) * K * d;
  if (!in_smem) return C;
  for (int i = threadIdx.x; i < K * d; i += blockDim.x) smem[i] = C[i];
  __syncthreads();
  return smem;
}

template <int MAXD>
__global__ void soft_fwd(const float* __restrict__ x, const float* __restrict__ cb, long long B, int M, int K, int d,
                         float inv_tau, int metric, bool in_smem, float* __restrict__ z) {
  extern __shared__ float smem[];
  const int m = blockIdx.y;
  const float* C = codebook(cb, smem, in_smem, m, K, d);
  const long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  float xs[MAXD], acc[MAXD];
  const float* xr = x + b * M * d + static_cast<long long>(m) * d;
  for (int j = 0; j < d; ++j) xs[j] = xr[j], acc[j] = 0.f;
  float mx = -INFINITY, sum = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* c = C + k * d;
    const float s = score(xs, c, d, metric) * inv_tau;
    if (s > mx) {  // rescale what was accumulated under the old maximum
      const float r = __expf(mx - s);
      sum *= r;
      for (int j = 0; j < d; ++j) acc[j] *= r;
      mx = s;
    }
    const float p = __expf(s - mx);
    sum += p;
    for (int j = 0; j < d; ++j) acc[j] += p * c[j];
  }
  float* zr = z + b * M * d + static_cast<long long>(m) * d;
  for (int j = 0; j < d; ++j) zr[j] = acc[j] / sum;
}

template <int MAXD>
__global__ void soft_bwd_rows(const float* __restrict__ g, const float* __restrict__ x, const float* __restrict__ cb,
                              long long B, int M, int K, int d, float inv_tau, int metric, bool in_smem,
                              float* __restrict__ gx, float* __restrict__ lse_out, float* __restrict__ gz_out) {
  extern __shared__ float smem[];
  const int m = blockIdx.y;
  const float* C = codebook(cb, smem, in_smem, m, K, d);
  const long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const long long off = b * M * d + static_cast<long long>(m) * d;
  float xs[MAXD], gs[MAXD], acc[MAXD];
  for (int j = 0; j < d; ++j) xs[j] = x[off + j], gs[j] = g[off + j], acc[j] = 0.f;
  // pass 1: log-sum-exp and g.z = sum_k p_k (g.c_k), online
  float mx = -INFINITY, sum = 0.f, gz = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* c = C + k * d;
    const float s = score(xs, c, d, metric) * inv_tau;
    float gc = 0.f;
    for (int j = 0; j < d; ++j) gc += gs[j] * c[j];
    if (s > mx) {
      const float r = __expf(mx - s);
      sum *= r, gz *= r, mx = s;
    }
    const float p = __expf(s - mx);
    sum += p, gz += p * gc;
  }
  gz /= sum;
  const float lse = mx + __logf(sum);
  // pass 2: ds_k = p_k (g.c_k - g.z); grad x = scale * sum_k ds_k (c_k - x) (l2) or scale * sum_k ds_k c_k (ip)
  float sum_ds = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* c = C + k * d;
    const float p = __expf(score(xs, c, d, metric) * inv_tau - lse);
    float gc = 0.f;
    for (int j = 0; j < d; ++j) gc += gs[j] * c[j];
    const float ds = p * (gc - gz);
    sum_ds += ds;
    for (int j = 0; j < d; ++j) acc[j] += ds * c[j];
  }
  const float scale = (metric == 0 ? 2.f : 1.f) * inv_tau;
  for (int j = 0; j < d; ++j) gx[off + j] = scale * (acc[j] - (metric == 0 ? sum_ds * xs[j] : 0.f));
  lse_out[b * M + m] = lse;
  gz_out[b * M + m] = gz;
}

// One thread per (m, k): loops over the batch in order (deterministic), with the row statistics of pass 1.
template <int MAXD>
__global__ void soft_bwd_codewords(const float* __restrict__ g, const float* __restrict__ x,
                                   const float* __restrict__ cb, const float* __restrict__ lse,
                                   const float* __restrict__ gzs, long long B, int M, int K, int d, float inv_tau,
                                   int metric, float* __restrict__ gc_out) {
  const long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= static_cast<long long>(M) * K) return;
  const int m = static_cast<int>(t / K);
  float c[MAXD], acc[MAXD];
  const float* cr = cb + t * d;
  for (int j = 0; j < d; ++j) c[j] = cr[j], acc[j] = 0.f;
  const float scale = (metric == 0 ? 2.f : 1.f) * inv_tau;
  for (long long b = 0; b < B; ++b) {
    const long long off = b * M * d + static_cast<long long>(m) * d;
    const float* xr = x + off;
    const float* gr = g + off;
    const float p = __expf(score(xr, c, d, metric) * inv_tau - lse[b * M + m]);
    float gc = 0.f;
    for (int j = 0; j < d; ++j) gc += gr[j] * c[j];
    const float ds = p * (gc - gzs[b * M + m]);
    // z = sum p c: p g; score: ds * d s / d c = ds * 2 (x - c) / tau (l2) or ds * x / tau (ip)
    for (int j = 0; j < d; ++j) acc[j] += p * gr[j] + ds * scale * (metric == 0 ? xr[j] - c[j] : xr[j]);
  }
  float* out = gc_out + t * d;
  for (int j = 0; j < d; ++j) out[j] = acc[j];
}

bool codebook_in_smem(int K, int d, size_t* bytes) {
  int dev = 0, max_smem = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  *bytes = static_cast<size_t>(K) * d * sizeof(float);
  return *bytes <= static_cast<size_t>(max_smem);
}

template <int MAXD>
void launch_fwd(const float* x, long long B, const float* cb, int M, int K, int d, float inv_tau, int metric,
                float* z, cudaStream_t stream) {
  size_t bytes = 0;
  const bool in_smem = codebook_in_smem(K, d, &bytes);
  const size_t smem = in_smem ? bytes : 0;
  if (in_smem)
    check(cudaFuncSetAttribute(soft_fwd<MAXD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "cudaFuncSetAttribute");
  dim3 grid(static_cast<unsigned>((B + kRows - 1) / kRows), static_cast<unsigned>(M));
  soft_fwd<MAXD><<<grid, kRows, smem, stream>>>(x, cb, B, M, K, d, inv_tau, metric, in_smem, z);
  check(cudaGetLastError(), "soft_fwd launch");
}

template <int MAXD>
void launch_bwd(const float* g, const float* x, long long B, const float* cb, int M, int K, int d, float inv_tau,
                int metric, float* gx, float* gc, float* scratch, cudaStream_t stream) {
  size_t bytes = 0;
  const bool in_smem = codebook_in_smem(K, d, &bytes);
  const size_t smem = in_smem ? bytes : 0;
  if (in_smem)
    check(cudaFuncSetAttribute(soft_bwd_rows<MAXD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          "cudaFuncSetAttribute");
  float* lse = scratch;
  float* gz = scratch + B * M;
  dim3 grid(static_cast<unsigned>((B + kRows - 1) / kRows), static_cast<unsigned>(M));
  soft_bwd_rows<MAXD><<<grid, kRows, smem, stream>>>(g, x, cb, B, M, K, d, inv_tau, metric, in_smem, gx, lse, gz);
  check(cudaGetLastError(), "soft_bwd_rows launch");
  const long long threads = static_cast<long long>(M) * K;
  soft_bwd_codewords<MAXD><<<static_cast<unsigned>((threads + 127) / 128), 128, 0, stream>>>(
      g, x, cb, lse, gz, B, M, K, d, inv_tau, metric, gc);
  check(cudaGetLastError(), "soft_bwd_codewords launch");
}

void check_sizes(long long B, int M, int K, int d, float tau, int metric, const char* what) {
  if (B < 0 || M < 1 || K < 1 || d < 1 || d > kSoftMaxDim || !(tau > 0.f) || (metric != 0 && metric != 1))
    throw std::invalid_argument(std::string(what) + ": bad sizes (1 <= d <= 256, tau > 0, metric 0 or 1)");
}

}  // namespace

void soft_quantize(const float* x, long long B, const float* codebooks, int M, int K, int d, float tau, int metric,
                   float* z, cudaStream_t stream) {
  check_sizes(B, M, K, d, tau, metric, "soft_quantize");
  if (B == 0) return;
  const float inv_tau = 1.f / tau;
  if (d <= 16) launch_fwd<16>(x, B, codebooks, M, K, d, inv_tau, metric, z, stream);
  else if (d <= 32) launch_fwd<32>(x, B, codebooks, M, K, d, inv_tau, metric, z, stream);
  else if (d <= 64) launch_fwd<64>(x, B, codebooks, M, K, d, inv_tau, metric, z, stream);
  else if (d <= 128) launch_fwd<128>(x, B, codebooks, M, K, d, inv_tau, metric, z, stream);
  else launch_fwd<256>(x, B, codebooks, M, K, d, inv_tau, metric, z, stream);
}

void soft_quantize_backward(const float* grad, const float* x, long long B, const float* codebooks, int M, int K,
                            int d, float tau, int metric, float* grad_x, float* grad_codebooks, float* scratch,
                            cudaStream_t stream) {
  check_sizes(B, M, K, d, tau, metric, "soft_quantize_backward");
  if (B == 0) {
    check(cudaMemsetAsync(grad_codebooks, 0, static_cast<size_t>(M) * K * d * sizeof(float), stream), "memset");
    return;
  }
  const float inv_tau = 1.f / tau;
  if (d <= 16) launch_bwd<16>(grad, x, B, codebooks, M, K, d, inv_tau, metric, grad_x, grad_codebooks, scratch, stream);
  else if (d <= 32) launch_bwd<32>(grad, x, B, codebooks, M, K, d, inv_tau, metric, grad_x, grad_codebooks, scratch, stream);
  else if (d <= 64) launch_bwd<64>(grad, x, B, codebooks, M, K, d, inv_tau, metric, grad_x, grad_codebooks, scratch, stream);
  else if (d <= 128) launch_bwd<128>(grad, x, B, codebooks, M, K, d, inv_tau, metric, grad_x, grad_codebooks, scratch, stream);
  else launch_bwd<256>(grad, x, B, codebooks, M, K, d, inv_tau, metric, grad_x, grad_codebooks, scratch, stream);
}

}  // namespace sqret_cuda
