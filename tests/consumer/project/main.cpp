// Converts a few floats to bf16 and back and multiplies two small matrices with kern; exits non-zero
// on a wrong answer.
#include <cstdio>

#include <kern/cpu.hpp>

int main() {
  const float in[4] = {1.0f, -2.5f, 3.0e38f, 0.1f};
  kern::bf16 mid[4];
  float out[4];
  const kern::cpu::context ctx(1);
  kern::cpu::convert(ctx, kern::ops::convert_params{in, mid, 4});
  kern::cpu::convert(ctx, kern::ops::convert_params<kern::bf16, float>{mid, out, 4});
  const float expected[4] = {1.0f, -2.5f, 3.00405527e38f, 0.10009765625f};
  for (int i = 0; i < 4; ++i) {
    if (out[i] != expected[i]) {
      std::fprintf(stderr, "element %d: %.9g, expected %.9g\n", i, static_cast<double>(out[i]),
                   static_cast<double>(expected[i]));
      return 1;
    }
  }
  // [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50]
  const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
  float c[4] = {};
  kern::ops::gemm_params<float, float, float> p;
  p.a = {a, 2, 2};
  p.b = {b, 2, 2};
  p.c = {c, 2, 2};
  kern::cpu::gemm(ctx, p);
  if (c[0] != 19 || c[1] != 22 || c[2] != 43 || c[3] != 50) {
    std::fprintf(stderr, "gemm gave %g %g %g %g\n", static_cast<double>(c[0]), static_cast<double>(c[1]),
                 static_cast<double>(c[2]), static_cast<double>(c[3]));
    return 1;
  }
  std::printf("%s\n", kern::cpu::describe().c_str());
  return 0;
}
