// Triplet loss inner loops, compiled once per ISA (see common/isa.h). Rows are independent, so the
// pool splits rows; each row is vectorised along D.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/parallel.h"
#include "triplet/triplet.h"

namespace deeprank {
namespace DEEPRANK_ISA {
namespace {

// margin + |q-p|^2 - |q-n|^2 for one row: both sums in one pass, accumulated in double (float32
// inputs convert exactly, so the only rounding is in the sums).
template <class T>
inline double hinge_argument(const T* q, const T* p, const T* n, int64_t dim, double margin) {
  double sp = 0.0, sn = 0.0;
#pragma omp simd reduction(+ : sp, sn)
  for (int64_t j = 0; j < dim; ++j) {
    const double qj = static_cast<double>(q[j]);
    const double a = qj - static_cast<double>(p[j]);
    const double b = qj - static_cast<double>(n[j]);
    sp += a * a;
    sn += b * b;
  }
  return margin + sp - sn;
}

// Rows per task: enough work per chunk to amortise the hand-out.
inline int64_t row_grain(int64_t dim) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1)); }

template <class T>
void forward_impl(const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin, T* losses) {
  parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * dim;
      const double l = hinge_argument(q + off, p + off, n + off, dim, margin);
      // `l <= 0` is false for NaN, so NaN passes through (std::max would hide it).
      losses[b] = static_cast<T>(l <= 0.0 ? 0.0 : l);
    }
  });
}

template <class T>
void backward_impl(const T* grad, const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin,
                   T* dq, T* dp, T* dn) {
  parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * dim;
      const T* qr = q + off;
      const T* pr = p + off;
      const T* nr = n + off;
      T* gq = dq + off;
      T* gp = dp + off;
      T* gn = dn + off;
      // The row is read twice: once for the hinge, once for the gradient; the second read hits cache.
      const double l = hinge_argument(qr, pr, nr, dim, margin);
      if (l <= 0.0) {  // satisfied triplet: exactly zero, whatever the inputs hold
        std::fill(gq, gq + dim, T(0));
        std::fill(gp, gp + dim, T(0));
        std::fill(gn, gn + dim, T(0));
        continue;
      }
      const T c = l > 0.0 ? static_cast<T>(2) * grad[b] : std::numeric_limits<T>::quiet_NaN();
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) {
        const T qj = qr[j], pj = pr[j], nj = nr[j];
        gq[j] = c * (nj - pj);
        gp[j] = c * (pj - qj);
        gn[j] = c * (qj - nj);
      }
    }
  });
}

}  // namespace

DEEPRANK_TRIPLET_FORWARD(float) { forward_impl(q, p, n, rows, dim, margin, losses); }
DEEPRANK_TRIPLET_FORWARD(double) { forward_impl(q, p, n, rows, dim, margin, losses); }
DEEPRANK_TRIPLET_BACKWARD(float) { backward_impl(grad, q, p, n, rows, dim, margin, dq, dp, dn); }
DEEPRANK_TRIPLET_BACKWARD(double) { backward_impl(grad, q, p, n, rows, dim, margin, dq, dp, dn); }

}  // namespace DEEPRANK_ISA
}  // namespace deeprank
