// pybind11 bindings of the native CPU kernels: raw buffer addresses (from torch tensors or NumPy arrays,
// no copies) and sizes in, results written to caller-allocated buffers. The GIL is released while they run.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace py = pybind11;
using namespace sqret;

template <typename T>
static T* ptr(uintptr_t p) {
  if (!p) throw std::invalid_argument("null buffer");
  return reinterpret_cast<T*>(p);
}

static Simd parse_simd(const std::string& s) {
  if (s == "scalar") return Simd::scalar;
  if (s == "avx2") return Simd::avx2;
  if (s == "avx512") return Simd::avx512;
  throw std::invalid_argument("unknown SIMD level '" + s + "' (scalar, avx2, avx512)");
}

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "sqret native CPU kernels: ADC scan + top-k (8-bit and 4-bit fast scan), encode";
  m.attr("FASTSCAN_BLOCK") = kFastScanBlock;
  m.def("best_simd", [] { return std::string(simd_name(best_simd())); });
  m.def("active_simd", [] { return std::string(simd_name(active_simd())); });
  m.def("set_simd", [](const std::string& s) { set_simd(parse_simd(s)); });
  m.def(
      "adc_topk",
      [](uintptr_t lut, int64_t Q, int64_t M, int64_t K, uintptr_t codes, int code_bytes, int64_t N, int64_t k,
         int nthreads, uintptr_t out_d, uintptr_t out_i) {
        py::gil_scoped_release release;
        if (code_bytes == 1)
          adc_topk_codes(ptr<const float>(lut), Q, M, K, ptr<const uint8_t>(codes), N, k, nthreads,
                         ptr<float>(out_d), ptr<int64_t>(out_i));
        else if (code_bytes == 2)
          adc_topk_codes(ptr<const float>(lut), Q, M, K, ptr<const int16_t>(codes), N, k, nthreads,
                         ptr<float>(out_d), ptr<int64_t>(out_i));
        else if (code_bytes == 4)
          adc_topk_codes(ptr<const float>(lut), Q, M, K, ptr<const int32_t>(codes), N, k, nthreads,
                         ptr<float>(out_d), ptr<int64_t>(out_i));
        else
          throw std::invalid_argument("codes must be 1, 2 or 4 bytes wide");
      },
      "ADC scan + top-k: lut [Q, M, K] float32, codes [N, M], out [Q, k] float32 / int64");
  m.def(
      "pack_fastscan",
      [](uintptr_t packed, int64_t N, int64_t M, uintptr_t blocks, int nthreads) {
        py::gil_scoped_release release;
        pack_fastscan(ptr<const uint8_t>(packed), N, M, ptr<uint8_t>(blocks), nthreads);
      },
      "packed 4-bit [N, ceil(M/2)] -> fast-scan blocks [ceil(N/64), M, 32]");
  m.def(
      "unpack_fastscan",
      [](uintptr_t blocks, int64_t N, int64_t M, uintptr_t packed, int nthreads) {
        py::gil_scoped_release release;
        unpack_fastscan(ptr<const uint8_t>(blocks), N, M, ptr<uint8_t>(packed), nthreads);
      },
      "fast-scan blocks -> packed 4-bit [N, ceil(M/2)]");
  m.def(
      "adc_topk_fastscan",
      [](uintptr_t lut, int64_t Q, int64_t M, uintptr_t blocks, int64_t N, int64_t k, int nthreads,
         uintptr_t out_d, uintptr_t out_i) {
        py::gil_scoped_release release;
        adc_topk_fastscan(ptr<const float>(lut), Q, M, ptr<const uint8_t>(blocks), N, k, nthreads, ptr<float>(out_d),
                          ptr<int64_t>(out_i));
      },
      "4-bit fast scan + exact re-rank: lut [Q, M, 16] float32, blocks [ceil(N/64), M, 32]");
  m.def(
      "ivf_search",
      [](uintptr_t queries, int64_t Q, int64_t d, uintptr_t centroids, uintptr_t codebooks, int64_t M, int64_t K,
         uintptr_t list_codes, uintptr_t list_ids, uintptr_t list_sizes, uintptr_t probes, int64_t nprobe, int64_t k,
         int metric, uintptr_t precomputed, int nthreads, uintptr_t out_d, uintptr_t out_i) {
        py::gil_scoped_release release;
        ivf_search(ptr<const float>(queries), Q, d, ptr<const float>(centroids), ptr<const float>(codebooks), M, K,
                   ptr<const int64_t>(list_codes), ptr<const int64_t>(list_ids), ptr<const int64_t>(list_sizes),
                   ptr<const int64_t>(probes), nprobe, k, metric, reinterpret_cast<const float*>(precomputed),
                   nthreads, ptr<float>(out_d), ptr<int64_t>(out_i));
      },
      "IVF-PQ search: per query, LUTs of the probed lists and a scan of their codes; out [Q, k]");
  m.def(
      "build_lut",
      [](uintptr_t x, int64_t Q, uintptr_t codebooks, int64_t M, int64_t K, int64_t d, int metric, uintptr_t out,
         int nthreads) {
        py::gil_scoped_release release;
        build_lut(ptr<const float>(x), Q, ptr<const float>(codebooks), M, K, d, metric, ptr<float>(out), nthreads);
      },
      "distance tables: x [Q, M*d], codebooks [M, K, d] float32 -> out [Q, M, K]; metric 0 l2, 1 ip, 2 l2_sqrt");
  m.def(
      "pq_search",
      [](uintptr_t x, int64_t Q, uintptr_t codebooks, int64_t M, int64_t K, int64_t d, int metric, bool negate,
         uintptr_t codes, int code_bytes, int64_t N, int64_t k, int nthreads, uintptr_t out_d, uintptr_t out_i) {
        py::gil_scoped_release release;
        pq_search(ptr<const float>(x), Q, ptr<const float>(codebooks), M, K, d, metric, negate,
                  ptr<const void>(codes), code_bytes, N, k, nthreads, ptr<float>(out_d), ptr<int64_t>(out_i));
      },
      "ADC search from raw queries: tables of x [Q, M*d] built and scanned in one call; code_bytes 0 = fast-scan");
  m.def(
      "encode",
      [](uintptr_t x, int64_t N, uintptr_t codebooks, int64_t M, int64_t K, int64_t d, int metric, uintptr_t codes,
         int nthreads) {
        py::gil_scoped_release release;
        encode(ptr<const float>(x), N, ptr<const float>(codebooks), M, K, d, metric, ptr<int32_t>(codes), nthreads);
      },
      "nearest codeword per sub-space: x [N, M*d], codebooks [M, K, d] float32 -> codes int32 [N, M]");
}
