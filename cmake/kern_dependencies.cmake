# Finds kern's usage requirements. Included by kern's own CMakeLists.txt and by the installed
# kernConfig.cmake, so a consumer resolves exactly what kern was built against.
include(CMakeFindDependencyMacro)

# Debian's xsimd 8.1 package config links a target `xtl` that it never defines; xsimd needs
# nothing from xtl at link time, so an empty placeholder satisfies it.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
find_dependency(xsimd)
find_dependency(OpenMP)
