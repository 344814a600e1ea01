#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_SOFTMAX_INSTANCES(ARCH, EXTERN)
