// Cross-compiled for AArch64 (NEON) by tests/CMakeLists.txt and, where qemu-aarch64 is installed,
// run under emulation: kern's CPU kernels on the NEON path against a plain double loop.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <kern/cpu.hpp>

namespace {

int failures = 0;

void expect(bool ok, const char* what, long m, long n, long k, double error) {
  if (!ok) {
    std::printf("FAILED %s M %ld N %ld K %ld: relative error %.3g\n", what, m, n, k, error);
    ++failures;
  }
}

template <class T> void check_gemm(const char* what, long m, long n, long k, kern::ops::gemm_compute compute) {
  std::mt19937 rng(static_cast<unsigned>(m * 131 + n * 7 + k));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n));
  for (auto& x : a) {
    x = kern::from_float<T>(u(rng));
  }
  for (auto& x : b) {
    x = kern::from_float<T>(u(rng));
  }
  std::vector<float> c(static_cast<std::size_t>(m * n), NAN), packed_c(c.size(), NAN);
  kern::ops::gemm_params<T, T, float> p;
  p.a = {a.data(), m, k};
  p.b = {b.data(), k, n};
  p.c = {c.data(), m, n};
  p.compute = compute;
  const kern::cpu::context ctx(2);
  kern::cpu::gemm(ctx, p);
  const auto packed = kern::cpu::pack_gemm_b(ctx, p.b, kern::ops::transpose::none, compute);
  p.c = {packed_c.data(), m, n};
  kern::cpu::gemm(ctx, p, packed);
  const bool round = compute == kern::ops::gemm_compute::bf16;
  double err2 = 0, ref2 = 0;
  for (long i = 0; i < m; ++i) {
    for (long j = 0; j < n; ++j) {
      double ref = 0;
      for (long t = 0; t < k; ++t) {
        float x = static_cast<float>(a[static_cast<std::size_t>(i * k + t)]);
        float y = static_cast<float>(b[static_cast<std::size_t>(t * n + j)]);
        if (round) {
          x = static_cast<float>(kern::bf16(x));
          y = static_cast<float>(kern::bf16(y));
        }
        ref += static_cast<double>(x) * y;
      }
      const double d = c[static_cast<std::size_t>(i * n + j)] - ref;
      err2 += d * d;
      ref2 += ref * ref;
    }
  }
  const double error = std::sqrt(err2 / ref2);
  expect(error < 1e-5, what, m, n, k, error);
  expect(std::memcmp(c.data(), packed_c.data(), c.size() * sizeof(float)) == 0, "pre-packed B differs", m, n, k, 0);
}

} // namespace

int main() {
  std::printf("%s\n", kern::cpu::describe().c_str());
  const long sizes[][3] = {{1, 1, 1}, {3, 50, 77}, {4, 129, 33}, {17, 33, 65}, {65, 130, 400}};
  for (const auto& s : sizes) {
    check_gemm<float>("gemm f32", s[0], s[1], s[2], kern::ops::gemm_compute::native);
    check_gemm<float>("gemm f32 compute bf16", s[0], s[1], s[2], kern::ops::gemm_compute::bf16);
    check_gemm<kern::bf16>("gemm bf16", s[0], s[1], s[2], kern::ops::gemm_compute::native);
  }
  const int total = 3 * 2 * static_cast<int>(sizeof(sizes) / sizeof(sizes[0]));
  std::printf("%d passed, %d failed\n", total - failures, failures);
  return failures == 0 ? 0 : 1;
}
