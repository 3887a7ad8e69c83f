// Micro-kernels behind topk_search, compiled once per ISA (topk_kernels.cpp; see common/isa.h).
//
// f(q, x) = ||x||^2 - 2 q.x ranks database rows for one query like the squared distance does.
// The scan kernels compute f for blocks of queries x rows and report every (query, row) whose f is
// <= that query's threshold thr[lane] (ordered compare: NaN never passes) to a HitSink, which may
// lower thr[lane]; kernels re-read thresholds after each report.
#pragma once

#include <cstdint>

#include "common/isa.h"

namespace deeprank {

struct HitSink {
  virtual void push(int lane, int64_t row, float f) = 0;

 protected:
  ~HitSink() = default;
};

}  // namespace deeprank

// Queries per packed block of the "lanes" kernel on this ISA (a multiple of the vector width);
// narrow: the smaller block size also supported (half as many queries, more rows per step).
DEEPRANK_DECLARE_ISA_VARIANTS(int topk_lanes(bool narrow))
// Squared row norms of a row-major [n, d] array (float32 accumulation).
DEEPRANK_DECLARE_ISA_VARIANTS(void topk_row_norms(const float* x, int64_t n, int64_t d, float* out))
// Many queries: qpack is [d][lanes] (query j of the block in lane j, unused lanes zero), lanes one
// of topk_lanes(false / true); scans rows [r0, r1) of x ([*, d] row-major) with norms xn; thr has
// `lanes` entries.
DEEPRANK_DECLARE_ISA_VARIANTS(void topk_scan_lanes(const float* qpack, int lanes, int64_t d, const float* x,
                                                    const float* xn, int64_t r0, int64_t r1, float* thr,
                                                    ::deeprank::HitSink& sink))
// Few queries (nq <= 8): q is [nq, d] row-major; scans rows [r0, r1); thr has nq entries.
DEEPRANK_DECLARE_ISA_VARIANTS(void topk_scan_rows(const float* q, int nq, int64_t d, const float* x,
                                                   const float* xn, int64_t r0, int64_t r1, float* thr,
                                                   ::deeprank::HitSink& sink))
// sum((a - b)^2) accumulated in float64.
DEEPRANK_DECLARE_ISA_VARIANTS(double topk_exact_sqdist(const float* a, const float* b, int64_t d))
