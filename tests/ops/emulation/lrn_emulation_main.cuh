// Test driver (not part of any build): runs lrn.cu's launchers and kernels under the CPU SIMT
// emulator (cuda_emulation.cuh) and compares them with a long double reference of
// torch.nn.functional.local_response_norm and its gradient. Built and run by test_emulation.py:
//
//   g++ -std=c++20 -O1 -pthread -DDEEPRANK_CUDA_EMULATION -Icsrc -x c++ tests/ops/emulation/lrn_emulation_main.cuh
//   ./a.out            prints one line per case, then "ok" (exit 0) or the first mismatch (exit 1)
#ifndef DEEPRANK_CUDA_EMULATION
#error "build with -DDEEPRANK_CUDA_EMULATION"
#endif
#include "cuda_emulation.cuh"

#include "lrn/lrn.cu"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

template <class T>
bool run_case(int batch, int channels, int spatial, int size, double alpha, double beta, double k, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const size_t total = static_cast<size_t>(batch) * channels * spatial;
  std::vector<T> x(total), g(total), y(total), gx(total);
  for (size_t i = 0; i < total; ++i) x[i] = T(normal(gen)), g[i] = T(normal(gen));
  if (total > 7) x[7] = std::numeric_limits<T>::infinity();  // non-finite values stay in their windows
  deeprank::cuda::lrn_forward_launch<T>(x.data(), batch, channels, spatial, size, alpha, beta, k, y.data(), 0, 0);
  deeprank::cuda::lrn_backward_launch<T>(g.data(), x.data(), batch, channels, spatial, size, alpha, beta, k,
                                         gx.data(), 0, 0);
  const int pre = size / 2, post = (size - 1) / 2;
  const long double rtol = sizeof(T) == 4 ? 2e-5L : 1e-12L, atol = sizeof(T) == 4 ? 2e-5L : 1e-12L;
  auto at = [&](const std::vector<T>& v, int b, int c, int s) -> long double {
    return (c < 0 || c >= channels) ? 0.0L : static_cast<long double>(v[(static_cast<size_t>(b) * channels + c) * spatial + s]);
  };
  auto scale = [&](int b, int c, int s) {
    long double sum = 0;
    for (int j = c - pre; j <= c + post; ++j) sum += at(x, b, j, s) * at(x, b, j, s);
    return sum / size * alpha + k;
  };
  auto same = [&](long double got, long double want) {
    if (std::isnan(want)) return std::isnan(got);
    if (std::isinf(want)) return got == want;
    return std::fabs(got - want) <= atol + rtol * std::fabs(want);
  };
  for (int b = 0; b < batch; ++b) {
    for (int s = 0; s < spatial; ++s) {
      for (int c = 0; c < channels; ++c) {
        const long double sc = scale(b, c, s);
        const long double want_y = at(x, b, c, s) / std::pow(sc, static_cast<long double>(beta));
        long double sum = 0;
        for (int j = c - post; j <= c + pre; ++j) {
          if (j < 0 || j >= channels) continue;
          const long double sj = scale(b, j, s);
          sum += at(g, b, j, s) * at(x, b, j, s) / (std::pow(sj, static_cast<long double>(beta)) * sj);
        }
        const long double want_gx = at(g, b, c, s) / std::pow(sc, static_cast<long double>(beta)) -
                                    2.0L * alpha * beta / size * at(x, b, c, s) * sum;
        const long double got_y = at(y, b, c, s), got_gx = at(gx, b, c, s);
        if (!same(got_y, want_y) || !same(got_gx, want_gx)) {
          std::printf("mismatch at (%d, %d, %d): y %.12Lg vs %.12Lg, grad %.12Lg vs %.12Lg\n", b, c, s, got_y, want_y,
                      got_gx, want_gx);
          return false;
        }
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  unsigned seed = 1;
  const int sizes[] = {1, 2, 3, 4, 5, 6, 9, 16, 17, 32};
  for (int size : sizes) {
    for (int dbl = 0; dbl < 2; ++dbl) {
      for (const int channels : {1, 7, 40}) {
        const bool ok = dbl ? run_case<double>(2, channels, 33, size, 0.3, 0.75, 1.5, seed++)
                            : run_case<float>(2, channels, 33, size, 0.3, 0.75, 1.5, seed++);
        std::printf("size=%d channels=%d %s: %s\n", size, channels, dbl ? "float64" : "float32", ok ? "ok" : "FAILED");
        if (!ok) return 1;
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
