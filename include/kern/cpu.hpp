// kern's CPU backend: include this one header to use every CPU kernel.
#pragma once

#include "kern/core/cpu_info.hpp"
#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/memory.hpp"
#include "kern/core/threading.hpp"
#include "kern/core/version.hpp"
#include "kern/core/view.hpp"

#include "kern/cpu/activation.hpp"
#include "kern/cpu/attention.hpp"
#include "kern/cpu/convert.hpp"
#include "kern/cpu/embedding.hpp"
#include "kern/cpu/gemm.hpp"
#include "kern/cpu/norm.hpp"
#include "kern/cpu/optimizer.hpp"
#include "kern/cpu/rope.hpp"
#include "kern/cpu/softmax.hpp"
