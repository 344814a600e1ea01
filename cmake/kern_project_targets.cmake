# Targets and helpers for kern's own tests, benchmarks and examples (not installed).

# Project code builds warning-free; the same flags keep the headers clean for users who use -Wpedantic.
add_library(kern_warnings INTERFACE)
target_compile_options(kern_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror>)

# kern_add_test(NAME source... [LIBS lib...]): one GoogleTest program, its tests discovered by ctest.
function(kern_add_test name)
  cmake_parse_arguments(arg "" "" "LIBS" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE kern::kern kern_warnings GTest::gtest GTest::gtest_main ${arg_LIBS})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60)
endfunction()

# kern_add_bench(NAME source... [LIBS lib...]): one Google Benchmark program.
function(kern_add_bench name)
  cmake_parse_arguments(arg "" "" "LIBS" ${ARGN})
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}/bench")
  target_link_libraries(${name} PRIVATE kern::kern kern_warnings benchmark::benchmark kern_bench_main ${arg_LIBS})
endfunction()
