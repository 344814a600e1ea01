# Targets and helpers for kern's own tests, benchmarks and examples (not installed).

# Project code builds warning-free; the same flags keep the headers clean for users who use -Wpedantic.
add_library(kern_warnings INTERFACE)
target_compile_options(kern_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror>)

# kern's CPU kernels compiled for every ISA (kern_enable_isa_dispatch) once, into a library that
# every test, benchmark and example program links, instead of into each program: the same kernels
# compiled again per program were most of the build (each ISA's GEMM 15 times in a release build).
# kern_isa_kernels_amx_emulated is the GEMM with the AMX kernel's tiles emulated
# (kern/cpu/gemm/amx_tiles.hpp), for its tests; its definition reaches the programs that link it.
function(kern_add_isa_kernels name)
  cmake_parse_arguments(arg "" "" "FAMILIES;DEFINITIONS" ${ARGN})
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    add_library(${name} INTERFACE) # the kernels compile at each program's own flags
    target_compile_definitions(${name} INTERFACE ${arg_DEFINITIONS})
    return()
  endif()
  add_library(${name} STATIC)
  target_link_libraries(${name} PUBLIC kern::kern PRIVATE kern_warnings)
  target_compile_definitions(${name} PUBLIC ${arg_DEFINITIONS})
  kern_enable_isa_dispatch(${name} FAMILIES ${arg_FAMILIES})
  target_compile_definitions(${name} INTERFACE KERN_ISA_DISPATCH=1)
endfunction()
kern_add_isa_kernels(kern_isa_kernels)
kern_add_isa_kernels(kern_isa_kernels_amx_emulated FAMILIES gemm DEFINITIONS KERN_CPU_AMX_EMULATED=1)

# kern_add_test(NAME source... [LIBS lib...] [EACH_ISA [AMX] | ISA_DISPATCH | AT_ISA level AS variant]
# [KERNELS library]): one GoogleTest program, its tests discovered by ctest. ISA_DISPATCH links the
# kernels compiled for every ISA (KERNELS, kern_isa_kernels by default), run at the machine's best;
# EACH_ISA does so and registers the tests once per ISA level, forced with KERN_ISA, and with AMX at
# the amx level too, for kernels that have an AMX path (ctest skips the levels above the machine's:
# tests/support/isa_level.hpp); a sanitizer build runs them once, at the machine's level, to keep CI
# short. AT_ISA registers them once, at `level`, named "/isa:<variant>", in every build.
function(kern_add_test name)
  cmake_parse_arguments(arg "EACH_ISA;AMX;ISA_DISPATCH" "AT_ISA;AS;KERNELS" "LIBS" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}/tests")
  target_link_libraries(${name} PRIVATE kern::kern kern_warnings GTest::gtest GTest::gtest_main ${arg_LIBS})
  if(arg_EACH_ISA OR arg_ISA_DISPATCH OR arg_AT_ISA)
    if(NOT arg_KERNELS)
      set(arg_KERNELS kern_isa_kernels)
    endif()
    target_link_libraries(${name} PRIVATE ${arg_KERNELS})
  endif()
  # KERN_ISA above the CPU's level: the program ran nothing (isa_above_cpu_exit_code, isa_level.hpp).
  set(isa_above_cpu_exit_code 77)
  if(arg_AT_ISA)
    gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 TEST_SUFFIX "/isa:${arg_AS}"
      PROPERTIES ENVIRONMENT "KERN_ISA=${arg_AT_ISA}" SKIP_RETURN_CODE ${isa_above_cpu_exit_code})
  elseif(arg_EACH_ISA AND NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize")
    set(levels avx512_bf16 avx512 avx2 sse2)
    if(arg_AMX)
      list(PREPEND levels amx)
    endif()
    foreach(level ${levels})
      gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 TEST_SUFFIX "/isa:${level}"
        PROPERTIES ENVIRONMENT "KERN_ISA=${level}" SKIP_RETURN_CODE ${isa_above_cpu_exit_code})
    endforeach()
  else()
    gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60)
  endif()
endfunction()

# kern_add_bench(NAME source... [LIBS lib...] [ISA_DISPATCH [KERNELS library]]): one Google Benchmark
# program; ISA_DISPATCH links the kernels compiled for every ISA (KERNELS, kern_isa_kernels by
# default), chosen at run time.
function(kern_add_bench name)
  cmake_parse_arguments(arg "ISA_DISPATCH" "KERNELS" "LIBS" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}/bench")
  target_link_libraries(${name} PRIVATE kern::kern kern_warnings benchmark::benchmark kern_bench_main ${arg_LIBS})
  if(arg_ISA_DISPATCH)
    if(NOT arg_KERNELS)
      set(arg_KERNELS kern_isa_kernels)
    endif()
    target_link_libraries(${name} PRIVATE ${arg_KERNELS})
  endif()
endfunction()

# kern_add_gpu_test(NAME source): one GoogleTest program of GPU kernels, built three ways.
#  - In the CPU execution mode, twice: NAME_w32 and NAME_w64 (warp size 32 and 64), run by ctest.
#  - Compile checks, run by ctest: nvcc for sm_80 and sm_90a and hipcc for the CDNA targets, with
#    warnings as errors and ptxas spills as errors (skipped, and reported so, where the compiler is
#    absent).
#  - With KERN_ENABLE_CUDA: NAME_cuda, on the GPU (its tests skip where there is none).
set(KERN_GPU_TEST_DIR "${CMAKE_CURRENT_LIST_DIR}/../tests/gpu")
find_program(KERN_NVCC nvcc HINTS /usr/local/cuda/bin)
find_program(KERN_HIPCC hipcc)
function(kern_add_gpu_test name source)
  foreach(warp 32 64)
    add_executable(${name}_w${warp} ${source})
    target_include_directories(${name}_w${warp} PRIVATE "${PROJECT_SOURCE_DIR}/tests")
    target_link_libraries(${name}_w${warp} PRIVATE kern::kern kern_warnings GTest::gtest GTest::gtest_main)
    target_compile_definitions(${name}_w${warp} PRIVATE KERN_GPU_EMULATED_WARP_SIZE=${warp})
    gtest_discover_tests(${name}_w${warp} DISCOVERY_TIMEOUT 60 TEST_SUFFIX "/warp:${warp}")
  endforeach()
  if(NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize")
    foreach(kind nvcc hipcc)
      string(TOUPPER "${kind}" kind_upper)
      add_test(NAME ${kind}_compile/${name}
        COMMAND "${KERN_GPU_TEST_DIR}/compile_check.sh" ${kind} "${KERN_${kind_upper}}" "${source}"
          "${PROJECT_SOURCE_DIR}/include" "${PROJECT_SOURCE_DIR}/kernels" "${PROJECT_SOURCE_DIR}/tests")
      set_tests_properties(${kind}_compile/${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
    endforeach()
  endif()
  if(KERN_ENABLE_CUDA)
    set(wrapper "${CMAKE_CURRENT_BINARY_DIR}/${name}.cu")
    file(CONFIGURE OUTPUT "${wrapper}" CONTENT "#include \"${source}\"\n")
    add_executable(${name}_cuda "${wrapper}")
    target_include_directories(${name}_cuda PRIVATE "${PROJECT_SOURCE_DIR}/tests")
    target_link_libraries(${name}_cuda PRIVATE kern::cuda GTest::gtest GTest::gtest_main)
    gtest_discover_tests(${name}_cuda DISCOVERY_TIMEOUT 60 TEST_SUFFIX "/cuda")
    set_property(GLOBAL APPEND PROPERTY KERN_CUDA_TEST_TARGETS ${name}_cuda)
  endif()
endfunction()
