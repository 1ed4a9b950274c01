// The two CUDA spellings the C++ emulation (tests/cuda_emu) cannot parse, as macros: dynamic shared memory and a
// kernel launch. Under the emulator (SQRET_CUDA_EMU) its cuda_runtime.h defines them instead.
#pragma once

#ifndef SQRET_CUDA_EMU
// `name`: the block's dynamic shared memory as an array of `type`.
#define SQRET_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#define SQRET_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif
