// csrc/cuda/adc_stream.cuh's kernel and dispatch run on the CPU through csrc/cuda/emu.h, for
// tests/test_cuda_emu.py (ctypes): the same source the GPU build compiles. Every input and the output are
// copied next to an inaccessible page, so a read or write past the end of any of them faults.
#include "cuda/emu.h"
#include "cuda/adc_stream.cuh"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace {

// `bytes` at the end of fresh pages followed by a PROT_NONE page, at src's address modulo 16.
class Guarded {
 public:
  Guarded(const void* src, size_t bytes) : bytes_(bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    body_ = (bytes + 16 + page - 1) / page * page;
    len_ = body_ + page;
    base_ = static_cast<char*>(mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED || mprotect(base_ + body_, page, PROT_NONE)) throw std::runtime_error("mmap / mprotect");
    data_ = base_ + body_ - bytes;
    while ((reinterpret_cast<uintptr_t>(data_) - reinterpret_cast<uintptr_t>(src)) % 16) --data_;
    std::memcpy(data_, src, bytes);
  }
  ~Guarded() { munmap(base_, len_); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  template <class T>
  T* get() const {
    return reinterpret_cast<T*>(data_);
  }
  void copy_to(void* dst) const { std::memcpy(dst, data_, bytes_); }

 private:
  size_t bytes_, body_ = 0, len_ = 0;
  char* base_ = nullptr;
  char* data_ = nullptr;
};

}  // namespace

extern "C" {

// The launch plan for a GPU of `sms` SMs and `max_smem` shared bytes per block: programs, or -1 on bad sizes.
int emu_adc_programs(int Q, int M, int K, long long N, int keep, int sms, int max_smem) {
  try {
    return sqret_cuda::adc_plan(Q, M, K, N, keep, sms, max_smem).programs;
  } catch (const std::exception&) {
    return -1;
  }
}

// The streaming scan on the CPU: out_keys [Q, programs * keep] (as it held before: every slot is written);
// 0, or -1 (message on stderr).
int emu_adc_topk_stream(const float* lut, int Q, int M, int K, const uint8_t* codes, long long N, int row_bytes,
                        bool packed, bool largest, int keep, int sms, int max_smem, long long* out_keys) {
  try {
    const sqret_cuda::AdcPlan p = sqret_cuda::adc_plan(Q, M, K, N, keep, sms, max_smem);
    const Guarded g_lut(lut, sizeof(float) * Q * M * K), g_codes(codes, static_cast<size_t>(N) * row_bytes);
    const Guarded g_out(out_keys, sizeof(long long) * Q * p.programs * keep);
    sqret_cuda::launch_plan(p, g_lut.get<const float>(), Q, M, K, g_codes.get<const uint8_t>(), N, row_bytes,
                            packed, largest, keep, g_out.get<long long>(), 0);
    g_out.copy_to(out_keys);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "emu_adc_topk_stream: %s\n", e.what());
    return -1;
  }
}
}
