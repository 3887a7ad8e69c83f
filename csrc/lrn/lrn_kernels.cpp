// LRN inner loops, compiled once per ISA (see common/isa.h).
//
// Work is split into tiles: one image n and a run of `w` spatial positions, all C channels. A tile's
// scratch (squares, block suffix sums, scale) stays in L2; every loop runs along the w positions, so it
// vectorises, while the channel window slides in the outer loop. Channels-last tiles are transposed
// into a planar [C, w] buffer first (and back after). See lrn.h for the maths.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>

#include "common/parallel.h"
#include "lrn/lrn.h"

namespace deeprank {
namespace DEEPRANK_ISA {
namespace {

// Channels [c - before, c + after] form the window of output c (before + after + 1 == len == size).
struct Window {
  int64_t before, after, len;
};

struct Params {
  double scale;  // alpha / size
  double beta, k;
};

// s^-beta; the AlexNet exponent 0.75 and a few others avoid pow (which does not vectorise here).
enum PowKind { kPow075 = 0, kPow05 = 1, kPow1 = 2, kPowAny = 3 };

int pow_kind(double beta) {
  if (beta == 0.75) return kPow075;
  if (beta == 0.5) return kPow05;
  if (beta == 1.0) return kPow1;
  return kPowAny;
}

// r = s^-beta and r1 = s^(-beta-1) = r / s. The square roots and the division run in P: float for
// float32 tensors (twice the lanes; the result is rounded to float32 anyway), double for float64.
// r1 is formed in double from r and 1/sqrt(s), so it does not underflow where s is huge.
template <int Kind, class P>
inline void neg_pows(double s, double beta, double& r, double& r1) {
  if constexpr (Kind == kPow075 || Kind == kPow05) {
    const P u = P(1) / std::sqrt(static_cast<P>(s));  // s^-1/2
    const double ud = static_cast<double>(u);
    r = Kind == kPow075 ? static_cast<double>(u * std::sqrt(u)) : ud;
    r1 = r * ud * ud;
  } else if constexpr (Kind == kPow1) {
    r = static_cast<double>(P(1) / static_cast<P>(s));
    r1 = r * r;
  } else {
    r = std::pow(s, -beta);
    r1 = r / s;
  }
}

template <int Kind, class P>
inline double neg_pow(double s, double beta) {
  if constexpr (Kind == kPow075) {
    const P u = P(1) / std::sqrt(static_cast<P>(s));
    return static_cast<double>(u * std::sqrt(u));
  } else if constexpr (Kind == kPow05) {
    return static_cast<double>(P(1) / std::sqrt(static_cast<P>(s)));
  } else if constexpr (Kind == kPow1) {
    return static_cast<double>(P(1) / static_cast<P>(s));
  } else {
    return std::pow(s, -beta);
  }
}

// Row sources for the window sums: squares of x computed on the fly (no stored copy), or a stored
// [C][w] double array.
template <class T>
struct SquaresOf {
  const T* x;
  int64_t stride;
  double operator()(int64_t c, int64_t j) const {
    const double v = static_cast<double>(x[c * stride + j]);
    return v * v;
  }
};

struct Stored {
  const double* v;
  int64_t w;
  double operator()(int64_t c, int64_t j) const { return v[c * w + j]; }
};

// A tile's rows are short runs (w values) one channel plane apart, too short for the hardware
// prefetcher to get ahead of: fetch the row a few channels ahead by hand.
constexpr int64_t kPrefetchRows = 4;

template <class T>
inline void prefetch_row(const T* row, int64_t w, bool for_write) {
  for (int64_t j = 0; j < w; j += 64 / static_cast<int64_t>(sizeof(T))) {
    if (for_write) __builtin_prefetch(row + j, 1, 3);
    else __builtin_prefetch(row + j, 0, 3);
  }
}

// suf[c] = v[c] + v[c+1] + ... up to the end of c's block (blocks: len channels from channel 0).
// ahead(c) is called before row c is read (to prefetch what rows below c will need).
template <class Src, class Ahead>
inline void block_suffix(const Src& src, double* suf, int64_t channels, int64_t w, int64_t len, Ahead&& ahead) {
  for (int64_t c = channels - 1; c >= 0; --c) {
    ahead(c);
    double* sr = suf + c * w;
    if (c == channels - 1 || (c + 1) % len == 0) {
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) sr[j] = src(c, j);
    } else {
      const double* next = sr + w;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) sr[j] = next[j] + src(c, j);
    }
  }
}

// For c = 0..C-1 in order, calls emit(c, row) where row[j] is the sum of v over c's window (clipped
// to [0, C)). A window spans at most two blocks: the suffix of lo's block plus the running prefix of
// hi's block, so no term is ever subtracted.
template <class Src, class Emit>
inline void window_sums(const Src& src, const double* suf, double* pre, double* tmp, int64_t channels, int64_t w,
                        Window win, Emit&& emit) {
  int64_t folded = -1;  // channels [block start, folded] are summed in pre
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t lo = std::max<int64_t>(c - win.before, 0);
    const int64_t hi = std::min<int64_t>(c + win.after, channels - 1);
    while (folded < hi) {
      ++folded;
      const int64_t f = folded;
      if (f % win.len == 0) {
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) pre[j] = src(f, j);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) pre[j] += src(f, j);
      }
    }
    if (lo / win.len == hi / win.len) {
      // One block: either it starts at lo (prefix up to hi) or it ends at hi (suffix from lo).
      emit(c, lo % win.len == 0 ? static_cast<const double*>(pre) : suf + lo * w);
    } else {
      const double* sr = suf + lo * w;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) tmp[j] = sr[j] + pre[j];
      emit(c, static_cast<const double*>(tmp));
    }
  }
}

// One tile: x, y point at [n, 0, s0]; channel rows are `stride` apart; w positions.
template <class T, int Kind>
void forward_tile(const T* x, T* y, int64_t channels, int64_t stride, int64_t w, Window win, const Params& prm,
                  double* scratch) {
  double* suf = scratch;
  double* pre = suf + channels * w;
  double* tmp = pre + w;
  const SquaresOf<T> squares{x, stride};
  // The descending suffix pass is the first to touch x: prefetch rows below.
  block_suffix(squares, suf, channels, w, win.len, [&](int64_t c) {
    if (c >= kPrefetchRows) prefetch_row(x + (c - kPrefetchRows) * stride, w, false);
  });
  const double scale = prm.scale, k = prm.k, beta = prm.beta;
  window_sums(squares, suf, pre, tmp, channels, w, win, [&](int64_t c, const double* sum) {
    const T* xr = x + c * stride;
    T* yr = y + c * stride;
    if (c + kPrefetchRows < channels) prefetch_row(yr + kPrefetchRows * stride, w, true);
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      yr[j] = static_cast<T>(static_cast<double>(xr[j]) * neg_pow<Kind, T>(k + scale * sum[j], beta));
    }
  });
}

template <class T, int Kind>
void backward_tile(const T* g, const T* x, T* dx, int64_t channels, int64_t stride, int64_t w, Window win,
                   const Params& prm, double* scratch) {
  double* suf = scratch;             // block suffix sums
  double* r = suf + channels * w;    // s^-beta
  double* t = r + channels * w;      // g x s^(-beta-1)
  double* pre = t + channels * w;
  double* tmp = pre + w;
  const double scale = prm.scale, k = prm.k, beta = prm.beta;
  const SquaresOf<T> squares{x, stride};
  block_suffix(squares, suf, channels, w, win.len, [&](int64_t c) {
    if (c >= kPrefetchRows) {
      prefetch_row(x + (c - kPrefetchRows) * stride, w, false);
      prefetch_row(g + (c - kPrefetchRows) * stride, w, false);
    }
  });
  window_sums(squares, suf, pre, tmp, channels, w, win, [&](int64_t c, const double* sum) {
    const T* xr = x + c * stride;
    const T* gr = g + c * stride;
    double* rr = r + c * w;
    double* tr = t + c * w;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      double rs, rs1;
      neg_pows<Kind, T>(k + scale * sum[j], beta, rs, rs1);
      rr[j] = rs;
      tr[j] = static_cast<double>(gr[j]) * static_cast<double>(xr[j]) * rs1;
    }
  });
  // Input i feeds outputs [i - after, i + before]: the same sums with the window mirrored.
  const Window mirrored{win.after, win.before, win.len};
  const Stored ts{t, w};
  block_suffix(ts, suf, channels, w, win.len, [](int64_t) {});
  const double coef = 2.0 * scale * beta;
  window_sums(ts, suf, pre, tmp, channels, w, mirrored, [&](int64_t c, const double* sum) {
    const T* xr = x + c * stride;
    const T* gr = g + c * stride;
    const double* rr = r + c * w;
    T* dr = dx + c * stride;
    if (c + kPrefetchRows < channels) prefetch_row(dr + kPrefetchRows * stride, w, true);
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      dr[j] = static_cast<T>(static_cast<double>(gr[j]) * rr[j] - coef * static_cast<double>(xr[j]) * sum[j]);
    }
  });
}

// Spatial positions per tile: about 16K channel*position cells (measured best of 4K-64K), a multiple
// of 16 when S allows.
int64_t tile_width(int64_t channels, int64_t spatial) {
  int64_t w = std::max<int64_t>(16, (16384 / std::max<int64_t>(channels, 1)) / 16 * 16);
  w = std::min<int64_t>(w, 512);
  return std::min(w, spatial);
}

// Runs tile(offset, w, scratch, planar) over every (image, spatial run) on the pool; offset is the
// run's first element in an [N, C, S] array, or an [N, S, C] one when channels_last, where each worker
// also gets `planar_rows` [C][w] arrays of T for the transposes (planar is null otherwise).
template <class T, class Tile>
void for_each_tile(int64_t batch, int64_t channels, int64_t spatial, bool channels_last, int64_t scratch_rows,
                   int64_t planar_rows, Tile&& tile) {
  if (batch <= 0 || channels <= 0 || spatial <= 0) return;
  const int64_t w = tile_width(channels, spatial);
  const int64_t tiles = (spatial + w - 1) / w;
  const int64_t units = batch * tiles;
  const int64_t step = channels_last ? channels : 1;  // elements between neighbouring positions
  const int workers = static_cast<int>(std::min<int64_t>(get_num_threads(), units));
  std::atomic<int64_t> next{0};
  parallel_run(workers, [&](int, int) {
    std::unique_ptr<double[]> scratch(new double[(scratch_rows * channels + 2) * w]);
    std::unique_ptr<T[]> planar(channels_last ? new T[planar_rows * channels * w] : nullptr);
    for (;;) {
      const int64_t u = next.fetch_add(1, std::memory_order_relaxed);
      if (u >= units) return;
      const int64_t n = u / tiles, s0 = (u % tiles) * w;
      tile(n * channels * spatial + s0 * step, std::min(w, spatial - s0), scratch.get(), planar.get());
    }
  });
}

// [w, C] rows (C contiguous) <-> [C, w] (w contiguous), both within one tile so they stay in cache.
// Blocks of kBlock positions keep both sides' accesses within a few cache lines per channel.
constexpr int64_t kBlock = 16;

template <class T>
void to_planar(const T* src, T* dst, int64_t channels, int64_t w) {
  for (int64_t j0 = 0; j0 < w; j0 += kBlock) {
    const int64_t j1 = std::min(w, j0 + kBlock);
    for (int64_t c = 0; c < channels; ++c) {
      T* d = dst + c * w;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) d[j] = src[j * channels + c];
    }
  }
}

template <class T>
void from_planar(const T* src, T* dst, int64_t channels, int64_t w) {
  for (int64_t j0 = 0; j0 < w; j0 += kBlock) {
    const int64_t j1 = std::min(w, j0 + kBlock);
    for (int64_t j = j0; j < j1; ++j) {
      T* d = dst + j * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) d[c] = src[c * w + j];
    }
  }
}

template <class T, int Kind>
void forward_run(const T* x, int64_t batch, int64_t channels, int64_t spatial, bool channels_last, Window win,
                 const Params& prm, T* y) {
  if (!channels_last) {
    for_each_tile<T>(batch, channels, spatial, false, 1, 0, [&](int64_t off, int64_t w, double* scratch, T*) {
      forward_tile<T, Kind>(x + off, y + off, channels, spatial, w, win, prm, scratch);
    });
    return;
  }
  // Every position is independent, so [N, S, C] is one run of N*S positions (longer tiles).
  for_each_tile<T>(1, channels, batch * spatial, true, 1, 2, [&](int64_t off, int64_t w, double* scratch, T* xt) {
    T* yt = xt + channels * w;
    to_planar(x + off, xt, channels, w);
    forward_tile<T, Kind>(xt, yt, channels, w, w, win, prm, scratch);
    from_planar(yt, y + off, channels, w);
  });
}

template <class T, int Kind>
void backward_run(const T* g, const T* x, int64_t batch, int64_t channels, int64_t spatial, bool channels_last,
                  Window win, const Params& prm, T* dx) {
  if (!channels_last) {
    for_each_tile<T>(batch, channels, spatial, false, 3, 0, [&](int64_t off, int64_t w, double* scratch, T*) {
      backward_tile<T, Kind>(g + off, x + off, dx + off, channels, spatial, w, win, prm, scratch);
    });
    return;
  }
  for_each_tile<T>(1, channels, batch * spatial, true, 3, 3, [&](int64_t off, int64_t w, double* scratch, T* gt) {
    T* xt = gt + channels * w;
    T* dt = xt + channels * w;
    to_planar(g + off, gt, channels, w);
    to_planar(x + off, xt, channels, w);
    backward_tile<T, Kind>(gt, xt, dt, channels, w, w, win, prm, scratch);
    from_planar(dt, dx + off, channels, w);
  });
}

// torch pads size/2 channels before and (size-1)/2 after (they differ for even sizes).
Window window_of(int64_t size) { return Window{size / 2, (size - 1) / 2, size}; }

template <class T>
void forward_impl(const T* x, int64_t batch, int64_t channels, int64_t spatial, bool cl, int64_t size,
                  double alpha, double beta, double k, T* y) {
  const Params prm{alpha / static_cast<double>(size), beta, k};
  const Window win = window_of(size);
  switch (pow_kind(beta)) {
    case kPow075: return forward_run<T, kPow075>(x, batch, channels, spatial, cl, win, prm, y);
    case kPow05: return forward_run<T, kPow05>(x, batch, channels, spatial, cl, win, prm, y);
    case kPow1: return forward_run<T, kPow1>(x, batch, channels, spatial, cl, win, prm, y);
    default: return forward_run<T, kPowAny>(x, batch, channels, spatial, cl, win, prm, y);
  }
}

template <class T>
void backward_impl(const T* g, const T* x, int64_t batch, int64_t channels, int64_t spatial, bool cl,
                   int64_t size, double alpha, double beta, double k, T* dx) {
  const Params prm{alpha / static_cast<double>(size), beta, k};
  const Window win = window_of(size);
  switch (pow_kind(beta)) {
    case kPow075: return backward_run<T, kPow075>(g, x, batch, channels, spatial, cl, win, prm, dx);
    case kPow05: return backward_run<T, kPow05>(g, x, batch, channels, spatial, cl, win, prm, dx);
    case kPow1: return backward_run<T, kPow1>(g, x, batch, channels, spatial, cl, win, prm, dx);
    default: return backward_run<T, kPowAny>(g, x, batch, channels, spatial, cl, win, prm, dx);
  }
}

}  // namespace

DEEPRANK_LRN_FORWARD(float) { forward_impl(x, batch, channels, spatial, channels_last, size, alpha, beta, k, y); }
DEEPRANK_LRN_FORWARD(double) { forward_impl(x, batch, channels, spatial, channels_last, size, alpha, beta, k, y); }
DEEPRANK_LRN_BACKWARD(float) {
  backward_impl(grad_y, x, batch, channels, spatial, channels_last, size, alpha, beta, k, grad_x);
}
DEEPRANK_LRN_BACKWARD(double) {
  backward_impl(grad_y, x, batch, channels, spatial, channels_last, size, alpha, beta, k, grad_x);
}

}  // namespace DEEPRANK_ISA
}  // namespace deeprank
