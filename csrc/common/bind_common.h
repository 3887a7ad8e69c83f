#pragma once
#include <pybind11/pybind11.h>

namespace deeprank {
// Threads, ISA selection and build facts: deeprank._C.{get_num_threads, set_num_threads, ...}.
void bind_common(pybind11::module_& m);
}  // namespace deeprank
