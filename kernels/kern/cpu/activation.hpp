#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_ACTIVATION_INSTANCES(ARCH, EXTERN)
