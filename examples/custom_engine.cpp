// A user's engine calling kern kernels: it keeps fp32 master weights, refreshes a bf16 copy with
// kern::cpu::convert, and runs an MLP layer, Y = GELU(X W + b), with kern::cpu::gemm on the bf16
// weights (fp32 accumulation, bias and GELU fused into the GEMM's epilogue).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <kern/cpu.hpp>

int main() {
  std::printf("%s\n", kern::cpu::describe().c_str());
  const kern::cpu::context ctx; // KERN_NUM_THREADS or all cores

  // GPT-2's MLP up-projection: 256 tokens, 768 -> 3072.
  const kern::index_t tokens = 256, d_model = 768, d_ff = 3072;
  std::mt19937 rng(42);
  std::normal_distribution<float> init(0.0f, 0.02f), activations(0.0f, 1.0f);
  kern::aligned_buffer<float> master(static_cast<std::size_t>(d_model * d_ff)), bias(static_cast<std::size_t>(d_ff));
  for (float& w : master) {
    w = init(rng);
  }
  for (float& b : bias) {
    b = init(rng);
  }
  kern::aligned_buffer<kern::bf16> x(static_cast<std::size_t>(tokens * d_model));
  for (auto& v : x) {
    v = kern::bf16(activations(rng));
  }

  kern::aligned_buffer<kern::bf16> weights(master.size());
  kern::cpu::convert(ctx, kern::ops::convert_params{master.data(), weights.data(), d_model * d_ff});

  kern::aligned_buffer<float> y(static_cast<std::size_t>(tokens * d_ff));
  kern::ops::gemm_params<kern::bf16, kern::bf16, float> layer;
  layer.a = {x.data(), tokens, d_model};
  layer.b = {weights.data(), d_model, d_ff};
  layer.c = {y.data(), tokens, d_ff};
  layer.bias = bias.data();
  layer.gelu = true;
  kern::cpu::gemm(ctx, layer); // the first call also sizes kern's per-thread packing buffers
  const auto start = std::chrono::steady_clock::now();
  kern::cpu::gemm(ctx, layer);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Check one output row against a plain double-precision loop.
  double err2 = 0, ref2 = 0;
  const kern::index_t row = tokens / 2;
  for (kern::index_t j = 0; j < d_ff; ++j) {
    double t = bias[static_cast<std::size_t>(j)];
    for (kern::index_t k = 0; k < d_model; ++k) {
      t += static_cast<double>(x[static_cast<std::size_t>(row * d_model + k)]) *
           static_cast<double>(weights[static_cast<std::size_t>(k * d_ff + j)]);
    }
    const double gelu = 0.5 * t * (1.0 + std::tanh(0.7978845608028654 * (t + 0.044715 * t * t * t)));
    const double diff = y[static_cast<std::size_t>(row * d_ff + j)] - gelu;
    err2 += diff * diff;
    ref2 += gelu * gelu;
  }
  std::printf("MLP layer %lld x %lld x %lld (bf16 weights, bias + GELU fused) on %d threads: %.2f ms, "
              "%.0f GFLOP/s (second call); relative error of row %lld vs float64: %.1e\n",
              static_cast<long long>(tokens), static_cast<long long>(d_model), static_cast<long long>(d_ff),
              ctx.threads(), seconds * 1e3, 2.0 * tokens * d_model * d_ff / seconds * 1e-9, static_cast<long long>(row),
              std::sqrt(err2 / ref2));

  // Bad input gets a clear error, not a crash.
  try {
    layer.a = {x.data(), tokens, d_model - 1};
    kern::cpu::gemm(ctx, layer);
  } catch (const kern::error& e) {
    std::printf("as expected, kern rejected a shape mismatch: %s\n", e.what());
  }
  return 0;
}
