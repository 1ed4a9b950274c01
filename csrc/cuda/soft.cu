// sqret CUDA soft quantization: z = softmax(s(x_m, c) / tau) @ C_m per sub-space, forward and backward, in
// float32 (l2: s = -||x - c||^2, ip: s = x.c; cosine is rewritten as ip on normalized inputs in Python).
// No [B, M, K] probabilities are stored: the forward keeps an online softmax per row, the backward
// recomputes the probabilities (pass 1: log-sum-exp and g.z; pass 2: grad x) and a second kernel loops over
// the batch for each codeword (deterministic codebook gradients, no atomics).
#include <cuda_runtime.h>

#include <stdexcept>

#include "kernels.cuh"
#include "launch.cuh"

namespace sqret_cuda {

namespace {

constexpr int kRows = 128;  // rows (threads) per block of the row kernels when a row fits in registers
constexpr int kWideRows = 32;  // ... when it does not (its values live in shared memory)
constexpr int kRegDim = 64;  // up to this d a thread's row values are registers

// One thread's d values. Up to kRegDim: a register array whose loops are fully unrolled over MAXD (predicated by
// j < d), so every index is a constant and nothing lands on the stack; beyond: a column of shared memory
// (element j at col[j * blockDim.x]: consecutive threads, consecutive banks).
template <int MAXD>
struct Row {
  static constexpr bool kRegs = MAXD <= kRegDim;
  static constexpr int kUnroll = kRegs ? MAXD : 4;
  float r[kRegs ? MAXD : 1];
  float* col;
  __device__ __forceinline__ explicit Row(float* column) : col(column) {}
  __device__ __forceinline__ float& operator[](int j) {
    if constexpr (kRegs) return r[j];
    else return col[j * blockDim.x];
  }
};

template <int MAXD>
constexpr int rows_per_block() { return Row<MAXD>::kRegs ? kRows : kWideRows; }

// Shared memory a block of `rows` threads needs for `arrays` rows of MAXD values each (0 when in registers).
template <int MAXD>
size_t row_smem(int arrays) {
  return Row<MAXD>::kRegs ? 0 : static_cast<size_t>(arrays) * MAXD * rows_per_block<MAXD>() * sizeof(float);
}

template <int MAXD>
__device__ __forceinline__ float score(Row<MAXD>& x, const float* c, int d, int metric) {
  float s = 0.f;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j) {
    if (j < d) {
      const float t = metric == 0 ? x[j] - c[j] : 0.f;
      s += metric == 0 ? -t * t : x[j] * c[j];
    }
  }
  return s;
}

template <int MAXD>
__device__ __forceinline__ float dot(Row<MAXD>& a, const float* c, int d) {
  float s = 0.f;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) s += a[j] * c[j];
  return s;
}

// The block's dynamic shared memory: row columns first (wide rows), then codebook m when it fits.
__device__ __forceinline__ const float* codebook(const float* cb, float* smem, bool in_smem, int m, int K, int d) {
  const float* C = cb + static_cast<long long>(m) * K * d;
  if (!in_smem) return C;
  for (int i = threadIdx.x; i < K * d; i += blockDim.x) smem[i] = C[i];
  __syncthreads();
  return smem;
}

template <int MAXD>
__device__ __forceinline__ size_t row_floats(int arrays) {  // floats of the row columns ahead of the codebook
  return Row<MAXD>::kRegs ? 0 : static_cast<size_t>(arrays) * MAXD * blockDim.x;
}

template <int MAXD>
__device__ __forceinline__ float* column(float* smem, int array) {
  return smem + static_cast<size_t>(array) * MAXD * blockDim.x + threadIdx.x;
}

template <int MAXD>
__global__ void soft_fwd(const float* __restrict__ x, const float* __restrict__ cb, long long B, int M, int K, int d,
                         float inv_tau, int metric, bool in_smem, float* __restrict__ z) {
  SQRET_DYNAMIC_SHARED(float, smem);
  const int m = blockIdx.y;
  float* rows = smem;
  const float* C = codebook(cb, smem + row_floats<MAXD>(2), in_smem, m, K, d);
  const long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  Row<MAXD> xs(column<MAXD>(rows, 0)), acc(column<MAXD>(rows, 1));
  const float* xr = x + b * M * d + static_cast<long long>(m) * d;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) xs[j] = xr[j], acc[j] = 0.f;
  float mx = -INFINITY, sum = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* c = C + k * d;
    const float s = score(xs, c, d, metric) * inv_tau;
    if (s > mx) {  // rescale what was accumulated under the old maximum
      const float r = __expf(mx - s);
      sum *= r;
#pragma unroll Row<MAXD>::kUnroll
      for (int j = 0; j < MAXD; ++j)
        if (j < d) acc[j] *= r;
      mx = s;
    }
    const float p = __expf(s - mx);
    sum += p;
#pragma unroll Row<MAXD>::kUnroll
    for (int j = 0; j < MAXD; ++j)
      if (j < d) acc[j] += p * c[j];
  }
  float* zr = z + b * M * d + static_cast<long long>(m) * d;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) zr[j] = acc[j] / sum;
}

template <int MAXD>
__global__ void soft_bwd_rows(const float* __restrict__ g, const float* __restrict__ x, const float* __restrict__ cb,
                              long long B, int M, int K, int d, float inv_tau, int metric, bool in_smem,
                              float* __restrict__ gx, float* __restrict__ lse_out, float* __restrict__ gz_out) {
  SQRET_DYNAMIC_SHARED(float, smem);
  const int m = blockIdx.y;
  float* rows = smem;
  const float* C = codebook(cb, smem + row_floats<MAXD>(3), in_smem, m, K, d);
  const long long b = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const long long off = b * M * d + static_cast<long long>(m) * d;
  Row<MAXD> xs(column<MAXD>(rows, 0)), gs(column<MAXD>(rows, 1)), acc(column<MAXD>(rows, 2));
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) xs[j] = x[off + j], gs[j] = g[off + j], acc[j] = 0.f;
  // pass 1: log-sum-exp and g.z = sum_k p_k (g.c_k), online
  float mx = -INFINITY, sum = 0.f, gz = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* c = C + k * d;
    const float s = score(xs, c, d, metric) * inv_tau;
    const float gc = dot(gs, c, d);
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
    const float ds = p * (dot(gs, c, d) - gz);
    sum_ds += ds;
#pragma unroll Row<MAXD>::kUnroll
    for (int j = 0; j < MAXD; ++j)
      if (j < d) acc[j] += ds * c[j];
  }
  const float scale = (metric == 0 ? 2.f : 1.f) * inv_tau;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) gx[off + j] = scale * (acc[j] - (metric == 0 ? sum_ds * xs[j] : 0.f));
  lse_out[b * M + m] = lse;
  gz_out[b * M + m] = gz;
}

// One thread per (m, k): loops over the batch in order (deterministic), with the row statistics of pass 1.
template <int MAXD>
__global__ void soft_bwd_codewords(const float* __restrict__ g, const float* __restrict__ x,
                                   const float* __restrict__ cb, const float* __restrict__ lse,
                                   const float* __restrict__ gzs, long long B, int M, int K, int d, float inv_tau,
                                   int metric, float* __restrict__ gc_out) {
  SQRET_DYNAMIC_SHARED(float, smem);
  const long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= static_cast<long long>(M) * K) return;
  const int m = static_cast<int>(t / K);
  Row<MAXD> c(column<MAXD>(smem, 0)), acc(column<MAXD>(smem, 1));
  const float* cr = cb + t * d;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) c[j] = cr[j], acc[j] = 0.f;
  const float scale = (metric == 0 ? 2.f : 1.f) * inv_tau;
  for (long long b = 0; b < B; ++b) {
    const long long off = b * M * d + static_cast<long long>(m) * d;
    const float* xr = x + off;
    const float* gr = g + off;
    const float p = __expf(score(c, xr, d, metric) * inv_tau - lse[b * M + m]);
    const float ds = p * (dot(c, gr, d) - gzs[b * M + m]);
    // z = sum p c: p g; score: ds * d s / d c = ds * 2 (x - c) / tau (l2) or ds * x / tau (ip)
#pragma unroll Row<MAXD>::kUnroll
    for (int j = 0; j < MAXD; ++j)
      if (j < d) acc[j] += p * gr[j] + ds * scale * (metric == 0 ? xr[j] - c[j] : xr[j]);
  }
  float* out = gc_out + t * d;
#pragma unroll Row<MAXD>::kUnroll
  for (int j = 0; j < MAXD; ++j)
    if (j < d) out[j] = acc[j];
}

int max_smem() {
  int dev = 0, bytes = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  return bytes;
}

// Dynamic shared memory of a row kernel: its row columns, plus codebook m when the two fit (else it is read from
// global memory). Sets the kernel's opt-in limit when above the default.
template <typename Kernel>
size_t plan_smem(Kernel kernel, size_t rows_bytes, int K, int d, bool* in_smem) {
  const size_t cb_bytes = static_cast<size_t>(K) * d * sizeof(float);
  const size_t limit = static_cast<size_t>(max_smem());
  if (rows_bytes > limit) throw std::runtime_error("soft quantization: the row buffers exceed shared memory");
  *in_smem = rows_bytes + cb_bytes <= limit;
  const size_t total = rows_bytes + (*in_smem ? cb_bytes : 0);
  if (total > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(total)),
          "cudaFuncSetAttribute");
  return total;
}

template <int MAXD>
void launch_fwd(const float* x, long long B, const float* cb, int M, int K, int d, float inv_tau, int metric,
                float* z, cudaStream_t stream) {
  bool in_smem = false;
  const size_t smem = plan_smem(soft_fwd<MAXD>, row_smem<MAXD>(2), K, d, &in_smem);
  const int rows = rows_per_block<MAXD>();
  dim3 grid(static_cast<unsigned>((B + rows - 1) / rows), static_cast<unsigned>(M));
  SQRET_LAUNCH(soft_fwd<MAXD>, grid, rows, smem, stream, x, cb, B, M, K, d, inv_tau, metric, in_smem, z);
  check(cudaGetLastError(), "soft_fwd launch");
}

template <int MAXD>
void launch_bwd(const float* g, const float* x, long long B, const float* cb, int M, int K, int d, float inv_tau,
                int metric, float* gx, float* gc, float* scratch, cudaStream_t stream) {
  bool in_smem = false;
  const size_t smem = plan_smem(soft_bwd_rows<MAXD>, row_smem<MAXD>(3), K, d, &in_smem);
  float* lse = scratch;
  float* gz = scratch + B * M;
  const int rows = rows_per_block<MAXD>();
  dim3 grid(static_cast<unsigned>((B + rows - 1) / rows), static_cast<unsigned>(M));
  SQRET_LAUNCH(soft_bwd_rows<MAXD>, grid, rows, smem, stream, g, x, cb, B, M, K, d, inv_tau, metric, in_smem, gx, lse,
               gz);
  check(cudaGetLastError(), "soft_bwd_rows launch");
  const long long threads = static_cast<long long>(M) * K;
  const size_t cw_smem = row_smem<MAXD>(2);
  if (cw_smem > 48 * 1024)
    check(cudaFuncSetAttribute(soft_bwd_codewords<MAXD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(cw_smem)), "cudaFuncSetAttribute");
  SQRET_LAUNCH(soft_bwd_codewords<MAXD>, static_cast<unsigned>((threads + rows - 1) / rows), rows, cw_smem, stream,
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
