// kern's GPU backends: include this one header to use every GPU kernel. Compiled by nvcc the
// entry points are kern::cuda::… (link kern::cuda), by hipcc kern::hip::… (link kern::hip), and by
// a host compiler kern::emulated::…, the CPU execution mode kern's tests use (docs/backends.md).
// In every mode they are also kern::gpu::….
#pragma once

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

#include "kern/gpu/runtime.hpp"

#include "kern/gpu/activation.hpp"
#include "kern/gpu/embedding.hpp"
#include "kern/gpu/norm.hpp"
#include "kern/gpu/optimizer.hpp"
#include "kern/gpu/rope.hpp"
#include "kern/gpu/softmax.hpp"
