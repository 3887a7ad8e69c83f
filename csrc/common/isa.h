// Runtime instruction-set dispatch.
//
// Files named *_kernels.cpp are compiled once per ISA with DEEPRANK_ISA set to `generic`, `avx2` or
// `avx512` (see CMakeLists.txt); each wraps its code in `namespace deeprank { namespace DEEPRANK_ISA {`.
// Callers declare the function in every namespace with DEEPRANK_DECLARE_ISA_VARIANTS and call it
// through DEEPRANK_ISA_CALL, which picks the widest variant this CPU supports (or the one forced by
// set_isa / the DEEPRANK_ISA environment variable, which tests use to check every variant).
#pragma once

#include <string>
#include <vector>

namespace deeprank {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

// The variant in use: the widest supported, unless forced lower.
Isa active_isa();
// The widest variant this CPU and this build support.
Isa best_isa();
// Force a variant by name ("generic", "avx2", "avx512", or "auto"); throws std::invalid_argument
// if unknown or unsupported on this CPU.
void set_isa(const std::string& name);
const char* isa_name(Isa isa);
// Names of every variant usable here, narrowest first.
std::vector<std::string> available_isas();

}  // namespace deeprank

#if defined(DEEPRANK_X86_VARIANTS)
#define DEEPRANK_DECLARE_ISA_VARIANTS(decl) \
  namespace deeprank {                      \
  namespace generic { decl; }               \
  namespace avx2 { decl; }                  \
  namespace avx512 { decl; }                \
  }
#define DEEPRANK_ISA_CALL(fn, ...)                                   \
  ([&]() {                                                           \
    switch (::deeprank::active_isa()) {                              \
      case ::deeprank::Isa::avx512: return ::deeprank::avx512::fn(__VA_ARGS__); \
      case ::deeprank::Isa::avx2: return ::deeprank::avx2::fn(__VA_ARGS__);     \
      default: return ::deeprank::generic::fn(__VA_ARGS__);          \
    }                                                                \
  }())
#else
#define DEEPRANK_DECLARE_ISA_VARIANTS(decl) \
  namespace deeprank {                      \
  namespace generic { decl; }               \
  }
#define DEEPRANK_ISA_CALL(fn, ...) (::deeprank::generic::fn(__VA_ARGS__))
#endif
