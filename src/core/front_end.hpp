// What the engine's own front ends (return probes) need from the C++ one
// (api.cpp).
#pragma once

#include "core/probe.hpp"
#include "ukprobes/ukprobes.hpp"

namespace ukp::detail {

// Makes `probe`'s record call `handler` directly, with `data` in the
// record's handler_data, instead of the Kprobe's std::function (two
// indirect calls fewer on every hit).  Before registration.
void set_internal_pre_handler(Kprobe& probe, core::PreHandlerFn handler, void* data);

}  // namespace ukp::detail
