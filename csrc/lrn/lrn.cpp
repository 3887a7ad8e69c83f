#include "lrn/lrn.h"

namespace deeprank {

template <class T>
void lrn_forward_cpu(const T* x, int64_t batch, int64_t channels, int64_t spatial, bool channels_last,
                     int64_t size, double alpha, double beta, double k, T* y) {
  DEEPRANK_ISA_CALL(lrn_forward, x, batch, channels, spatial, channels_last, size, alpha, beta, k, y);
}

template <class T>
void lrn_backward_cpu(const T* grad_y, const T* x, int64_t batch, int64_t channels, int64_t spatial,
                      bool channels_last, int64_t size, double alpha, double beta, double k, T* grad_x) {
  DEEPRANK_ISA_CALL(lrn_backward, grad_y, x, batch, channels, spatial, channels_last, size, alpha, beta, k,
                    grad_x);
}

template void lrn_forward_cpu<float>(const float*, int64_t, int64_t, int64_t, bool, int64_t, double, double,
                                     double, float*);
template void lrn_forward_cpu<double>(const double*, int64_t, int64_t, int64_t, bool, int64_t, double, double,
                                      double, double*);
template void lrn_backward_cpu<float>(const float*, const float*, int64_t, int64_t, int64_t, bool, int64_t,
                                      double, double, double, float*);
template void lrn_backward_cpu<double>(const double*, const double*, int64_t, int64_t, int64_t, bool, int64_t,
                                       double, double, double, double*);

}  // namespace deeprank
