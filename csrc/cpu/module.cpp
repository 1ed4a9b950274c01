// Bindings of the native CPU kernels: raw buffer addresses (from torch tensors or NumPy arrays, no copies)
// and sizes in, results written to caller-allocated buffers, through pybind11; the per-query search entries
// (pq_search) is a METH_FASTCALL function on the Python C API, where a call's overhead counts. No torch
// headers, no argument checks: sqret.ops validates every call once, in Python. The GIL is released while the
// kernels run.
#include <pybind11/pybind11.h>

#include <algorithm>
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

// pq_search is the latency-critical entry (one query's whole search takes a few microseconds): a METH_FASTCALL
// function that reads its 18 integers straight from the argument vector, without pybind11's dispatcher (which
// costs ~0.4 us for 15 arguments). Errors map as pybind11 maps them.
static PyObject* pq_search_fastcall(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  constexpr Py_ssize_t kArgs = 18;
  if (nargs != kArgs) {
    PyErr_Format(PyExc_TypeError, "pq_search takes %d arguments (%zd given)", static_cast<int>(kArgs), nargs);
    return nullptr;
  }
  int64_t a[kArgs];
  for (Py_ssize_t i = 0; i < kArgs; ++i) {
    if (!PyLong_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "pq_search: argument %zd must be an int", i);
      return nullptr;
    }
    a[i] = PyLong_AsLongLong(args[i]);
    if (a[i] == -1 && PyErr_Occurred()) return nullptr;
  }
  auto addr = [&](int i) { return static_cast<uintptr_t>(a[i]); };
  std::string error;
  PyObject* kind = nullptr;
  Py_BEGIN_ALLOW_THREADS;
  try {
    pq_search(ptr<const float>(addr(0)), a[1], ptr<const float>(addr(2)), a[3], a[4], a[5], static_cast<int>(a[6]),
              a[7] != 0, ptr<const void>(addr(8)), static_cast<int>(a[9]), a[10], a[11], static_cast<int>(a[12]),
              ptr<float>(addr(13)), ptr<int64_t>(addr(14)), a[15] != 0, reinterpret_cast<const int64_t*>(addr(16)),
              a[17] != 0);
  } catch (const std::invalid_argument& e) {
    error = e.what(), kind = PyExc_ValueError;
  } catch (const std::bad_alloc&) {
    error = "out of memory", kind = PyExc_MemoryError;
  } catch (const std::exception& e) {
    error = e.what(), kind = PyExc_RuntimeError;
  }
  Py_END_ALLOW_THREADS;
  if (kind) {
    PyErr_SetString(kind, error.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// A METH_FASTCALL function as the PyCFunction that PyMethodDef holds.
static PyCFunction fastcall(PyObject* (*f)(PyObject*, PyObject* const*, Py_ssize_t)) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(f));
}

static PyMethodDef pq_search_def = {
    "pq_search", fastcall(pq_search_fastcall), METH_FASTCALL,
    "pq_search(x, Q, codebooks, M, K, d, metric, negate, codes, code_bytes, N, k, nthreads, out_d, out_i, exact, "
    "labels, check_finite): ADC "
    "search from raw queries, tables of x [Q, M*d] built and scanned in one call; code_bytes 0 = fast-scan blocks; "
    "results in the metric's sign (negate: largest first)"};

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "sqret native CPU kernels: ADC scan + top-k (8-bit and 4-bit fast scan), encode";
  m.attr("FASTSCAN_BLOCK") = kFastScanBlock;
  m.attr("ABI") = 2;  // raised when an entry's arguments change: sqret.ops.cpu_native refuses a stale build
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
         uintptr_t out_d, uintptr_t out_i, bool exact) {
        py::gil_scoped_release release;
        adc_topk_fastscan(ptr<const float>(lut), Q, M, ptr<const uint8_t>(blocks), N, k, nthreads, ptr<float>(out_d),
                          ptr<int64_t>(out_i), exact);
      },
      "4-bit fast scan, exact re-rank or quantized distances: lut [Q, M, 16] float32, blocks [ceil(N/64), M, 32]");
  m.def(
      "ivf_fastscan",
      [](uintptr_t queries, int64_t Q, int64_t d, uintptr_t centroids, uintptr_t codebooks, int64_t M,
         uintptr_t list_blocks, uintptr_t list_ids, uintptr_t list_sizes, int64_t nlist, uintptr_t probes,
         int64_t nprobe, int64_t k, int metric, uintptr_t precomputed, bool residual, bool exact, int nthreads,
         uintptr_t out_d, uintptr_t out_i, bool sorted, uintptr_t centroids_t, uintptr_t norms, uintptr_t rrows,
         int rkind, int64_t rnrows, uintptr_t rvmin, uintptr_t rscale, uintptr_t rlabels, int64_t rk) {
        py::gil_scoped_release release;
        const RefineRows refine{reinterpret_cast<const void*>(rrows), rkind, rnrows,
                                reinterpret_cast<const float*>(rvmin), reinterpret_cast<const float*>(rscale),
                                reinterpret_cast<const int64_t*>(rlabels), rk};
        if (rk && (rkind < 0 || rkind > 2 || rnrows < 0 || (rnrows && !rrows)))
          throw std::invalid_argument("ivf_fastscan: bad refinement rows");
        ivf_fastscan(ptr<const float>(queries), Q, d, ptr<const float>(centroids), ptr<const float>(codebooks), M,
                     ptr<const int64_t>(list_blocks), ptr<const int64_t>(list_ids), ptr<const int64_t>(list_sizes),
                     nlist, reinterpret_cast<const int64_t*>(probes), nprobe, k, metric, reinterpret_cast<const float*>(precomputed),
                     residual, exact, nthreads, ptr<float>(out_d), ptr<int64_t>(out_i), sorted, rk ? &refine : nullptr,
                     reinterpret_cast<const float*>(centroids_t), reinterpret_cast<const float*>(norms));
      },
      "IVF-PQ fast scan over 4-bit lists in fast-scan blocks; out [Q, k] (best first when sorted); probes 0: the "
      "nprobe nearest lists, from centroids_t [d, nlist] and norms [nlist] (l2); rk > 0: the k best re-ranked with "
      "the stored rows (refine_topk's arguments), out [Q, rk]");
  m.def(
      "ivf_search",
      [](uintptr_t queries, int64_t Q, int64_t d, uintptr_t centroids, uintptr_t codebooks, int64_t M, int64_t K,
         uintptr_t list_codes, uintptr_t list_ids, uintptr_t list_sizes, int64_t nlist, uintptr_t probes,
         int64_t nprobe, int64_t k, int metric, uintptr_t precomputed, bool residual, int nthreads, uintptr_t out_d,
         uintptr_t out_i, bool sorted, uintptr_t centroids_t, uintptr_t norms, uintptr_t rrows, int rkind,
         int64_t rnrows, uintptr_t rvmin, uintptr_t rscale, uintptr_t rlabels, int64_t rk) {
        py::gil_scoped_release release;
        const RefineRows refine{reinterpret_cast<const void*>(rrows), rkind, rnrows,
                                reinterpret_cast<const float*>(rvmin), reinterpret_cast<const float*>(rscale),
                                reinterpret_cast<const int64_t*>(rlabels), rk};
        if (rk && (rkind < 0 || rkind > 2 || rnrows < 0 || (rnrows && !rrows)))
          throw std::invalid_argument("ivf_search: bad refinement rows");
        ivf_search(ptr<const float>(queries), Q, d, ptr<const float>(centroids), ptr<const float>(codebooks), M, K,
                   ptr<const int64_t>(list_codes), ptr<const int64_t>(list_ids), ptr<const int64_t>(list_sizes),
                   nlist, reinterpret_cast<const int64_t*>(probes), nprobe, k, metric, reinterpret_cast<const float*>(precomputed),
                   residual, nthreads, ptr<float>(out_d), ptr<int64_t>(out_i), sorted, rk ? &refine : nullptr,
                   reinterpret_cast<const float*>(centroids_t), reinterpret_cast<const float*>(norms));
      },
      "IVF-PQ search: per query, LUTs of the probed lists and a scan of their codes; out [Q, k] (best first when "
      "sorted); probes 0: the nprobe nearest lists, as ivf_fastscan");
  m.def(
      "has_nonfinite",
      [](uintptr_t p, int64_t n) {
        py::gil_scoped_release release;
        return has_nonfinite(ptr<const float>(p), n);
      },
      "whether any of n float32 values at p is NaN or inf");
  m.def(
      "refine_topk",
      [](uintptr_t queries, int64_t Q, int64_t d, uintptr_t rows, int kind, int64_t nrows, uintptr_t vmin,
         uintptr_t scale, uintptr_t cand, int64_t kc, uintptr_t labels, int64_t k, int metric, int nthreads,
         uintptr_t out_d, uintptr_t out_i) {
        py::gil_scoped_release release;
        refine_topk(ptr<const float>(queries), Q, d, nrows ? ptr<const void>(rows) : nullptr, kind, nrows,
                    reinterpret_cast<const float*>(vmin), reinterpret_cast<const float*>(scale),
                    kc ? ptr<const int64_t>(cand) : nullptr, kc, reinterpret_cast<const int64_t*>(labels), k, metric,
                    nthreads, ptr<float>(out_d), ptr<int64_t>(out_i));
      },
      "re-rank candidate rows [Q, kc] by exact distances to stored vectors (float32 / float16 / sq8)");
  m.def(
      "coarse_probe",
      [](uintptr_t x, int64_t Q, int64_t d, uintptr_t ct, uintptr_t norms, int64_t nlist, int64_t nprobe, int metric,
         int nthreads, uintptr_t out) {
        py::gil_scoped_release release;
        coarse_probe(ptr<const float>(x), Q, d, ptr<const float>(ct), reinterpret_cast<const float*>(norms), nlist,
                     nprobe, metric, nthreads, ptr<int64_t>(out));
      },
      "the nprobe nearest centroids of x [Q, d] from ct [d, nlist] and norms [nlist] (l2; 0 for ip) float32 -> "
      "out [Q, nprobe]");
  m.def(
      "smallest_k_rows",
      [](uintptr_t dist, int64_t Q, int64_t n, int64_t k, uintptr_t out, int nthreads) {
        py::gil_scoped_release release;
        smallest_k_rows(ptr<const float>(dist), Q, n, k, ptr<int64_t>(out), nthreads);
      },
      "positions of the k smallest values of each row of dist [Q, n] float32, sorted, ties by position");
  m.def(
      "build_lut",
      [](uintptr_t x, int64_t Q, uintptr_t codebooks, int64_t M, int64_t K, int64_t d, int metric, uintptr_t out,
         int nthreads) {
        py::gil_scoped_release release;
        build_lut(ptr<const float>(x), Q, ptr<const float>(codebooks), M, K, d, metric, ptr<float>(out), nthreads);
      },
      "distance tables: x [Q, M*d], codebooks [M, K, d] float32 -> out [Q, M, K]; metric 0 l2, 1 ip, 2 l2_sqrt");
  m.add_object("pq_search", py::reinterpret_steal<py::object>(PyCFunction_New(&pq_search_def, nullptr)));
  m.def(
      "encode",
      [](uintptr_t x, int64_t N, uintptr_t codebooks, int64_t M, int64_t K, int64_t d, int metric, uintptr_t codes,
         int nthreads) {
        py::gil_scoped_release release;
        encode(ptr<const float>(x), N, ptr<const float>(codebooks), M, K, d, metric, ptr<int32_t>(codes), nthreads);
      },
      "nearest codeword per sub-space: x [N, M*d], codebooks [M, K, d] float32 -> codes int32 [N, M]");
}
