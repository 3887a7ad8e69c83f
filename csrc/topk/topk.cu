// Exact top-K by squared L2 distance on the GPU: fused tiled distances + on-chip k-selection.
//
// Semantics are those of the CPU deeprank.topk: rows ascending by (distance, index), distances
// reported as float32(float64 sum((q - x)^2)), never negative, NaN distances last (so a query with
// NaN gets NaN distances and indices 0..k-1, and database rows with NaN sort last).
//
// Two kernels, no M x N matrix anywhere:
//  1. topk_partial_kernel, grid (query tiles, database splits), 256 threads. A block holds BM = 8*RW
//     queries and walks its database split in tiles of 128 rows, staging 16 dimensions at a time of
//     the query and database tiles in shared memory. Warp w owns queries w*RW .. w*RW+RW-1 and lane l
//     database rows 4l..4l+3 of the tile, so each distance ends up in one register of the warp that
//     owns its query. Distances are direct FP32 sums of (q - x)^2 (no norms, so no cancellation).
//     Each query keeps a sorted list of its K' = k + 32 best (distance bits, index) keys in shared
//     memory; a tile's distances are filtered against the list's worst key with a warp ballot and the
//     few survivors inserted by the warp. The lists go to the workspace [M, S, K'].
//  2. topk_merge_kernel, one block per query: each warp merges a share of the S sorted lists into its
//     own list (early exit: a run is sorted, so its first key that does not enter ends it), the warp
//     lists are merged pairwise, the K' survivors get their distance recomputed in float64 and
//     rounded once to float32 (the CPU path's value), and a bitonic sort orders them by
//     (exact distance, index); the first k are the result. The 32 spare candidates absorb FP32
//     rounding near the k-th distance, so the result equals the CPU path's unless more than 32 rows
//     lie within FP32 summation error (about D * 2^-24 relative) of the k-th distance.
//
// Keys are (float bits << 32 | index): for distances >= +0 the float bits order like the floats, NaN
// is mapped to 0xffffffff (after +inf), and the index breaks ties, so every comparison is one
// uint64 comparison and all keys are distinct. Empty slots hold ~0 (N < 2^31, so no real key is ~0).
//
// Workspace: M * S * K' * 8 bytes (S = plan.splits, K' = k + 32); shared memory per partial block
// 64*BM + 8448 + 8*BM*K' bytes, per merge block 8*(warps*K' + pow2ceil(K')) bytes.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/cuda_check.cuh"
#include "common/cuda_ops.cuh"

namespace deeprank::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileN = 128;            // database rows per tile: 4 per lane
constexpr int kTileD = 16;             // dimensions per shared-memory stage
constexpr int kXsStride = kTileN + 4;  // padded (and still 16-byte aligned) row of the database tile
constexpr int kExtra = 32;             // candidates beyond k, re-ranked by the exact distance
constexpr unsigned kFull = 0xffffffffu;
constexpr uint64_t kEmpty = ~0ull;
constexpr size_t kPartialSmemSoftCap = 100 * 1024;  // above this, fewer queries per block (more blocks/SM)
constexpr size_t kMergeSmemSoftCap = 96 * 1024;
constexpr int64_t kMaxRows = (int64_t{1} << 31) - 1 - 2 * kTileN;  // keeps int index arithmetic safe

__device__ __forceinline__ uint64_t make_key(float d, uint32_t index) {
  const uint32_t bits = isnan(d) ? 0xffffffffu : __float_as_uint(d);
  return (static_cast<uint64_t>(bits) << 32) | index;
}

__device__ __forceinline__ float key_distance(uint64_t key) {
  const uint32_t bits = static_cast<uint32_t>(key >> 32);
  return bits == 0xffffffffu ? __int_as_float(0x7fc00000) : __uint_as_float(bits);
}

// Inserts `key` into the ascending list L[0, K) of distinct keys; requires key < L[K-1] (the last
// entry drops out). Called by all 32 lanes of a warp with the same key.
__device__ __forceinline__ void warp_insert(uint64_t* L, int K, uint64_t key, int lane) {
  unsigned below = 0;
  for (int j = lane; j < K; j += 32) below += L[j] < key ? 1u : 0u;
  const int pos = static_cast<int>(__reduce_add_sync(kFull, below));
  // Shift L[pos, K-1) up by one, 32 entries at a time from the top, so every entry is read before
  // the chunk below writes over it.
  for (int base = ((K - 2) / 32) * 32; base >= (pos / 32) * 32; base -= 32) {
    const int j = base + lane;
    const bool move = j >= pos && j < K - 1;
    const uint64_t v = move ? L[j] : 0;
    __syncwarp();
    if (move) L[j + 1] = v;
    __syncwarp();
  }
  if (lane == 0) L[pos] = key;
  __syncwarp();
}

// Merges the ascending run[0, K) into the warp's list L (both of length K, keys distinct).
__device__ void warp_merge_run(uint64_t* L, int K, const uint64_t* run, int lane) {
  // Every lane must read L[0] before any lane overwrites it (lanes of a warp are not in lockstep).
  const bool empty = L[0] == kEmpty;
  __syncwarp();
  if (empty) {  // nothing kept yet: the sorted run is the answer
    for (int t = lane; t < K; t += 32) L[t] = run[t];
    __syncwarp();
    return;
  }
  for (int base = 0; base < K; base += 32) {
    const int j = base + lane;
    const uint64_t v = j < K ? run[j] : kEmpty;
    unsigned take = __ballot_sync(kFull, v < L[K - 1]);
    while (take) {
      const int src = __ffs(take) - 1;
      take &= take - 1;
      const uint64_t key = __shfl_sync(kFull, v, src);
      if (key < L[K - 1]) warp_insert(L, K, key, lane);
    }
    // The run ascends: once its last key here does not enter, no later key can.
    if (__shfl_sync(kFull, v, 31) >= L[K - 1]) break;
  }
}

template <int RW>
__global__ void __launch_bounds__(kThreads)
    topk_partial_kernel(const float* __restrict__ queries, const float* __restrict__ database, int m, int n, int d,
                        int K, int split_rows, int splits, uint64_t* __restrict__ workspace) {
  constexpr int BM = kWarps * RW;
  extern __shared__ __align__(16) unsigned char smem[];
  float* Qs = reinterpret_cast<float*>(smem);                               // [kTileD][BM]
  float* Xs = Qs + kTileD * BM;                                             // [kTileD][kXsStride]
  uint64_t* lists = reinterpret_cast<uint64_t*>(Xs + kTileD * kXsStride);  // [BM][K]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = blockIdx.x * BM;
  const int split = blockIdx.y;
  const int n_begin = split * split_rows;
  const int n_end = static_cast<int>(min(static_cast<int64_t>(n), static_cast<int64_t>(n_begin) + split_rows));

  for (int i = threadIdx.x; i < BM * K; i += kThreads) lists[i] = kEmpty;
  __syncthreads();

  for (int n0 = n_begin; n0 < n_end; n0 += kTileN) {
    float acc[RW][4];
#pragma unroll
    for (int i = 0; i < RW; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    }
    for (int d0 = 0; d0 < d; d0 += kTileD) {
      __syncthreads();  // the previous stage is consumed by every warp
      // Out-of-range entries are staged as 0 in both tiles, so padding adds exactly nothing.
      constexpr int kQLoads = (BM * kTileD + kThreads - 1) / kThreads;
#pragma unroll
      for (int r = 0; r < kQLoads; ++r) {
        const int e = threadIdx.x + r * kThreads;
        if (e < BM * kTileD) {
          const int row = e / kTileD, col = e % kTileD;
          const int gq = q0 + row, gd = d0 + col;
          Qs[col * BM + row] = (gq < m && gd < d) ? queries[static_cast<size_t>(gq) * d + gd] : 0.f;
        }
      }
      constexpr int kXLoads = kTileN * kTileD / kThreads;
#pragma unroll
      for (int r = 0; r < kXLoads; ++r) {
        const int e = threadIdx.x + r * kThreads;
        const int row = e / kTileD, col = e % kTileD;
        const int gn = n0 + row, gd = d0 + col;
        Xs[col * kXsStride + row] = (gn < n_end && gd < d) ? database[static_cast<size_t>(gn) * d + gd] : 0.f;
      }
      __syncthreads();
      // A warp whose queries are all past M (M = 1 uses one warp of eight) only helps with loading.
      if (q0 + warp * RW >= m) continue;
#pragma unroll
      for (int kk = 0; kk < kTileD; ++kk) {
        const float4 b = *reinterpret_cast<const float4*>(Xs + kk * kXsStride + lane * 4);
#pragma unroll
        for (int i = 0; i < RW; ++i) {
          const float a = Qs[kk * BM + warp * RW + i];
          float t;
          t = a - b.x;
          acc[i][0] = fmaf(t, t, acc[i][0]);
          t = a - b.y;
          acc[i][1] = fmaf(t, t, acc[i][1]);
          t = a - b.z;
          acc[i][2] = fmaf(t, t, acc[i][2]);
          t = a - b.w;
          acc[i][3] = fmaf(t, t, acc[i][3]);
        }
      }
    }
    // Selection: only this warp touches its queries' lists, so no block barrier is needed here.
#pragma unroll
    for (int i = 0; i < RW; ++i) {
      const int row = warp * RW + i;
      if (q0 + row < m) {  // warp-uniform
        uint64_t* L = lists + row * K;
        const uint64_t worst = L[K - 1];
        unsigned take[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = n0 + lane * 4 + j;
          take[j] = __ballot_sync(kFull, col < n_end && make_key(acc[i][j], col) < worst);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          unsigned mask = take[j];
          while (mask) {  // mask is the same in every lane
            const int src = __ffs(mask) - 1;
            mask &= mask - 1;
            const float dist = __shfl_sync(kFull, acc[i][j], src);
            const uint64_t key = make_key(dist, static_cast<uint32_t>(n0 + src * 4 + j));
            if (key < L[K - 1]) warp_insert(L, K, key, lane);
          }
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < RW; ++i) {
    const int row = warp * RW + i;
    if (q0 + row < m) {
      const uint64_t* L = lists + row * K;
      uint64_t* out = workspace + (static_cast<size_t>(q0 + row) * splits + split) * K;
      for (int t = lane; t < K; t += 32) out[t] = L[t];
    }
  }
}

// One block (32 * warps threads) per query. P = smallest power of two >= K.
__global__ void __launch_bounds__(1024)
    topk_merge_kernel(const float* __restrict__ queries, const float* __restrict__ database, int d,
                      const uint64_t* __restrict__ workspace, int splits, int K, int k, int P,
                      float* __restrict__ out_dist, int64_t* __restrict__ out_idx) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warps = blockDim.x >> 5;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint64_t* lists = reinterpret_cast<uint64_t*>(smem);  // [warps][K]
  uint64_t* sorted = lists + static_cast<size_t>(warps) * K;  // [P]
  const size_t q = blockIdx.x;

  uint64_t* L = lists + static_cast<size_t>(warp) * K;
  for (int t = lane; t < K; t += 32) L[t] = kEmpty;
  __syncwarp();
  for (int s = warp; s < splits; s += warps) {
    warp_merge_run(L, K, workspace + (q * splits + s) * K, lane);
  }
  __syncthreads();
  for (int stride = 1; stride < warps; stride *= 2) {
    if ((warp & (2 * stride - 1)) == 0 && warp + stride < warps) {
      warp_merge_run(L, K, lists + static_cast<size_t>(warp + stride) * K, lane);
    }
    __syncthreads();
  }

  // Exact re-rank of the K candidates now in lists[0, K): float64 sum, rounded once to float32.
  const float* qrow = queries + q * d;
  for (int t = warp; t < P; t += warps) {
    uint64_t key = kEmpty;
    if (t < K && lists[t] != kEmpty) {
      const uint32_t index = static_cast<uint32_t>(lists[t]);
      const float* xrow = database + static_cast<size_t>(index) * d;
      double acc = 0.0;
      for (int j = lane; j < d; j += 32) {
        const double diff = static_cast<double>(qrow[j]) - static_cast<double>(xrow[j]);
        acc = fma(diff, diff, acc);
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFull, acc, offset);
      key = make_key(static_cast<float>(acc), index);  // lane 0's value is the one stored
    }
    if (lane == 0) sorted[t] = key;
  }
  __syncthreads();

  // Bitonic sort of sorted[0, P), ascending.
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < P / 2; t += blockDim.x) {
        const int lo = 2 * t - (t & (stride - 1));
        const int hi = lo + stride;
        const bool ascending = (lo & size) == 0;
        const uint64_t a = sorted[lo], b = sorted[hi];
        if ((a > b) == ascending) {
          sorted[lo] = b;
          sorted[hi] = a;
        }
      }
      __syncthreads();
    }
  }

  for (int t = threadIdx.x; t < k; t += blockDim.x) {
    const uint64_t key = sorted[t];
    out_dist[q * k + t] = key_distance(key);
    out_idx[q * k + t] = static_cast<int64_t>(static_cast<uint32_t>(key));
  }
}

size_t partial_smem_bytes(int rw, int K) {
  const size_t bm = static_cast<size_t>(kWarps) * rw;
  return (kTileD * bm + kTileD * kXsStride) * sizeof(float) + bm * K * sizeof(uint64_t);
}

int pow2_ceil(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

size_t merge_smem_bytes(int warps, int K) {
  return (static_cast<size_t>(warps) * K + pow2_ceil(K)) * sizeof(uint64_t);
}

template <int RW>
void launch_partial(dim3 grid, size_t smem, cudaStream_t stream, const float* queries, const float* database,
                    int m, int n, int d, int K, int split_rows, int splits, uint64_t* workspace) {
  check(cudaFuncSetAttribute(topk_partial_kernel<RW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)),
        "cudaFuncSetAttribute(topk_partial_kernel)");
  DEEPRANK_LAUNCH(topk_partial_kernel<RW>, grid, kThreads, smem, stream)(queries, database, m, n, d, K, split_rows,
                                                                         splits, workspace);
  check_launch("topk_partial_kernel");
}

}  // namespace

TopkPlan topk_plan(int64_t m, int64_t n, int64_t d, int64_t k, int device) {
  if (k < 1 || k > n) {
    throw std::invalid_argument("k must be in [1, database rows], got k=" + std::to_string(k) +
                                " with " + std::to_string(n) + " rows");
  }
  if (n > kMaxRows) throw std::invalid_argument("database has too many rows for the CUDA top-K (max 2^31 - 257)");
  if (m > kMaxRows) throw std::invalid_argument("too many queries for one CUDA top-K call (max 2^31 - 257)");
  if (d < 1 || d > kMaxRows) throw std::invalid_argument("dimension must be in [1, 2^31 - 257]");
  if (static_cast<double>(n) * static_cast<double>(d) > 9.0e18 || static_cast<double>(m) * static_cast<double>(d) > 9.0e18) {
    throw std::invalid_argument("arrays too large");
  }
  const int K = static_cast<int>(k) + kExtra;
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount, device);
  const size_t optin = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));

  // Queries per block: enough for M (a small M wastes no work on empty rows), fewer when k is large.
  int rw = 1;
  while (rw < 8 && static_cast<int64_t>(kWarps) * rw < m) rw *= 2;
  while (rw > 1 && partial_smem_bytes(rw, K) > std::min(optin, kPartialSmemSoftCap)) rw /= 2;
  if (partial_smem_bytes(rw, K) > optin) {
    const int64_t k_max = static_cast<int64_t>((optin - partial_smem_bytes(1, 0)) / (kWarps * sizeof(uint64_t))) - kExtra;
    throw std::invalid_argument("k=" + std::to_string(k) + " is too large for this GPU's shared memory (" +
                                std::to_string(optin) + " bytes per block): the CUDA top-K takes k <= " +
                                std::to_string(k_max));
  }
  const int bm = kWarps * rw;
  const int64_t query_tiles = (m + bm - 1) / bm;

  // Database splits: about 4 blocks per SM in all; M = 1 therefore spreads the database over the GPU.
  const int64_t target_blocks = 4 * static_cast<int64_t>(sms);
  const int64_t splits_wanted = std::max<int64_t>(1, (target_blocks + query_tiles - 1) / std::max<int64_t>(1, query_tiles));
  int64_t split_rows = std::max<int64_t>((n + splits_wanted - 1) / splits_wanted, 4 * static_cast<int64_t>(K));
  split_rows = std::max<int64_t>(split_rows, (n + 65534) / 65535);  // grid.y <= 65535
  split_rows = (split_rows + kTileN - 1) / kTileN * kTileN;
  const int64_t splits = (n + split_rows - 1) / split_rows;

  int warps = 32;
  while (warps > 1 && (merge_smem_bytes(warps, K) > std::min(optin, kMergeSmemSoftCap) || warps / 2 >= splits)) {
    warps /= 2;
  }
  if (merge_smem_bytes(warps, K) > optin) {
    throw std::invalid_argument("k=" + std::to_string(k) + " is too large for this GPU's shared memory");
  }
  TopkPlan plan;
  plan.query_rows_per_block = bm;
  plan.splits = static_cast<int>(splits);
  plan.split_rows = split_rows;
  plan.candidates = K;
  plan.merge_warps = warps;
  plan.workspace_elems = m * splits * K;
  return plan;
}

void topk_launch(const float* queries, const float* database, int64_t m, int64_t n, int64_t d, int64_t k,
                 void* workspace, int64_t workspace_elems, float* out_dist, int64_t* out_idx,
                 std::uintptr_t stream_handle, int device) {
  if (m == 0) return;
  DeviceGuard guard(device);
  const TopkPlan plan = topk_plan(m, n, d, k, device);
  if (workspace_elems < plan.workspace_elems) {
    throw std::invalid_argument("top-K workspace too small: " + std::to_string(workspace_elems) + " < " +
                                std::to_string(plan.workspace_elems) + " elements");
  }
  auto* ws = static_cast<uint64_t*>(workspace);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int K = plan.candidates;
  const dim3 grid(static_cast<unsigned>((m + plan.query_rows_per_block - 1) / plan.query_rows_per_block),
                  static_cast<unsigned>(plan.splits));
  const int rw = plan.query_rows_per_block / kWarps;
  const size_t smem = partial_smem_bytes(rw, K);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), di = static_cast<int>(d);
  const int split_rows = static_cast<int>(plan.split_rows);
  switch (rw) {
    case 8: launch_partial<8>(grid, smem, stream, queries, database, mi, ni, di, K, split_rows, plan.splits, ws); break;
    case 4: launch_partial<4>(grid, smem, stream, queries, database, mi, ni, di, K, split_rows, plan.splits, ws); break;
    case 2: launch_partial<2>(grid, smem, stream, queries, database, mi, ni, di, K, split_rows, plan.splits, ws); break;
    default: launch_partial<1>(grid, smem, stream, queries, database, mi, ni, di, K, split_rows, plan.splits, ws); break;
  }
  const size_t merge_smem = merge_smem_bytes(plan.merge_warps, K);
  check(cudaFuncSetAttribute(topk_merge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(merge_smem)),
        "cudaFuncSetAttribute(topk_merge_kernel)");
  DEEPRANK_LAUNCH(topk_merge_kernel, static_cast<unsigned>(m), 32 * plan.merge_warps, merge_smem, stream)(
      queries, database, di, ws, plan.splits, K, static_cast<int>(k), pow2_ceil(K), out_dist, out_idx);
  check_launch("topk_merge_kernel");
}

}  // namespace deeprank::cuda
