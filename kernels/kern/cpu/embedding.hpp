#pragma once

#include "kern/cpu/isa.hpp"

#define KERN_CPU_EMBEDDING_INSTANCES(ARCH, EXTERN)
