#include "common/isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace deeprank {
namespace {

Isa detect_best() {
#if defined(DEEPRANK_X86_VARIANTS) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma")) {
    return Isa::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

Isa parse(const std::string& name) {
  if (name == "generic") return Isa::generic;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  if (name == "auto" || name.empty()) return best_isa();
  throw std::invalid_argument("isa must be one of 'auto', 'generic', 'avx2', 'avx512', got '" + name + "'");
}

std::atomic<int>& forced() {
  // -1: not yet initialised from the environment.
  static std::atomic<int> value{-1};
  return value;
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect_best();
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

void set_isa(const std::string& name) {
  const Isa want = parse(name);
  if (static_cast<int>(want) > static_cast<int>(best_isa())) {
    throw std::invalid_argument(std::string("isa '") + name + "' is not supported on this CPU (best: " +
                                isa_name(best_isa()) + ")");
  }
  forced().store(static_cast<int>(want));
}

Isa active_isa() {
  int value = forced().load(std::memory_order_relaxed);
  if (value < 0) {
    const char* env = std::getenv("DEEPRANK_ISA");
    Isa isa = best_isa();
    if (env != nullptr) {
      try {
        Isa want = parse(env);
        if (static_cast<int>(want) <= static_cast<int>(best_isa())) isa = want;
      } catch (const std::invalid_argument&) {
        // An unknown value in the environment falls back to the best variant rather than failing import.
      }
    }
    value = static_cast<int>(isa);
    forced().store(value);
  }
  return static_cast<Isa>(value);
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (int i = 0; i <= static_cast<int>(best_isa()); ++i) names.emplace_back(isa_name(static_cast<Isa>(i)));
  return names;
}

}  // namespace deeprank
