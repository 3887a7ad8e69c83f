// Host entry points of the CUDA kernels, in plain C++ (no CUDA types) so that bindings_cuda.cpp
// compiles with the host compiler. Every pointer is a device pointer on `device`; `stream` is a
// cudaStream_t passed as an integer (torch.cuda.current_stream().cuda_stream). Nothing here
// synchronises: the kernels are enqueued on `stream` and the call returns.
// Arguments are validated in deeprank/ops/cuda.py; these functions only check what the kernels
// themselves need (sizes that fit their index types, shared memory available on the device).
#pragma once

#include <cstddef>
#include <cstdint>

namespace deeprank::cuda {

// ----- top-K (csrc/topk/topk.cu) -------------------------------------------------------------
// Exact k nearest neighbours by squared L2 distance, semantics of the CPU deeprank.topk:
// rows ascending by (distance, index), distances = float32(float64 sum((q - x)^2)), NaN last.
struct TopkPlan {
  int query_rows_per_block;  // BM: queries sharing one database tile
  int splits;                // S: database splits (blocks along the database)
  int64_t split_rows;        // database rows per split (a multiple of the tile width)
  int candidates;            // K' = k + extra: per-(query, split) list length kept on chip
  int merge_warps;           // warps per query in the merge kernel
  int64_t workspace_elems;   // 64-bit elements of workspace: M * S * K'
};
TopkPlan topk_plan(int64_t m, int64_t n, int64_t d, int64_t k, int device);
// workspace: at least plan.workspace_elems 8-byte elements (e.g. a torch int64 tensor).
void topk_launch(const float* queries, const float* database, int64_t m, int64_t n, int64_t d, int64_t k,
                 void* workspace, int64_t workspace_elems, float* out_dist, int64_t* out_idx,
                 std::uintptr_t stream, int device);

// ----- triplet loss (csrc/triplet/triplet.cu) -------------------------------------------------
// q, p, n, dq, dp, dn: [rows, dim]; losses, grad: [rows]. T = float or double.
template <class T>
void triplet_forward_launch(const T* q, const T* p, const T* n, int64_t rows, int64_t dim, double margin,
                            T* losses, std::uintptr_t stream, int device);
template <class T>
void triplet_backward_launch(const T* grad, const T* q, const T* p, const T* n, int64_t rows, int64_t dim,
                             double margin, T* dq, T* dp, T* dn, std::uintptr_t stream, int device);

// ----- local response normalization (csrc/lrn/lrn.cu) -----------------------------------------
// x, y, grad_y, grad_x: [batch, channels, spatial] contiguous (spatial = H*W, or L, or 1).
template <class T>
void lrn_forward_launch(const T* x, int64_t batch, int64_t channels, int64_t spatial, int64_t size, double alpha,
                        double beta, double k, T* y, std::uintptr_t stream, int device);
template <class T>
void lrn_backward_launch(const T* grad_y, const T* x, int64_t batch, int64_t channels, int64_t spatial,
                         int64_t size, double alpha, double beta, double k, T* grad_x, std::uintptr_t stream,
                         int device);
// Largest LRN window the CUDA kernels take (their sliding windows live in registers).
constexpr int64_t kLrnMaxSize = 32;

}  // namespace deeprank::cuda
