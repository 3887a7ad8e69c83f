// Fused triplet ranking loss on the GPU, same semantics as the CPU kernels (triplet.h):
//
//   losses[b] = max(0, margin + |q_b - p_b|^2 - |q_b - n_b|^2)                    (NaN propagates)
//   dq_b = c_b (n_b - p_b), dp_b = c_b (p_b - q_b), dn_b = c_b (q_b - n_b)
//   c_b = 2 grad[b] where the hinge argument is > 0, exactly 0 where it is <= 0, NaN where it is NaN.
//
// One block per row (32..1024 threads, about 8 floats or 4 doubles per thread). Distances are
// accumulated in double for float32 and float64, as on the CPU. Forward: one pass over q, p, n.
// Backward: the row's q, p, n are loaded once into registers (up to 8 floats / 4 doubles per thread,
// i.e. D <= 8192 floats at 1024 threads), the hinge is recomputed from them, and the gradients are written from the same
// registers: HBM traffic is one read of q, p, n and one write of dq, dp, dn. Longer rows re-read
// the part that did not fit. Rows whose length and base addresses allow it use 16-byte vectors.
// No workspace.
#include <cstdint>
#include <initializer_list>
#include <stdexcept>

#include "common/cuda_check.cuh"
#include "common/cuda_ops.cuh"

namespace deeprank::cuda {
namespace {

// Elements per thread per tensor cached in registers by the backward kernel (8 floats or 4 doubles:
// 24 or 12 registers x3 tensors, within the 64 registers a 1024-thread block allows).
template <class T>
__host__ __device__ constexpr int elems_per_thread() {
  return sizeof(T) == 4 ? 8 : 4;
}
constexpr unsigned kFull = 0xffffffffu;

template <class T, int W>
struct alignas(sizeof(T) * W) Vec {
  T v[W];
};

// Sums (a, b) over the block; every thread gets the totals. `scratch` holds 2 * 32 doubles.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* scratch) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_xor_sync(kFull, a, offset);
    b += __shfl_xor_sync(kFull, b, offset);
  }
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < warps ? scratch[lane] : 0.0;
    b = lane < warps ? scratch[32 + lane] : 0.0;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_xor_sync(kFull, a, offset);
      b += __shfl_xor_sync(kFull, b, offset);
    }
    if (lane == 0) {
      scratch[0] = a;
      scratch[32] = b;
    }
  }
  __syncthreads();
  a = scratch[0];
  b = scratch[32];
}

template <class T, int W>
__device__ __forceinline__ void accumulate(const Vec<T, W>& q, const Vec<T, W>& p, const Vec<T, W>& n, double& sp,
                                           double& sn) {
#pragma unroll
  for (int w = 0; w < W; ++w) {
    const double dp = static_cast<double>(q.v[w]) - static_cast<double>(p.v[w]);
    const double dn = static_cast<double>(q.v[w]) - static_cast<double>(n.v[w]);
    sp = fma(dp, dp, sp);
    sn = fma(dn, dn, sn);
  }
}

template <class T, int W>
__global__ void __launch_bounds__(1024)
    triplet_forward_kernel(const T* __restrict__ q, const T* __restrict__ p, const T* __restrict__ n, int64_t dim,
                           double margin, T* __restrict__ losses) {
  __shared__ double scratch[64];
  using V = Vec<T, W>;
  const size_t row = blockIdx.x;
  const int64_t units = dim / W;
  const V* qv = reinterpret_cast<const V*>(q + row * dim);
  const V* pv = reinterpret_cast<const V*>(p + row * dim);
  const V* nv = reinterpret_cast<const V*>(n + row * dim);
  double sp = 0.0, sn = 0.0;
#pragma unroll 4
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) accumulate<T, W>(qv[u], pv[u], nv[u], sp, sn);
  block_sum2(sp, sn, scratch);
  if (threadIdx.x == 0) {
    const double h = margin + sp - sn;
    losses[row] = static_cast<T>(h <= 0.0 ? 0.0 : h);  // NaN fails `<= 0` and passes through
  }
}

template <class T, int W>
__global__ void __launch_bounds__(1024)
    triplet_backward_kernel(const T* __restrict__ grad, const T* __restrict__ q, const T* __restrict__ p,
                            const T* __restrict__ n, int64_t dim, double margin, T* __restrict__ dq,
                            T* __restrict__ dp, T* __restrict__ dn) {
  constexpr int C = elems_per_thread<T>() / W;  // cached vectors per tensor per thread
  __shared__ double scratch[64];
  using V = Vec<T, W>;
  const size_t row = blockIdx.x;
  const int64_t units = dim / W;
  const size_t off = row * dim;
  const V* qv = reinterpret_cast<const V*>(q + off);
  const V* pv = reinterpret_cast<const V*>(p + off);
  const V* nv = reinterpret_cast<const V*>(n + off);
  V cq[C], cp[C], cn[C];
  double sp = 0.0, sn = 0.0;
#pragma unroll
  for (int i = 0; i < C; ++i) {
    const int64_t u = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (u < units) {
      cq[i] = qv[u];
      cp[i] = pv[u];
      cn[i] = nv[u];
      accumulate<T, W>(cq[i], cp[i], cn[i], sp, sn);
    }
  }
  const int64_t rest = threadIdx.x + static_cast<int64_t>(C) * blockDim.x;
  for (int64_t u = rest; u < units; u += blockDim.x) accumulate<T, W>(qv[u], pv[u], nv[u], sp, sn);
  block_sum2(sp, sn, scratch);

  const double h = margin + sp - sn;
  const bool active = h > 0.0;
  const bool is_nan = !(h > 0.0) && !(h <= 0.0);
  const T c = active ? static_cast<T>(2) * grad[row] : (is_nan ? static_cast<T>(__int_as_float(0x7fc00000)) : T(0));
  const bool zero = !active && !is_nan;  // write exact zeros, whatever q, p, n hold

  V* dqv = reinterpret_cast<V*>(dq + off);
  V* dpv = reinterpret_cast<V*>(dp + off);
  V* dnv = reinterpret_cast<V*>(dn + off);
  auto write = [&](int64_t u, const V& a, const V& b, const V& e) {  // a = q, b = p, e = n
    V gq, gp, gn;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      gq.v[w] = zero ? T(0) : c * (e.v[w] - b.v[w]);
      gp.v[w] = zero ? T(0) : c * (b.v[w] - a.v[w]);
      gn.v[w] = zero ? T(0) : c * (a.v[w] - e.v[w]);
    }
    dqv[u] = gq;
    dpv[u] = gp;
    dnv[u] = gn;
  };
#pragma unroll
  for (int i = 0; i < C; ++i) {
    const int64_t u = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (u < units) write(u, cq[i], cp[i], cn[i]);
  }
  for (int64_t u = rest; u < units; u += blockDim.x) write(u, qv[u], pv[u], nv[u]);
}

template <class T>
int vector_width(int64_t dim, std::initializer_list<const void*> pointers) {
  constexpr int W = 16 / sizeof(T);
  if (dim % W != 0) return 1;
  for (const void* ptr : pointers) {
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) return 1;
  }
  return W;
}

int block_threads(int64_t units, int per_thread) {
  const int64_t wanted = (units + per_thread - 1) / per_thread;
  int threads = 32;
  while (threads < 1024 && threads < wanted) threads *= 2;
  return threads;
}

void check_rows(int64_t rows, int64_t dim) {
  if (rows > 0x7fffffffLL) throw std::invalid_argument("too many triplets for one CUDA call (max 2^31 - 1)");
  if (dim < 0) throw std::invalid_argument("dimension must be >= 0");
}

}  // namespace

template <class T>
void triplet_forward_launch(const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin,
                            T* losses, std::uintptr_t stream_handle, int device) {
  check_rows(rows, dim);
  if (rows == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int W = vector_width<T>(dim, {q, p, n});
  const int threads = block_threads(dim / W, elems_per_thread<T>() / W);
  const unsigned blocks = static_cast<unsigned>(rows);
  auto kernel = W == 1 ? triplet_forward_kernel<T, 1> : triplet_forward_kernel<T, 16 / sizeof(T)>;
  DEEPRANK_LAUNCH(kernel, blocks, threads, 0, stream)(q, p, n, dim, margin, losses);
  check_launch("triplet_forward_kernel");
}

template <class T>
void triplet_backward_launch(const T* grad, const T* q, const T* p, const T* n, int64_t rows, int64_t dim,
                             double margin, T* dq, T* dp, T* dn, std::uintptr_t stream_handle, int device) {
  check_rows(rows, dim);
  if (rows == 0 || dim == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int W = vector_width<T>(dim, {q, p, n, dq, dp, dn});
  const int threads = block_threads(dim / W, elems_per_thread<T>() / W);
  const unsigned blocks = static_cast<unsigned>(rows);
  auto kernel = W == 1 ? triplet_backward_kernel<T, 1> : triplet_backward_kernel<T, 16 / sizeof(T)>;
  DEEPRANK_LAUNCH(kernel, blocks, threads, 0, stream)(grad, q, p, n, dim, margin, dq, dp, dn);
  check_launch("triplet_backward_kernel");
}

template void triplet_forward_launch<float>(const float*, const float*, const float*, int64_t, int64_t, double,
                                            float*, std::uintptr_t, int);
template void triplet_forward_launch<double>(const double*, const double*, const double*, int64_t, int64_t,
                                             double, double*, std::uintptr_t, int);
template void triplet_backward_launch<float>(const float*, const float*, const float*, const float*, int64_t,
                                             int64_t, double, float*, float*, float*, std::uintptr_t, int);
template void triplet_backward_launch<double>(const double*, const double*, const double*, const double*, int64_t,
                                              int64_t, double, double*, double*, double*, std::uintptr_t, int);

}  // namespace deeprank::cuda
