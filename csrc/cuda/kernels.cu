// sqret CUDA kernels: ADC scan + top-k (uint8 or packed 4-bit codes) and encode. Raw device pointers and a
// stream in, no torch headers. Every CUDA call is checked; errors become C++ exceptions (Python RuntimeError).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels.cuh"

namespace sqret_cuda {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

namespace {

constexpr long long kMaxKey = 0x7FFFFFFFFFFFFFFFLL;

// float order as signed 64-bit key order: (ordered float bits << 32) | position (ties: smaller position)
__device__ __forceinline__ long long make_key(float d, unsigned pos) {
  d += 0.0f;  // -0.0 -> +0.0
  int bits = __float_as_int(d);
  int ordered = bits < 0 ? (bits ^ 0x7FFFFFFF) : bits;
  return (static_cast<long long>(ordered) << 32) | static_cast<long long>(pos);
}

__device__ __forceinline__ int code_at(const uint8_t* row, int m, bool packed) {
  if (!packed) return row[m];
  uint8_t b = row[m >> 1];
  return (m & 1) ? (b >> 4) : (b & 15);
}

// One block: one query, one chunk of `chunk` codes (a power of two). The query's LUT goes to shared memory
// (when it fits), each thread sums the LUT entries of its codes (16-byte loads for 16-byte rows), the block
// sorts the chunk's keys with a bitonic network in shared memory and writes its `keep` best.
template <bool LUT_SMEM>
__global__ void adc_partial(const float* __restrict__ lut, const uint8_t* __restrict__ codes, long long N, int M,
                            int K, int row_bytes, bool packed, float sign, int chunk, int keep,
                            long long* __restrict__ out_keys) {
  extern __shared__ unsigned char smem[];
  long long* keys = reinterpret_cast<long long*>(smem);
  float* lut_s = reinterpret_cast<float*>(smem + static_cast<size_t>(chunk) * sizeof(long long));
  const int q = blockIdx.y;
  const float* L = lut + static_cast<long long>(q) * M * K;
  if (LUT_SMEM) {
    for (int i = threadIdx.x; i < M * K; i += blockDim.x) lut_s[i] = L[i];
    __syncthreads();
  }
  const float* T = LUT_SMEM ? lut_s : L;
  const long long base = static_cast<long long>(blockIdx.x) * chunk;
  for (int i = threadIdx.x; i < chunk; i += blockDim.x) {
    const long long n = base + i;
    long long key = kMaxKey;
    if (n < N) {
      const uint8_t* row = codes + n * row_bytes;
      float d = 0.f;
      if (!packed && row_bytes == 16 && M == 16 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
        uint4 v = *reinterpret_cast<const uint4*>(row);  // one 16-byte load per code
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&v);
#pragma unroll
        for (int m = 0; m < 16; ++m) d += T[m * K + b[m]];
      } else {
        for (int m = 0; m < M; ++m) d += T[m * K + code_at(row, m, packed)];
      }
      key = make_key(sign * d, static_cast<unsigned>(i));
    }
    keys[i] = key;
  }
  __syncthreads();
  for (int size = 2; size <= chunk; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < chunk; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool up = (i & size) == 0;
          const long long a = keys[i], b = keys[j];
          if ((a > b) == up) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  long long* out = out_keys + (static_cast<long long>(q) * gridDim.x + blockIdx.x) * keep;
  for (int i = threadIdx.x; i < keep; i += blockDim.x) {
    const long long key = keys[i];
    // positions in the key are chunk-local: make them global (< 2^31 per launch)
    out[i] = key == kMaxKey ? kMaxKey : ((key & ~0xFFFFFFFFLL) | ((key & 0xFFFFFFFFLL) + base));
  }
}

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

int pow2_at_least(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

int adc_chunk(int keep) { return pow2_at_least(keep < 1024 ? 2048 : 2 * keep); }

void adc_topk_partial(const float* lut, int Q, int M, int K, const uint8_t* codes, long long N, int row_bytes,
                      bool packed, bool largest, int keep, long long* out_keys, cudaStream_t stream) {
  if (Q < 0 || M < 1 || K < 1 || N < 0 || keep < 1 || keep > 2048 || N >= (1LL << 31))
    throw std::invalid_argument("adc_topk_partial: bad sizes (1 <= keep <= 2048, N < 2**31)");
  if (Q == 0 || N == 0) return;
  const int chunk = adc_chunk(keep);
  const long long blocks = (N + chunk - 1) / chunk;
  int dev = 0, max_smem = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  const size_t keys_bytes = static_cast<size_t>(chunk) * sizeof(long long);
  const size_t lut_bytes = static_cast<size_t>(M) * K * sizeof(float);
  const bool lut_smem = keys_bytes + lut_bytes <= static_cast<size_t>(max_smem);
  const size_t smem = keys_bytes + (lut_smem ? lut_bytes : 0);
  if (smem > static_cast<size_t>(max_smem)) throw std::invalid_argument("adc_topk_partial: k too large for shared memory");
  dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(Q));
  const float sign = largest ? -1.f : 1.f;
  if (lut_smem) {
    check(cudaFuncSetAttribute(adc_partial<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "cudaFuncSetAttribute");
    adc_partial<true><<<grid, 512, smem, stream>>>(lut, codes, N, M, K, row_bytes, packed, sign, chunk, keep, out_keys);
  } else {
    check(cudaFuncSetAttribute(adc_partial<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "cudaFuncSetAttribute");
    adc_partial<false><<<grid, 512, smem, stream>>>(lut, codes, N, M, K, row_bytes, packed, sign, chunk, keep, out_keys);
  }
  check(cudaGetLastError(), "adc_partial launch");
}

void encode(const float* x, long long B, const float* codebooks, int M, int K, int d, int metric, int32_t* out,
            cudaStream_t stream) {
  if (B < 0 || M < 1 || K < 1 || d < 1 || (metric != 0 && metric != 1)) throw std::invalid_argument("encode: bad sizes");
  if (B == 0) return;
  const long long threads = B * M;
  encode_kernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(x, B, codebooks, M, K, d, metric, out);
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
