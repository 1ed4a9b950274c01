// The streaming ADC scan + top-k kernel and its dispatch (included by kernels.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "adc_plan.h"
#include "kernels.cuh"
#include "launch.cuh"

namespace sqret_cuda {

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

// Sort a[0, n) ascending (n a power of two) by the whole block (returns after a barrier) or, WARP, by the 32
// lanes of one warp.
template <bool WARP>
__device__ __forceinline__ void bitonic_sort(long long* a, int n) {
  const int first = WARP ? static_cast<int>(threadIdx.x & 31) : static_cast<int>(threadIdx.x);
  const int step = WARP ? 32 : static_cast<int>(blockDim.x);
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = first; t < n / 2; t += step) {
        const int i = 2 * t - (t & (stride - 1));  // the pair (i, i + stride), bit `stride` of i clear
        const int j = i + stride;
        const bool up = (i & size) == 0;
        const long long x = a[i], y = a[j];
        if ((x > y) == up) {
          a[i] = y;
          a[j] = x;
        }
      }
      if constexpr (WARP) __syncwarp();
      else __syncthreads();
    }
  }
}

// Fold the candidates of one query's pool into its running best: pad, sort, reset the count, new threshold.
// Called by the whole block with the same arguments (block-uniform), between barriers.
__device__ __forceinline__ void merge_pool(long long* pool, int size, int kp, int keep, int* cnt, long long* thr) {
  const int held = kp + *cnt;
  for (int i = held + threadIdx.x; i < size; i += blockDim.x) pool[i] = kMaxKey;
  __syncthreads();
  bitonic_sort<false>(pool, size);
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

// Streaming ADC scan + top-k. A block owns QB queries and one long slice of the codes (the grid: a few blocks
// per SM along the database, query blocks adjacent so that they read a slice from L2 at about the same time).
// Per query, a pool of `pool` keys in shared memory: [0, kp) the running best (sorted), then the candidates
// that beat the running keep-th best (appended with a shared atomic). When the next tile could overflow the
// pool, the block sorts it (bitonic) and the threshold tightens; after the first tiles few codes pass it. Each
// block writes its `keep` best keys per query once; one small sort merges the blocks.
template <int QB, bool LUT_SMEM, bool ROW16>
__global__ void __launch_bounds__(kThreads) adc_stream(const float* __restrict__ lut,
                                                       const uint8_t* __restrict__ codes, long long N, int Q, int M,
                                                       int K, int row_bytes, bool packed, float sign,
                                                       long long per_block, int keep, int kp, int pool_size,
                                                       long long* __restrict__ out_keys) {
  SQRET_DYNAMIC_SHARED(unsigned char, smem);
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

// ---- the warp-select variant: a pool per warp and query, no block barrier during the scan

// A warp folds the candidates of its pool into its running best; cnt and thr are the warp's (uniform) registers.
__device__ __forceinline__ void warp_fold(long long* pool, int size, int kp, int keep, int& cnt, long long& thr) {
  for (int i = kp + cnt + static_cast<int>(threadIdx.x & 31); i < size; i += 32) pool[i] = kMaxKey;
  __syncwarp();
  bitonic_sort<true>(pool, size);
  thr = pool[keep - 1];
  cnt = 0;
}

template <int QB, bool LUT_SMEM, bool ROW16>
__global__ void __launch_bounds__(kThreads) adc_warp(const float* __restrict__ lut,
                                                     const uint8_t* __restrict__ codes, long long N, int Q, int M,
                                                     int K, int row_bytes, bool packed, float sign,
                                                     long long per_block, int keep, int kp, int pool_size,
                                                     int mpool, long long* __restrict__ out_keys) {
  SQRET_DYNAMIC_SHARED(unsigned char, smem);
  long long* merge = reinterpret_cast<long long*>(smem);  // [mpool]: the warps' lists, at the end
  long long* pools = merge + mpool;                         // [warps, QB, pool_size]
  float* lut_s = reinterpret_cast<float*>(pools + static_cast<long long>(kWarps) * QB * pool_size);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int q0 = blockIdx.x * QB;
  const int nq = min(QB, Q - q0);
  const long long MK = static_cast<long long>(M) * K;
  long long* mine = pools + static_cast<long long>(warp) * QB * pool_size;
  for (int i = lane; i < QB * pool_size; i += 32) mine[i] = kMaxKey;
  if (LUT_SMEM)
    for (long long i = threadIdx.x; i < nq * MK; i += kThreads) lut_s[i] = lut[q0 * MK + i];
  __syncthreads();
  const float* T = LUT_SMEM ? lut_s : lut + q0 * MK;
  long long off[QB], thr[QB];
  int cnt[QB];
#pragma unroll
  for (int q = 0; q < QB; ++q) off[q] = min(q, nq - 1) * MK, thr[q] = kMaxKey, cnt[q] = 0;
  const long long begin = static_cast<long long>(blockIdx.y) * per_block;
  const long long end = min(N, begin + per_block);
  const unsigned below = (1u << lane) - 1u;  // the lanes before this one
  for (long long n0 = begin + warp * 32; n0 < end; n0 += kThreads) {  // warp-uniform: every lane takes part
    const long long n = n0 + lane;
    const bool valid = n < end;
    float d[QB];  // lanes past the end score the last code (no divergence around the ballots) and offer nothing
    row_dists<QB, ROW16>(T, off, M, K, codes + (valid ? n : end - 1) * row_bytes, packed, d);
#pragma unroll
    for (int q = 0; q < QB; ++q) {
      if (q < nq) {
        const long long key = valid ? make_key(sign * d[q], static_cast<unsigned>(n)) : kMaxKey;
        const bool pass = key < thr[q];
        const unsigned ballot = __ballot_sync(0xFFFFFFFFu, pass);
        if (pass) mine[q * pool_size + kp + cnt[q] + __popc(ballot & below)] = key;
        cnt[q] += __popc(ballot);
        if (cnt[q] > pool_size - kp - 32) warp_fold(mine + q * pool_size, pool_size, kp, keep, cnt[q], thr[q]);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < QB; ++q)
    if (q < nq && cnt[q] > 0) warp_fold(mine + q * pool_size, pool_size, kp, keep, cnt[q], thr[q]);
  __syncthreads();
  for (int q = 0; q < nq; ++q) {  // the block's keep best of the warps' lists
    for (int i = threadIdx.x; i < mpool; i += kThreads) {
      const int w = i / kp, j = i % kp;
      merge[i] = w < kWarps ? pools[(static_cast<long long>(w) * QB + q) * pool_size + j] : kMaxKey;
    }
    __syncthreads();
    bitonic_sort<false>(merge, mpool);
    long long* out = out_keys + (static_cast<long long>(q0 + q) * gridDim.y + blockIdx.y) * keep;
    for (int i = threadIdx.x; i < keep; i += kThreads) out[i] = merge[i];
    __syncthreads();
  }
}

template <int QB, bool LUT_SMEM, bool ROW16, class Stream>
void launch_stream(const AdcPlan& p, const float* lut, int Q, int M, int K, const uint8_t* codes, long long N,
                   int row_bytes, bool packed, float sign, int keep, long long* out_keys, Stream stream) {
  const dim3 grid(static_cast<unsigned>((Q + QB - 1) / QB), static_cast<unsigned>(p.programs));
  if (p.select == kSelectWarp) {
    auto kernel = adc_warp<QB, LUT_SMEM, ROW16>;
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem)),
          "cudaFuncSetAttribute");
    SQRET_LAUNCH(kernel, grid, kThreads, p.smem, stream, lut, codes, N, Q, M, K, row_bytes, packed, sign,
                 p.per_block, keep, p.kp, p.pool, p.mpool, out_keys);
    return;
  }
  auto kernel = adc_stream<QB, LUT_SMEM, ROW16>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem)),
        "cudaFuncSetAttribute");
  SQRET_LAUNCH(kernel, grid, kThreads, p.smem, stream, lut, codes, N, Q, M, K, row_bytes, packed, sign, p.per_block,
               keep, p.kp, p.pool, out_keys);
}

template <int QB, class Stream>
void launch_qb(const AdcPlan& p, bool row16, const float* lut, int Q, int M, int K, const uint8_t* codes,
               long long N, int row_bytes, bool packed, float sign, int keep, long long* out_keys, Stream stream) {
  if (p.lut_smem && row16) launch_stream<QB, true, true>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else if (p.lut_smem) launch_stream<QB, true, false>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else if (row16) launch_stream<QB, false, true>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else launch_stream<QB, false, false>(p, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
}

template <class Stream>
void launch_plan(const AdcPlan& p, const float* lut, int Q, int M, int K, const uint8_t* codes, long long N,
                 int row_bytes, bool packed, bool largest, int keep, long long* out_keys, Stream stream) {
  const bool row16 = row_bytes == 16 && M == (packed ? 32 : 16) && (reinterpret_cast<uintptr_t>(codes) & 15) == 0;
  const float sign = largest ? -1.f : 1.f;
  if (p.qb == 4) launch_qb<4>(p, row16, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else if (p.qb == 2) launch_qb<2>(p, row16, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
  else launch_qb<1>(p, row16, lut, Q, M, K, codes, N, row_bytes, packed, sign, keep, out_keys, stream);
}

}  // namespace sqret_cuda
