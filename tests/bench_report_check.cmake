# Runs the FMA part of the peak benchmark briefly and checks that bench_report.py makes a table and a PNG.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
execute_process(COMMAND "${BENCH}" --benchmark_filter=fma --benchmark_min_time=0.01
  "--benchmark_out=${WORK_DIR}/peak.json" --benchmark_out_format=json
  RESULT_VARIABLE result OUTPUT_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "the peak benchmark failed (${result})")
endif()
execute_process(COMMAND /usr/bin/python3 "${REPORT}" "${WORK_DIR}/peak.json" --baseline fma_avx2
  --out-md "${WORK_DIR}/peak.md" --out-png "${WORK_DIR}/peak.png" RESULT_VARIABLE result OUTPUT_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "bench_report.py failed (${result})")
endif()
file(READ "${WORK_DIR}/peak.md" table)
if(NOT table MATCHES "peak/fma_avx2|\\| peak \\| f32 \\| ymm" OR NOT EXISTS "${WORK_DIR}/peak.png")
  message(FATAL_ERROR "bench_report.py did not write the table and the plot:\n${table}")
endif()
file(SIZE "${WORK_DIR}/peak.png" png_size)
message(STATUS "table and ${png_size}-byte PNG written")
