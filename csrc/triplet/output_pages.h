// Outputs of the triplet and LRN kernels are fresh allocations from torch, so their first touch costs
// a page fault per 4 KiB page, which is more than the kernels' own work for gradients of hundreds
// of MB. Asking for transparent huge pages (where the system allows it only on request, as with
// THP "madvise") cuts those faults 512-fold. Advice only: any failure is ignored.
// (Shared by csrc/triplet and csrc/lrn; a candidate for csrc/common.)
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace deeprank {

inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace deeprank
