// pybind11 bindings of the CUDA kernels: device addresses and a stream handle (torch.cuda.current_stream()
// .cuda_stream) in; errors surface as Python exceptions.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "kernels.cuh"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "sqret CUDA kernels: ADC scan + top-k, encode, soft quantization";
  m.def("device_count", &sqret_cuda::device_count);
  m.attr("adc_max_keep") = sqret_cuda::kAdcMaxKeep;
  m.def(
      "adc_plan",
      [](int Q, int M, int K, long long N, int keep, int sms, int max_smem, int select) {
        const sqret_cuda::AdcPlan p = sqret_cuda::adc_plan(Q, M, K, N, keep, sms, max_smem, select);
        py::dict d;
        d["select"] = p.select;
        d["mpool"] = p.mpool;
        d["qb"] = p.qb;
        d["kp"] = p.kp;
        d["pool"] = p.pool;
        d["lut_smem"] = p.lut_smem;
        d["smem"] = p.smem;
        d["per_block"] = p.per_block;
        d["programs"] = p.programs;
        return d;
      },
      py::arg("Q"), py::arg("M"), py::arg("K"), py::arg("N"), py::arg("keep"), py::arg("sms"), py::arg("max_smem"),
      py::arg("select") = 0,
      "launch plan of the streaming ADC scan for a GPU with `sms` SMs and `max_smem` shared bytes per block; "
      "select 0: a pool per block and query, 1: per warp and query (warp select)");
  m.def(
      "adc_programs",
      [](int Q, int M, int K, long long N, int keep, int select) {
        return sqret_cuda::adc_plan_here(Q, M, K, N, keep, select).programs;
      },
      py::arg("Q"), py::arg("M"), py::arg("K"), py::arg("N"), py::arg("keep"), py::arg("select") = 0,
      "blocks along the database of the streaming ADC scan on the current device");
  m.def(
      "adc_topk_stream",
      [](uintptr_t lut, int Q, int M, int K, uintptr_t codes, long long N, int row_bytes, bool packed, bool largest,
         int keep, int programs, uintptr_t out_keys, uintptr_t stream, int select) {
        py::gil_scoped_release release;
        sqret_cuda::adc_topk_stream(reinterpret_cast<const float*>(lut), Q, M, K,
                                    reinterpret_cast<const uint8_t*>(codes), N, row_bytes, packed, largest, keep,
                                    programs, reinterpret_cast<long long*>(out_keys),
                                    reinterpret_cast<cudaStream_t>(stream), select);
      },
      "per-program top-k keys of a streaming ADC scan: lut [Q, M, K] float32, codes [N, row_bytes] uint8 -> "
      "out_keys [Q, programs * keep] int64 (select: as adc_plan's)");
  m.def(
      "encode",
      [](uintptr_t x, long long B, uintptr_t codebooks, int M, int K, int d, int metric, uintptr_t out,
         uintptr_t stream) {
        py::gil_scoped_release release;
        sqret_cuda::encode(reinterpret_cast<const float*>(x), B, reinterpret_cast<const float*>(codebooks), M, K, d,
                           metric, reinterpret_cast<int32_t*>(out), reinterpret_cast<cudaStream_t>(stream));
      },
      "nearest codeword per sub-space: x [B, M*d], codebooks [M, K, d] float32 -> int32 [B, M]");
  m.attr("soft_max_dim") = sqret_cuda::kSoftMaxDim;
  m.def(
      "soft_quantize",
      [](uintptr_t x, long long B, uintptr_t codebooks, int M, int K, int d, float tau, int metric, uintptr_t z,
         uintptr_t stream) {
        py::gil_scoped_release release;
        sqret_cuda::soft_quantize(reinterpret_cast<const float*>(x), B, reinterpret_cast<const float*>(codebooks), M,
                                  K, d, tau, metric, reinterpret_cast<float*>(z), reinterpret_cast<cudaStream_t>(stream));
      },
      "soft quantization: x [B, M*d], codebooks [M, K, d] float32 -> z [B, M*d]; metric 0 l2, 1 ip");
  m.def(
      "soft_quantize_backward",
      [](uintptr_t grad, uintptr_t x, long long B, uintptr_t codebooks, int M, int K, int d, float tau, int metric,
         uintptr_t grad_x, uintptr_t grad_codebooks, uintptr_t scratch, uintptr_t stream) {
        py::gil_scoped_release release;
        sqret_cuda::soft_quantize_backward(
            reinterpret_cast<const float*>(grad), reinterpret_cast<const float*>(x), B,
            reinterpret_cast<const float*>(codebooks), M, K, d, tau, metric, reinterpret_cast<float*>(grad_x),
            reinterpret_cast<float*>(grad_codebooks), reinterpret_cast<float*>(scratch),
            reinterpret_cast<cudaStream_t>(stream));
      },
      "gradients of soft_quantize (float32): scratch holds 2 * B * M floats");
}
