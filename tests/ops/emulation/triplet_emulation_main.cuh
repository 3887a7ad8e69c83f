// Test driver (not part of any build): runs triplet.cu's launchers and kernels under the CPU SIMT
// emulator (cuda_emulation.cuh) and compares them with a long double reference. Built and
// run by test_emulation.py where no GPU is present:
//
//   g++ -std=c++20 -O1 -pthread -DDEEPRANK_CUDA_EMULATION -Icsrc -x c++ tests/ops/emulation/triplet_emulation_main.cuh
//   ./a.out            prints one line per case, then "ok" (exit 0) or the first mismatch (exit 1)
#ifndef DEEPRANK_CUDA_EMULATION
#error "build with -DDEEPRANK_CUDA_EMULATION"
#endif
#include "cuda_emulation.cuh"
#undef __shared__
#define __shared__ static  // blocks run one after another, so a static array is the block's shared memory

#include "triplet/triplet.cu"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

template <class T>
bool close(long double got, long double want, long double rtol, long double atol) {
  if (std::isnan(want)) return std::isnan(got);
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

// offset: elements the rows are shifted by (1 makes every row misaligned for 16-byte vectors).
template <class T>
bool run_case(int rows, int dim, int offset, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0 / std::sqrt(static_cast<double>(std::max(dim, 1))));
  const size_t total = static_cast<size_t>(rows) * dim + offset;
  std::vector<T> q(total), p(total), n(total), dq(total), dp(total), dn(total), losses(rows), grad(rows);
  for (size_t i = 0; i < total; ++i) q[i] = T(normal(gen)), p[i] = T(normal(gen)), n[i] = T(normal(gen));
  for (int r = 0; r < rows; ++r) grad[r] = T(normal(gen) * 3);
  const double margin = 0.05;
  if (rows > 2) {  // row 1 inactive, row 2 NaN
    for (int j = 0; j < dim; ++j) p[offset + dim + j] = q[offset + dim + j], n[offset + dim + j] = q[offset + dim + j] + T(3);
    q[offset + 2 * dim] = std::numeric_limits<T>::quiet_NaN();
  }
  const T *Q = q.data() + offset, *P = p.data() + offset, *N = n.data() + offset;
  deeprank::cuda::triplet_forward_launch<T>(Q, P, N, rows, dim, margin, losses.data(), 0, 0);
  deeprank::cuda::triplet_backward_launch<T>(grad.data(), Q, P, N, rows, dim, margin, dq.data() + offset,
                                             dp.data() + offset, dn.data() + offset, 0, 0);
  const long double rtol = sizeof(T) == 4 ? 1e-5L : 1e-12L, atol = sizeof(T) == 4 ? 1e-6L : 1e-13L;
  for (int r = 0; r < rows; ++r) {
    long double sp = 0, sn = 0;
    for (int j = 0; j < dim; ++j) {
      const long double a = Q[r * dim + j], b = P[r * dim + j], c = N[r * dim + j];
      sp += (a - b) * (a - b);
      sn += (a - c) * (a - c);
    }
    const long double h = margin + sp - sn;
    const long double loss = h > 0 ? h : (h <= 0 ? 0 : h);
    if (!close<T>(losses[r], loss, rtol, atol)) {
      std::printf("loss mismatch row %d: %.12Lg vs %.12Lg\n", r, static_cast<long double>(losses[r]), loss);
      return false;
    }
    const bool active = h > 0, nan = std::isnan(h);
    for (int j = 0; j < dim; ++j) {
      const long double a = Q[r * dim + j], b = P[r * dim + j], c = N[r * dim + j], g = 2.0L * grad[r];
      const long double want[3] = {nan ? NAN : (active ? g * (c - b) : 0), nan ? NAN : (active ? g * (b - a) : 0),
                                   nan ? NAN : (active ? g * (a - c) : 0)};
      const T got[3] = {dq[offset + r * dim + j], dp[offset + r * dim + j], dn[offset + r * dim + j]};
      for (int t = 0; t < 3; ++t) {
        const bool exact_zero = !active && !nan;
        if (exact_zero ? got[t] != T(0) : !close<T>(got[t], want[t], rtol, atol)) {
          std::printf("grad %d mismatch row %d col %d: %.12Lg vs %.12Lg\n", t, r, j, static_cast<long double>(got[t]),
                      want[t]);
          return false;
        }
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  struct Case {
    int rows, dim, offset;
    bool dbl;
  };
  const Case cases[] = {{3, 1, 0, false}, {4, 17, 0, false}, {3, 128, 0, false}, {3, 128, 1, false},
                        {2, 9001, 0, false}, {1, 8200, 0, false}, {3, 33, 0, true}, {3, 64, 1, true},
                        {2, 4100, 0, true}, {1, 0, 0, false}};
  unsigned seed = 1;
  for (const Case& c : cases) {
    const bool ok = c.dbl ? run_case<double>(c.rows, c.dim, c.offset, seed++) : run_case<float>(c.rows, c.dim, c.offset, seed++);
    std::printf("rows=%d dim=%d offset=%d %s: %s\n", c.rows, c.dim, c.offset, c.dbl ? "float64" : "float32",
                ok ? "ok" : "FAILED");
    if (!ok) return 1;
  }
  std::printf("ok\n");
  return 0;
}
