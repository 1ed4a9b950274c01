// The subset of CUDA that csrc/cuda/adc_stream.cuh uses, on the CPU: a launch runs the grid's blocks one after
// another, each block's threads as real std::threads (so races between them are real), __syncthreads as a
// barrier, dynamic shared memory as one buffer per block filled with garbage first (a read before a write
// shows), shared atomics as std::atomic_ref. For tests of the kernels' logic (tests/test_cuda_emu.py), not
// speed. Include before the kernel source.
#pragma once

#define SQRET_CUDA_EMU 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <exception>
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

namespace sqret_emu {
inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
inline thread_local std::barrier<>* barrier = nullptr;
inline thread_local unsigned char* shared = nullptr;

// Run kernel(args...) over grid x block threads with `smem` bytes of dynamic shared memory per block. An
// exception in any thread (the kernel's own checks) is rethrown after the block.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, size_t smem, Kernel kernel, Args... args) {
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::vector<unsigned char> buf(smem + 16, 0xA5);
      unsigned char* base = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) % 16) % 16;
      std::barrier<> bar(threads);
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
          shared = base;
          try {
            kernel(args...);
          } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            error = std::current_exception();
          }
        });
      for (auto& th : pool) th.join();
      if (error) std::rethrow_exception(error);
    }
}
}  // namespace sqret_emu

#define threadIdx (::sqret_emu::thread_idx)
#define blockIdx (::sqret_emu::block_idx)
#define blockDim (::sqret_emu::block_dim)
#define gridDim (::sqret_emu::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define SQRET_DYNAMIC_SHARED(name) unsigned char* name = ::sqret_emu::shared
#define SQRET_MAX_DYNAMIC_SHARED(kernel, bytes) (void)(bytes)
#define SQRET_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::sqret_emu::launch(dim3(grid), dim3(block), smem, kernel, __VA_ARGS__)

inline void __syncthreads() { ::sqret_emu::barrier->arrive_and_wait(); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline uint4 __ldg(const uint4* p) { return *p; }
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
using std::max;
using std::min;
