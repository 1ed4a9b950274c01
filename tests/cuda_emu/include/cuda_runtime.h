// A CUDA runtime on the CPU, for tests of csrc/cuda's kernels (tests/test_cuda_emu.py): csrc/cuda/*.cu compile
// as C++ against this header (found before the real one on the include path). A launch runs the grid's blocks
// one after another, each block's threads as real std::threads (races between them are real), __syncthreads
// as a barrier (a thread that returns leaves it, as on a GPU), __syncwarp, __ballot_sync as barriers of the
// warp's 32 threads (every lane must take part: the full mask), dynamic shared memory as one buffer per block
// filled with garbage first; the device's SM count and shared-memory limit are settable, and a launch over
// the limit fails as cudaGetLastError reports on a GPU. Logic, not speed, and not the GPU's memory model.
#pragma once

#define SQRET_CUDA_EMU 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  unsigned x, y, z, w;
};

using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorLaunchFailure = 2;
using cudaStream_t = struct CUstream_emu*;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaDevAttrMultiProcessorCount };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

namespace sqret_emu {
inline int sms = 132;                  // the emulated device
inline int max_smem = 227 * 1024;      // opt-in shared bytes per block
inline cudaError_t last_error = cudaSuccess;
inline long long launches = 0;
inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
inline thread_local std::barrier<>* barrier = nullptr;
inline thread_local std::barrier<>* warp_barrier = nullptr;
inline thread_local unsigned* warp_slots = nullptr;  // [32]: one value per lane, for the ballots
inline thread_local unsigned char* shared = nullptr;

template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, size_t smem, Kernel kernel, Args... args) {
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || smem > static_cast<size_t>(max_smem) || grid.x == 0 || grid.y > 65535) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  ++launches;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::vector<unsigned char> buf(smem + 16, 0xA5);
      unsigned char* base = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) % 16) % 16;
      std::barrier<> bar(threads);
      const unsigned warps = (threads + 31) / 32;
      std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
      for (unsigned w = 0; w < warps; ++w)
        warp_bars.emplace_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
      std::vector<unsigned> slots(32 * warps, 0);
      std::exception_ptr error;
      std::mutex mu;
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          thread_idx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
          block_idx = dim3(bx, by);
          block_dim = block;
          grid_dim = grid;
          barrier = &bar;
          warp_barrier = warp_bars[t / 32].get();
          warp_slots = &slots[32 * (t / 32)];
          shared = base;
          try {
            kernel(args...);
          } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            error = std::current_exception();
          }
          bar.arrive_and_drop();  // an exited thread no longer holds up the others' barriers
          warp_barrier->arrive_and_drop();
        });
      for (auto& th : pool) th.join();
      if (error) last_error = cudaErrorLaunchFailure;
    }
}
}  // namespace sqret_emu

#define threadIdx (::sqret_emu::thread_idx)
#define blockIdx (::sqret_emu::block_idx)
#define blockDim (::sqret_emu::block_dim)
#define gridDim (::sqret_emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define SQRET_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::sqret_emu::shared)
#define SQRET_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::sqret_emu::launch(dim3(grid), dim3(block), smem, kernel, __VA_ARGS__)

inline void __syncthreads() { ::sqret_emu::barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xFFFFFFFFu) { ::sqret_emu::warp_barrier->arrive_and_wait(); }
inline unsigned __ballot_sync(unsigned, int pred) {
  const unsigned lane = ::sqret_emu::thread_idx.x % 32;
  ::sqret_emu::warp_slots[lane] = pred != 0;
  ::sqret_emu::warp_barrier->arrive_and_wait();
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; ++l) ballot |= ::sqret_emu::warp_slots[l] << l;
  ::sqret_emu::warp_barrier->arrive_and_wait();  // every lane has read the slots before they are reused
  return ballot;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline uint4 __ldg(const uint4* p) { return *p; }
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
using std::max;
using std::min;

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorInvalidValue ? "invalid argument (emulated)"
                                                                     : "launch failure (emulated)";
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = sqret_emu::last_error;
  sqret_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? sqret_emu::sms : sqret_emu::max_smem;
  return cudaSuccess;
}
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int value) {
  return value <= sqret_emu::max_smem ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
