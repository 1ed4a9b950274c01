// sqret CUDA kernels: ADC scan + top-k (uint8 or packed 4-bit codes) and encode. Raw device pointers and a
// stream in, no torch headers. Every CUDA call is checked; errors become C++ exceptions (Python RuntimeError).
#include <cuda_runtime.h>

#include <algorithm>
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

// Streaming ADC scan + top-k. A block owns QB queries and one long slice of the codes (the grid: a few blocks
// per SM along the database, query blocks adjacent so that they read a slice from L2 at about the same time).
// Per query, a pool of `pool` keys in shared memory: [0, kp) the running best (sorted), then the candidates
// that beat the running keep-th best (appended with a shared atomic). When the next tile could overflow the
// pool, the block sorts it (bitonic) and the threshold tightens; after the first tiles few codes pass it. Each
// block writes its `keep` best keys per query once; one small sort merges the blocks.
constexpr int kThreads = 256;
constexpr int kItems = 2;                    // codes per thread per tile
constexpr int kTile = kThreads * kItems;     // codes per tile: at most this many candidates per tile
constexpr int kBlocksPerSm = 4;              // programs along the database per SM (over all query blocks)
constexpr size_t kSmemBudget = 100 * 1024;   // two blocks per SM

// Sort a[0, n) ascending (n a power of two), all threads of the block; returns after a barrier.
__device__ void bitonic_sort(long long* a, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));  // the pair (i, i + stride), bit `stride` of i clear
        const int j = i + stride;
        const bool up = (i & size) == 0;
        const long long x = a[i], y = a[j];
        if ((x > y) == up) {
          a[i] = y;
          a[j] = x;
        }
      }
      __syncthreads();
    }
  }
}

// Fold the candidates of one query's pool into its running best: pad, sort, reset the count, new threshold.
// Called by the whole block with the same arguments (block-uniform), between barriers.
__device__ void merge_pool(long long* pool, int size, int kp, int keep, int* cnt, long long* thr) {
  const int held = kp + *cnt;
  for (int i = held + threadIdx.x; i < size; i += blockDim.x) pool[i] = kMaxKey;
  __syncthreads();
  bitonic_sort(pool, size);
  if (threadIdx.x == 0) {
    *cnt = 0;
    *thr = pool[keep - 1];
  }
  __syncthreads();
}

// Distances of one code row to the block's queries, whose tables start at T + off[q] (queries past the last
// repeat its table: no read outside the LUT). ROW16: a 16-byte row (16 bytes or 32 nibbles) in one load, the
// codes taken from registers.
template <int QB, bool ROW16>
__device__ __forceinline__ void row_dists(const float* T, const long long (&off)[QB], int M, int K,
                                          const uint8_t* row, bool packed, float (&d)[QB]) {
#pragma unroll
  for (int q = 0; q < QB; ++q) d[q] = 0.f;
  if (ROW16) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(row));
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
    if (!packed) {
#pragma unroll
      for (int m = 0; m < 16; ++m) {
        const int c = (w[m >> 2] >> ((m & 3) * 8)) & 255;
#pragma unroll
        for (int q = 0; q < QB; ++q) d[q] += T[off[q] + m * K + c];
      }
    } else {
#pragma unroll
      for (int m = 0; m < 32; ++m) {
        const int c = (w[m >> 3] >> ((m & 7) * 4)) & 15;  // byte m / 2, high nibble for odd m
#pragma unroll
        for (int q = 0; q < QB; ++q) d[q] += T[off[q] + m * K + c];
      }
    }
  } else {
    for (int m = 0; m < M; ++m) {
      const int c = code_at(row, m, packed);
#pragma unroll
      for (int q = 0; q < QB; ++q) d[q] += T[off[q] + m * K + c];
    }
  }
}

template <int QB, bool LUT_SMEM, bool ROW16>
__global__ void __launch_bounds__(kThreads) adc_stream(const float* __restrict__ lut,
                                                       const uint8_t* __restrict__ codes, long long N, int Q, int M,
                                                       int K, int row_bytes, bool packed, float sign,
                                                       long long per_block, int keep, int kp, int pool_size,
                                                       long long* __restrict__ out_keys) {
  extern __shared__ __align__(16) unsigned char smem[];
  long long* pools = reinterpret_cast<long long*>(smem);  // [QB, pool_size]
  long long* thr = pools + static_cast<long long>(QB) * pool_size;  // [QB]
  int* cnt = reinterpret_cast<int*>(thr + QB);                      // [QB]
  float* lut_s = reinterpret_cast<float*>(cnt + QB);                // [nq, M, K] when LUT_SMEM
  const int q0 = blockIdx.x * QB;
  const int nq = min(QB, Q - q0);
  const long long MK = static_cast<long long>(M) * K;
  for (int i = threadIdx.x; i < QB * pool_size; i += kThreads) pools[i] = kMaxKey;
  if (threadIdx.x < QB) {
    thr[threadIdx.x] = kMaxKey;
    cnt[threadIdx.x] = 0;
  }
  if (LUT_SMEM)
    for (long long i = threadIdx.x; i < nq * MK; i += kThreads) lut_s[i] = lut[q0 * MK + i];
  __syncthreads();
  const float* T = LUT_SMEM ? lut_s : lut + q0 * MK;
  long long off[QB];
#pragma unroll
  for (int q = 0; q < QB; ++q) off[q] = min(q, nq - 1) * MK;
  const long long begin = static_cast<long long>(blockIdx.y) * per_block;
  const long long end = min(N, begin + per_block);
  for (long long tile = begin; tile < end; tile += kTile) {
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const long long n = tile + it * kThreads + threadIdx.x;
      if (n < end) {
        float d[QB];
        row_dists<QB, ROW16>(T, off, M, K, codes + n * row_bytes, packed, d);
#pragma unroll
        for (int q = 0; q < QB; ++q) {
          if (q < nq) {
            const long long key = make_key(sign * d[q], static_cast<unsigned>(n));
            if (key < thr[q]) pools[q * pool_size + kp + atomicAdd(&cnt[q], 1)] = key;
          }
        }
      }
    }
    __syncthreads();
    for (int q = 0; q < nq; ++q)  // the next tile adds at most kTile candidates: sort before it could overflow
      if (cnt[q] > pool_size - kp - kTile) merge_pool(pools + q * pool_size, pool_size, kp, keep, &cnt[q], &thr[q]);
    __syncthreads();  // every thread has read the counts before the next tile changes them
  }
  for (int q = 0; q < nq; ++q)
    if (cnt[q] > 0) merge_pool(pools + q * pool_size, pool_size, kp, keep, &cnt[q], &thr[q]);
  for (int q = 0; q < nq; ++q) {
    long long* out = out_keys + (static_cast<long long>(q0 + q) * gridDim.y + blockIdx.y) * keep;
    for (int i = threadIdx.x; i < keep; i += kThreads) out[i] = pools[q * pool_size + i];
  }
}

template <int QB, bool LUT_SMEM, bool ROW16>
void launch_stream(const AdcPlan& p, const float* lut, int Q, int M, int K, const uint8_t* codes, long long N,
                   int row_bytes, bool packed, float sign, int keep, long long* out_keys, cudaStream_t stream) {
  auto kernel = adc_stream<QB, LUT_SMEM, ROW16>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem)),
        "cudaFuncSetAttribute");
  const dim3 grid(static_cast<unsigned>((Q + QB - 1) / QB), static_cast<unsigned>(p.programs));
  kernel<<<grid, kThreads, p.smem, stream>>>(lut, codes, N, Q, M, K, row_bytes, packed, sign, p.per_block, keep,
                                             p.kp, p.pool, out_keys);
}

template <int QB>
void launch_qb(const AdcPlan& p, bool row16, const float* lut, int Q, int M, int K, const uint8_t* codes,
               long long N, int row_bytes, bool packed, float sign, int keep, long long* out_keys,
               cudaStream_t stream) {
  if (p.lut_smem && row16) launch_stream<QB, true, true>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else if (p.lut_smem) launch_stream<QB, true, false>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else if (row16) launch_stream<QB, false, true>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else launch_stream<QB, false, false>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
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

AdcPlan adc_plan(int Q, int M, int K, long long N, int keep, int sms, int max_smem) {
  if (Q < 1 || M < 1 || K < 1 || N < 1 || keep < 1 || keep > kAdcMaxKeep || sms < 1 || max_smem < 1)
    throw std::invalid_argument("adc_plan: bad sizes (1 <= keep <= " + std::to_string(kAdcMaxKeep) + ")");
  AdcPlan p{};
  p.kp = pow2_at_least(keep);
  p.pool = pow2_at_least(p.kp + kTile);  // room for one tile of candidates after any merge
  const size_t keys = static_cast<size_t>(p.pool) * sizeof(long long) + sizeof(long long) + sizeof(int);
  const size_t lut = static_cast<size_t>(M) * K * sizeof(float);
  const size_t budget = std::min(kSmemBudget, static_cast<size_t>(max_smem));
  const int qmax = Q >= 4 ? 4 : Q >= 2 ? 2 : 1;
  p.qb = 0;
  for (int qb = qmax; qb >= 1 && !p.qb; qb /= 2)
    if (qb * (keys + lut) <= budget) p.qb = qb, p.lut_smem = true;
  if (!p.qb) {  // the LUT stays in global memory (L1 / L2)
    for (int qb = qmax; qb >= 1 && !p.qb; qb /= 2)
      if (qb * keys <= budget) p.qb = qb;
    if (!p.qb) throw std::invalid_argument("adc_plan: top-k pool too large for shared memory");
  }
  p.smem = p.qb * (keys + (p.lut_smem ? lut : 0));
  const long long qblocks = (Q + p.qb - 1) / p.qb;
  const long long tiles = (N + kTile - 1) / kTile;
  const long long target = std::max<long long>(1, kBlocksPerSm * static_cast<long long>(sms) / qblocks);
  const long long programs = std::min(target, tiles);
  p.per_block = (tiles + programs - 1) / programs * kTile;
  p.programs = static_cast<int>((N + p.per_block - 1) / p.per_block);
  return p;
}

AdcPlan adc_plan_here(int Q, int M, int K, long long N, int keep) {
  int dev = 0, sms = 0, max_smem = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  return adc_plan(Q, M, K, N, keep, sms, max_smem);
}

void adc_topk_stream(const float* lut, int Q, int M, int K, const uint8_t* codes, long long N, int row_bytes,
                     bool packed, bool largest, int keep, int programs, long long* out_keys, cudaStream_t stream) {
  if (Q < 0 || M < 1 || K < 1 || N < 0 || N >= (1LL << 31) || row_bytes != (packed ? (M + 1) / 2 : M))
    throw std::invalid_argument("adc_topk_stream: bad sizes (N < 2**31, row_bytes = M or ceil(M / 2) packed)");
  if (Q == 0 || N == 0) return;
  const AdcPlan p = adc_plan_here(Q, M, K, N, keep);
  if (programs != p.programs)
    throw std::invalid_argument("adc_topk_stream: out_keys sized for " + std::to_string(programs) +
                                " programs, the plan has " + std::to_string(p.programs));
  const bool row16 = row_bytes == 16 && M == (packed ? 32 : 16) && (reinterpret_cast<uintptr_t>(codes) & 15) == 0;
  const float sign = largest ? -1.f : 1.f;
  if (p.qb == 4) launch_qb<4>(p, row16, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else if (p.qb == 2) launch_qb<2>(p, row16, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else launch_qb<1>(p, row16, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  check(cudaGetLastError(), "adc_stream launch");
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
