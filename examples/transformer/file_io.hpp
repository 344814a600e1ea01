// File helpers for checkpoints: a read-only memory map of a whole file, and an atomic replace.
//
// Checkpoint readers check untrusted bytes, so every error names the file ("<op>: "<path>": ...").
// write_file_atomically writes "<path>.tmp.<pid>" beside the target, fsyncs it, renames it over the
// target and fsyncs the folder: a crash or a kill at any point leaves either the previous file or the
// complete new one under the target's name, never a torn mix (a stray .tmp. file at worst).
// POSIX only (Linux and macOS).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "kern/core/error.hpp"

namespace kern::examples {

// "<op>: "<path>"", the prefix of every message about one file.
inline std::string describe_file(std::string_view op, const std::filesystem::path& path) {
  std::ostringstream out;
  out << op << ": " << path;
  return out.str();
}

namespace file_io_detail {

// Throws "<where>: <action>: <strerror(errno)>"; reads errno first, before anything can change it.
[[noreturn]] inline void fail_errno(std::string_view where, std::string_view action) {
  const int code = errno;
  kern::detail::fail(where, action, ": ", std::system_category().message(code));
}

class unique_fd {
public:
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { close(); }

  int get() const noexcept { return fd_; }
  // The result of ::close, which can report a deferred write error (NFS, quotas).
  int close() noexcept { return fd_ < 0 ? 0 : ::close(std::exchange(fd_, -1)); }

private:
  int fd_;
};

} // namespace file_io_detail

// The whole of a regular file, mapped read-only. Move-only; the bytes live as long as the object.
class mapped_file {
public:
  mapped_file(std::string_view op, const std::filesystem::path& path) : where_(describe_file(op, path)) {
    file_io_detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      file_io_detail::fail_errno(where_, "cannot open");
    }
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0) {
      file_io_detail::fail_errno(where_, "cannot stat");
    }
    require(S_ISREG(info.st_mode), where_, "not a regular file");
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ > 0) { // mmap rejects a length of zero
      void* mapping = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
      if (mapping == MAP_FAILED) {
        file_io_detail::fail_errno(where_, "cannot map");
      }
      data_ = static_cast<const std::byte*>(mapping);
    }
  }
  mapped_file(mapped_file&& other) noexcept
      : where_(std::move(other.where_)), data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  mapped_file& operator=(mapped_file&& other) noexcept {
    if (this != &other) {
      unmap();
      where_ = std::move(other.where_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() { unmap(); }

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  // "<op>: "<path>"", for messages about this file.
  const std::string& where() const noexcept { return where_; }

private:
  void unmap() noexcept {
    if (data_ != nullptr) {
      ::munmap(const_cast<std::byte*>(data_), size_);
      data_ = nullptr;
    }
  }

  std::string where_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// The file being written by write_file_atomically.
class output_file {
public:
  output_file(std::string_view where, int fd) noexcept : where_(where), fd_(fd) {}

  // All of `bytes`, retrying short writes and interrupted calls.
  void write(std::span<const std::byte> bytes) const {
    constexpr std::size_t max_call = std::size_t{1} << 30; // some kernels cap one write near 2 GiB
    while (!bytes.empty()) {
      const ::ssize_t written = ::write(fd_, bytes.data(), std::min(bytes.size(), max_call));
      if (written < 0 && errno == EINTR) {
        continue;
      }
      if (written <= 0) {
        file_io_detail::fail_errno(where_, "cannot write");
      }
      bytes = bytes.subspan(static_cast<std::size_t>(written));
    }
  }

private:
  std::string_view where_;
  int fd_;
};

// Replaces `path` by what fill(const output_file&) writes, atomically (see the top of this file). On any
// failure, fill's exceptions included, the temporary is removed, `path` is untouched, and the
// error propagates.
template <class Fill> void write_file_atomically(std::string_view op, const std::filesystem::path& path, Fill fill) {
  const std::string where = describe_file(op, path);
  const std::filesystem::path temp = path.string() + ".tmp." + std::to_string(::getpid());
  file_io_detail::unique_fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    file_io_detail::fail_errno(where, "cannot create the temporary file " + temp.string());
  }
  try {
    const output_file out(where, fd.get());
    fill(out);
    if (::fsync(fd.get()) != 0) {
      file_io_detail::fail_errno(where, "cannot flush the temporary file to disk");
    }
    if (fd.close() != 0) {
      file_io_detail::fail_errno(where, "cannot close the temporary file");
    }
    if (std::rename(temp.c_str(), path.c_str()) != 0) {
      file_io_detail::fail_errno(where, "cannot rename the temporary file over it");
    }
  } catch (...) {
    fd.close();
    ::unlink(temp.c_str());
    throw;
  }
  // The rename is durable only once the folder's entry is on disk.
  const std::filesystem::path folder = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  file_io_detail::unique_fd folder_fd(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (folder_fd.get() < 0 || ::fsync(folder_fd.get()) != 0) {
    file_io_detail::fail_errno(where, "written, but its folder could not be flushed to disk");
  }
}

} // namespace kern::examples
