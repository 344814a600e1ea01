#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_NORM_INSTANCES(ARCH, EXTERN)
