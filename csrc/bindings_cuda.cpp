// deeprank._cuda: the CUDA kernels behind deeprank/ops/cuda.py.
//
// The module never sees a torch tensor: it takes device pointers (tensor.data_ptr()), shapes and a
// stream handle (torch.cuda.current_stream().cuda_stream), so it links only the static CUDA
// runtime and imports on machines without a GPU or driver. Argument checking (dtypes, devices,
// contiguity, shapes) lives in deeprank/ops/cuda.py; what is checked here is what the kernels need.
// Errors: RuntimeError for CUDA failures, ValueError for sizes the kernels cannot take.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/cuda_ops.cuh"

namespace py = pybind11;
namespace dc = deeprank::cuda;

namespace {

int device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so later runtime calls start clean
    throw std::runtime_error(std::string("CUDA unavailable: ") + cudaGetErrorString(err));
  }
  return count;
}

template <class T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void check_dtype(const std::string& dtype) {
  if (dtype != "float32" && dtype != "float64") {
    throw py::value_error("dtype must be 'float32' or 'float64', got '" + dtype + "'");
  }
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "deeprank CUDA kernels (raw device pointers + stream handles; see deeprank/ops/cuda.py)";
#ifdef DEEPRANK_VERSION
  m.attr("__version__") = DEEPRANK_VERSION;
#endif
  m.attr("cuda_runtime_version") = CUDART_VERSION;
  m.attr("lrn_max_size") = dc::kLrnMaxSize;

  m.def("device_count", &device_count,
        "Visible CUDA devices; raises RuntimeError with the CUDA error string when there is no driver/GPU.");

  m.def(
      "driver_version",
      []() {
        int v = 0;
        const cudaError_t err = cudaDriverGetVersion(&v);
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        return v;
      },
      "CUDA driver version as an integer (0 when no driver is installed).");

  m.def(
      "topk_plan",
      [](int64_t m_, int64_t n, int64_t d, int64_t k, int device) {
        const dc::TopkPlan p = dc::topk_plan(m_, n, d, k, device);
        py::dict out;
        out["query_rows_per_block"] = p.query_rows_per_block;
        out["splits"] = p.splits;
        out["split_rows"] = p.split_rows;
        out["candidates"] = p.candidates;
        out["merge_warps"] = p.merge_warps;
        out["workspace_elems"] = p.workspace_elems;
        return out;
      },
      py::arg("m"), py::arg("n"), py::arg("d"), py::arg("k"), py::arg("device"),
      "Launch plan of the top-K kernels; workspace_elems 8-byte elements must be passed to topk().");

  m.def(
      "topk",
      [](std::uintptr_t queries, std::uintptr_t database, int64_t m_, int64_t n, int64_t d, int64_t k,
         std::uintptr_t workspace, int64_t workspace_elems, std::uintptr_t out_dist, std::uintptr_t out_idx,
         std::uintptr_t stream, int device) {
        py::gil_scoped_release release;
        dc::topk_launch(ptr<const float>(queries), ptr<const float>(database), m_, n, d, k, ptr<void>(workspace),
                        workspace_elems, ptr<float>(out_dist), ptr<int64_t>(out_idx), stream, device);
      },
      py::arg("queries"), py::arg("database"), py::arg("m"), py::arg("n"), py::arg("d"), py::arg("k"),
      py::arg("workspace"), py::arg("workspace_elems"), py::arg("out_dist"), py::arg("out_idx"), py::arg("stream"),
      py::arg("device"));

  m.def(
      "triplet_forward",
      [](const std::string& dtype, std::uintptr_t q, std::uintptr_t p, std::uintptr_t n, int64_t rows, int64_t dim,
         double margin, std::uintptr_t losses, std::uintptr_t stream, int device) {
        check_dtype(dtype);
        py::gil_scoped_release release;
        if (dtype == "float32") {
          dc::triplet_forward_launch<float>(ptr<const float>(q), ptr<const float>(p), ptr<const float>(n), rows,
                                            dim, margin, ptr<float>(losses), stream, device);
        } else {
          dc::triplet_forward_launch<double>(ptr<const double>(q), ptr<const double>(p), ptr<const double>(n), rows,
                                             dim, margin, ptr<double>(losses), stream, device);
        }
      },
      py::arg("dtype"), py::arg("q"), py::arg("p"), py::arg("n"), py::arg("rows"), py::arg("dim"), py::arg("margin"),
      py::arg("losses"), py::arg("stream"), py::arg("device"));

  m.def(
      "triplet_backward",
      [](const std::string& dtype, std::uintptr_t grad, std::uintptr_t q, std::uintptr_t p, std::uintptr_t n,
         int64_t rows, int64_t dim, double margin, std::uintptr_t dq, std::uintptr_t dp, std::uintptr_t dn,
         std::uintptr_t stream, int device) {
        check_dtype(dtype);
        py::gil_scoped_release release;
        if (dtype == "float32") {
          dc::triplet_backward_launch<float>(ptr<const float>(grad), ptr<const float>(q), ptr<const float>(p),
                                             ptr<const float>(n), rows, dim, margin, ptr<float>(dq), ptr<float>(dp),
                                             ptr<float>(dn), stream, device);
        } else {
          dc::triplet_backward_launch<double>(ptr<const double>(grad), ptr<const double>(q), ptr<const double>(p),
                                              ptr<const double>(n), rows, dim, margin, ptr<double>(dq),
                                              ptr<double>(dp), ptr<double>(dn), stream, device);
        }
      },
      py::arg("dtype"), py::arg("grad"), py::arg("q"), py::arg("p"), py::arg("n"), py::arg("rows"), py::arg("dim"),
      py::arg("margin"), py::arg("dq"), py::arg("dp"), py::arg("dn"), py::arg("stream"), py::arg("device"));

  m.def(
      "lrn_forward",
      [](const std::string& dtype, std::uintptr_t x, int64_t batch, int64_t channels, int64_t spatial, int64_t size,
         double alpha, double beta, double k, std::uintptr_t y, std::uintptr_t stream, int device) {
        check_dtype(dtype);
        py::gil_scoped_release release;
        if (dtype == "float32") {
          dc::lrn_forward_launch<float>(ptr<const float>(x), batch, channels, spatial, size, alpha, beta, k,
                                        ptr<float>(y), stream, device);
        } else {
          dc::lrn_forward_launch<double>(ptr<const double>(x), batch, channels, spatial, size, alpha, beta, k,
                                         ptr<double>(y), stream, device);
        }
      },
      py::arg("dtype"), py::arg("x"), py::arg("batch"), py::arg("channels"), py::arg("spatial"), py::arg("size"),
      py::arg("alpha"), py::arg("beta"), py::arg("k"), py::arg("y"), py::arg("stream"), py::arg("device"));

  m.def(
      "lrn_backward",
      [](const std::string& dtype, std::uintptr_t grad_y, std::uintptr_t x, int64_t batch, int64_t channels,
         int64_t spatial, int64_t size, double alpha, double beta, double k, std::uintptr_t grad_x,
         std::uintptr_t stream, int device) {
        check_dtype(dtype);
        py::gil_scoped_release release;
        if (dtype == "float32") {
          dc::lrn_backward_launch<float>(ptr<const float>(grad_y), ptr<const float>(x), batch, channels, spatial, size,
                                         alpha, beta, k, ptr<float>(grad_x), stream, device);
        } else {
          dc::lrn_backward_launch<double>(ptr<const double>(grad_y), ptr<const double>(x), batch, channels, spatial,
                                          size, alpha, beta, k, ptr<double>(grad_x), stream, device);
        }
      },
      py::arg("dtype"), py::arg("grad_y"), py::arg("x"), py::arg("batch"), py::arg("channels"), py::arg("spatial"),
      py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"), py::arg("grad_x"), py::arg("stream"),
      py::arg("device"));
}
