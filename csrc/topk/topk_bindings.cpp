// deeprank._C.topk / squared_norms / topk_workspace_bytes: buffer-protocol arrays in, numpy out.
// The checks here are precondition guards for memory safety: topk_search reads m x d, n x d (and n)
// floats and writes m x k results through raw pointers, so dtype, rank, C-contiguity, matching D,
// 1 <= k <= n and threads >= 0 are enforced before any pointer is touched, whoever calls. They are
// not the user-facing checks: deeprank.ops.topk converts dtypes and layouts and validates its
// arguments first (k through deeprank.ops.checks.check_k, threads through check_threads), so users
// see those messages; these fire only when _C is called directly.
#include "topk/topk_bindings.h"

#include <pybind11/numpy.h>

#include <string>

#include "common/checks.h"
#include "topk/topk.h"

namespace deeprank {
namespace py = pybind11;

namespace {

// Precondition guard; deeprank.ops.checks.check_threads gives the user-facing message.
int check_threads(int threads) {
  if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default), got " + std::to_string(threads));
  return threads;
}

py::tuple topk_py(py::handle queries, py::handle database, int64_t k, py::handle database_norms, int threads) {
  check_threads(threads);
  py::buffer_info q = require_array<float>(queries, "queries", 2);
  py::buffer_info x = require_array<float>(database, "database", 2);
  const int64_t m = q.shape[0], d = q.shape[1], n = x.shape[0];
  if (x.shape[1] != d) {
    throw py::value_error("queries and database must have the same number of columns (D), got queries D=" +
                          std::to_string(d) + " and database D=" + std::to_string(x.shape[1]));
  }
  if (d < 1) throw py::value_error("queries and database must have at least one column (D >= 1), got D=0");
  // Precondition guard (k rows are selected among n and written per query); the user-facing check
  // and message are deeprank.ops.checks.check_k's, called before this by every Python caller.
  if (k < 1 || k > n) {
    throw py::value_error("k must be between 1 and the number of database rows (" + std::to_string(n) + "), got " +
                          std::to_string(k));
  }
  py::buffer_info norms;
  const float* norms_ptr = nullptr;
  if (!database_norms.is_none()) {
    norms = require_array<float>(database_norms, "database_norms", 1);
    if (norms.shape[0] != n) {
      throw py::value_error("database_norms must have one entry per database row (" + std::to_string(n) +
                            "), got " + std::to_string(norms.shape[0]));
    }
    norms_ptr = static_cast<const float*>(norms.ptr);
  }
  py::array_t<float> dist({m, k});
  py::array_t<int64_t> idx({m, k});
  float* dist_ptr = dist.mutable_data();
  int64_t* idx_ptr = idx.mutable_data();
  {
    py::gil_scoped_release release;
    topk_search(static_cast<const float*>(q.ptr), m, static_cast<const float*>(x.ptr), n, d, norms_ptr, k, dist_ptr,
                idx_ptr, threads);
  }
  return py::make_tuple(dist, idx);
}

py::array_t<float> squared_norms_py(py::handle x_obj, int threads) {
  check_threads(threads);
  py::buffer_info x = require_array<float>(x_obj, "x", 2);
  const int64_t n = x.shape[0], d = x.shape[1];
  py::array_t<float> out(n);
  float* out_ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    squared_norms(static_cast<const float*>(x.ptr), n, d, out_ptr, threads);
  }
  return out;
}

}  // namespace

void bind_topk(py::module_& m) {
  m.def("topk", &topk_py, py::arg("queries"), py::arg("database"), py::arg("k"), py::kw_only(),
        py::arg("database_norms") = py::none(), py::arg("threads") = 0,
        "Exact k nearest neighbours by squared Euclidean distance.\n\n"
        "queries [M, D] and database [N, D]: C-contiguous float32; database_norms: None or float32 [N]\n"
        "holding ||x_i||^2; threads: 0 = deeprank.get_num_threads(). Returns (distances float32 [M, k],\n"
        "indices int64 [M, k]), rows sorted ascending, ties by smaller index, NaN last.");
  m.def("squared_norms", &squared_norms_py, py::arg("x"), py::kw_only(), py::arg("threads") = 0,
        "Squared L2 norm of every row of a C-contiguous float32 [N, D] array (float32 [N]).");
  m.def(
      "topk_workspace_bytes",
      [](int64_t m, int64_t n, int64_t d, int64_t k, int threads, bool norms_given) {
        check_threads(threads);
        return topk_workspace_bytes(m, n, d, k, threads, norms_given);
      },
      py::arg("m"), py::arg("n"), py::arg("d"), py::arg("k"), py::kw_only(), py::arg("threads") = 0,
      py::arg("norms_given") = false,
      "Upper bound (bytes, before candidate buffers grow on ties) of topk's workspace beyond inputs and results.");
}

}  // namespace deeprank
