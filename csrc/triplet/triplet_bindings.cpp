#include "triplet/triplet_bindings.h"

namespace deeprank {
// Placeholder: the triplet kernels are bound here once written.
void bind_triplet(pybind11::module_&) {}
}  // namespace deeprank
