// sqret CUDA kernels: ADC scan + top-k (uint8 or packed 4-bit codes) and encode. Raw device pointers and a
// stream in, no torch headers. Every CUDA call is checked; errors become C++ exceptions (Python RuntimeError).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "adc_stream.cuh"
#include "kernels.cuh"
#include "launch.cuh"

namespace sqret_cuda {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

namespace {

// Nearest codeword per (row, sub-space): one thread each; ties keep the smaller index.
__global__ void encode_kernel(const float* __restrict__ x, long long B, const float* __restrict__ cb, int M, int K,
                              int d, int metric, int32_t* __restrict__ out) {
  const long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * M) return;
  const long long b = t / M;
  const int m = static_cast<int>(t % M);
  const float* xs = x + b * M * d + m * d;
  const float* C = cb + static_cast<long long>(m) * K * d;
  float best = 0.f;
  int arg = 0;
  for (int k = 0; k < K; ++k) {
    const float* c = C + static_cast<long long>(k) * d;
    float s = 0.f;
    if (metric == 0) {
      for (int j = 0; j < d; ++j) {
        const float diff = xs[j] - c[j];
        s += diff * diff;
      }
    } else {
      for (int j = 0; j < d; ++j) s -= xs[j] * c[j];
    }
    if (k == 0 || s < best) {
      best = s;
      arg = k;
    }
  }
  out[t] = arg;
}

}  // namespace

AdcPlan adc_plan_here(int Q, int M, int K, long long N, int keep, int select) {
  int dev = 0, sms = 0, max_smem = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  return adc_plan(Q, M, K, N, keep, sms, max_smem, select);
}

void adc_topk_stream(const float* lut, int Q, int M, int K, const uint8_t* codes, long long N, int row_bytes,
                     bool packed, bool largest, int keep, int programs, long long* out_keys, cudaStream_t stream,
                     int select) {
  if (Q < 0 || M < 1 || K < 1 || N < 0 || N >= (1LL << 31) || row_bytes != (packed ? (M + 1) / 2 : M))
    throw std::invalid_argument("adc_topk_stream: bad sizes (N < 2**31, row_bytes = M or ceil(M / 2) packed)");
  if (Q == 0 || N == 0) return;
  const AdcPlan p = adc_plan_here(Q, M, K, N, keep, select);
  if (programs != p.programs)
    throw std::invalid_argument("adc_topk_stream: out_keys sized for " + std::to_string(programs) +
                                " programs, the plan has " + std::to_string(p.programs));
  launch_plan(p, lut, Q, M, K, codes, N, row_bytes, packed, largest, keep, out_keys, stream);
  check(cudaGetLastError(), "adc_stream launch");
}

void encode(const float* x, long long B, const float* codebooks, int M, int K, int d, int metric, int32_t* out,
            cudaStream_t stream) {
  if (B < 0 || M < 1 || K < 1 || d < 1 || (metric != 0 && metric != 1)) throw std::invalid_argument("encode: bad sizes");
  if (B == 0) return;
  const long long threads = B * M;
  SQRET_LAUNCH(encode_kernel, static_cast<unsigned>((threads + 255) / 256), 256, 0, stream, x, B, codebooks, M, K, d,
               metric, out);
  check(cudaGetLastError(), "encode launch");
}

int device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error: no driver / no device is not a failure here
    return 0;
  }
  return n;
}

}  // namespace sqret_cuda
