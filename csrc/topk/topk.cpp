// Driver of the exact top-K search: blocking, threads, candidate selection and the exact final pass.
// The method and the workspace bound are described in topk.h.
#include "topk/topk.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "common/isa.h"
#include "common/parallel.h"
#include "topk/topk_kernels.h"

namespace deeprank {
namespace {

// Rows or queries with a squared norm at or above this (or not finite) skip the float32 kernels,
// whose intermediate values could overflow, and are handled exactly in float64.
constexpr float kHuge = 1e37f;
// At most this many (finite) queries use the row kernel; more use the packed-lanes kernel.
constexpr int64_t kFewQueries = 4;
// Cache budgets: one packed query block and one database tile should sit in L2 together.
constexpr int64_t kQueryBlockBytes = 256 * 1024;
constexpr int64_t kMaxQueryBlock = 512;
constexpr int64_t kTileBytes = 384 * 1024;
// Database rows per group of the exact pass (fits L2 next to a few query rows).
constexpr int64_t kRegionBytes = 512 * 1024;
// Database tiles are a multiple of every kernel's row step (12, 6, 4).
constexpr int64_t kRowStep = 24;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Slots of a candidate buffer before its first compaction.
int64_t buffer_slots(int64_t k) { return std::max<int64_t>(2 * k, k + 256); }

// Sorting order of results: ascending distance, NaN last, ties by smaller index.
bool result_before(float da, int64_t ia, float db, int64_t ib) {
  const bool na = std::isnan(da), nb = std::isnan(db);
  if (na != nb) return nb;
  if (!na && da != db) return da < db;
  return ia < ib;
}

// Candidates of one query within one database split. Keeps every row whose f could still be among
// the k best once float32 rounding is accounted for: f <= (k-th smallest f seen) + slack.
struct Candidates {
  std::vector<float> f;
  std::vector<int64_t> idx;
  std::vector<float> scratch;
  float thr = FLT_MAX;  // inf and NaN never pass
  float slack = 0.0f;
  int64_t k = 0;
  size_t slots = 0;

  void init(int64_t k_, float slack_) {
    k = k_;
    slack = slack_;
    slots = static_cast<size_t>(buffer_slots(k_));
  }

  void push(int64_t row, float value) {
    if (!(value <= thr)) return;  // the kernel's threshold may be stale
    f.push_back(value);
    idx.push_back(row);
    if (f.size() >= slots) compact();
  }

  void compact() {
    scratch.assign(f.begin(), f.end());
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
    thr = std::min(FLT_MAX, std::nextafter(scratch[k - 1] + slack, FLT_MAX));
    size_t kept = 0;
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] <= thr) {
        f[kept] = f[i];
        idx[kept] = idx[i];
        ++kept;
      }
    }
    f.resize(kept);
    idx.resize(kept);
    // Many rows tying within the slack (duplicates): make room instead of compacting every push.
    if (kept > slots / 2) slots *= 2;
  }
};

struct CandidateSink final : HitSink {
  Candidates* const* lanes = nullptr;
  float* thr = nullptr;
  void push(int lane, int64_t row, float f) override {
    Candidates& c = *lanes[lane];
    c.push(row, f);
    thr[lane] = c.thr;
  }
};

// Exact distances of one query to every row, then the k best (used for queries with inf or huge
// values, and as a safety net should a query end with fewer than k candidates).
void brute_force(const float* q, const float* x, int64_t n, int64_t d, int64_t k, float* out_d, int64_t* out_i) {
  std::vector<float> dist(static_cast<size_t>(n));
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    dist[i] = static_cast<float>(DEEPRANK_ISA_CALL(topk_exact_sqdist, q, x + i * d, d));
    order[i] = i;
  }
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return result_before(dist[a], a, dist[b], b); });
  for (int64_t j = 0; j < k; ++j) {
    out_i[j] = order[j];
    out_d[j] = dist[order[j]];
  }
}

struct Plan {
  bool few = false;      // row kernel (few queries) instead of packed lanes
  int64_t lanes = 1;     // queries per packed block of the lanes kernel
  int64_t qblock = 1;    // queries per work item
  int64_t qblocks = 1;   // work items along queries
  int64_t splits = 1;    // work items along the database
  int64_t tile = 1;      // database rows per tile
  int threads = 1;
};

Plan make_plan(int64_t mq, int64_t n, int64_t d, int threads) {
  Plan p;
  p.threads = threads;
  p.lanes = DEEPRANK_ISA_CALL(topk_lanes, false);
  const int64_t narrow = DEEPRANK_ISA_CALL(topk_lanes, true);
  // A narrow block costs about 3/4 of a wide one (measured, AVX-512): worth it only when one narrow
  // block holds every query (M = 5..16 on AVX-512), not to trim the last of several wide blocks.
  if (mq <= narrow) p.lanes = narrow;
  p.few = mq <= kFewQueries;
  if (p.few) {
    p.qblock = std::max<int64_t>(1, mq);
  } else {
    int64_t qb = kQueryBlockBytes / (4 * d) / p.lanes * p.lanes;
    qb = std::clamp<int64_t>(qb, p.lanes, kMaxQueryBlock);
    p.qblock = std::min(qb, round_up(mq, p.lanes));
  }
  p.qblocks = std::max<int64_t>(1, ceil_div(mq, p.qblock));
  p.tile = std::max<int64_t>(kRowStep, kTileBytes / (4 * d) / kRowStep * kRowStep);
  // Few query blocks: split the database too, so every thread has work (2 items per thread lets
  // the dynamic schedule absorb noisy neighbours).
  if (threads > 1 && p.qblocks < 2 * threads) {
    p.splits = std::clamp<int64_t>(ceil_div(2 * threads, p.qblocks), 1, ceil_div(n, p.tile));
  }
  return p;
}

// DEEPRANK_TOPK_TRACE=1 prints the time of each phase to stderr (for tuning).
struct PhaseTimer {
  bool on = std::getenv("DEEPRANK_TOPK_TRACE") != nullptr;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void mark(const char* what) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "topk %-10s %8.1f ms\n", what, std::chrono::duration<double, std::milli>(now - last).count());
    last = now;
  }
};

}  // namespace

void squared_norms(const float* x, int64_t n, int64_t d, float* out, int threads) {
  parallel_for(
      n, std::max<int64_t>(1024, (1 << 20) / std::max<int64_t>(1, d)),
      [&](int64_t b, int64_t e) { DEEPRANK_ISA_CALL(topk_row_norms, x + b * d, e - b, d, out + b); }, threads);
}

size_t topk_workspace_bytes(int64_t m, int64_t n, int64_t d, int64_t k, int threads, bool norms_given) {
  if (threads <= 0) threads = get_num_threads();
  const Plan p = make_plan(m, n, d, threads);
  size_t bytes = 4 * static_cast<size_t>(m) + (norms_given ? 0 : 4 * static_cast<size_t>(n));
  bytes += static_cast<size_t>(threads) * 4 * static_cast<size_t>(round_up(p.qblock, p.lanes) * d);
  bytes += static_cast<size_t>(m) * p.splits * 12 * static_cast<size_t>(buffer_slots(k));
  bytes += static_cast<size_t>(m) * static_cast<size_t>(k) * 32;
  return bytes;
}

void topk_search(const float* queries, int64_t m, const float* database, int64_t n, int64_t d,
                 const float* database_norms, int64_t k, float* out_dist, int64_t* out_idx, int threads) {
  if (m <= 0) return;
  if (threads <= 0) threads = get_num_threads();
  PhaseTimer timer;

  // Database norms; rows whose norm is not finite or huge are set aside ("special" rows).
  std::vector<float> own_norms;
  const float* xn = database_norms;
  if (xn == nullptr) {
    own_norms.resize(static_cast<size_t>(n));
    squared_norms(database, n, d, own_norms.data(), threads);
    xn = own_norms.data();
  }
  std::vector<int64_t> special;
  float xn_max = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = xn[i];
    if (v >= 0.0f && v < kHuge) {
      xn_max = std::max(xn_max, v);
    } else {
      special.push_back(i);
    }
  }
  if (!special.empty()) {
    // NaN norms make the kernels reject these rows; they are evaluated exactly at the end instead.
    if (own_norms.empty()) own_norms.assign(xn, xn + n);
    for (int64_t i : special) own_norms[i] = std::numeric_limits<float>::quiet_NaN();
    xn = own_norms.data();
  }

  std::vector<float> qn(static_cast<size_t>(m));
  squared_norms(queries, m, d, qn.data(), threads);
  std::vector<int64_t> normal;  // queries for the blocked scan
  std::vector<int64_t> odd;     // queries with inf or huge values: brute force
  for (int64_t i = 0; i < m; ++i) {
    float* od = out_dist + i * k;
    int64_t* oi = out_idx + i * k;
    if (std::isnan(qn[i])) {
      // Every distance is NaN, so the order is by index.
      for (int64_t j = 0; j < k; ++j) {
        od[j] = std::numeric_limits<float>::quiet_NaN();
        oi[j] = j;
      }
    } else if (qn[i] < kHuge) {
      normal.push_back(i);
    } else {
      odd.push_back(i);
    }
  }
  parallel_for(
      static_cast<int64_t>(odd.size()), 1,
      [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const int64_t i = odd[t];
          brute_force(queries + i * d, database, n, d, k, out_dist + i * k, out_idx + i * k);
        }
      },
      threads);

  const int64_t mq = static_cast<int64_t>(normal.size());
  timer.mark("prepare");
  if (mq == 0) return;

  // Rigorous bound on the float32 error of f = ||x||^2 - 2 q.x (both dot products accumulate at
  // most d rounded terms): |err| <= (d + 1) * 2^-23 * (||q||^2 + ||x||^2). A row can be among the
  // true k best only if its f is within twice that of the k-th smallest f.
  std::vector<float> slack(static_cast<size_t>(mq));
  const double unit = static_cast<double>(d + 4) * std::ldexp(1.0, -23);
  for (int64_t t = 0; t < mq; ++t) slack[t] = static_cast<float>(2.0 * unit * (qn[normal[t]] + xn_max));

  const Plan p = make_plan(mq, n, d, threads);
  std::vector<Candidates> cand(static_cast<size_t>(mq * p.splits));
  const int64_t rows_per_split = round_up(ceil_div(n, p.splits), kRowStep);
  const int64_t items = p.qblocks * p.splits;
  std::atomic<int64_t> next{0};
  const int workers = static_cast<int>(std::min<int64_t>(threads, items));

  parallel_run(workers, [&](int, int) {
    std::vector<float> qpack;  // packed queries of one item (lanes kernel) or their rows (row kernel)
    std::vector<float> thr;
    std::vector<Candidates*> lane_cand;
    CandidateSink sink;
    for (;;) {
      const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
      if (item >= items) return;
      const int64_t qb = item / p.splits, s = item % p.splits;
      const int64_t q0 = qb * p.qblock, q1 = std::min(mq, q0 + p.qblock);
      const int64_t r0 = std::min(n, s * rows_per_split), r1 = std::min(n, r0 + rows_per_split);
      const int64_t nq = q1 - q0;
      if (r0 >= r1 || nq <= 0) continue;
      for (int64_t t = q0; t < q1; ++t) cand[s * mq + t].init(k, slack[t]);

      if (p.few) {
        qpack.resize(static_cast<size_t>(nq * d));
        thr.assign(static_cast<size_t>(nq), FLT_MAX);
        lane_cand.resize(static_cast<size_t>(nq));
        for (int64_t t = 0; t < nq; ++t) {
          std::copy(queries + normal[q0 + t] * d, queries + (normal[q0 + t] + 1) * d, qpack.begin() + t * d);
          lane_cand[t] = &cand[s * mq + q0 + t];
        }
        sink.lanes = lane_cand.data();
        sink.thr = thr.data();
        DEEPRANK_ISA_CALL(topk_scan_rows, qpack.data(), static_cast<int>(nq), d, database, xn, r0, r1, thr.data(),
                          sink);
        continue;
      }

      // Pack the queries lane-major: block u holds queries q0 + u*lanes + l in lane l, at [c][l].
      const int64_t L = p.lanes;
      const int64_t blocks = ceil_div(nq, L);
      qpack.assign(static_cast<size_t>(blocks * L * d), 0.0f);
      thr.assign(static_cast<size_t>(blocks * L), std::numeric_limits<float>::quiet_NaN());  // NaN: lane unused
      lane_cand.assign(static_cast<size_t>(blocks * L), nullptr);
      for (int64_t t = 0; t < nq; ++t) {
        const int64_t u = t / L, l = t % L;
        const float* src = queries + normal[q0 + t] * d;
        float* dst = qpack.data() + u * L * d + l;
        for (int64_t c = 0; c < d; ++c) dst[c * L] = src[c];
        thr[u * L + l] = FLT_MAX;
        lane_cand[u * L + l] = &cand[s * mq + q0 + t];
      }
      for (int64_t t0 = r0; t0 < r1; t0 += p.tile) {
        const int64_t t1 = std::min(r1, t0 + p.tile);
        for (int64_t u = 0; u < blocks; ++u) {
          sink.lanes = lane_cand.data() + u * L;
          sink.thr = thr.data() + u * L;
          DEEPRANK_ISA_CALL(topk_scan_lanes, qpack.data() + u * L * d, static_cast<int>(L), d, database, xn, t0, t1,
                            thr.data() + u * L, sink);
        }
      }
    }
  });

  timer.mark("scan");
  // 1. Merge the splits of each query and keep the rows within the slack of the k-th best f, plus
  //    the special rows.
  std::vector<std::vector<int64_t>> final_rows(static_cast<size_t>(mq));
  parallel_for(
      mq, 16,
      [&](int64_t b, int64_t e) {
        std::vector<float> f, tmp;
        for (int64_t t = b; t < e; ++t) {
          std::vector<int64_t>& rows = final_rows[t];
          f.clear();
          for (int64_t s = 0; s < p.splits; ++s) {
            Candidates& c = cand[s * mq + t];
            f.insert(f.end(), c.f.begin(), c.f.end());
            rows.insert(rows.end(), c.idx.begin(), c.idx.end());
            c = Candidates();  // free early
          }
          if (static_cast<int64_t>(f.size()) >= k) {
            tmp.assign(f.begin(), f.end());
            std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end());
            const float window = std::nextafter(tmp[k - 1] + slack[t], FLT_MAX);
            size_t kept = 0;
            for (size_t j = 0; j < f.size(); ++j) {
              if (f[j] <= window) rows[kept++] = rows[j];
            }
            rows.resize(kept);
          }
          rows.insert(rows.end(), special.begin(), special.end());
        }
      },
      threads);

  timer.mark("merge");
  // 2. Exact distances of every (query, candidate row) pair, grouped by database region so each
  //    row is fetched from memory once for all the queries that kept it (k = 1000 and M = 1024 make
  //    a million pairs: gathered per query they would re-read the database many times over).
  std::vector<int64_t> offset(static_cast<size_t>(mq) + 1, 0);
  for (int64_t t = 0; t < mq; ++t) offset[t + 1] = offset[t] + static_cast<int64_t>(final_rows[t].size());
  const int64_t pairs = offset[mq];
  std::vector<float> exact(static_cast<size_t>(pairs));
  {
    // Pairs are in query order within a region, so a query's row is reused for all its pairs there.
    const int64_t region = std::max<int64_t>(1, kRegionBytes / (4 * d));
    const int64_t regions = ceil_div(n, region);
    std::vector<int64_t> start(static_cast<size_t>(regions) + 1, 0);
    for (int64_t t = 0; t < mq; ++t) {
      for (int64_t r : final_rows[t]) ++start[r / region + 1];
    }
    for (int64_t g = 0; g < regions; ++g) start[g + 1] += start[g];
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    std::vector<int64_t> pair_slot(static_cast<size_t>(pairs));
    std::vector<int32_t> pair_query(static_cast<size_t>(pairs));
    for (int64_t t = 0; t < mq; ++t) {
      const std::vector<int64_t>& rows = final_rows[t];
      for (size_t j = 0; j < rows.size(); ++j) {
        const int64_t at = pos[rows[j] / region]++;
        pair_slot[at] = offset[t] + static_cast<int64_t>(j);
        pair_query[at] = static_cast<int32_t>(t);
      }
    }
    parallel_for(
        regions, 1,
        [&](int64_t b, int64_t e) {
          for (int64_t at = start[b]; at < start[e]; ++at) {
            const int64_t t = pair_query[at], slot = pair_slot[at];
            const int64_t row = final_rows[t][slot - offset[t]];
            exact[slot] = static_cast<float>(
                DEEPRANK_ISA_CALL(topk_exact_sqdist, queries + normal[t] * d, database + row * d, d));
          }
        },
        threads);
  }

  timer.mark("exact");
  // 3. Sort each query's candidates by (exact distance, index) and write the k best.
  parallel_for(
      mq, 16,
      [&](int64_t b, int64_t e) {
        std::vector<int64_t> order;
        for (int64_t t = b; t < e; ++t) {
          const int64_t i = normal[t];
          const std::vector<int64_t>& rows = final_rows[t];
          const float* dist = exact.data() + offset[t];
          float* od = out_dist + i * k;
          int64_t* oi = out_idx + i * k;
          if (static_cast<int64_t>(rows.size()) < k) {
            brute_force(queries + i * d, database, n, d, k, od, oi);  // safety net (e.g. wrong norms)
            continue;
          }
          order.resize(rows.size());
          for (size_t j = 0; j < rows.size(); ++j) order[j] = static_cast<int64_t>(j);
          const auto less = [&](int64_t a, int64_t c) { return result_before(dist[a], rows[a], dist[c], rows[c]); };
          if (static_cast<int64_t>(rows.size()) <= 2 * k) {
            std::sort(order.begin(), order.end(), less);
          } else {
            std::partial_sort(order.begin(), order.begin() + k, order.end(), less);
          }
          for (int64_t j = 0; j < k; ++j) {
            od[j] = dist[order[j]];
            oi[j] = rows[order[j]];
          }
        }
      },
      threads);
  timer.mark("sort");
}

}  // namespace deeprank
