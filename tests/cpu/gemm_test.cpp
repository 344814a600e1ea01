// kern::cpu::gemm against a float64 reference.
//
// Every case builds op(A), op(B), C, bias and residual with fresh random data (the seed is in the
// failure message; KERN_TEST_SEED=<n> replays one), runs the kernel and checks:
//   - the relative Frobenius error ||out - ref|| / ||scale|| against a threshold per output type,
//     where scale is the size of the terms each element sums (see reference()): for random data
//     ||scale|| is about ||ref||, but it does not vanish when a small output (a 1 x 1 C, say) happens
//     to cancel or lands in GELU's flat tail, which would make ||ref|| alone a flaky denominator;
//   - that no output is NaN or Inf (C is poisoned with NaN wherever beta = 0 must not read it);
//   - that the ld padding of C (a sentinel) is untouched; the padding of A and B holds NaN, so a
//     kernel that mixes it into a result fails as well.
// A and B are allocated to their last element exactly, so that an ASan build catches a read past them.
// The ISA path is chosen by KERN_ISA (CMake runs this binary once per ISA); the log names it.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/isa_level.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::gemm_compute;
using kern::ops::transpose;

class describe_isa : public testing::Environment {
public:
  void SetUp() override {
    std::cout << "[ kern     ] " << kern::cpu::describe() << " | bf16 gemm kernel "
              << kern::cpu::detail::gemm_bf16_kernel_name() << std::endl;
  }
};
// NOLINTNEXTLINE(cert-err58-cpp): GoogleTest registers environments at static initialization
[[maybe_unused]] testing::Environment* const isa_environment = testing::AddGlobalTestEnvironment(new describe_isa);

// ---------------------------------------------------------------------------------------------
// One test case: a shape and every knob of gemm_params.

enum class epilogue { none, bias, gelu, bias_gelu, residual, residual_is_c, all };
constexpr epilogue all_epilogues[] = {epilogue::none,     epilogue::bias,          epilogue::gelu, epilogue::bias_gelu,
                                      epilogue::residual, epilogue::residual_is_c, epilogue::all};

bool has_bias(epilogue e) { return e == epilogue::bias || e == epilogue::bias_gelu || e == epilogue::all; }
bool has_gelu(epilogue e) { return e == epilogue::gelu || e == epilogue::bias_gelu || e == epilogue::all; }
bool has_residual(epilogue e) { return e == epilogue::residual || e == epilogue::residual_is_c || e == epilogue::all; }

const char* name(epilogue e) {
  switch (e) {
  case epilogue::none:
    return "none";
  case epilogue::bias:
    return "bias";
  case epilogue::gelu:
    return "gelu";
  case epilogue::bias_gelu:
    return "bias+gelu";
  case epilogue::residual:
    return "residual";
  case epilogue::residual_is_c:
    return "residual=C";
  case epilogue::all:
    return "bias+gelu+residual";
  }
  return "?";
}

enum class values {
  normal,  // N(0, 1): checked against the relative-error threshold
  integer, // integers in [-4, 4]: every partial sum is exact in fp32, so the result must be exact
};

struct gemm_case {
  index_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 0.0f;
  epilogue epi = epilogue::none;
  int threads = 1;
  index_t pad = 0; // every leading dimension is its row length + pad
  gemm_compute compute = gemm_compute::native;
  values data = values::normal;
};

template <class T> const char* type_name() { return std::is_same_v<T, float> ? "f32" : "bf16"; }

template <class TA, class TB, class TC> std::string describe(const gemm_case& c, std::uint32_t seed) {
  std::ostringstream out;
  out << "gemm<" << type_name<TA>() << ", " << type_name<TB>() << ", " << type_name<TC>() << ">"
      << (c.compute == gemm_compute::bf16 ? " compute=bf16" : "") << " M " << c.m << " N " << c.n << " K " << c.k
      << (c.trans_a ? " A^T" : " A") << (c.trans_b ? " B^T" : " B") << " alpha " << c.alpha << " beta " << c.beta
      << " epilogue " << name(c.epi) << " threads " << c.threads << " ld pad " << c.pad
      << (c.data == values::integer ? " integer inputs" : "") << " seed " << seed;
  return out.str();
}

std::uint32_t fresh_seed() {
  static std::random_device device;
  if (const char* replay = std::getenv("KERN_TEST_SEED"); replay != nullptr && *replay != '\0') {
    return static_cast<std::uint32_t>(std::strtoul(replay, nullptr, 10));
  }
  return device();
}

// ---------------------------------------------------------------------------------------------
// Operands.

template <class T> std::uint32_t bits(T value) {
  if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<std::uint32_t>(value);
  } else {
    return value.bits;
  }
}

template <class T> double to_double(T value) { return static_cast<double>(kern::to_float(value)); }

// A row-major rows x cols matrix with leading dimension cols + pad (at least 1). Inputs are
// allocated to their last element exactly; outputs get whole rows, so C's last padding is checked too.
template <class T> struct matrix {
  index_t rows = 0, cols = 0, ld = 1;
  std::vector<T> storage;

  matrix(index_t rows_, index_t cols_, index_t pad, bool whole_rows, T padding)
      : rows(rows_), cols(cols_), ld(std::max<index_t>(1, cols_ + pad)) {
    const index_t extent = whole_rows ? rows * ld : rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
    storage.assign(static_cast<std::size_t>(extent), padding);
  }
  T& operator()(index_t i, index_t j) { return storage[static_cast<std::size_t>(i * ld + j)]; }
  const T& operator()(index_t i, index_t j) const { return storage[static_cast<std::size_t>(i * ld + j)]; }
  kern::matrix_view<T> view() { return {storage.data(), rows, cols, ld}; }
  kern::matrix_view<const T> view() const { return {storage.data(), rows, cols, ld}; }
};

template <class T> T nan_of() { return kern::from_float<T>(std::numeric_limits<float>::quiet_NaN()); }
template <class T> T sentinel() { return kern::from_float<T>(777.0f); }

// Everything one call reads and writes, with a copy of C as it was before the call. Padding: NaN
// in the inputs (A, B, residual), the sentinel in C.
template <class TA, class TB, class TC> struct problem {
  matrix<TA> a;
  matrix<TB> b;
  matrix<TC> c;
  matrix<TC> c_before;
  matrix<TC> residual;
  std::vector<TC> bias;

  problem(const gemm_case& k, std::uint32_t seed)
      : a(k.trans_a ? k.k : k.m, k.trans_a ? k.m : k.k, k.pad, false, nan_of<TA>()),
        b(k.trans_b ? k.n : k.k, k.trans_b ? k.k : k.n, k.pad, false, nan_of<TB>()),
        c(k.m, k.n, k.pad, true, sentinel<TC>()), c_before(c),
        residual(k.epi == epilogue::residual || k.epi == epilogue::all ? k.m : 0, k.n, k.pad + 2, false, nan_of<TC>()) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> small(-4, 4);
    auto draw = [&] { return k.data == values::integer ? static_cast<float>(small(rng)) : normal(rng); };
    fill(a, draw);
    fill(b, draw);
    // beta = 0 must not read C: poison it, unless C is the residual (then it is read by definition).
    const bool poison = k.beta == 0.0f && k.epi != epilogue::residual_is_c;
    fill(c, [&] { return poison ? std::numeric_limits<float>::quiet_NaN() : draw(); });
    fill(residual, draw);
    if (has_bias(k.epi)) {
      bias.resize(static_cast<std::size_t>(k.n));
      for (auto& x : bias) {
        x = kern::from_float<TC>(draw());
      }
    }
    c_before = c;
  }

  template <class T, class Draw> static void fill(matrix<T>& x, Draw&& draw) {
    for (index_t i = 0; i < x.rows; ++i) {
      for (index_t j = 0; j < x.cols; ++j) {
        x(i, j) = kern::from_float<T>(draw());
      }
    }
  }

  kern::ops::gemm_params<TA, TB, TC> params(const gemm_case& k) {
    kern::ops::gemm_params<TA, TB, TC> p;
    p.a = a.view();
    p.b = b.view();
    p.c = c.view();
    p.trans_a = k.trans_a ? transpose::trans : transpose::none;
    p.trans_b = k.trans_b ? transpose::trans : transpose::none;
    p.alpha = k.alpha;
    p.beta = k.beta;
    p.bias = has_bias(k.epi) ? bias.data() : nullptr;
    p.gelu = has_gelu(k.epi);
    if (k.epi == epilogue::residual_is_c) {
      p.residual = c.view();
    } else if (has_residual(k.epi)) {
      p.residual = residual.view();
    }
    p.compute = k.compute;
    return p;
  }
};

// ---------------------------------------------------------------------------------------------
// The float64 reference: op(A) op(B) accumulated in double, then the epilogue in double.
//
// Beside each element it gives the size of what the element sums: |alpha| max(|dot|, typical dot)
// + |beta C| + |bias| + |residual|, where the typical dot product of a row a and a column b is
// ||a|| ||b|| / sqrt(K) (what a random-signed dot product of those vectors comes to, |a b| for K = 1).
// Rounding errors scale with these terms, not with the result they may cancel to. The scale bounds
// |output| (|gelu(t)| <= |t|), so a bf16 output's rounding is at most 2^-9 of it, and GELU's error
// stays in proportion (gelu' <= 1.13).
double gelu_tanh(double t) {
  const double sqrt_2_over_pi = 0.7978845608028654;
  return 0.5 * t * (1.0 + std::tanh(sqrt_2_over_pi * (t + 0.044715 * t * t * t)));
}

struct reference_result {
  std::vector<double> value, scale;
};

template <class TA, class TB, class TC> reference_result reference(const gemm_case& k, const problem<TA, TB, TC>& x) {
  const index_t m = k.m, n = k.n, depth = k.k;
  // The values the kernel is asked to multiply: compute = bf16 rounds f32 inputs to bf16 first.
  auto input = [&](auto v) {
    const float f = kern::to_float(v);
    return k.compute == gemm_compute::bf16 ? to_double(bf16(f)) : static_cast<double>(f);
  };
  std::vector<double> op_a(static_cast<std::size_t>(m * depth)), op_b(static_cast<std::size_t>(depth * n));
  std::vector<double> a_norm2(static_cast<std::size_t>(m)), b_norm2(static_cast<std::size_t>(n));
  for (index_t i = 0; i < m; ++i) {
    for (index_t p = 0; p < depth; ++p) {
      const double v = input(k.trans_a ? x.a(p, i) : x.a(i, p));
      op_a[static_cast<std::size_t>(i * depth + p)] = v;
      a_norm2[static_cast<std::size_t>(i)] += v * v;
    }
  }
  for (index_t p = 0; p < depth; ++p) {
    for (index_t j = 0; j < n; ++j) {
      const double v = input(k.trans_b ? x.b(j, p) : x.b(p, j));
      op_b[static_cast<std::size_t>(p * n + j)] = v;
      b_norm2[static_cast<std::size_t>(j)] += v * v;
    }
  }
  reference_result r{std::vector<double>(static_cast<std::size_t>(m * n), 0.0),
                     std::vector<double>(static_cast<std::size_t>(m * n), 0.0)};
  for (index_t i = 0; i < m; ++i) {
    double* row = r.value.data() + i * n;
    for (index_t p = 0; p < depth; ++p) {
      const double a_ip = op_a[static_cast<std::size_t>(i * depth + p)];
      const double* b_row = op_b.data() + p * n;
      for (index_t j = 0; j < n; ++j) {
        row[j] += a_ip * b_row[j];
      }
    }
  }
  const double alpha = k.alpha, beta = k.beta;
  for (index_t i = 0; i < m; ++i) {
    for (index_t j = 0; j < n; ++j) {
      const auto at = static_cast<std::size_t>(i * n + j);
      double t = alpha * r.value[at];
      const double typical_dot = depth == 0
                                     ? 0.0
                                     : std::sqrt(a_norm2[static_cast<std::size_t>(i)] *
                                                 b_norm2[static_cast<std::size_t>(j)] / static_cast<double>(depth));
      double scale = std::abs(alpha) * std::max(std::abs(r.value[at]), typical_dot);
      auto add = [&](double term) {
        t += term;
        scale += std::abs(term);
      };
      if (k.beta != 0.0f) {
        add(beta * to_double(x.c_before(i, j)));
      }
      if (has_bias(k.epi)) {
        add(to_double(x.bias[static_cast<std::size_t>(j)]));
      }
      if (has_gelu(k.epi)) {
        t = gelu_tanh(t);
      }
      if (k.epi == epilogue::residual_is_c) {
        add(to_double(x.c_before(i, j)));
      } else if (has_residual(k.epi)) {
        add(to_double(x.residual(i, j)));
      }
      r.value[at] = t;
      r.scale[at] = scale;
    }
  }
  return r;
}

// fp32 output: a few roundings per element in the epilogue, plus fp32 accumulation whose relative
// error grows like sqrt(K) on random data (about 2^-24 sqrt(K / 2) expected): 2e-6 at K = 64,
// at least 1e-6 for short sums, never above 1e-5. bf16 output: the final rounding to 8 bits of
// mantissa alone gives about 4e-3.
template <class TC> double tolerance(const gemm_case& c) {
  if constexpr (std::is_same_v<TC, bf16>) {
    return 1e-2;
  } else {
    return std::min(1e-5, std::max(1e-6, 2e-6 * std::sqrt(static_cast<double>(c.k) / 64.0)));
  }
}

// ---------------------------------------------------------------------------------------------
// One case: run, compare, report. Returns whether it passed.

template <class TA, class TB, class TC> bool check_gemm(const gemm_case& k) {
  const std::uint32_t seed = fresh_seed();
  const std::string what = describe<TA, TB, TC>(k, seed);
  SCOPED_TRACE(what);
  problem<TA, TB, TC> x(k, seed);
  try {
    kern::cpu::gemm(kern::cpu::context(k.threads), x.params(k));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw: " << e.what();
    return false;
  }

  bool ok = true;
  // The ld padding of C is never written.
  for (index_t i = 0; i < x.c.rows && ok; ++i) {
    for (index_t j = x.c.cols; j < x.c.ld; ++j) {
      if (bits(x.c(i, j)) != bits(sentinel<TC>())) {
        ADD_FAILURE() << "wrote C's padding at (" << i << ", " << j << "): " << kern::to_float(x.c(i, j));
        ok = false;
        break;
      }
    }
  }

  const reference_result ref = reference(k, x);
  double err2 = 0.0, scale2 = 0.0, worst = -1.0;
  index_t worst_i = 0, worst_j = 0;
  for (index_t i = 0; i < k.m; ++i) {
    for (index_t j = 0; j < k.n; ++j) {
      const double out = to_double(x.c(i, j));
      const double want = ref.value[static_cast<std::size_t>(i * k.n + j)];
      if (!std::isfinite(out)) {
        ADD_FAILURE() << "C(" << i << ", " << j << ") = " << out << ", expected " << want;
        return false;
      }
      if (k.data == values::integer) {
        // Exact: every partial sum is an integer well below 2^24, alpha and beta are powers of two.
        // (Compared as values: the sign of a zero depends on the order of the sums.)
        const TC expected = kern::from_float<TC>(static_cast<float>(want));
        if (out != to_double(expected)) {
          ADD_FAILURE() << "C(" << i << ", " << j << ") = " << out << ", expected exactly " << to_double(expected);
          return false;
        }
      }
      const double d = out - want, scale = ref.scale[static_cast<std::size_t>(i * k.n + j)];
      err2 += d * d;
      scale2 += scale * scale;
      if (std::abs(d) > worst) {
        worst = std::abs(d);
        worst_i = i;
        worst_j = j;
      }
    }
  }
  if (scale2 == 0.0) {
    // Every term is zero (alpha = 0 or K = 0, beta = 0, no bias or residual): the output must be zeros.
    if (err2 != 0.0) {
      ADD_FAILURE() << "expected all zeros; ||out|| = " << std::sqrt(err2);
      return false;
    }
    return ok;
  }
  const double rel = std::sqrt(err2 / scale2);
  const double tol = tolerance<TC>(k);
  if (!(rel < tol)) {
    ADD_FAILURE() << "relative error " << rel << " >= " << tol << "; largest difference at C(" << worst_i << ", "
                  << worst_j << ") = " << to_double(x.c(worst_i, worst_j)) << ", expected "
                  << ref.value[static_cast<std::size_t>(worst_i * k.n + worst_j)];
    return false;
  }
  return ok;
}

// Runs cases until a few have failed (one broken path would otherwise print thousands).
template <class TA, class TB, class TC> void check_all(const std::vector<gemm_case>& cases) {
  int failed = 0;
  for (const gemm_case& c : cases) {
    if (!check_gemm<TA, TB, TC>(c) && ++failed == 3) {
      FAIL() << "stopping after 3 failed cases";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Case lists.

constexpr index_t sizes[] = {0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 255, 257, 511, 1000};

struct shape {
  index_t m, n, k;
};

// The shapes every type combination runs: all (M, N) pairs of a subset with every K (M = 1..4 and
// 5 straddle the GEMV path), the diagonal, a few large ones (past the cache blocks in every
// dimension: K past 1024 and 2048, N past 1024; and many rows over a short K, which make one block
// of rows), and the GEMV shapes of a transformer's decode step (M = 1..4, N = 3000), one of them past
// several K blocks.
std::vector<shape> sweep_shapes() {
  std::vector<shape> shapes;
  for (index_t m : {0, 1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 33, 65, 129}) {
    for (index_t n : {0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 129}) {
      for (index_t k : sizes) {
        shapes.push_back({m, n, k});
      }
    }
  }
  for (index_t s : sizes) {
    shapes.push_back({s, s, s});
  }
  for (shape s : {shape{1000, 257, 511}, shape{257, 1000, 129}, shape{511, 33, 2100}, shape{65, 1500, 257},
                  shape{17, 2100, 65}, shape{600, 130, 1400}, shape{345, 70, 2500}, shape{3, 3000, 2100},
                  shape{1000, 300, 129}, shape{700, 520, 255}}) {
    shapes.push_back(s);
  }
  for (index_t m : {1, 2, 3, 4}) {
    shapes.push_back({m, 3000, 768});
  }
  return shapes;
}

// The shapes with transposes, ld padding, alpha, beta, epilogue and threads drawn from a fixed-seed
// generator: the same variants every run, spread over all combinations (the data stays fresh).
std::vector<gemm_case> sweep(gemm_compute compute) {
  std::mt19937 pick(2024);
  auto one_of = [&](const auto& list) { return list[pick() % std::size(list)]; };
  constexpr float alphas[] = {1.0f, 0.75f, -1.5f};
  constexpr float betas[] = {0.0f, 1.0f, -1.5f};
  constexpr index_t pads[] = {0, 1, 5};
  constexpr int threads[] = {1, 2};
  std::vector<gemm_case> cases;
  for (shape s : sweep_shapes()) {
    gemm_case c{.m = s.m, .n = s.n, .k = s.k};
    c.trans_a = (pick() & 1) != 0;
    c.trans_b = (pick() & 1) != 0;
    c.alpha = one_of(alphas);
    c.beta = one_of(betas);
    c.epi = one_of(all_epilogues);
    c.threads = one_of(threads);
    c.pad = one_of(pads);
    c.compute = compute;
    cases.push_back(c);
  }
  return cases;
}

// Every combination of transposes, alpha, beta, epilogue, threads and padding on a shape past one
// micro-tile in M and N; and every transpose, beta and epilogue with K past the depth of one block
// (beta must be applied once, the epilogue after the last block).
std::vector<gemm_case> every_variant(gemm_compute compute) {
  std::vector<gemm_case> cases;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (float beta : {0.0f, 1.0f, -1.5f}) {
        for (epilogue e : all_epilogues) {
          gemm_case c{.m = 19, .n = 70, .k = 37, .trans_a = ta, .trans_b = tb, .beta = beta, .epi = e};
          c.compute = compute;
          for (float alpha : {0.0f, 1.0f, 0.75f}) {
            for (int threads : {1, 2}) {
              for (index_t pad : {0, 5}) {
                c.alpha = alpha;
                c.threads = threads;
                c.pad = pad;
                cases.push_back(c);
              }
            }
          }
          gemm_case deep = c;
          deep.k = 2100;
          deep.alpha = -1.5f;
          deep.threads = 2;
          deep.pad = 3;
          cases.push_back(deep);
        }
      }
    }
  }
  return cases;
}

// Integer inputs in [-4, 4], alpha and beta powers of two, no GELU: the exact result is representable
// and every summation order reaches it, so the output must equal the reference exactly (for a bf16
// output: the exact result rounded once).
std::vector<gemm_case> exact_cases(gemm_compute compute) {
  std::mt19937 pick(7);
  auto one_of = [&](const auto& list) { return list[pick() % std::size(list)]; };
  constexpr float alphas[] = {1.0f, -2.0f, 0.5f};
  constexpr float betas[] = {0.0f, 1.0f, -1.0f};
  constexpr epilogue epilogues[] = {epilogue::none, epilogue::bias, epilogue::residual, epilogue::residual_is_c};
  std::vector<gemm_case> cases;
  for (shape s : {shape{1, 1, 1000}, shape{7, 33, 1000}, shape{65, 17, 513}, shape{129, 257, 1000}, shape{33, 129, 1},
                  shape{2, 3000, 768}, shape{300, 70, 999}, shape{3, 70, 2500}, shape{200, 70, 2100}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        gemm_case c{.m = s.m, .n = s.n, .k = s.k, .trans_a = ta, .trans_b = tb};
        c.alpha = one_of(alphas);
        c.beta = one_of(betas);
        c.epi = one_of(epilogues);
        c.threads = 1 + static_cast<int>(pick() % 2);
        c.pad = static_cast<index_t>(pick() % 2) * 5;
        c.compute = compute;
        c.data = values::integer;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

// Small M x N over a long K on two threads: too few tiles to share, so the K blocks are shared out
// and the shares' sums added before the epilogue (beta, bias, GELU and the residual must still be
// applied once). 40 x 7 and 7 x 5 are one panel of B on every ISA, 40 x 13 wherever NR >= 16 (a
// tile of two vectors a row on AVX2) and 40 x 20 on AVX-512; 300 x 32 is split by rows. Normal
// inputs, and integer inputs that must come out exact.
std::vector<gemm_case> k_shared_cases(gemm_compute compute) {
  std::vector<gemm_case> cases;
  for (shape s :
       {shape{40, 20, 4500}, shape{40, 13, 4100}, shape{40, 7, 3500}, shape{300, 32, 3100}, shape{7, 5, 3001}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (float beta : {0.0f, 1.0f, -1.5f}) {
          for (epilogue e : all_epilogues) {
            gemm_case c{.m = s.m, .n = s.n, .k = s.k, .trans_a = ta, .trans_b = tb, .alpha = -1.5f, .beta = beta};
            c.epi = e;
            c.threads = 2;
            c.pad = 3;
            c.compute = compute;
            cases.push_back(c);
            if (e != epilogue::gelu && e != epilogue::bias_gelu && e != epilogue::all) {
              c.alpha = 0.5f;
              c.data = values::integer;
              cases.push_back(c);
            }
          }
        }
      }
    }
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------
// The tests: one group per type combination.

TEST(CpuGemmF32, Shapes) { check_all<float, float, float>(sweep(gemm_compute::native)); }
TEST(CpuGemmF32, EveryVariant) { check_all<float, float, float>(every_variant(gemm_compute::native)); }
TEST(CpuGemmF32, IntegerInputsAreExact) { check_all<float, float, float>(exact_cases(gemm_compute::native)); }
TEST(CpuGemmF32, KSharedOnTwoThreads) { check_all<float, float, float>(k_shared_cases(gemm_compute::native)); }

TEST(CpuGemmBf16F32, Shapes) { check_all<bf16, bf16, float>(sweep(gemm_compute::native)); }
TEST(CpuGemmBf16F32, EveryVariant) { check_all<bf16, bf16, float>(every_variant(gemm_compute::native)); }
TEST(CpuGemmBf16F32, IntegerInputsAreExact) { check_all<bf16, bf16, float>(exact_cases(gemm_compute::native)); }
TEST(CpuGemmBf16F32, KSharedOnTwoThreads) { check_all<bf16, bf16, float>(k_shared_cases(gemm_compute::native)); }

TEST(CpuGemmBf16Bf16, Shapes) { check_all<bf16, bf16, bf16>(sweep(gemm_compute::native)); }
TEST(CpuGemmBf16Bf16, EveryVariant) { check_all<bf16, bf16, bf16>(every_variant(gemm_compute::native)); }
// The exact fp32 result rounded once to bf16.
TEST(CpuGemmBf16Bf16, IntegerInputsRoundOnce) { check_all<bf16, bf16, bf16>(exact_cases(gemm_compute::native)); }
TEST(CpuGemmBf16Bf16, KSharedOnTwoThreads) { check_all<bf16, bf16, bf16>(k_shared_cases(gemm_compute::native)); }

TEST(CpuGemmF32ComputeBf16, Shapes) { check_all<float, float, float>(sweep(gemm_compute::bf16)); }
TEST(CpuGemmF32ComputeBf16, EveryVariant) { check_all<float, float, float>(every_variant(gemm_compute::bf16)); }
TEST(CpuGemmF32ComputeBf16, IntegerInputsAreExact) { check_all<float, float, float>(exact_cases(gemm_compute::bf16)); }
TEST(CpuGemmF32ComputeBf16, KSharedOnTwoThreads) { check_all<float, float, float>(k_shared_cases(gemm_compute::bf16)); }

// compute = bf16 really rounds the inputs: 1 + 2^-10 is not a bf16, and the rounded product differs.
TEST(CpuGemmF32ComputeBf16, RoundsInputsToBf16) {
  const float a[] = {1.0f + 0x1p-10f}, b[] = {1.0f + 0x1p-10f};
  float c[] = {0.0f};
  kern::ops::gemm_params<float, float, float> p{.a = {a, 1, 1}, .b = {b, 1, 1}, .c = {c, 1, 1}};
  p.compute = gemm_compute::bf16;
  kern::cpu::gemm(kern::cpu::context(1), p);
  EXPECT_EQ(c[0], 1.0f);
  p.compute = gemm_compute::native;
  kern::cpu::gemm(kern::cpu::context(1), p);
  EXPECT_EQ(c[0], (1.0f + 0x1p-10f) * (1.0f + 0x1p-10f));
}

// Every packing and streaming path rounds to nearest with ties to even, like kern::bf16(float):
// one operand holds values of which half lie exactly halfway between two bf16 (low 16 bits 0x8000),
// the other is the identity, so C must be exactly the rounded values. A few lines of the data hold
// a NaN whose payload lies in the dropped half (rounded like a number, it would carry into Inf):
// their lines of C must be NaN. Sizes reach the small-M path (M <= 4), whole vectors and their
// edges, a B of one panel (N <= 8 or 16, where A^T's rows are copied rather than packed), and both
// storage orders of each operand.
TEST(CpuGemmF32ComputeBf16, RoundsTiesToEven) {
  const std::uint32_t seed = fresh_seed();
  std::mt19937 rng(seed);
  auto halfway_or_random = [&] {
    std::uint32_t b = (rng() & 0x807fffffu) | (static_cast<std::uint32_t>(110 + rng() % 30) << 23);
    if (rng() % 2 == 0) {
      b = (b & 0xffff0000u) | 0x8000u;
    }
    return std::bit_cast<float>(b);
  };
  auto low_payload_nan = [&] {
    return std::bit_cast<float>(
        static_cast<std::uint32_t>((rng() & 0x80000000u) | 0x7f800000u | (1u + rng() % 0x7fffu)));
  };
  for (const auto [rows, cols] : {std::array<index_t, 2>{1, 45}, {4, 40}, {37, 70}, {300, 33}, {37, 8}, {300, 13}}) {
    for (const bool data_in_a : {true, false}) {
      for (const bool transposed : {false, true}) {
        // data_in_a: C (rows x cols) = A x I; otherwise C = I x B. The data operand is stored
        // transposed or not; the identity is its own transpose.
        const index_t depth = data_in_a ? cols : rows;
        std::vector<float> data(static_cast<std::size_t>(rows * cols)),
            identity(static_cast<std::size_t>(depth * depth));
        for (auto& v : data) {
          v = halfway_or_random();
        }
        for (index_t i = 0; i < depth; ++i) {
          identity[static_cast<std::size_t>(i * depth + i)] = 1.0f;
        }
        // op(data) and C are both rows x cols, op(data)(i, j) stored at data[at(i, j)]. A NaN in
        // op(A)'s row i makes C's row i NaN; one in op(B)'s column j, C's column j.
        const index_t data_ld = transposed ? rows : cols;
        auto at = [&](index_t i, index_t j) {
          return static_cast<std::size_t>(transposed ? j * data_ld + i : i * data_ld + j);
        };
        std::vector<bool> nan_line(static_cast<std::size_t>(data_in_a ? rows : cols));
        for (auto line = static_cast<index_t>(3 + rng() % 5); line < std::ssize(nan_line);
             line += static_cast<index_t>(7 + rng() % 9)) {
          nan_line[static_cast<std::size_t>(line)] = true;
          const auto along = static_cast<index_t>(rng() % depth);
          data[data_in_a ? at(line, along) : at(along, line)] = low_payload_nan();
        }
        const kern::matrix_view<const float> data_view{data.data(), transposed ? cols : rows, transposed ? rows : cols};
        const kern::matrix_view<const float> identity_view{identity.data(), depth, depth};
        std::vector<float> c(static_cast<std::size_t>(rows * cols), -1.0f);
        kern::ops::gemm_params<float, float, float> p{.a = data_in_a ? data_view : identity_view,
                                                      .b = data_in_a ? identity_view : data_view,
                                                      .c = {c.data(), rows, cols}};
        (data_in_a ? p.trans_a : p.trans_b) = transposed ? transpose::trans : transpose::none;
        p.compute = gemm_compute::bf16;
        kern::cpu::gemm(kern::cpu::context(1), p);
        for (index_t i = 0; i < rows; ++i) {
          for (index_t j = 0; j < cols; ++j) {
            const float x = data[at(i, j)], out = c[static_cast<std::size_t>(i * cols + j)];
            const std::string where = "C(" + std::to_string(i) + ", " + std::to_string(j) + ") of " +
                                      std::to_string(rows) + " x " + std::to_string(cols) +
                                      (data_in_a ? ", A" : ", B") + (transposed ? " transposed" : "") + ", seed " +
                                      std::to_string(seed);
            if (nan_line[static_cast<std::size_t>(data_in_a ? i : j)]) {
              ASSERT_TRUE(std::isnan(out)) << where << " is " << out << ", not NaN";
            } else {
              ASSERT_EQ(out, static_cast<float>(bf16(x))) << where << ", x = " << x;
            }
          }
        }
      }
    }
  }
}

// bf16 work runs on the kernel the ISA level calls for: the AMX kernel (emulated tiles in a
// KERN_CPU_AMX_EMULATED build, from AVX512-BF16 up), the AVX512-BF16 kernel, or fp32 FMAs.
TEST(CpuGemm, Bf16WorkRunsOnTheExpectedKernel) {
  const kern::cpu::isa level = kern::cpu::active_isa();
  std::string_view expected = "fp32 fma";
#if defined(KERN_CPU_AMX_EMULATED)
  if (level >= kern::cpu::isa::avx512_bf16) {
    expected = "amx (emulated)";
  }
#else
  if (level >= kern::cpu::isa::amx) {
    expected = "amx";
  } else if (level >= kern::cpu::isa::avx512_bf16) {
    expected = "avx512_bf16";
  }
#endif
  EXPECT_EQ(kern::cpu::detail::gemm_bf16_kernel_name(), expected) << "at ISA " << kern::cpu::name(level);
}

// The same call on the same data gives the same bits (runs must be reproducible).
TEST(CpuGemm, RepeatedCallsAreBitIdentical) {
  for (auto [m, n, k_depth, threads] : {std::array<int, 4>{130, 300, 500, 1}, {130, 300, 500, 2}, {40, 20, 2000, 2}}) {
    const gemm_case k{.m = m, .n = n, .k = k_depth, .beta = 0.5f, .epi = epilogue::all, .threads = threads};
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE((describe<float, float, float>(k, seed)));
    problem<float, float, float> x(k, seed);
    kern::cpu::gemm(kern::cpu::context(threads), x.params(k));
    const std::vector<float> first = x.c.storage;
    x.c = x.c_before;
    kern::cpu::gemm(kern::cpu::context(threads), x.params(k));
    EXPECT_TRUE(x.c.storage == first);
  }
}

// M = 0 or N = 0: nothing is read or written (an empty matrix may be null). K = 0: C = epilogue(beta C).
TEST(CpuGemm, EmptySizes) {
  const kern::cpu::context ctx(2);
  const std::vector<float> a(8, 1.0f), b(12, 1.0f);
  const float bias[3] = {10, 20, 30};
  float c[6] = {1, 2, 3, 4, 5, 6};
  using params = kern::ops::gemm_params<float, float, float>;
  // M = 0: A is 0 x 4, C is 0 x 3.
  EXPECT_NO_THROW(kern::cpu::gemm(ctx, params{.a = {nullptr, 0, 4}, .b = {b.data(), 4, 3}, .c = {nullptr, 0, 3}}));
  // N = 0: B is 4 x 0, C is 2 x 0 (its storage must stay as it is).
  params n_zero{.a = {a.data(), 2, 4}, .b = {nullptr, 4, 0, 1}, .c = {c, 2, 0, 3}, .beta = 2.0f};
  n_zero.gelu = true;
  EXPECT_NO_THROW(kern::cpu::gemm(ctx, n_zero));
  EXPECT_EQ(std::vector<float>(c, c + 6), (std::vector<float>{1, 2, 3, 4, 5, 6})) << "N = 0 wrote C";
  // K = 0: A is 2 x 0 and B is 0 x 3, both null.
  params k_zero{.a = {nullptr, 2, 0, 1}, .b = {nullptr, 0, 3}, .c = {c, 2, 3}, .beta = 2.0f, .bias = bias};
  kern::cpu::gemm(ctx, k_zero);
  EXPECT_EQ(std::vector<float>(c, c + 6), (std::vector<float>{12, 24, 36, 18, 30, 42}));
  k_zero.beta = 0.0f;
  c[0] = NAN;
  kern::cpu::gemm(ctx, k_zero);
  EXPECT_EQ(std::vector<float>(c, c + 6), (std::vector<float>{10, 20, 30, 10, 20, 30}));
}

// ---------------------------------------------------------------------------------------------
// Argument checks: each throws kern::error naming the argument, before touching C.

template <class TA, class TB, class TC> std::string message_of(const kern::ops::gemm_params<TA, TB, TC>& p) {
  try {
    kern::cpu::gemm(kern::cpu::context(1), p);
  } catch (const kern::error& e) {
    return e.what();
  }
  return "(no kern::error thrown)";
}

testing::AssertionResult names(const std::string& message, const std::string& part) {
  if (message.starts_with("kern::cpu::gemm: ") && message.find(part) != std::string::npos) {
    return testing::AssertionSuccess();
  }
  return testing::AssertionFailure() << "expected a kern::cpu::gemm error naming \"" << part << "\", got \"" << message
                                     << "\"";
}

TEST(CpuGemm, RejectsBadArguments) {
  // Buffers big enough for every view below; A 4 x 5, B 5 x 6, C 4 x 6 when valid.
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 1.0f);
  using params = kern::ops::gemm_params<float, float, float>;
  const auto valid = [&] { return params{.a = {a.data(), 4, 5}, .b = {b.data(), 5, 6}, .c = {c.data(), 4, 6}}; };
  EXPECT_EQ(message_of(valid()), "(no kern::error thrown)");
  auto with = [&](auto change) {
    params p = valid();
    change(p);
    const std::vector<float> before = c; // NOLINT(performance-unnecessary-copy-initialization): a snapshot
    std::string message = message_of(p);
    if (message != "(no kern::error thrown)") {
      EXPECT_EQ(c, before) << "a rejected call wrote C: " << message; // validation comes before any write
    }
    return message;
  };

  // Negative sizes.
  EXPECT_TRUE(names(with([](params& p) { p.a.rows = -1; }), "a is -1 x 5"));
  EXPECT_TRUE(names(with([](params& p) { p.b.cols = -6; }), "b is 5 x -6"));
  EXPECT_TRUE(names(with([](params& p) { p.c.rows = -4; }), "c is -4 x 6"));
  // Leading dimensions shorter than a row.
  EXPECT_TRUE(names(with([](params& p) { p.a.ld = 4; }), "a.ld = 4"));
  EXPECT_TRUE(names(with([](params& p) { p.b.ld = 5; }), "b.ld = 5"));
  EXPECT_TRUE(names(with([](params& p) { p.c.ld = 0; }), "c.ld = 0"));
  EXPECT_TRUE(names(with([&](params& p) { p.residual = {a.data() + 32, 4, 6, 3}; }), "residual.ld = 3"));
  // Null pointers with elements.
  EXPECT_TRUE(names(with([](params& p) { p.a.data = nullptr; }), "a.data is null"));
  EXPECT_TRUE(names(with([](params& p) { p.b.data = nullptr; }), "b.data is null"));
  EXPECT_TRUE(names(with([](params& p) { p.c.data = nullptr; }), "c.data is null"));
  // Shapes that do not agree.
  EXPECT_TRUE(names(with([](params& p) { p.c.rows = 3; }), "op(A) has 4 rows but C has 3"));
  EXPECT_TRUE(names(with([](params& p) { p.trans_a = transpose::trans; }), "op(A) has 5 rows but C has 4"));
  EXPECT_TRUE(names(with([](params& p) { p.b.rows = 4; }), "op(A) is 4 x 5 but op(B) has 4 rows"));
  EXPECT_TRUE(names(with([](params& p) { p.trans_b = transpose::trans; }), "op(A) is 4 x 5 but op(B) has 6 rows"));
  EXPECT_TRUE(names(with([&](params& p) { p.c = {c.data(), 4, 7}; }), "op(B) has 6 columns but C has 7"));
  EXPECT_TRUE(names(with([&](params& p) { p.residual = {a.data() + 32, 4, 5}; }), "residual is 4 x 5 but C is 4 x 6"));
  // Outputs overlapping inputs.
  EXPECT_TRUE(names(with([&](params& p) { p.c.data = a.data() + 10; }), "c overlaps a"));
  EXPECT_TRUE(names(with([&](params& p) { p.c.data = b.data() + 29; }), "c overlaps b"));
  EXPECT_TRUE(names(with([&](params& p) { p.bias = c.data() + 20; }), "c overlaps bias"));
  EXPECT_TRUE(names(with([&](params& p) { p.residual = {c.data() + 1, 4, 6}; }), "c overlaps residual"));
  // The residual may be C itself, but not C with another leading dimension.
  EXPECT_EQ(with([&](params& p) { p.residual = p.c; }), "(no kern::error thrown)");
  EXPECT_TRUE(names(with([&](params& p) {
                      p.c.ld = 7;
                      p.residual = {c.data(), 4, 6, 8};
                    }),
                    "c overlaps residual"));

  // compute = bf16 is for f32 inputs only.
  std::vector<bf16> a16(64, bf16(1.0f)), b16(64, bf16(1.0f));
  kern::ops::gemm_params<bf16, bf16, float> p16{
      .a = {a16.data(), 4, 5}, .b = {b16.data(), 5, 6}, .c = {c.data(), 4, 6}};
  EXPECT_EQ(message_of(p16), "(no kern::error thrown)");
  p16.compute = gemm_compute::bf16;
  EXPECT_TRUE(names(message_of(p16), "compute = bf16 applies to f32 inputs only"));

  // Type combinations the kernel does not provide.
  std::vector<kern::f16> h(64, kern::f16(1.0f));
  EXPECT_TRUE(names(message_of(kern::ops::gemm_params<kern::f16, kern::f16, float>{
                        .a = {h.data(), 4, 5}, .b = {h.data() + 32, 5, 6}, .c = {c.data(), 4, 6}}),
                    "unsupported types A = f16, B = f16, C = f32"));
  EXPECT_TRUE(names(message_of(kern::ops::gemm_params<float, bf16, float>{
                        .a = {a.data(), 4, 5}, .b = {b16.data(), 5, 6}, .c = {c.data(), 4, 6}}),
                    "unsupported types A = f32, B = bf16"));
  EXPECT_TRUE(names(message_of(kern::ops::gemm_params<float, float, bf16>{
                        .a = {a.data(), 4, 5}, .b = {b.data(), 5, 6}, .c = {a16.data(), 4, 6}}),
                    "unsupported types A = f32, B = f32, C = bf16"));
}

} // namespace
