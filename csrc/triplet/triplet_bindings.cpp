// deeprank._C.triplet_forward / triplet_backward: buffer-protocol arrays in, caller-allocated outputs.
// The checks here are precondition guards for the raw-pointer kernels (shapes, dtypes, contiguity);
// the user-facing argument checks are the torch op wrapper's (deeprank/ops/checks.py), run before.
#include "triplet/triplet_bindings.h"

#include <string>

#include "common/checks.h"
#include "triplet/triplet.h"

namespace deeprank {
namespace py = pybind11;
namespace {

std::string shape_str(const py::buffer_info& info) {
  std::string s = "(";
  for (size_t d = 0; d < info.shape.size(); ++d) s += (d ? ", " : "") + std::to_string(info.shape[d]);
  return s + (info.shape.size() == 1 ? ",)" : ")");
}

void require_shape(const py::buffer_info& info, const py::buffer_info& like, const char* name, const char* like_name) {
  if (info.shape != like.shape) {
    throw py::value_error(std::string(name) + " must have the shape of " + like_name + " " + shape_str(like) +
                          ", got " + shape_str(info));
  }
}

template <class T>
void forward(py::handle q, py::handle p, py::handle n, double margin, py::handle losses) {
  auto qi = require_array<T>(q, "q", 2);
  auto pi = require_array<T>(p, "p", 2);
  auto ni = require_array<T>(n, "n", 2);
  auto li = require_array<T>(losses, "losses", 1, /*writable=*/true);
  require_shape(pi, qi, "p", "q");
  require_shape(ni, qi, "n", "q");
  if (li.shape[0] != qi.shape[0]) throw py::value_error("losses must have q.shape[0] elements");
  py::gil_scoped_release release;
  triplet_forward_cpu<T>(static_cast<const T*>(qi.ptr), static_cast<const T*>(pi.ptr),
                         static_cast<const T*>(ni.ptr), qi.shape[0], qi.shape[1], margin,
                         static_cast<T*>(li.ptr));
}

template <class T>
void backward(py::handle grad, py::handle q, py::handle p, py::handle n, double margin, py::handle dq, py::handle dp,
              py::handle dn) {
  auto gi = require_array<T>(grad, "grad_losses", 1);
  auto qi = require_array<T>(q, "q", 2);
  auto pi = require_array<T>(p, "p", 2);
  auto ni = require_array<T>(n, "n", 2);
  auto dqi = require_array<T>(dq, "dq", 2, true);
  auto dpi = require_array<T>(dp, "dp", 2, true);
  auto dni = require_array<T>(dn, "dn", 2, true);
  require_shape(pi, qi, "p", "q");
  require_shape(ni, qi, "n", "q");
  require_shape(dqi, qi, "dq", "q");
  require_shape(dpi, qi, "dp", "q");
  require_shape(dni, qi, "dn", "q");
  if (gi.shape[0] != qi.shape[0]) throw py::value_error("grad_losses must have q.shape[0] elements");
  py::gil_scoped_release release;
  triplet_backward_cpu<T>(static_cast<const T*>(gi.ptr), static_cast<const T*>(qi.ptr),
                          static_cast<const T*>(pi.ptr), static_cast<const T*>(ni.ptr), qi.shape[0], qi.shape[1],
                          margin, static_cast<T*>(dqi.ptr), static_cast<T*>(dpi.ptr), static_cast<T*>(dni.ptr));
}

}  // namespace

void bind_triplet(py::module_& m) {
  m.def(
      "triplet_forward",
      [](py::handle q, py::handle p, py::handle n, double margin, py::handle losses) {
        if (is_float32_array(q, "q")) forward<float>(q, p, n, margin, losses);
        else forward<double>(q, p, n, margin, losses);
      },
      py::arg("q"), py::arg("p"), py::arg("n"), py::arg("margin"), py::arg("losses"),
      "Per-triplet hinge max(0, margin + |q-p|^2 - |q-n|^2) of [B, D] arrays into losses [B] (same dtype).");
  m.def(
      "triplet_backward",
      [](py::handle grad, py::handle q, py::handle p, py::handle n, double margin, py::handle dq, py::handle dp,
         py::handle dn) {
        if (is_float32_array(q, "q")) backward<float>(grad, q, p, n, margin, dq, dp, dn);
        else backward<double>(grad, q, p, n, margin, dq, dp, dn);
      },
      py::arg("grad_losses"), py::arg("q"), py::arg("p"), py::arg("n"), py::arg("margin"), py::arg("dq"),
      py::arg("dp"), py::arg("dn"),
      "Gradients of the per-triplet hinge into dq, dp, dn [B, D]: zero for satisfied triplets, NaN for NaN ones.");
}

}  // namespace deeprank
