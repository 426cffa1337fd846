// What the engine's own front ends (return probes) need from the C++ one
// (api.cpp).
#pragma once

#include "core/probe.hpp"
#include "ukprobes/kprobes.h"
#include "ukprobes/ukprobes.hpp"

namespace ukp::detail {

// Makes `probe`'s record a return probe's entry that calls `handler`
// directly, with `data` in the record's handler_data, instead of the
// Kprobe's std::function (two indirect calls fewer on every hit); nullptr
// undoes it.  Before registration or after unregistration.
void set_return_entry_handler(Kprobe& probe, core::PreHandlerFn handler, void* data);

// The pre-handler the C front end's register_kretprobes gives a struct
// kretprobe's kp (kretprobe.cpp); c_api.cpp marks such records as return
// probes' entries and, as set_return_entry_handler does, has them call
// core::return_probe_pre_handler with c_return_probe(entry) instead.
int c_return_entry(struct kprobe* entry, struct pt_regs* regs);
// The engine's ReturnProbe behind such a kp (its struct kretprobe's).
void* c_return_probe(struct kprobe* entry);

}  // namespace ukp::detail
