// Picks the block function for the running CPU: the widest instruction set it supports.
#include "kernel.h"

namespace lemon {
namespace cpu {
namespace {

struct Variant {
  const char* name;
  BlockFn fn;
  bool (*runs)();
};

const Variant kVariants[] = {  // widest first
#if defined(__x86_64__) && defined(__GNUC__)
    {"avx512", expand_block_avx512,
     [] {
       return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
     }},
    {"avx2", expand_block_avx2, [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2"); }},
#endif
    {"generic", expand_block_generic, [] { return true; }},
};

}  // namespace

BlockFn block_fn_named(const std::string& name) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
#endif
  for (const Variant& v : kVariants)
    if (name == v.name) return v.runs() ? v.fn : nullptr;
  return nullptr;
}

const char* isa_name(const std::string& name) {
  for (const Variant& v : kVariants)
    if (name == v.name) return v.name;
  return "unknown";
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Variant& v : kVariants)
    if (block_fn_named(v.name)) names.push_back(v.name);
  return names;
}

BlockFn best_block_fn(const char** name) {
  const std::vector<std::string> names = supported_isas();
  if (name) *name = isa_name(names.front());
  return block_fn_named(names.front());
}

}  // namespace cpu
}  // namespace lemon
