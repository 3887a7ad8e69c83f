// Fused triplet ranking loss (the paper's ranking layer) on row-major [B, D] arrays.
//
//   losses[b] = max(0, margin + |q_b - p_b|^2 - |q_b - n_b|^2)          forward, one pass over q, p, n
//   dq_b = c_b (n_b - p_b), dp_b = c_b (p_b - q_b), dn_b = c_b (q_b - n_b)   backward, one pass
// with c_b = 2 grad[b] where the hinge is active (> 0), exactly 0 where it is not, and NaN where the
// hinge argument is NaN (so NaN never turns into a silent zero gradient).
// Distances are accumulated in double for both float32 and float64 inputs.
#pragma once

#include <cstdint>

#include "common/isa.h"

#define DEEPRANK_TRIPLET_FORWARD(T) \
  void triplet_forward(const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin, T* losses)
#define DEEPRANK_TRIPLET_BACKWARD(T)                                                                        \
  void triplet_backward(const T* grad, const T* q, const T* p, const T* n, int64_t rows, int64_t dim, \
                        double margin, T* dq, T* dp, T* dn)

DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_TRIPLET_FORWARD(float))
DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_TRIPLET_FORWARD(double))
DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_TRIPLET_BACKWARD(float))
DEEPRANK_DECLARE_ISA_VARIANTS(DEEPRANK_TRIPLET_BACKWARD(double))

namespace deeprank {

// Entry points: run the widest SIMD variant in use (see common/isa.h) on deeprank's thread pool.
// q, p, n, dq, dp, dn: [rows, dim]; losses, grad: [rows]. All C-contiguous, outputs not aliasing inputs.
template <class T>
void triplet_forward_cpu(const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin,
                         T* losses);
template <class T>
void triplet_backward_cpu(const T* grad, const T* q, const T* p, const T* n, int64_t rows, int64_t dim,
                          double margin, T* dq, T* dp, T* dn);

}  // namespace deeprank
