// Bindings of the native CPU kernels: raw buffer addresses (from torch tensors or NumPy arrays, no copies)
// and sizes in, results written to caller-allocated buffers, through pybind11; the per-query search entries
// (pq_search, search_whole) are METH_FASTCALL functions on the Python C API, where a call's overhead counts.
// No torch headers: search_whole reads tensors through their Python attributes. The GIL is released while
// the kernels run.
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
// function that reads its 15 integers straight from the argument vector, without pybind11's dispatcher (which
// costs ~0.4 us for 15 arguments). Errors map as pybind11 maps them.
static PyObject* pq_search_fastcall(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  constexpr Py_ssize_t kArgs = 16;
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
              ptr<float>(addr(13)), ptr<int64_t>(addr(14)), a[15] != 0);
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

// ---- search_whole: the whole fast path of ops.pq_search for CPU tensors, reading each tensor attribute once.
// A single query's search takes a few microseconds, and checks in Python read torch attributes at ~60 ns each,
// so this entry validates the arguments itself (only through the Python C API: no torch headers) and answers
// None for anything it does not take as it is; the checked Python path then runs and names what is wrong.

namespace {

struct Torch {  // objects of the torch module, bound once by bind_torch
  PyObject *tensor = nullptr, *f32 = nullptr, *u8 = nullptr, *i64 = nullptr, *empty = nullptr;
  PyObject *shape, *dtype, *is_cpu, *is_contiguous, *data_ptr, *dtype_kw;
} torch_;

// A CPU tensor of exact type torch.Tensor, dtype `dtype`, `ndim` dimensions, contiguous: its sizes and address.
// False (no Python error set) for anything else.
bool read_tensor(PyObject* t, PyObject* dtype, int ndim, int64_t* sizes, uintptr_t* addr) {
  if (reinterpret_cast<PyObject*>(Py_TYPE(t)) != torch_.tensor) return false;
  bool ok = true;
  auto attr = [&](PyObject* name, bool call) -> PyObject* {
    if (!ok) return nullptr;
    PyObject* v = call ? PyObject_CallMethodNoArgs(t, name) : PyObject_GetAttr(t, name);
    if (!v) PyErr_Clear(), ok = false;
    return v;
  };
  PyObject* v = attr(torch_.is_cpu, false);
  ok = ok && v == Py_True;
  Py_XDECREF(v);
  v = attr(torch_.dtype, false);
  ok = ok && v == dtype;
  Py_XDECREF(v);
  v = attr(torch_.shape, false);
  if (ok && PyTuple_Check(v) && PyTuple_GET_SIZE(v) == ndim) {
    for (int i = 0; i < ndim; ++i) sizes[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(v, i));
  } else {
    ok = false;
  }
  Py_XDECREF(v);
  v = attr(torch_.is_contiguous, true);
  ok = ok && v == Py_True;
  Py_XDECREF(v);
  v = attr(torch_.data_ptr, true);
  if (ok) *addr = static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(v));
  Py_XDECREF(v);
  if (ok && PyErr_Occurred()) PyErr_Clear(), ok = false;
  return ok;
}

// No NaN or inf in p[0..n): the largest exponent field is not all ones (an integer max, which vectorizes).
__attribute__((target_clones("avx2", "default"))) bool all_finite(const float* p, int64_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(p);
  uint32_t top = 0;
  for (int64_t i = 0; i < n; ++i) top = std::max(top, bits[i] & 0x7f800000u);
  return top != 0x7f800000u;
}

// torch.empty(Q, k) (float32, or int64 when `ids`) and its address; nullptr with the error set on failure.
PyObject* new_output(int64_t Q, int64_t k, bool ids, uintptr_t* addr) {
  PyObject* q = PyLong_FromLongLong(Q);
  PyObject* kk = PyLong_FromLongLong(k);
  PyObject* out = nullptr;
  if (q && kk) {
    PyObject* args[3] = {q, kk, torch_.i64};
    out = PyObject_Vectorcall(torch_.empty, args, 2, ids ? torch_.dtype_kw : nullptr);
  }
  Py_XDECREF(q);
  Py_XDECREF(kk);
  if (!out) return nullptr;
  PyObject* p = PyObject_CallMethodNoArgs(out, torch_.data_ptr);
  if (!p) return Py_DECREF(out), nullptr;
  *addr = static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(p));
  Py_DECREF(p);
  return out;
}

}  // namespace

static PyObject* bind_torch(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "bind_torch(Tensor, float32, uint8, int64, empty)");
    return nullptr;
  }
  PyObject** slots[5] = {&torch_.tensor, &torch_.f32, &torch_.u8, &torch_.i64, &torch_.empty};
  for (int i = 0; i < 5; ++i) {
    Py_INCREF(args[i]);
    Py_XSETREF(*slots[i], args[i]);
  }
  if (!torch_.dtype_kw) {  // names, made once
    torch_.shape = PyUnicode_InternFromString("shape");
    torch_.dtype = PyUnicode_InternFromString("dtype");
    torch_.is_cpu = PyUnicode_InternFromString("is_cpu");
    torch_.is_contiguous = PyUnicode_InternFromString("is_contiguous");
    torch_.data_ptr = PyUnicode_InternFromString("data_ptr");
    torch_.dtype_kw = Py_BuildValue("(s)", "dtype");
    if (PyErr_Occurred()) return nullptr;
  }
  Py_RETURN_NONE;
}

// search_whole(queries, codebooks, codes, n, k, metric, negate, nthreads, labels, check_finite, exact)
// -> (values, ids) or None.
// queries [Q, M*d] and codebooks [M, K, d] float32; codes: fast-scan blocks [ceil(n/64), M, 32] uint8 holding
// n >= 0 codes (K = 16), or n = -1 and codes [N, M] uint8 with K = 256 (every byte a valid code). k >= 1.
// labels: None (ids are positions) or int64 [N], the id of each position. check_finite: decline when the
// queries or codebooks hold NaN or inf (the checked path then raises). exact: the 4-bit scoring mode.
static PyObject* search_whole(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 11) {
    PyErr_SetString(PyExc_TypeError, "search_whole takes 11 arguments");
    return nullptr;
  }
  if (!torch_.tensor) {
    PyErr_SetString(PyExc_RuntimeError, "search_whole: bind_torch was not called");
    return nullptr;
  }
  int64_t num[5];  // n, k, metric, negate, nthreads
  for (int i = 0; i < 5; ++i) {
    PyObject* a = args[3 + i];
    if (!PyLong_Check(a) || (i == 1 && PyBool_Check(a))) Py_RETURN_NONE;
    num[i] = PyLong_AsLongLong(a);
    if (num[i] == -1 && PyErr_Occurred()) return PyErr_Clear(), Py_NewRef(Py_None);
  }
  const int64_t n = num[0], k = num[1], metric = num[2], nthreads = num[4];
  if (k < 1 || metric < 0 || metric > 2 || n < -1) Py_RETURN_NONE;
  int64_t qs[2], cs[3], bs[3];
  uintptr_t qa = 0, ca = 0, ba = 0;
  if (!read_tensor(args[0], torch_.f32, 2, qs, &qa) || !read_tensor(args[1], torch_.f32, 3, cs, &ca)) Py_RETURN_NONE;
  const int64_t Q = qs[0], M = cs[0], K = cs[1], d = cs[2];
  if (M < 1 || K < 1 || d < 1 || qs[1] != M * d) Py_RETURN_NONE;
  int64_t N;
  if (n >= 0) {  // fast-scan blocks
    if (K != 16 || !read_tensor(args[2], torch_.u8, 3, bs, &ba)) Py_RETURN_NONE;
    if (bs[0] != (n + kFastScanBlock - 1) / kFastScanBlock || bs[1] != M || bs[2] != kFastScanBlock / 2) Py_RETURN_NONE;
    N = n;
  } else {  // bytes: every value is a code only when K = 256
    if (K != 256 || !read_tensor(args[2], torch_.u8, 2, bs, &ba) || bs[1] != M) Py_RETURN_NONE;
    N = bs[0];
  }
  if (PyObject_IsTrue(args[9]) == 1 && (!all_finite(reinterpret_cast<const float*>(qa), Q * qs[1]) ||
                                         !all_finite(reinterpret_cast<const float*>(ca), M * K * d)))
    Py_RETURN_NONE;
  int64_t ls[1] = {0};
  uintptr_t la = 0;
  if (args[8] != Py_None && (!read_tensor(args[8], torch_.i64, 1, ls, &la) || ls[0] != N)) Py_RETURN_NONE;
  uintptr_t va = 0, ia = 0;  // outputs; if they cannot be made (k too large), the checked path reports it
  PyObject* v = new_output(Q, k, false, &va);
  PyObject* i = v ? new_output(Q, k, true, &ia) : nullptr;
  if (!i) {
    Py_XDECREF(v);
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  bool failed = false;
  if (Q > 0) {
    Py_BEGIN_ALLOW_THREADS;
    try {
      pq_search(reinterpret_cast<const float*>(qa), Q, reinterpret_cast<const float*>(ca), M, K, d,
                static_cast<int>(metric), num[3] != 0, reinterpret_cast<const void*>(N && ba ? ba : 1),
                n >= 0 ? 0 : 1, N, k, static_cast<int>(nthreads), reinterpret_cast<float*>(va),
                reinterpret_cast<int64_t*>(ia), PyObject_IsTrue(args[10]) != 0);
      if (la) {  // positions -> labels (-1 stays: no code)
        const int64_t* labels = reinterpret_cast<const int64_t*>(la);
        int64_t* out = reinterpret_cast<int64_t*>(ia);
        for (int64_t j = 0; j < Q * k; ++j) out[j] = out[j] >= 0 ? labels[out[j]] : -1;
      }
    } catch (const std::exception&) {
      failed = true;  // a NaN in the tables, or out of memory: the checked path says which
    }
    Py_END_ALLOW_THREADS;
  }
  if (failed) {
    Py_DECREF(v);
    Py_DECREF(i);
    Py_RETURN_NONE;
  }
  PyObject* out = PyTuple_Pack(2, v, i);
  Py_DECREF(v);
  Py_DECREF(i);
  return out;
}

// A METH_FASTCALL function as the PyCFunction that PyMethodDef holds.
static PyCFunction fastcall(PyObject* (*f)(PyObject*, PyObject* const*, Py_ssize_t)) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(f));
}

static PyMethodDef bind_torch_def = {"bind_torch", fastcall(bind_torch), METH_FASTCALL,
                                     "bind_torch(torch.Tensor, float32, uint8, int64, torch.empty)"};
static PyMethodDef search_whole_def = {
    "search_whole", fastcall(search_whole), METH_FASTCALL,
    "search_whole(queries, codebooks, codes, n, k, metric, negate, nthreads, labels, check_finite, exact) -> "
    "(values, ids), "
    "or None where the "
    "arguments are not float32 / uint8 contiguous CPU tensors of matching shapes (the checked path runs then)"};

static PyMethodDef pq_search_def = {
    "pq_search", fastcall(pq_search_fastcall), METH_FASTCALL,
    "pq_search(x, Q, codebooks, M, K, d, metric, negate, codes, code_bytes, N, k, nthreads, out_d, out_i, exact): ADC "
    "search from raw queries, tables of x [Q, M*d] built and scanned in one call; code_bytes 0 = fast-scan blocks; "
    "results in the metric's sign (negate: largest first)"};

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
         uintptr_t out_d, uintptr_t out_i, bool exact) {
        py::gil_scoped_release release;
        adc_topk_fastscan(ptr<const float>(lut), Q, M, ptr<const uint8_t>(blocks), N, k, nthreads, ptr<float>(out_d),
                          ptr<int64_t>(out_i), exact);
      },
      "4-bit fast scan, exact re-rank or quantized distances: lut [Q, M, 16] float32, blocks [ceil(N/64), M, 32]");
  m.def(
      "ivf_fastscan",
      [](uintptr_t queries, int64_t Q, int64_t d, uintptr_t centroids, uintptr_t codebooks, int64_t M,
         uintptr_t list_blocks, uintptr_t list_ids, uintptr_t list_sizes, uintptr_t probes, int64_t nprobe, int64_t k,
         int metric, uintptr_t precomputed, bool residual, bool exact, int nthreads, uintptr_t out_d,
         uintptr_t out_i) {
        py::gil_scoped_release release;
        ivf_fastscan(ptr<const float>(queries), Q, d, ptr<const float>(centroids), ptr<const float>(codebooks), M,
                     ptr<const int64_t>(list_blocks), ptr<const int64_t>(list_ids), ptr<const int64_t>(list_sizes),
                     ptr<const int64_t>(probes), nprobe, k, metric, reinterpret_cast<const float*>(precomputed),
                     residual, exact, nthreads, ptr<float>(out_d), ptr<int64_t>(out_i));
      },
      "IVF-PQ fast scan over 4-bit lists in fast-scan blocks; out [Q, k]");
  m.def(
      "ivf_search",
      [](uintptr_t queries, int64_t Q, int64_t d, uintptr_t centroids, uintptr_t codebooks, int64_t M, int64_t K,
         uintptr_t list_codes, uintptr_t list_ids, uintptr_t list_sizes, uintptr_t probes, int64_t nprobe, int64_t k,
         int metric, uintptr_t precomputed, bool residual, int nthreads, uintptr_t out_d, uintptr_t out_i) {
        py::gil_scoped_release release;
        ivf_search(ptr<const float>(queries), Q, d, ptr<const float>(centroids), ptr<const float>(codebooks), M, K,
                   ptr<const int64_t>(list_codes), ptr<const int64_t>(list_ids), ptr<const int64_t>(list_sizes),
                   ptr<const int64_t>(probes), nprobe, k, metric, reinterpret_cast<const float*>(precomputed),
                   residual, nthreads, ptr<float>(out_d), ptr<int64_t>(out_i));
      },
      "IVF-PQ search: per query, LUTs of the probed lists and a scan of their codes; out [Q, k]");
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
  m.add_object("bind_torch", py::reinterpret_steal<py::object>(PyCFunction_New(&bind_torch_def, nullptr)));
  m.add_object("search_whole", py::reinterpret_steal<py::object>(PyCFunction_New(&search_whole_def, nullptr)));
  m.def(
      "encode",
      [](uintptr_t x, int64_t N, uintptr_t codebooks, int64_t M, int64_t K, int64_t d, int metric, uintptr_t codes,
         int nthreads) {
        py::gil_scoped_release release;
        encode(ptr<const float>(x), N, ptr<const float>(codebooks), M, K, d, metric, ptr<int32_t>(codes), nthreads);
      },
      "nearest codeword per sub-space: x [N, M*d], codebooks [M, K, d] float32 -> codes int32 [N, M]");
}
