// One of two translation units that each define a local function called
// ukp_twin, so that the test binary's .symtab holds two STB_LOCAL symbols of
// one name: an unqualified lookup of it must be AmbiguousSymbol.
//
// The asm label fixes the symbol name (no C++ mangling); noinline and the
// taken address keep the function in the binary; the bodies differ so that
// identical-code folding cannot merge the twins into one address.
#include <cstdint>

[[gnu::noinline]] static int ukp_twin(int value) asm("ukp_twin");
[[gnu::noinline]] static int ukp_twin(int value) { return value * 3 + 1; }

std::uintptr_t ukp_twin_a_address() { return reinterpret_cast<std::uintptr_t>(&ukp_twin); }
