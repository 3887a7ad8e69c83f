// Test driver (not part of any build): runs topk.cu's plan, launcher and kernels under the CPU SIMT
// emulator (cuda_emulation.cuh) and compares every result bit for bit with a reference
// that ranks rows by the same key: (float32 of the float64 distance summed in the kernel's order,
// index). test_emulation.py builds and runs it where no GPU is present:
//
//   g++ -std=c++20 -O1 -pthread -DDEEPRANK_CUDA_EMULATION -Icsrc -x c++ tests/ops/emulation/topk_emulation_main.cuh -o emu
//   ./emu M N D K SEED MODE SMS     MODE: normal | ties | nan | sorted
// prints the plan, then "ok" or the first mismatch. "sorted" orders the database by decreasing
// distance to query 0, so the last split holds all its neighbours and the merge has to take a whole
// run into a list that is already full.
#ifndef DEEPRANK_CUDA_EMULATION
#error "build with -DDEEPRANK_CUDA_EMULATION"
#endif
#include "cuda_emulation.cuh"

namespace deeprank::cuda {
namespace {
alignas(16) unsigned char smem[emu::kSharedBytes];  // the kernels' extern __shared__ array
}  // namespace
}  // namespace deeprank::cuda

#include "topk/topk.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

// The merge kernel's exact distance: lane-strided float64 partial sums, then an xor butterfly; the
// value of lane 0, rounded once to float32.
float kernel_order_distance(const float* q, const float* x, int d) {
  double part[32] = {};
  for (int l = 0; l < 32; ++l) {
    for (int j = l; j < d; j += 32) {
      const double diff = static_cast<double>(q[j]) - static_cast<double>(x[j]);
      part[l] = std::fma(diff, diff, part[l]);
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    double next[32];
    for (int l = 0; l < 32; ++l) next[l] = part[l] + part[l ^ offset];
    std::copy(next, next + 32, part);
  }
  return static_cast<float>(part[0]);
}

uint64_t key_of(float dist, uint32_t index) {
  uint32_t bits;
  if (std::isnan(dist)) {
    bits = 0xffffffffu;
  } else {
    std::memcpy(&bits, &dist, 4);
  }
  return (static_cast<uint64_t>(bits) << 32) | index;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s M N D K SEED MODE SMS\n", argv[0]);
    return 2;
  }
  const int m = std::atoi(argv[1]), n = std::atoi(argv[2]), d = std::atoi(argv[3]), k = std::atoi(argv[4]);
  const unsigned seed = static_cast<unsigned>(std::atoi(argv[5]));
  const std::string mode = argv[6];
  emu::sm_count = std::atoi(argv[7]);
  emu::shared_memory = deeprank::cuda::smem;

  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> small(-2, 2);
  std::vector<float> q(static_cast<size_t>(m) * d), x(static_cast<size_t>(n) * d);
  if (mode == "ties") {  // integer data, few distinct rows: many exactly equal distances
    const int distinct = std::max(1, n / 7);
    std::vector<float> base(static_cast<size_t>(distinct) * d);
    for (float& v : base) v = static_cast<float>(small(gen));
    for (int i = 0; i < n; ++i) std::copy_n(&base[static_cast<size_t>(i % distinct) * d], d, &x[static_cast<size_t>(i) * d]);
    for (float& v : q) v = static_cast<float>(small(gen));
  } else {
    for (float& v : q) v = normal(gen);
    for (float& v : x) v = normal(gen);
    if (mode == "sorted") {
      std::vector<std::pair<double, int>> order(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        double s = 0;
        for (int j = 0; j < d; ++j) s += std::pow(double(q[j]) - double(x[static_cast<size_t>(i) * d + j]), 2);
        order[i] = {s, i};
      }
      std::sort(order.rbegin(), order.rend());
      std::vector<float> sorted(x.size());
      for (int i = 0; i < n; ++i) {
        std::copy_n(&x[static_cast<size_t>(order[i].second) * d], d, &sorted[static_cast<size_t>(i) * d]);
      }
      x.swap(sorted);
    }
    if (mode == "nan") {
      const float nan = std::nanf("");
      if (m > 1) q[static_cast<size_t>(1) * d + static_cast<size_t>(d / 2)] = nan;
      for (int i = 3; i < n; i += 11) x[static_cast<size_t>(i) * d] = nan;
    }
  }

  const deeprank::cuda::TopkPlan plan = deeprank::cuda::topk_plan(m, n, d, k, 0);
  std::printf("plan rows_per_block=%d splits=%d split_rows=%lld candidates=%d merge_warps=%d\n",
              plan.query_rows_per_block, plan.splits, static_cast<long long>(plan.split_rows), plan.candidates,
              plan.merge_warps);
  std::vector<uint64_t> workspace(static_cast<size_t>(std::max<int64_t>(1, plan.workspace_elems)));
  std::vector<float> dist(static_cast<size_t>(m) * k, -1.f);
  std::vector<int64_t> idx(static_cast<size_t>(m) * k, -1);
  deeprank::cuda::topk_launch(q.data(), x.data(), m, n, d, k, workspace.data(),
                              static_cast<int64_t>(workspace.size()), dist.data(), idx.data(), 0, 0);

  std::vector<uint64_t> keys(static_cast<size_t>(n));
  for (int row = 0; row < m; ++row) {
    for (int i = 0; i < n; ++i) {
      keys[i] = key_of(kernel_order_distance(&q[static_cast<size_t>(row) * d], &x[static_cast<size_t>(i) * d], d),
                       static_cast<uint32_t>(i));
    }
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end());
    for (int t = 0; t < k; ++t) {
      const float got_d = dist[static_cast<size_t>(row) * k + t];
      const int64_t got_i = idx[static_cast<size_t>(row) * k + t];
      const uint64_t want = keys[t];
      const bool same_index = got_i == static_cast<int64_t>(static_cast<uint32_t>(want));
      const bool same_dist = key_of(got_d, 0) >> 32 == want >> 32;
      if (!same_index || !same_dist) {
        std::printf("mismatch query %d rank %d: got (%.9g, %lld), want (%.9g, %u)\n", row, t, got_d,
                    static_cast<long long>(got_i), static_cast<double>(__uint_as_float(static_cast<uint32_t>(want >> 32))),
                    static_cast<uint32_t>(want));
        return 1;
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
