#pragma once
#include <pybind11/pybind11.h>

namespace deeprank {
void bind_lrn(pybind11::module_& m);
}  // namespace deeprank
