// The CPU module deeprank._C. Each op binds itself from its own directory.
#include <pybind11/pybind11.h>

#include "common/bind_common.h"
#include "lrn/lrn_bindings.h"
#include "topk/topk_bindings.h"
#include "triplet/triplet_bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "deeprank CPU kernels (buffer protocol in, no torch)";
  deeprank::bind_common(m);
  deeprank::bind_topk(m);
  deeprank::bind_triplet(m);
  deeprank::bind_lrn(m);
}
