// Across-channel local response normalization on the GPU, matching
// torch.nn.functional.local_response_norm on contiguous [batch, channels, spatial] arrays:
//
//   scale[c] = k + alpha * (sum_{j = c - size/2}^{c + (size-1)/2} x[j]^2) / size    (zero outside [0, C))
//   y[c]     = x[c] / scale[c]^beta
//   dx[c]    = g[c] / scale[c]^beta
//              - 2 alpha beta / size * x[c] * sum_{j = c - (size-1)/2}^{c + size/2} g[j] x[j] / (scale[j]^beta scale[j])
//
// One thread per (batch, spatial) column walks the channels once: consecutive threads hold
// consecutive spatial positions, so every channel step is a coalesced load, and each input element is
// read from HBM once (forward: x; backward: x and g), each output written once. The sliding windows
// live in registers as shift registers of R >= size entries (R = 8, 16 or 32 picked from size; sizes
// 3 and 5, the common ones, are compiled with the size fixed so every ring access is a register; other
// sizes pick ring entries at run time, which the compiler may place in local memory: slower), and
// each window is summed directly in channel order (nothing is ever subtracted, so a huge or non-finite
// value only affects the windows that contain it). The backward recomputes the scale from x. Loads
// are issued 8 channels ahead to keep enough bytes in flight. Sizes above 32 are refused here
// (ValueError); deeprank/ops/cuda.py sends those to torch's own ops on the GPU.
// No workspace.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/cuda_check.cuh"
#include "common/cuda_ops.cuh"

namespace deeprank::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAhead = 8;  // channels loaded ahead of use (bytes in flight for a latency-bound walk)

template <class T, int R>
__device__ __forceinline__ void push(T (&ring)[R], T value) {
#pragma unroll
  for (int i = 0; i < R - 1; ++i) ring[i] = ring[i + 1];
  ring[R - 1] = value;
}

// Sum of the newest `size` entries, oldest first (channel order).
template <class T, int R>
__device__ __forceinline__ T newest_sum(const T (&ring)[R], int size) {
  T sum = T(0);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (i >= R - size) sum += ring[i];
  }
  return sum;
}

// The entry pushed `back` steps before the newest (back = 0 is the newest).
template <class T, int R>
__device__ __forceinline__ T at_back(const T (&ring)[R], int back) {
  T v = T(0);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (i == R - 1 - back) v = ring[i];
  }
  return v;
}

// Loads channel j of a column (0 beyond the last channel) into a queue kAhead deep.
template <class T>
struct Prefetch {
  const T* __restrict__ base;
  int64_t stride;
  int64_t channels;
  T queue[kAhead];

  __device__ __forceinline__ void start() {
#pragma unroll
    for (int i = 0; i < kAhead; ++i) queue[i] = i < channels ? base[i * stride] : T(0);
  }
  // Returns channel j and requests channel j + kAhead.
  __device__ __forceinline__ T next(int64_t j) {
    const T v = queue[0];
#pragma unroll
    for (int i = 0; i < kAhead - 1; ++i) queue[i] = queue[i + 1];
    const int64_t ahead = j + kAhead;
    queue[kAhead - 1] = ahead < channels ? base[ahead * stride] : T(0);
    return v;
  }
};

template <class T, int R, int SIZE>
__global__ void __launch_bounds__(kThreads)
    lrn_forward_kernel(const T* __restrict__ x, int64_t batch, int64_t channels, int64_t spatial, int size_arg,
                       T alpha, T beta, T k, T* __restrict__ y) {
  const int size = SIZE > 0 ? SIZE : size_arg;
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= batch * spatial) return;
  const int64_t b = column / spatial, s = column - b * spatial;
  const int64_t base = b * channels * spatial + s;
  const int post = (size - 1) / 2;
  T squares[R], values[R];
#pragma unroll
  for (int i = 0; i < R; ++i) squares[i] = values[i] = T(0);
  Prefetch<T> in{x + base, spatial, channels, {}};
  in.start();
  // j: newest channel in the window; c = j - post: the channel whose output is ready.
  for (int64_t j = 0; j < channels + post; ++j) {
    const T v = in.next(j);
    push(squares, v * v);
    push(values, v);
    const int64_t c = j - post;
    if (c >= 0) {
      const T sum = newest_sum(squares, size);
      const T scale = sum / static_cast<T>(size) * alpha + k;  // torch: avg_pool, * alpha, + k
      y[base + c * spatial] = at_back(values, post) / pow(scale, beta);
    }
  }
}

template <class T, int R, int SIZE>
__global__ void __launch_bounds__(kThreads)
    lrn_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, int64_t batch, int64_t channels,
                        int64_t spatial, int size_arg, T alpha, T beta, T k, T* __restrict__ grad_x) {
  const int size = SIZE > 0 ? SIZE : size_arg;
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= batch * spatial) return;
  const int64_t b = column / spatial, s = column - b * spatial;
  const int64_t base = b * channels * spatial + s;
  const int pre = size / 2, post = (size - 1) / 2;
  const T coef = T(2) * alpha * beta / static_cast<T>(size);
  // squares, xs, gs: indexed by the newest loaded channel j. terms (g x / (scale^beta scale)) and
  // direct (g / scale^beta): indexed by jp = j - post, the newest channel whose scale is known.
  T squares[R], xs[R], gs[R], terms[R], direct[R];
#pragma unroll
  for (int i = 0; i < R; ++i) squares[i] = xs[i] = gs[i] = terms[i] = direct[i] = T(0);
  Prefetch<T> in_x{x + base, spatial, channels, {}};
  Prefetch<T> in_g{grad_y + base, spatial, channels, {}};
  in_x.start();
  in_g.start();
  for (int64_t j = 0; j < channels + size - 1; ++j) {
    const T xv = in_x.next(j);
    const T gv = in_g.next(j);
    push(squares, xv * xv);
    push(xs, xv);
    push(gs, gv);
    const int64_t jp = j - post;
    if (jp < 0) continue;
    T term = T(0), dir = T(0);
    if (jp < channels) {
      const T sum = newest_sum(squares, size);
      const T scale = sum / static_cast<T>(size) * alpha + k;
      const T denom = pow(scale, beta);
      const T gj = at_back(gs, post);
      dir = gj / denom;
      term = gj * at_back(xs, post) / (denom * scale);
    }
    push(terms, term);
    push(direct, dir);
    const int64_t c = jp - pre;  // = j - (size - 1): its reverse window [c - post, c + pre] ends at jp
    if (c >= 0) {
      grad_x[base + c * spatial] = at_back(direct, pre) - coef * at_back(xs, size - 1) * newest_sum(terms, size);
    }
  }
}

int ring_size(int64_t size) {
  if (size < 1) throw std::invalid_argument("lrn size must be >= 1, got " + std::to_string(size));
  if (size > kLrnMaxSize) {
    throw std::invalid_argument("the CUDA lrn takes size <= " + std::to_string(kLrnMaxSize) + ", got " +
                                std::to_string(size));
  }
  return size <= 8 ? 8 : (size <= 16 ? 16 : 32);
}

// Sizes 3 and 5 (the common ones) get kernels with the size fixed at compile time.
template <class T>
auto forward_kernel(int size, int ring) {
  if (size == 5) return lrn_forward_kernel<T, 8, 5>;
  if (size == 3) return lrn_forward_kernel<T, 8, 3>;
  if (ring == 8) return lrn_forward_kernel<T, 8, 0>;
  if (ring == 16) return lrn_forward_kernel<T, 16, 0>;
  return lrn_forward_kernel<T, 32, 0>;
}

template <class T>
auto backward_kernel(int size, int ring) {
  if (size == 5) return lrn_backward_kernel<T, 8, 5>;
  if (size == 3) return lrn_backward_kernel<T, 8, 3>;
  if (ring == 8) return lrn_backward_kernel<T, 8, 0>;
  if (ring == 16) return lrn_backward_kernel<T, 16, 0>;
  return lrn_backward_kernel<T, 32, 0>;
}

unsigned grid_for(int64_t columns) {
  const int64_t blocks = (columns + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffLL) throw std::invalid_argument("lrn input too large for one CUDA launch");
  return static_cast<unsigned>(blocks);
}

}  // namespace

template <class T>
void lrn_forward_launch(const T* x, int64_t batch, int64_t channels, int64_t spatial, int64_t size, double alpha,
                        double beta, double k, T* y, std::uintptr_t stream_handle, int device) {
  const int R = ring_size(size);
  const int64_t columns = batch * spatial;
  if (columns == 0 || channels == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const unsigned grid = grid_for(columns);
  const int sz = static_cast<int>(size);
  const T a = static_cast<T>(alpha), bt = static_cast<T>(beta), kk = static_cast<T>(k);
  const auto kernel = forward_kernel<T>(sz, R);
  DEEPRANK_LAUNCH(kernel, grid, kThreads, 0, stream)(x, batch, channels, spatial, sz, a, bt, kk, y);
  check_launch("lrn_forward_kernel");
}

template <class T>
void lrn_backward_launch(const T* grad_y, const T* x, int64_t batch, int64_t channels, int64_t spatial,
                         int64_t size, double alpha, double beta, double k, T* grad_x, std::uintptr_t stream_handle,
                         int device) {
  const int R = ring_size(size);
  const int64_t columns = batch * spatial;
  if (columns == 0 || channels == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const unsigned grid = grid_for(columns);
  const int sz = static_cast<int>(size);
  const T a = static_cast<T>(alpha), bt = static_cast<T>(beta), kk = static_cast<T>(k);
  const auto kernel = backward_kernel<T>(sz, R);
  DEEPRANK_LAUNCH(kernel, grid, kThreads, 0, stream)(grad_y, x, batch, channels, spatial, sz, a, bt, kk, grad_x);
  check_launch("lrn_backward_kernel");
}

template void lrn_forward_launch<float>(const float*, int64_t, int64_t, int64_t, int64_t, double, double, double,
                                        float*, std::uintptr_t, int);
template void lrn_forward_launch<double>(const double*, int64_t, int64_t, int64_t, int64_t, double, double, double,
                                         double*, std::uintptr_t, int);
template void lrn_backward_launch<float>(const float*, const float*, int64_t, int64_t, int64_t, int64_t, double,
                                         double, double, float*, std::uintptr_t, int);
template void lrn_backward_launch<double>(const double*, const double*, int64_t, int64_t, int64_t, int64_t, double,
                                          double, double, double*, std::uintptr_t, int);

}  // namespace deeprank::cuda
