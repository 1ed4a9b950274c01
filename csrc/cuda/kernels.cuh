// sqret CUDA kernels (raw device pointers and a stream; no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "adc_plan.h"

namespace sqret_cuda {

void check(cudaError_t err, const char* what);
int device_count();

// The streaming ADC scan + top-k (csrc/cuda/adc_stream.cuh: kAdcMaxKeep, AdcPlan, adc_plan).
// The plan on the current device (select: kSelectBlock or kSelectWarp).
AdcPlan adc_plan_here(int Q, int M, int K, long long N, int keep, int select = kSelectBlock);

// lut [Q, M, K] float32, codes [N, row_bytes] uint8 (row_bytes = M, or ceil(M / 2) packed), N < 2**31: the
// `keep` smallest keys (ordered bits of sign * distance << 32 | position; sign -1 when largest) of each
// program's slice, written to out_keys [Q, programs, keep] (programs: adc_plan_here's; checked); padding keys
// are INT64_MAX.
void adc_topk_stream(const float* lut, int Q, int M, int K, const uint8_t* codes, long long N, int row_bytes,
                     bool packed, bool largest, int keep, int programs, long long* out_keys, cudaStream_t stream,
                     int select = kSelectBlock);

// Nearest codeword per sub-space: x [B, M*d], codebooks [M, K, d] float32 -> out int32 [B, M]; metric 0 l2, 1 ip.
void encode(const float* x, long long B, const float* codebooks, int M, int K, int d, int metric, int32_t* out,
            cudaStream_t stream);

// Soft quantization in float32, d <= kSoftMaxDim; metric 0 = l2 (s = -||x - c||^2), 1 = ip.
constexpr int kSoftMaxDim = 256;
// z [B, M*d] = per sub-space softmax(s(x_m, c) / tau) @ C_m.
void soft_quantize(const float* x, long long B, const float* codebooks, int M, int K, int d, float tau, int metric,
                   float* z, cudaStream_t stream);
// Gradients of soft_quantize for grad [B, M*d]: grad_x [B, M*d], grad_codebooks [M, K, d];
// scratch holds 2 * B * M floats (row log-sum-exp and g.z).
void soft_quantize_backward(const float* grad, const float* x, long long B, const float* codebooks, int M, int K,
                            int d, float tau, int metric, float* grad_x, float* grad_codebooks, float* scratch,
                            cudaStream_t stream);

}  // namespace sqret_cuda
