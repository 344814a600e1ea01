#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_ATTENTION_INSTANCES(ARCH, EXTERN)
