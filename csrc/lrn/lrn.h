// Across-channel local response normalization (AlexNet form), matching
// torch.nn.functional.local_response_norm on row-major [N, C, S] arrays (S = H*W, or L, or 1):
//
//   s[c] = k + alpha/size * sum_{j = c - size/2}^{c + (size-1)/2} x[j]^2   (zero outside [0, C))
//   y[c] = x[c] * s[c]^-beta
//   dx[i] = g[i] s[i]^-beta - 2 alpha beta/size * x[i] * sum_{c = i - (size-1)/2}^{i + size/2} g[c] x[c] s[c]^(-beta-1)
//
// Window sums use blocked prefix/suffix sums (van Herk / Gil-Werman): every window is the suffix of one
// block of `size` channels plus the prefix of the next, so the cost is O(C) per position whatever the
// size, and no value is ever subtracted (a running sum that subtracts the leaving channel loses small
// windows next to huge ones). Sums are in double for float32 and float64. The backward recomputes s
// from x rather than reading a saved scale tensor.
//
// channels_last: the arrays are [N, S, C] instead (a channels-last NHWC tensor). Each tile is then
// transposed into a [C, w] scratch that stays in cache, so the same loops run along w and vectorise;
// that saves the two full-tensor layout copies a caller would otherwise make. Workspace per worker:
// the double scratch of the NCHW path plus 2 (forward) or 3 (backward) [C, w] arrays of T, w <= 512.
#pragma once

#include <cstdint>

#include "common/isa.h"

#define DEEPRANK_LRN_FORWARD(T)                                                                        \
  void lrn_forward(const T* x, int64_t batch, int64_t channels, int64_t spatial, bool channels_last,       \
                   int64_t size, double alpha, double beta, double k, T* y)
#define DEEPRANK_LRN_BACKWARD(T)                                                                         \
  void lrn_backward(const T* grad_y, const T* x, int64_t batch, int64_t channels, int64_t spatial,        \
                    bool channels_last, int64_t size, double alpha, double beta, double k, T* grad_x)

DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_LRN_FORWARD(float))
DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_LRN_FORWARD(double))
DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_LRN_BACKWARD(float))
DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_LRN_BACKWARD(double))

namespace deeprank {

// Entry points on deeprank's thread pool with the SIMD variant in use. x, y, grad_y, grad_x:
// C-contiguous [batch, channels, spatial], or [batch, spatial, channels] when channels_last; size >= 1.
template <class T>
void lrn_forward_cpu(const T* x, int64_t batch, int64_t channels, int64_t spatial, bool channels_last,
                     int64_t size, double alpha, double beta, double k, T* y);
template <class T>
void lrn_backward_cpu(const T* grad_y, const T* x, int64_t batch, int64_t channels, int64_t spatial,
                      bool channels_last, int64_t size, double alpha, double beta, double k, T* grad_x);

}  // namespace deeprank
