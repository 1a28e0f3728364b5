// The CPU block function for any CPU (the compiler's baseline instruction set).
#include <algorithm>
#include <vector>

#include "kernel.h"

#define LEMON_ISA generic
#define LEMON_BLOCK_FN expand_block_generic
#include "kernel.inc"
