#pragma once
#include <pybind11/pybind11.h>

namespace deeprank {
void bind_triplet(pybind11::module_& m);
}  // namespace deeprank
