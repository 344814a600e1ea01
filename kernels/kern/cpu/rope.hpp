#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_ROPE_INSTANCES(ARCH, EXTERN)
