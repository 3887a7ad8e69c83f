// Exact k-nearest-neighbour search by squared Euclidean distance on the CPU.
//
// Shapes: queries [m, d], database [n, d], database_norms [n] (optional), results [m, k]; all
// row-major float32 except indices (int64). Nothing here knows about Python or torch.
//
// Method. Distances are ranked through f(q, x) = ||x||^2 - 2 q.x (||q||^2 is constant per query),
// computed by register-blocked SIMD micro-kernels over tiles of queries x database rows, so each
// database tile is read once per block of queries and the m x n distance matrix never exists. A
// per-query candidate buffer keeps every row whose f is within a rigorous float32 error bound of the
// current k-th best (4 gamma(d + 3) (||q||^2 + max ||x||^2), gamma(j) = j 2^-24 / (1 - j 2^-24);
// derived at candidate_slack in topk.cpp); at the end the surviving candidates (about k per query)
// get their distance recomputed exactly as sum((q - x)^2) in float64 and rounded once to float32, and
// are sorted by (distance, index). So results match a float64 reference up to that final rounding, exact duplicates
// tie exactly and are ordered by index, and distances are never negative.
//
// NaN and overflow. A query containing NaN gets NaN distances and indices 0..k-1 (every distance is
// NaN, so the index order decides). Database rows whose norm is not finite or is huge (>= 1e37) are
// kept aside and always evaluated exactly, so rows with NaN sort last and inf rows sort before them.
// Queries with inf or huge values are answered by an exact brute-force scan.
// Distances too large for float32 (values around 1e19 and beyond) are reported as inf but ranked
// by their float64 value, so the order stays right (the GPU kernel ranks in float32: there they tie
// at inf and come in index order).
//
// Workspace (bytes), beyond the inputs and the m x k results:
//   4 n (database norms, only when not given) + 4 m (query norms)
//   + T * 4 * Mb * d (packed query blocks, Mb <= 512 queries, one per worker thread T)
//   + m * S * 12 * C (candidate buffers during the scan, S <= 2 T database splits,
//                     C = max(2k, k + 256) slots, grown only while more than C/2 candidates tie
//                     within the error bound)
//   + m * k * 36 (the exact pass: row, slot, query and float64 distance of each final candidate; more
//                 only for rows tying within the error bound)
// See topk_workspace_bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace deeprank {

// out[i] = sum_j x[i, j]^2 in float32, for a row-major [n, d] array.
void squared_norms(const float* x, int64_t n, int64_t d, float* out, int threads);

// Fills out_dist / out_idx ([m, k], row-major). Requires 1 <= k <= n, d >= 1.
// database_norms may be null (computed here); when given it must hold ||x_i||^2 for every row.
// threads <= 0 uses get_num_threads().
void topk_search(const float* queries, int64_t m, const float* database, int64_t n, int64_t d,
                 const float* database_norms, int64_t k, float* out_dist, int64_t* out_idx, int threads);

// The workspace bound above for these sizes (excluding inputs and results), in bytes.
size_t topk_workspace_bytes(int64_t m, int64_t n, int64_t d, int64_t k, int threads, bool norms_given);

}  // namespace deeprank
