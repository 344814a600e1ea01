// A user's engine calling one kern kernel: it keeps fp32 master weights and, before each use,
// refreshes a bf16 copy with kern::cpu::convert (half the bytes to stream through a GEMM).
#include <cmath>
#include <cstdio>
#include <random>

#include <kern/cpu.hpp>

int main() {
  std::printf("%s\n", kern::cpu::describe().c_str());

  // A 768 x 3072 weight matrix, as in GPT-2's MLP.
  const kern::index_t rows = 768, cols = 3072;
  kern::aligned_buffer<float> master(static_cast<std::size_t>(rows * cols));
  std::mt19937 rng(42);
  std::normal_distribution<float> init(0.0f, 0.02f);
  for (float& w : master) {
    w = init(rng);
  }

  kern::aligned_buffer<kern::bf16> weights(master.size());
  const kern::cpu::context ctx; // KERN_NUM_THREADS or all cores
  kern::cpu::convert(ctx, kern::ops::convert_params{master.data(), weights.data(), rows * cols});

  // How much did storing in bf16 change the weights? About 2^-9 relative, the bf16 epsilon / 2.
  double err2 = 0, ref2 = 0;
  for (std::size_t i = 0; i < master.size(); ++i) {
    const double diff = static_cast<double>(weights[i]) - master[i];
    err2 += diff * diff;
    ref2 += static_cast<double>(master[i]) * master[i];
  }
  std::printf("converted %lld x %lld fp32 weights to bf16 on %d threads: relative error %.2e\n",
              static_cast<long long>(rows), static_cast<long long>(cols), ctx.threads(), std::sqrt(err2 / ref2));

  // Bad input gets a clear error, not a crash.
  try {
    kern::cpu::convert(ctx, kern::ops::convert_params<float, kern::bf16>{nullptr, weights.data(), 16});
  } catch (const kern::error& e) {
    std::printf("as expected, kern rejected a null source: %s\n", e.what());
  }
  return 0;
}
