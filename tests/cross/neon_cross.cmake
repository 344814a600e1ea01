# Cross-compiles tests/cross/neon_smoke.cpp for AArch64 and runs it under qemu-aarch64 if found.
file(MAKE_DIRECTORY "${WORK_DIR}")
# xsimd is header-only: the host's copy serves the cross compiler too.
execute_process(COMMAND "${CXX}" -std=c++20 -O2 -fopenmp -static -Wall -Wextra -Wpedantic -Werror
  -I "${SOURCE_DIR}/include" -I "${SOURCE_DIR}/kernels" -idirafter /usr/include
  "${SOURCE_DIR}/tests/cross/neon_smoke.cpp" -o "${WORK_DIR}/neon_smoke" RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "the AArch64 (NEON) build failed")
endif()
if(QEMU)
  execute_process(COMMAND "${QEMU}" "${WORK_DIR}/neon_smoke" RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "the NEON smoke test failed under qemu")
  endif()
else()
  message(STATUS "qemu-aarch64 not found: compiled only")
endif()
