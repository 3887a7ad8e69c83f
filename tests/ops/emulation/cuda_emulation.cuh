// A small SIMT emulator that runs deeprank's CUDA kernels on the CPU, for testing their logic where
// no GPU is available (test_emulation.py beside it compiles the *_emulation_main.cuh drivers with the
// host compiler). Not part of any build: the drivers include it before the .cu file they test, and
// csrc/common/cuda_check.cuh then launches kernels through emu::launcher.
//
// Every CUDA thread of a block is an OS thread; blocks run one after another. __syncthreads is a
// block-wide barrier, and every warp intrinsic (__syncwarp, __ballot_sync, __shfl*_sync,
// __reduce_add_sync) is a barrier of the warp's 32 threads around an exchange of values, so the
// kernels must keep those calls warp-uniform, exactly as on the GPU (a divergent call deadlocks
// here: the test runs the emulator under a timeout). Dynamic shared memory is filled with garbage
// before each block so that reads of entries never written show up as wrong results.
#pragma once
#define DEEPRANK_CUDA_EMULATOR 1  // csrc/common/cuda_check.cuh checks that this came first

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n)

using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float4 {
  float x, y, z, w;
};

namespace emu {
inline int sm_count = 2;
inline int smem_optin = 227 * 1024;
constexpr size_t kSharedBytes = 256 * 1024;
// The kernels' `extern __shared__ unsigned char smem[]`: the file that includes a .cu defines that
// array (kSharedBytes, 16-byte aligned) in the .cu's namespace and points this at it.
inline unsigned char* shared_memory = nullptr;

struct Warp {
  explicit Warp() : barrier(32) {}
  std::barrier<> barrier;
  uint64_t slots[32] = {};
};
struct Block {
  explicit Block(unsigned threads) : barrier(threads) {
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};
inline thread_local Block* block = nullptr;
inline thread_local unsigned thread_index = 0;

inline Warp& warp() { return *block->warps[thread_index / 32]; }
inline unsigned lane() { return thread_index % 32; }

template <class T>
T exchange(T value, unsigned source_lane) {
  static_assert(sizeof(T) <= 8, "exchange of at most 8 bytes");
  Warp& w = warp();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.slots[lane()] = bits;
  w.barrier.arrive_and_wait();
  const uint64_t got = w.slots[source_lane % 32];
  w.barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

// Runs kernel(args...) over a grid, one OS thread per CUDA thread.
template <class Kernel>
struct Launcher {
  Kernel kernel;
  dim3 grid, threads;
  size_t smem;
  template <class... Args>
  void operator()(Args... args) const {
    if (smem > 0 && (smem > kSharedBytes || shared_memory == nullptr)) {
      throw std::runtime_error("emulator: no room for the dynamic shared memory");
    }
    if (threads.x % 32 != 0 || threads.y != 1 || threads.z != 1) throw std::runtime_error("emulator: 1-D blocks of warps only");
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        if (smem > 0) std::memset(shared_memory, 0xcd, smem);
        Block b(threads.x);
        std::vector<std::thread> pool;
        pool.reserve(threads.x);
        for (unsigned t = 0; t < threads.x; ++t) {
          pool.emplace_back([&, t, bx, by] {
            block = &b;
            thread_index = t;
            set_indices(t, bx, by);
            kernel(args...);
          });
        }
        for (auto& th : pool) th.join();
      }
    }
  }
  void set_indices(unsigned t, unsigned bx, unsigned by) const;
};

inline thread_local uint3 tl_thread_idx, tl_block_idx;
inline thread_local dim3 tl_block_dim;

template <class Kernel>
void Launcher<Kernel>::set_indices(unsigned t, unsigned bx, unsigned by) const {
  tl_thread_idx = {t, 0, 0};
  tl_block_idx = {bx, by, 0};
  tl_block_dim = threads;
}

template <class Kernel>
Launcher<Kernel> launcher(Kernel kernel, dim3 grid, dim3 threads, size_t smem) {
  return Launcher<Kernel>{kernel, grid, threads, smem};
}
}  // namespace emu

#define threadIdx (::emu::tl_thread_idx)
#define blockIdx (::emu::tl_block_idx)
#define blockDim (::emu::tl_block_dim)

inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? emu::sm_count : emu::smem_optin;
  return cudaSuccess;
}
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int value) {
  return value <= emu::smem_optin ? cudaSuccess : 1;
}

inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
using std::isnan;
using std::max;
using std::min;

inline void __syncthreads() { emu::block->barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp().barrier.arrive_and_wait(); }
inline unsigned __ballot_sync(unsigned, bool predicate) {
  emu::Warp& w = emu::warp();
  w.slots[emu::lane()] = predicate ? 1 : 0;
  w.barrier.arrive_and_wait();
  unsigned mask = 0;
  for (unsigned l = 0; l < 32; ++l) mask |= static_cast<unsigned>(w.slots[l] != 0) << l;
  w.barrier.arrive_and_wait();
  return mask;
}
inline unsigned __reduce_add_sync(unsigned, unsigned value) {
  emu::Warp& w = emu::warp();
  w.slots[emu::lane()] = value;
  w.barrier.arrive_and_wait();
  unsigned sum = 0;
  for (unsigned l = 0; l < 32; ++l) sum += static_cast<unsigned>(w.slots[l]);
  w.barrier.arrive_and_wait();
  return sum;
}
template <class T>
T __shfl_sync(unsigned, T value, int source_lane) {
  return emu::exchange(value, static_cast<unsigned>(source_lane));
}
template <class T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  return emu::exchange(value, emu::lane() ^ static_cast<unsigned>(lane_mask));
}
