# Targets and helpers for kern's own tests, benchmarks and examples (not installed).

# Project code builds warning-free; the same flags keep the headers clean for users who use -Wpedantic.
add_library(kern_warnings INTERFACE)
target_compile_options(kern_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror>)

# kern_add_test(NAME source... [LIBS lib...] [EACH_ISA | ISA_DISPATCH] [FAMILIES family...]): one
# GoogleTest program, its tests discovered by ctest. ISA_DISPATCH compiles the kernels (of FAMILIES,
# or all) for every ISA (kern_enable_isa_dispatch), run at the machine's best; EACH_ISA does so and
# registers the tests once per ISA level, forced with KERN_ISA (a level above the machine's runs at
# the machine's); a sanitizer build runs them once, at the machine's level, to keep CI short.
function(kern_add_test name)
  cmake_parse_arguments(arg "EACH_ISA;ISA_DISPATCH" "" "LIBS;FAMILIES" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}/tests")
  target_link_libraries(${name} PRIVATE kern::kern kern_warnings GTest::gtest GTest::gtest_main ${arg_LIBS})
  if(arg_EACH_ISA OR arg_ISA_DISPATCH)
    kern_enable_isa_dispatch(${name} FAMILIES ${arg_FAMILIES})
  endif()
  if(arg_EACH_ISA AND NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize")
    foreach(level avx512_bf16 avx512 avx2 sse2)
      gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 TEST_SUFFIX "/isa:${level}"
        PROPERTIES ENVIRONMENT "KERN_ISA=${level}")
    endforeach()
  else()
    gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60)
  endif()
endfunction()

# kern_add_bench(NAME source... [LIBS lib...] [ISA_DISPATCH [FAMILIES family...]]): one Google
# Benchmark program; ISA_DISPATCH compiles the kernels (of FAMILIES, or all) for every ISA, chosen
# at run time.
function(kern_add_bench name)
  cmake_parse_arguments(arg "ISA_DISPATCH" "" "LIBS;FAMILIES" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}/bench")
  target_link_libraries(${name} PRIVATE kern::kern kern_warnings benchmark::benchmark kern_bench_main ${arg_LIBS})
  if(arg_ISA_DISPATCH)
    kern_enable_isa_dispatch(${name} FAMILIES ${arg_FAMILIES})
  endif()
endfunction()
