// deeprank._C.lrn_forward / lrn_backward: [N, C, S] buffer-protocol arrays in ([N, S, C] with
// channels_last), caller-allocated outputs.
// The checks here are precondition guards for the raw-pointer kernels (shapes, dtypes, contiguity);
// the user-facing argument checks are the torch op wrapper's (deeprank/ops/checks.py), run before.
#include "lrn/lrn_bindings.h"

#include <string>
#include <utility>

#include "common/checks.h"
#include "lrn/lrn.h"

namespace deeprank {
namespace py = pybind11;
namespace {

void require_same_shape(const py::buffer_info& info, const py::buffer_info& x, const char* name) {
  if (info.shape != x.shape) throw py::value_error(std::string(name) + " must have the shape of x");
}

void require_size(int64_t size) {
  if (size < 1) throw py::value_error("size must be an integer >= 1, got " + std::to_string(size));
}

// (channels, spatial) of a 3-D array in either layout.
std::pair<int64_t, int64_t> channels_spatial(const py::buffer_info& x, bool channels_last) {
  return channels_last ? std::make_pair(x.shape[2], x.shape[1]) : std::make_pair(x.shape[1], x.shape[2]);
}

template <class T>
void forward(py::handle x, int64_t size, double alpha, double beta, double k, py::handle y, bool channels_last) {
  require_size(size);
  auto xi = require_array<T>(x, "x", 3);
  auto yi = require_array<T>(y, "y", 3, /*writable=*/true);
  require_same_shape(yi, xi, "y");
  const auto [channels, spatial] = channels_spatial(xi, channels_last);
  py::gil_scoped_release release;
  lrn_forward_cpu<T>(static_cast<const T*>(xi.ptr), xi.shape[0], channels, spatial, channels_last, size, alpha,
                     beta, k, static_cast<T*>(yi.ptr));
}

template <class T>
void backward(py::handle grad_y, py::handle x, int64_t size, double alpha, double beta, double k, py::handle grad_x,
              bool channels_last) {
  require_size(size);
  auto gi = require_array<T>(grad_y, "grad_y", 3);
  auto xi = require_array<T>(x, "x", 3);
  auto di = require_array<T>(grad_x, "grad_x", 3, /*writable=*/true);
  require_same_shape(gi, xi, "grad_y");
  require_same_shape(di, xi, "grad_x");
  const auto [channels, spatial] = channels_spatial(xi, channels_last);
  py::gil_scoped_release release;
  lrn_backward_cpu<T>(static_cast<const T*>(gi.ptr), static_cast<const T*>(xi.ptr), xi.shape[0], channels, spatial,
                      channels_last, size, alpha, beta, k, static_cast<T*>(di.ptr));
}

}  // namespace

void bind_lrn(py::module_& m) {
  m.def(
      "lrn_forward",
      [](py::handle x, int64_t size, double alpha, double beta, double k, py::handle y, bool channels_last) {
        if (is_float32_array(x, "x")) forward<float>(x, size, alpha, beta, k, y, channels_last);
        else forward<double>(x, size, alpha, beta, k, y, channels_last);
      },
      py::arg("x"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"), py::arg("y"),
      py::arg("channels_last") = false,
      "Across-channel LRN of x [N, C, S] ([N, S, C] if channels_last) into y (same shape and dtype), as "
      "torch's local_response_norm.");
  m.def(
      "lrn_backward",
      [](py::handle grad_y, py::handle x, int64_t size, double alpha, double beta, double k, py::handle grad_x,
         bool channels_last) {
        if (is_float32_array(x, "x")) backward<float>(grad_y, x, size, alpha, beta, k, grad_x, channels_last);
        else backward<double>(grad_y, x, size, alpha, beta, k, grad_x, channels_last);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
      py::arg("grad_x"), py::arg("channels_last") = false,
      "Gradient of lrn_forward with respect to x [N, C, S] ([N, S, C] if channels_last), recomputing the "
      "window sums from x.");
}

}  // namespace deeprank
