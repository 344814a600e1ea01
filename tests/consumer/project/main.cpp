// Converts a few floats to bf16 and back with kern; exits non-zero on a wrong answer.
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
  std::printf("%s\n", kern::cpu::describe().c_str());
  return 0;
}
