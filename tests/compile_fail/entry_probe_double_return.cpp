// Must not compile: a double result is in xmm0.
#include <ukprobes/entry_probe.hpp>

double result_of(const ukp::Regs& regs) { return ukp::typed_return_value<double>(regs); }
