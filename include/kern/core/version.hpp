// kern's version. The one place it is written: CMakeLists.txt reads it from here.
#pragma once

#define KERN_VERSION_MAJOR 0
#define KERN_VERSION_MINOR 1
#define KERN_VERSION_PATCH 0

namespace kern {
inline constexpr const char* version_string = "0.1.0";
} // namespace kern
