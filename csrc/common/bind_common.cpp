#include "common/bind_common.h"

#include <pybind11/stl.h>

#include <stdexcept>

#include "common/isa.h"
#include "common/parallel.h"

namespace deeprank {
namespace py = pybind11;

void bind_common(py::module_& m) {
  m.def("get_num_threads", &get_num_threads, "Threads used by deeprank's CPU kernels.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("threads must be an integer >= 1, got " + std::to_string(n));
        set_num_threads(n);
      },
      py::arg("threads"), "Set the threads used by deeprank's CPU kernels (does not affect torch).");
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); },
        "SIMD variant the kernels use now: 'generic', 'avx2' or 'avx512'.");
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); }, "Widest SIMD variant this CPU supports.");
  m.def("available_isas", &available_isas, "SIMD variants usable on this CPU.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        try {
          set_isa(name);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("isa"), "Force a SIMD variant ('auto' restores detection). Meant for tests and benchmarks.");
  m.attr("__version__") = DEEPRANK_VERSION;
  m.attr("compiler") = DEEPRANK_COMPILER;
}

}  // namespace deeprank
