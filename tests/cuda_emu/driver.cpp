// csrc/cuda's entry points (kernels.cu, soft.cu: the sources the GPU build compiles, here as C++ against
// tests/cuda_emu/include/cuda_runtime.h) behind a C interface for ctypes (tests/test_cuda_emu.py). Every input
// and output is copied next to an inaccessible page first, so a read or write past the end of any buffer
// faults. Each function returns 0, or -1 with the message in emu_error().
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/kernels.cuh"

namespace {

std::string g_error;

// `bytes` at the end of fresh pages followed by a PROT_NONE page, at src's address modulo 16; copied back to src
// by copy_back (outputs).
class Guarded {
 public:
  Guarded(void* src, size_t bytes) : src_(src), bytes_(bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    body_ = (bytes + 16 + page - 1) / page * page;
    len_ = body_ + page;
    void* m = mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("mmap");
    base_ = static_cast<char*>(m);
    if (mprotect(base_ + body_, page, PROT_NONE)) throw std::runtime_error("mprotect");
    data_ = base_ + body_ - bytes;
    while ((reinterpret_cast<uintptr_t>(data_) - reinterpret_cast<uintptr_t>(src)) % 16) --data_;
    if (bytes) std::memcpy(data_, src, bytes);
  }
  ~Guarded() { munmap(base_, len_); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  template <class T>
  T* get() const {
    return reinterpret_cast<T*>(data_);
  }
  void copy_back() const {
    if (bytes_) std::memcpy(src_, data_, bytes_);
  }

 private:
  void* src_;
  size_t bytes_, body_ = 0, len_ = 0;
  char* base_ = nullptr;
  char* data_ = nullptr;
};

template <class F>
int guarded_call(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

}  // namespace

extern "C" {

const char* emu_error() { return g_error.c_str(); }

void emu_set_device(int sms, int max_smem) {
  sqret_emu::sms = sms;
  sqret_emu::max_smem = max_smem;
}

long long emu_launches() { return sqret_emu::launches; }

int emu_adc_programs(int Q, int M, int K, long long N, int keep, int select) {
  int programs = -1;
  guarded_call([&] { programs = sqret_cuda::adc_plan_here(Q, M, K, N, keep, select).programs; });
  return programs;
}

// out_keys [Q, programs * keep]: every slot is written.
int emu_adc_topk_stream(float* lut, int Q, int M, int K, uint8_t* codes, long long N, int row_bytes, bool packed,
                        bool largest, int keep, int programs, long long* out_keys, int select) {
  return guarded_call([&] {
    const Guarded l(lut, sizeof(float) * Q * M * K), c(codes, static_cast<size_t>(N) * row_bytes);
    const Guarded o(out_keys, sizeof(long long) * Q * programs * keep);
    sqret_cuda::adc_topk_stream(l.get<float>(), Q, M, K, c.get<uint8_t>(), N, row_bytes, packed, largest, keep,
                                programs, o.get<long long>(), nullptr, select);
    o.copy_back();
  });
}

int emu_encode(float* x, long long B, float* codebooks, int M, int K, int d, int metric, int32_t* out) {
  return guarded_call([&] {
    const Guarded gx(x, sizeof(float) * B * M * d), gc(codebooks, sizeof(float) * M * K * d);
    const Guarded go(out, sizeof(int32_t) * B * M);
    sqret_cuda::encode(gx.get<float>(), B, gc.get<float>(), M, K, d, metric, go.get<int32_t>(), nullptr);
    sqret_cuda::check(cudaGetLastError(), "encode");
    go.copy_back();
  });
}

int emu_soft_quantize(float* x, long long B, float* codebooks, int M, int K, int d, float tau, int metric, float* z) {
  return guarded_call([&] {
    const Guarded gx(x, sizeof(float) * B * M * d), gc(codebooks, sizeof(float) * M * K * d);
    const Guarded gz(z, sizeof(float) * B * M * d);
    sqret_cuda::soft_quantize(gx.get<float>(), B, gc.get<float>(), M, K, d, tau, metric, gz.get<float>(), nullptr);
    gz.copy_back();
  });
}

int emu_soft_quantize_backward(float* grad, float* x, long long B, float* codebooks, int M, int K, int d, float tau,
                               int metric, float* grad_x, float* grad_codebooks) {
  return guarded_call([&] {
    const size_t rows = sizeof(float) * B * M * d, cb = sizeof(float) * M * K * d;
    std::vector<float> scratch(static_cast<size_t>(2 * B * M) + 1);
    const Guarded gg(grad, rows), gx(x, rows), gc(codebooks, cb), ogx(grad_x, rows), ogc(grad_codebooks, cb);
    const Guarded gs(scratch.data(), sizeof(float) * 2 * B * M);
    sqret_cuda::soft_quantize_backward(gg.get<float>(), gx.get<float>(), B, gc.get<float>(), M, K, d, tau, metric,
                                       ogx.get<float>(), ogc.get<float>(), gs.get<float>(), nullptr);
    ogx.copy_back();
    ogc.copy_back();
  });
}
}
