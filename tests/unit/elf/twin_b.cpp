// The second local ukp_twin; see twin_a.cpp for why it exists.
#include <cstdint>

[[gnu::noinline]] static int ukp_twin(int value) asm("ukp_twin");
[[gnu::noinline]] static int ukp_twin(int value) { return value * 5 - 2; }

std::uintptr_t ukp_twin_b_address() { return reinterpret_cast<std::uintptr_t>(&ukp_twin); }
