# Builds and runs tests/consumer/project twice: against an install of kern (find_package) and
# with kern's source tree added as a subdirectory.
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT result EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "failed (${result}): ${command}\n${out}")
  endif()
endfunction()

run("${CMAKE_COMMAND}" --install "${KERN_BINARY_DIR}" --prefix "${prefix}")
if(NOT EXISTS "${prefix}/include/kern/core/dtype.hpp" OR NOT EXISTS "${prefix}/include/kern/cpu/convert.hpp")
  message(FATAL_ERROR "the install does not hold both include roots under include/kern")
endif()

foreach(mode package subdirectory)
  set(build "${WORK_DIR}/build-${mode}")
  run("${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_LIST_DIR}/project" -B "${build}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_BUILD_TYPE="
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DKERN_CONSUMER_MODE=${mode}" "-DKERN_SOURCE_DIR=${KERN_SOURCE_DIR}")
  run("${CMAKE_COMMAND}" --build "${build}")
  run("${build}/consumer")
  message(STATUS "consumer via ${mode}: built and ran")
endforeach()
