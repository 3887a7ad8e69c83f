#include "topk/topk_bindings.h"

namespace deeprank {
// Placeholder: the topk kernels are bound here once written.
void bind_topk(pybind11::module_&) {}
}  // namespace deeprank
