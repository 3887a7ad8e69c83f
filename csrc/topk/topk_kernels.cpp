// SIMD micro-kernels for topk_search, compiled once per ISA into namespace deeprank::DEEPRANK_ISA
// (see common/isa.h). One kernel body per job, written against a tiny vector wrapper `Simd` so the
// same code serves AVX-512 (16 lanes), AVX2+FMA (8), SSE2 (4) and plain C++ (1).
#include <cstdint>
#include <cstring>

#include "topk/topk_kernels.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace deeprank {
namespace DEEPRANK_ISA {
namespace {

#if defined(__AVX512F__)
struct Simd {
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_partial(const float* p, int n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static unsigned le_mask(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  static float hsum(V a) { return _mm512_reduce_add_ps(a); }
};
// 2 vectors of queries x 12 rows: 24 accumulators + 2 query vectors + 1 broadcast of 32 registers.
constexpr int kVR = 2, kNR = 12;
#elif defined(__AVX2__) && defined(__FMA__)
struct Simd {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_partial(const float* p, int n) {
    alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tmp, p, sizeof(float) * static_cast<size_t>(n));
    return _mm256_load_ps(tmp);
  }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static unsigned le_mask(V a, V b) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ)));
  }
  static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static float hsum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};
// 16 registers: 12 accumulators + 2 query vectors + 1 broadcast.
constexpr int kVR = 2, kNR = 6;
#elif defined(__SSE2__)
struct Simd {
  using V = __m128;
  static constexpr int W = 4;
  static V zero() { return _mm_setzero_ps(); }
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static V load_partial(const float* p, int n) {
    alignas(16) float tmp[4] = {0, 0, 0, 0};
    std::memcpy(tmp, p, sizeof(float) * static_cast<size_t>(n));
    return _mm_load_ps(tmp);
  }
  static V set1(float a) { return _mm_set1_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
  static unsigned le_mask(V a, V b) { return static_cast<unsigned>(_mm_movemask_ps(_mm_cmple_ps(a, b))); }
  static void store(float* p, V a) { _mm_storeu_ps(p, a); }
  static float hsum(V a) {
    __m128 s = _mm_add_ps(a, _mm_movehl_ps(a, a));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};
constexpr int kVR = 2, kNR = 6;
#else
struct Simd {
  using V = float;
  static constexpr int W = 1;
  static V zero() { return 0.0f; }
  static V load(const float* p) { return *p; }
  static V load_partial(const float* p, int n) { return n > 0 ? *p : 0.0f; }
  static V set1(float a) { return a; }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static unsigned le_mask(V a, V b) { return a <= b ? 1u : 0u; }
  static void store(float* p, V a) { *p = a; }
  static float hsum(V a) { return a; }
};
constexpr int kVR = 4, kNR = 4;
#endif

using V = Simd::V;
constexpr int W = Simd::W;
constexpr int kLanes = kVR * W;
// Narrow blocks (half the queries) for query counts that would leave half of a
// wide block's lanes empty, e.g. M = 16 on AVX-512.
constexpr int kNarrowVR = kVR > 1 ? kVR / 2 : 1;
// Same row count as the wide block: more rows would be more streams of rows 4 KB apart (D = 1024),
// which alias in the L1 cache beyond its 12 ways.
constexpr int kNarrowNR = kNR;
constexpr int kNarrowLanes = kNarrowVR * W;

// Rows [r, r + NR) against one packed block of VR * W queries; reports hits to the sink.
template <int VR, int NR>
inline void lanes_step(const float* qpack, int64_t d, const float* x, const float* xn, int64_t r,
                       V (&th)[VR], float* thr, HitSink& sink) {
  constexpr int kBlock = VR * W;
  V acc[VR][NR];
#pragma GCC unroll 24
  for (int j = 0; j < NR; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < VR; ++v) acc[v][j] = Simd::zero();
  }
  const float* xr = x + r * d;
  for (int64_t c = 0; c < d; ++c) {
    V a[VR];
#pragma GCC unroll 4
    for (int v = 0; v < VR; ++v) a[v] = Simd::load(qpack + c * kBlock + v * W);
#pragma GCC unroll 24
    for (int j = 0; j < NR; ++j) {
      const V b = Simd::set1(xr[j * d + c]);
#pragma GCC unroll 4
      for (int v = 0; v < VR; ++v) acc[v][j] = Simd::fmadd(a[v], b, acc[v][j]);
    }
  }
  // f = ||x||^2 - 2 q.x, compared with each lane's threshold; almost always no lane passes.
  const V minus2 = Simd::set1(-2.0f);
  unsigned any = 0;
  unsigned masks[NR][VR];
#pragma GCC unroll 24
  for (int j = 0; j < NR; ++j) {
    const V n = Simd::set1(xn[r + j]);
#pragma GCC unroll 4
    for (int v = 0; v < VR; ++v) {
      acc[v][j] = Simd::fmadd(acc[v][j], minus2, n);
      masks[j][v] = Simd::le_mask(acc[v][j], th[v]);
      any |= masks[j][v];
    }
  }
  if (__builtin_expect(any == 0, 1)) return;
  for (int j = 0; j < NR; ++j) {
    for (int v = 0; v < VR; ++v) {
      unsigned m = masks[j][v];
      if (m == 0) continue;
      alignas(64) float f[W];
      Simd::store(f, acc[v][j]);
      while (m != 0) {
        const int lane = __builtin_ctz(m);
        m &= m - 1;
        sink.push(v * W + lane, r + j, f[lane]);
      }
    }
  }
  for (int v = 0; v < VR; ++v) th[v] = Simd::load(thr + v * W);
}

// Dot products of one query row with 4 consecutive database rows.
inline void dot4(const float* q, const float* x, int64_t d, float (&out)[4]) {
  V acc[4] = {Simd::zero(), Simd::zero(), Simd::zero(), Simd::zero()};
  int64_t c = 0;
  for (; c + W <= d; c += W) {
    const V a = Simd::load(q + c);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[j] = Simd::fmadd(a, Simd::load(x + j * d + c), acc[j]);
  }
  if (c < d) {
    const int rest = static_cast<int>(d - c);
    const V a = Simd::load_partial(q + c, rest);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[j] = Simd::fmadd(a, Simd::load_partial(x + j * d + c, rest), acc[j]);
  }
  for (int j = 0; j < 4; ++j) out[j] = Simd::hsum(acc[j]);
}

inline float dot1(const float* q, const float* x, int64_t d) {
  V acc = Simd::zero();
  int64_t c = 0;
  for (; c + W <= d; c += W) acc = Simd::fmadd(Simd::load(q + c), Simd::load(x + c), acc);
  if (c < d) {
    const int rest = static_cast<int>(d - c);
    acc = Simd::fmadd(Simd::load_partial(q + c, rest), Simd::load_partial(x + c, rest), acc);
  }
  return Simd::hsum(acc);
}

}  // namespace

int topk_lanes(bool narrow) { return narrow ? kNarrowLanes : kLanes; }

void topk_row_norms(const float* x, int64_t n, int64_t d, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = dot1(x + i * d, x + i * d, d);
}

namespace {
template <int VR, int NR>
void scan_lanes_impl(const float* qpack, int64_t d, const float* x, const float* xn, int64_t r0, int64_t r1,
                     float* thr, HitSink& sink) {
  V th[VR];
  for (int v = 0; v < VR; ++v) th[v] = Simd::load(thr + v * W);
  int64_t r = r0;
  for (; r + NR <= r1; r += NR) lanes_step<VR, NR>(qpack, d, x, xn, r, th, thr, sink);
  for (; r < r1; ++r) lanes_step<VR, 1>(qpack, d, x, xn, r, th, thr, sink);
}
}  // namespace

void topk_scan_lanes(const float* qpack, int lanes, int64_t d, const float* x, const float* xn, int64_t r0,
                     int64_t r1, float* thr, HitSink& sink) {
  if (lanes == kNarrowLanes && kNarrowLanes != kLanes) {
    scan_lanes_impl<kNarrowVR, kNarrowNR>(qpack, d, x, xn, r0, r1, thr, sink);
  } else {
    scan_lanes_impl<kVR, kNR>(qpack, d, x, xn, r0, r1, thr, sink);
  }
}

void topk_scan_rows(const float* q, int nq, int64_t d, const float* x, const float* xn, int64_t r0, int64_t r1,
                    float* thr, HitSink& sink) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    for (int i = 0; i < nq; ++i) {
      float dots[4];
      dot4(q + i * d, x + r * d, d, dots);
      for (int j = 0; j < 4; ++j) {
        const float f = xn[r + j] - 2.0f * dots[j];
        if (__builtin_expect(f <= thr[i], 0)) sink.push(i, r + j, f);
      }
    }
  }
  for (; r < r1; ++r) {
    for (int i = 0; i < nq; ++i) {
      const float f = xn[r] - 2.0f * dot1(q + i * d, x + r * d, d);
      if (f <= thr[i]) sink.push(i, r, f);
    }
  }
}

double topk_exact_sqdist(const float* a, const float* b, int64_t d) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < d; ++c) {
    const double t = static_cast<double>(a[c]) - static_cast<double>(b[c]);
    s += t * t;
  }
  return s;
}

}  // namespace DEEPRANK_ISA
}  // namespace deeprank
