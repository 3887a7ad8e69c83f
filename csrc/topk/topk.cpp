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

// Sorting order of results, on exact float64 distances: ascending by the reported (float32) distance,
// NaN last, ties by smaller index -- except that distances too large for float32 (reported as inf)
// keep their float64 order: rows near 1e20 would otherwise all tie at inf and come back in index
// order, a silently wrong ranking.
bool result_before(double da, int64_t ia, double db, int64_t ib) {
  const float fa = static_cast<float>(da), fb = static_cast<float>(db);
  const bool na = std::isnan(fa), nb = std::isnan(fb);
  if (na != nb) return nb;
  if (!na && fa != fb) return fa < fb;
  if (!na && std::isinf(fa) && da != db) return da < db;
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
  std::vector<double> dist(static_cast<size_t>(n));
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    dist[i] = DEEPRANK_ISA_CALL(topk_exact_sqdist, q, x + i * d, d);
    order[i] = i;
  }
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return result_before(dist[a], a, dist[b], b); });
  for (int64_t j = 0; j < k; ++j) {
    out_i[j] = order[j];
    out_d[j] = static_cast<float>(dist[order[j]]);
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

// gamma(j) = j u / (1 - j u), u = 2^-24 (float32's unit roundoff): the relative error bound of j
// roundings in sequence (Higham, Accuracy and Stability of Numerical Algorithms, 3.1). +inf once
// j u >= 1/2, where no bound is claimed.
double gamma32(int64_t j) {
  const double ju = std::ldexp(static_cast<double>(j), -24);
  return ju < 0.5 ? ju / (1.0 - ju) : std::numeric_limits<double>::infinity();
}

// The candidate window of one query: a row is kept while its computed f is within this of the k-th
// smallest computed f seen, and every row of the final k passes. With X = ||x||^2, Q = ||q||^2, ^ for
// computed values and X_max the largest X of a non-special row:
//
// 1. Each term of a dot product passes at most d roundings. The lanes kernel runs one FMA chain of d
//    steps per (query, row). topk_row_norms (every norm) and the row kernel run W lane chains of
//    ceil(d/W) steps (an FMA, or on SSE2 a multiply and an add whose first add, to a zero
//    accumulator, is exact) and then a halving tree of log2 W adds in which adding an all-zero lane is
//    exact: ceil(d/W) + ceil(log2 min(d, W)) <= d roundings (W = 4, 8 or 16). So
//    |X^ - X| <= gamma(d) X and |s^ - q.x| <= gamma(d) sum |q_i x_i| <= gamma(d) ||q|| ||x||.
// 2. f^ = fl(X^ - 2 s^): doubling is exact (norms < kHuge: no overflow) and the subtraction, or the
//    FMA it may be contracted into, rounds once: |f^ - f| <= gamma(d + 1) (X + 2 ||q|| ||x||)
//    <= gamma(d + 1) (Q + 2 X_max) =: B for every non-special row.
// 3. Results are the k smallest e = float32(float64 sum (q - x)^2) = D (1 + eps), D = Q + f the true
//    distance, |eps| < 1.01 u (d + 1 float64 roundings, then one to float32; d < 2^23). Let e_k be the
//    k-th smallest e.
//    A result row y has f(y) <= e_k / (1 - eps) - Q; at least N - k + 1 rows z have
//    f^(z) >= e_k / (1 + eps) - Q - B, so the k-th smallest f^ is >= that too. Hence
//    f^(y) - (k-th smallest f^) <= 2B + 2 eps e_k / (1 - eps^2) <= 2B + 4 gamma(2) (Q + X_max)
//    (e_k <= (1 + eps) D and D <= 2 (Q + X)); the second term is needed because equal e order by
//    index, so a row with a larger true D can win a tie.
// 4. 2B + 4 gamma(2) (Q + X) <= 4 (gamma(d + 1) + gamma(2)) (Q + X) <= 4 gamma(d + 3) (Q + X), and
//    Q <= Q^ / (1 - gamma(d)), X_max <= X^_max / (1 - gamma(d)) (the norms are computed as in 1.).
//    gamma(d + 3) exceeds gamma(d + 1) + gamma(2) by a relative margin of about u, far above the
//    float64 rounding of evaluating this bound; the conversion to float32 rounds up.
// 5. Underflow: products below 2^-126 lose up to 2^-150 each beyond the relative bound (adds of
//    subnormals are exact); the 3d + 1 products and FMAs behind f^, twice, and e's own rounding stay
//    below (d + 1) 2^-147 (1 + gamma(d + 1)), which is added.
// A buffer's threshold is its k-th smallest f^ (of a subset: never below the k-th smallest overall)
// plus this, rounded up (nextafter), so no result row is ever dropped. The bound assumes database
// norms as accurate as squared_norms' (given norms are documented to be ||x_i||^2).
float candidate_slack(float qn, float xn_max, int64_t d) {
  const double g = gamma32(d);
  const double relative = 4.0 * gamma32(d + 3) * (static_cast<double>(qn) + xn_max) / (1.0 - g);
  const double underflow = std::ldexp(static_cast<double>(d + 1), -147) * (1.0 + gamma32(d + 1));
  const double slack = relative + underflow;
  const float inf = std::numeric_limits<float>::infinity();
  if (!(slack < FLT_MAX)) return inf;  // also NaN (gamma infinite, d >= 2^23): keep every row
  const float rounded = static_cast<float>(slack);
  return static_cast<double>(rounded) < slack ? std::nextafter(rounded, inf) : rounded;
}

// Everything one search shares from phase to phase. topk_search runs the phases in order; each
// fills the fields under its name and reads only those of earlier phases.
struct TopkWork {
  TopkWork(const float* queries_, int64_t m_, const float* database_, int64_t n_, int64_t d_, int64_t k_,
           float* out_dist_, int64_t* out_idx_, int threads_)
      : queries(queries_), m(m_), database(database_), n(n_), d(d_), k(k_), out_dist(out_dist_),
        out_idx(out_idx_), threads(threads_) {}

  // The call.
  const float* const queries;
  const int64_t m;
  const float* const database;
  const int64_t n, d, k;
  float* const out_dist;
  int64_t* const out_idx;
  const int threads;

  // prepare_database: the norms the kernels read (NaN for special rows: rows whose norm is not
  // finite or huge, which the kernels then reject and the exact pass evaluates), their largest
  // finite value, and the special rows.
  const float* xn = nullptr;
  std::vector<float> own_norms;  // xn's storage when computed here or when special rows are masked
  float xn_max = 0.0f;
  std::vector<int64_t> special;

  // split_queries: query norms; the queries for the blocked scan ("normal") and those with inf or
  // huge values ("odd", answered by brute force). NaN queries are answered on the spot.
  std::vector<float> qn;
  std::vector<int64_t> normal, odd;

  // plan_scan: per normal query the candidate window (slack), the blocking, and one candidate
  // buffer per (database split, normal query).
  std::vector<float> slack;
  Plan plan;
  int64_t rows_per_split = 0;
  std::vector<Candidates> cand;

  // merge_splits: the rows each normal query keeps for the exact pass.
  std::vector<std::vector<int64_t>> final_rows;

  // exact_distances: exact[offset[t] + j] is the distance of normal query t to final_rows[t][j].
  std::vector<int64_t> offset;
  std::vector<double> exact;  // float64: see result_before

  int64_t mq() const { return static_cast<int64_t>(normal.size()); }
  Candidates& candidates(int64_t split, int64_t t) { return cand[split * mq() + t]; }
};

void prepare_database(TopkWork& w, const float* database_norms) {
  w.xn = database_norms;
  if (w.xn == nullptr) {
    w.own_norms.resize(static_cast<size_t>(w.n));
    squared_norms(w.database, w.n, w.d, w.own_norms.data(), w.threads);
    w.xn = w.own_norms.data();
  }
  for (int64_t i = 0; i < w.n; ++i) {
    const float v = w.xn[i];
    if (v >= 0.0f && v < kHuge) {
      w.xn_max = std::max(w.xn_max, v);
    } else {
      w.special.push_back(i);
    }
  }
  if (!w.special.empty()) {
    if (w.own_norms.empty()) w.own_norms.assign(w.xn, w.xn + w.n);
    for (int64_t i : w.special) w.own_norms[i] = std::numeric_limits<float>::quiet_NaN();
    w.xn = w.own_norms.data();
  }
}

void split_queries(TopkWork& w) {
  w.qn.resize(static_cast<size_t>(w.m));
  squared_norms(w.queries, w.m, w.d, w.qn.data(), w.threads);
  for (int64_t i = 0; i < w.m; ++i) {
    if (std::isnan(w.qn[i])) {
      // Every distance is NaN, so the order is by index.
      for (int64_t j = 0; j < w.k; ++j) {
        w.out_dist[i * w.k + j] = std::numeric_limits<float>::quiet_NaN();
        w.out_idx[i * w.k + j] = j;
      }
    } else if (w.qn[i] < kHuge) {
      w.normal.push_back(i);
    } else {
      w.odd.push_back(i);
    }
  }
}

void brute_force_odd_queries(const TopkWork& w) {
  parallel_for(
      static_cast<int64_t>(w.odd.size()), 1,
      [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const int64_t i = w.odd[t];
          brute_force(w.queries + i * w.d, w.database, w.n, w.d, w.k, w.out_dist + i * w.k, w.out_idx + i * w.k);
        }
      },
      w.threads);
}

void plan_scan(TopkWork& w) {
  const int64_t mq = w.mq();
  w.slack.resize(static_cast<size_t>(mq));
  for (int64_t t = 0; t < mq; ++t) w.slack[t] = candidate_slack(w.qn[w.normal[t]], w.xn_max, w.d);
  w.plan = make_plan(mq, w.n, w.d, w.threads);
  w.rows_per_split = round_up(ceil_div(w.n, w.plan.splits), kRowStep);
  w.cand.resize(static_cast<size_t>(mq * w.plan.splits));
}

// One scan worker's buffers, reused across its work items.
struct ScanScratch {
  std::vector<float> qpack;  // packed queries of one item (lanes kernel) or their rows (row kernel)
  std::vector<float> thr;
  std::vector<Candidates*> lane_cand;
  CandidateSink sink;
};

// Few queries: normal queries [q0, q1) against database rows [r0, r1) with the row kernel.
void scan_item_rows(TopkWork& w, int64_t split, int64_t q0, int64_t q1, int64_t r0, int64_t r1, ScanScratch& s) {
  const int64_t d = w.d, nq = q1 - q0;
  s.qpack.resize(static_cast<size_t>(nq * d));
  s.thr.assign(static_cast<size_t>(nq), FLT_MAX);
  s.lane_cand.resize(static_cast<size_t>(nq));
  for (int64_t t = 0; t < nq; ++t) {
    const float* src = w.queries + w.normal[q0 + t] * d;
    std::copy(src, src + d, s.qpack.begin() + t * d);
    s.lane_cand[t] = &w.candidates(split, q0 + t);
  }
  s.sink.lanes = s.lane_cand.data();
  s.sink.thr = s.thr.data();
  DEEPRANK_ISA_CALL(topk_scan_rows, s.qpack.data(), static_cast<int>(nq), d, w.database, w.xn, r0, r1, s.thr.data(),
                    s.sink);
}

// Many queries: normal queries [q0, q1) against database rows [r0, r1) with the packed-lanes
// kernel, tile by tile, every query block per tile.
void scan_item_lanes(TopkWork& w, int64_t split, int64_t q0, int64_t q1, int64_t r0, int64_t r1, ScanScratch& s) {
  const int64_t d = w.d, nq = q1 - q0, L = w.plan.lanes;
  const int64_t blocks = ceil_div(nq, L);
  // Pack the queries lane-major: block u holds queries q0 + u*L + l in lane l, at [c][l].
  s.qpack.assign(static_cast<size_t>(blocks * L * d), 0.0f);
  s.thr.assign(static_cast<size_t>(blocks * L), std::numeric_limits<float>::quiet_NaN());  // NaN: lane unused
  s.lane_cand.assign(static_cast<size_t>(blocks * L), nullptr);
  for (int64_t t = 0; t < nq; ++t) {
    const int64_t u = t / L, l = t % L;
    const float* src = w.queries + w.normal[q0 + t] * d;
    float* dst = s.qpack.data() + u * L * d + l;
    for (int64_t c = 0; c < d; ++c) dst[c * L] = src[c];
    s.thr[u * L + l] = FLT_MAX;
    s.lane_cand[u * L + l] = &w.candidates(split, q0 + t);
  }
  for (int64_t t0 = r0; t0 < r1; t0 += w.plan.tile) {
    const int64_t t1 = std::min(r1, t0 + w.plan.tile);
    for (int64_t u = 0; u < blocks; ++u) {
      s.sink.lanes = s.lane_cand.data() + u * L;
      s.sink.thr = s.thr.data() + u * L;
      DEEPRANK_ISA_CALL(topk_scan_lanes, s.qpack.data() + u * L * d, static_cast<int>(L), d, w.database, w.xn, t0, t1,
                        s.thr.data() + u * L, s.sink);
    }
  }
}

// The blocked scan: work items (query block x database split) handed out dynamically; each fills
// the candidate buffers of its queries within its split.
void scan(TopkWork& w) {
  const Plan& p = w.plan;
  const int64_t mq = w.mq(), items = p.qblocks * p.splits;
  std::atomic<int64_t> next{0};
  const int workers = static_cast<int>(std::min<int64_t>(w.threads, items));
  parallel_run(workers, [&](int, int) {
    ScanScratch scratch;
    for (;;) {
      const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
      if (item >= items) return;
      const int64_t qb = item / p.splits, split = item % p.splits;
      const int64_t q0 = qb * p.qblock, q1 = std::min(mq, q0 + p.qblock);
      const int64_t r0 = std::min(w.n, split * w.rows_per_split), r1 = std::min(w.n, r0 + w.rows_per_split);
      if (r0 >= r1 || q1 <= q0) continue;
      for (int64_t t = q0; t < q1; ++t) w.candidates(split, t).init(w.k, w.slack[t]);
      if (p.few) {
        scan_item_rows(w, split, q0, q1, r0, r1, scratch);
      } else {
        scan_item_lanes(w, split, q0, q1, r0, r1, scratch);
      }
    }
  });
}

// Merges the splits of each query and keeps the rows within the slack of the k-th best f, plus the
// special rows.
void merge_splits(TopkWork& w) {
  const int64_t mq = w.mq(), k = w.k;
  w.final_rows.resize(static_cast<size_t>(mq));
  parallel_for(
      mq, 16,
      [&](int64_t b, int64_t e) {
        std::vector<float> f, tmp;
        for (int64_t t = b; t < e; ++t) {
          std::vector<int64_t>& rows = w.final_rows[t];
          f.clear();
          for (int64_t s = 0; s < w.plan.splits; ++s) {
            Candidates& c = w.candidates(s, t);
            f.insert(f.end(), c.f.begin(), c.f.end());
            rows.insert(rows.end(), c.idx.begin(), c.idx.end());
            c = Candidates();  // free early
          }
          if (static_cast<int64_t>(f.size()) >= k) {
            tmp.assign(f.begin(), f.end());
            std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end());
            const float window = std::nextafter(tmp[k - 1] + w.slack[t], FLT_MAX);
            size_t kept = 0;
            for (size_t j = 0; j < f.size(); ++j) {
              if (f[j] <= window) rows[kept++] = rows[j];
            }
            rows.resize(kept);
          }
          rows.insert(rows.end(), w.special.begin(), w.special.end());
        }
      },
      w.threads);
}

// Exact distances of every (query, candidate row) pair, grouped by database region so each row is
// fetched from memory once for all the queries that kept it (k = 1000 and M = 1024 make a million
// pairs: gathered per query they would re-read the database many times over).
void exact_distances(TopkWork& w) {
  const int64_t mq = w.mq(), d = w.d;
  w.offset.assign(static_cast<size_t>(mq) + 1, 0);
  for (int64_t t = 0; t < mq; ++t) w.offset[t + 1] = w.offset[t] + static_cast<int64_t>(w.final_rows[t].size());
  const int64_t pairs = w.offset[mq];
  w.exact.resize(static_cast<size_t>(pairs));
  // Pairs are in query order within a region, so a query's row is reused for all its pairs there.
  const int64_t region = std::max<int64_t>(1, kRegionBytes / (4 * d));
  const int64_t regions = ceil_div(w.n, region);
  std::vector<int64_t> start(static_cast<size_t>(regions) + 1, 0);
  for (int64_t t = 0; t < mq; ++t) {
    for (int64_t r : w.final_rows[t]) ++start[r / region + 1];
  }
  for (int64_t g = 0; g < regions; ++g) start[g + 1] += start[g];
  std::vector<int64_t> pos(start.begin(), start.end() - 1);
  std::vector<int64_t> pair_slot(static_cast<size_t>(pairs));
  std::vector<int32_t> pair_query(static_cast<size_t>(pairs));
  for (int64_t t = 0; t < mq; ++t) {
    const std::vector<int64_t>& rows = w.final_rows[t];
    for (size_t j = 0; j < rows.size(); ++j) {
      const int64_t at = pos[rows[j] / region]++;
      pair_slot[at] = w.offset[t] + static_cast<int64_t>(j);
      pair_query[at] = static_cast<int32_t>(t);
    }
  }
  parallel_for(
      regions, 1,
      [&](int64_t b, int64_t e) {
        for (int64_t at = start[b]; at < start[e]; ++at) {
          const int64_t t = pair_query[at], slot = pair_slot[at];
          const int64_t row = w.final_rows[t][slot - w.offset[t]];
          w.exact[slot] =
              DEEPRANK_ISA_CALL(topk_exact_sqdist, w.queries + w.normal[t] * d, w.database + row * d, d);
        }
      },
      w.threads);
}

// Sorts each normal query's candidates by (exact distance, index) and writes the k best.
void sort_and_write(const TopkWork& w) {
  const int64_t k = w.k;
  parallel_for(
      w.mq(), 16,
      [&](int64_t b, int64_t e) {
        std::vector<int64_t> order;
        for (int64_t t = b; t < e; ++t) {
          const int64_t i = w.normal[t];
          const std::vector<int64_t>& rows = w.final_rows[t];
          const double* dist = w.exact.data() + w.offset[t];
          float* od = w.out_dist + i * k;
          int64_t* oi = w.out_idx + i * k;
          if (static_cast<int64_t>(rows.size()) < k) {
            brute_force(w.queries + i * w.d, w.database, w.n, w.d, k, od, oi);  // safety net (e.g. wrong norms)
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
            od[j] = static_cast<float>(dist[order[j]]);
            oi[j] = rows[order[j]];
          }
        }
      },
      w.threads);
}

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
  bytes += static_cast<size_t>(m) * static_cast<size_t>(k) * 36;
  return bytes;
}

void topk_search(const float* queries, int64_t m, const float* database, int64_t n, int64_t d,
                 const float* database_norms, int64_t k, float* out_dist, int64_t* out_idx, int threads) {
  if (m <= 0) return;
  TopkWork w(queries, m, database, n, d, k, out_dist, out_idx, threads > 0 ? threads : get_num_threads());
  PhaseTimer timer;
  prepare_database(w, database_norms);
  split_queries(w);
  brute_force_odd_queries(w);
  timer.mark("prepare");
  if (w.normal.empty()) return;
  plan_scan(w);
  scan(w);
  timer.mark("scan");
  merge_splits(w);
  timer.mark("merge");
  exact_distances(w);
  timer.mark("exact");
  sort_and_write(w);
  timer.mark("sort");
}

}  // namespace deeprank
