#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_OPTIMIZER_INSTANCES(ARCH, EXTERN)
