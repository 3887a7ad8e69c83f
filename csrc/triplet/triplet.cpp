#include "triplet/triplet.h"

namespace deeprank {

template <class T>
void triplet_forward_cpu(const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin,
                         T* losses) {
  DEEPRANK_ISA_CALL(triplet_forward, q, p, n, rows, dim, margin, losses);
}

template <class T>
void triplet_backward_cpu(const T* grad, const T* q, const T* p, const T* n, int64_t rows, int64_t dim,
                          double margin, T* dq, T* dp, T* dn) {
  DEEPRANK_ISA_CALL(triplet_backward, grad, q, p, n, rows, dim, margin, dq, dp, dn);
}

template void triplet_forward_cpu<float>(const float*, const float*, const float*, int64_t, int64_t, double,
                                         float*);
template void triplet_forward_cpu<double>(const double*, const double*, const double*, int64_t, int64_t, double,
                                          double*);
template void triplet_backward_cpu<float>(const float*, const float*, const float*, const float*, int64_t,
                                          int64_t, double, float*, float*, float*);
template void triplet_backward_cpu<double>(const double*, const double*, const double*, const double*, int64_t,
                                           int64_t, double, double*, double*, double*);

}  // namespace deeprank
