// kern::cpu::gemm against the CPU peers, in GFLOP/s and as a fraction of the FMA peak:
//   f32              kern <f32, f32, f32>, OpenBLAS cblas_sgemm, oneDNN dnnl_sgemm, Eigen's product;
//   bf16             kern <bf16, bf16, f32>, oneDNN's matmul primitive (bf16 inputs, f32 output);
//   f32_bf16compute  kern f32 with compute = bf16, oneDNN's f32 matmul with fpmath mode bf16.
// Shapes (<M>x<N>x<K>, C = op(A) op(B) is M x N, the reduction is K):
//   squares 128 ... 4096;
//   a GPT-2-small layer, Y = X W with X M x K and W K x N, M in {256, 1024} tokens and
//   (K, N) in {(768, 2304) qkv, (768, 768) attention out, (768, 3072) MLP up, (3072, 768) MLP down},
//   and its backward: _dX, dX = dY W^T (trans_b), and _dW, dW += X^T dY (trans_a, beta = 1);
//   768x2304x256_dW_offset16, the qkv weight gradient with A, B and C 16 bytes past a cache line;
//   a long, narrow weight gradient, 288x16x16384_dW: a rank-16 adapter on the 288-wide llama2.c
//   model over 16384 tokens (one micro-panel of B: the rows are what the threads share);
//   _decode, one token against GPT-2's 768 x 50304 output projection, which streams the weights:
//   it reports GBps of weight bytes besides GFLOPS.
// Every impl of one shape is registered together (kern, openblas, onednn, eigen in turn), so that
// ratios hold on a noisy machine. Each peer is optional: it is compiled in when CMake finds it
// (KERN_BENCH_HAVE_OPENBLAS / _ONEDNN / _EIGEN).
//
// Threads. kern: its context. OpenBLAS (the pthread build): openblas_set_num_threads. oneDNN and
// Eigen: OpenMP (the same libgomp as kern): omp_set_num_threads before oneDNN creates or runs
// anything, Eigen::setNbThreads. OpenBLAS's worker threads spin for a while (OPENBLAS_THREAD_TIMEOUT,
// read when the library loads) after a multithreaded call before they sleep, as do OpenMP's, so the
// benchmark right after a 2-thread run may briefly share a core with them; the setup and warm-up
// call each benchmark makes before its timed loop usually covers that. Interleaved runs on an idle
// machine remain the way to compare.
//
// Peers' own choices, recorded in the JSON context and labels:
// - OpenBLAS (DYNAMIC_ARCH) picks its kernels when it loads. 0.3.21 does not know AMD Zen 5 and takes
//   its Haswell (AVX2) kernels there; OPENBLAS_CORETYPE=SkylakeX in the environment selects the
//   AVX-512 ones. Context "openblas" names the core in use.
// - oneDNN's fpmath mode bf16 is a permission, not an order: on a CPU with AVX512-BF16 but no AMX,
//   oneDNN 2.6 keeps its f32 kernel (label brg:avx512_core, results equal to f32 ones), so there the
//   f32_bf16compute row compares kern's bf16 compute with oneDNN's f32. The label of every oneDNN
//   matmul row is the implementation oneDNN chose.
//
// Eigen picks its SIMD width when it is compiled, so its part of this file is compiled separately,
// once with the AVX-512 flags kern's own AVX-512 kernels get and once with the AVX2 + FMA ones
// (bench/CMakeLists.txt: KERN_BENCH_GEMM_EIGEN_PART names the build's namespace), as a user who
// cares about speed would build it for the machine; the benchmark runs the build the CPU can run.
#include <cstdint>

// C = op(A) op(B) + beta C, row-major, packed leading dimensions; describe(): version and SIMD
// instruction sets.
#define KERN_BENCH_DECLARE_EIGEN_PEER(build)                                                                           \
  namespace kern::bench::build {                                                                                       \
  void gemm(int threads, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, const float* a,   \
            const float* b, float beta, float* c);                                                                     \
  const char* describe();                                                                                              \
  }
KERN_BENCH_DECLARE_EIGEN_PEER(eigen_avx512)
KERN_BENCH_DECLARE_EIGEN_PEER(eigen_avx2)

#if defined(KERN_BENCH_GEMM_EIGEN_PART)

#include <string>

#include <Eigen/Core>

namespace kern::bench::KERN_BENCH_GEMM_EIGEN_PART {

void gemm(int threads, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
          const float* b, float beta, float* c) {
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::setNbThreads(threads);
  const Eigen::Map<const matrix> a_map(a, trans_a ? k : m, trans_a ? m : k);
  const Eigen::Map<const matrix> b_map(b, trans_b ? n : k, trans_b ? k : n);
  Eigen::Map<matrix> c_map(c, m, n);
  const auto product = [&](const auto& op_a, const auto& op_b) {
    if (beta == 0.0f) {
      c_map.noalias() = op_a * op_b;
      return;
    }
    if (beta != 1.0f) {
      c_map *= beta;
    }
    c_map.noalias() += op_a * op_b;
  };
  if (trans_a && trans_b) {
    product(a_map.transpose(), b_map.transpose());
  } else if (trans_a) {
    product(a_map.transpose(), b_map);
  } else if (trans_b) {
    product(a_map, b_map.transpose());
  } else {
    product(a_map, b_map);
  }
}

const char* describe() {
  static const std::string text = std::to_string(EIGEN_WORLD_VERSION) + '.' + std::to_string(EIGEN_MAJOR_VERSION) +
                                  '.' + std::to_string(EIGEN_MINOR_VERSION) + ' ' + Eigen::SimdInstructionSetsInUse();
  return text.c_str();
}

} // namespace kern::bench::KERN_BENCH_GEMM_EIGEN_PART

#else // the benchmarks

#include <cstddef>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(KERN_BENCH_HAVE_OPENBLAS)
#include <cblas.h>
#endif
#if defined(KERN_BENCH_HAVE_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#endif

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using kern::ops::gemm_compute;
using namespace kern::bench;

// One problem: C (m x n) = op(A) op(B) + beta C, A stored m x k (k x m with trans_a), B stored
// k x n (n x k with trans_b), all row-major with packed leading dimensions.
struct gemm_case {
  index_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  float beta = 0.0f;
  std::string_view tag = {}; // "", "dX", "dW" or "decode"
  // Elements by which A, B and C start past a 64-byte boundary: 4 (16 bytes) is where glibc's
  // malloc, and so a std::vector, puts a large block. Rows of C then straddle cache lines.
  index_t offset = 0;

  index_t a_rows() const { return trans_a ? k : m; }
  index_t a_cols() const { return trans_a ? m : k; }
  index_t b_rows() const { return trans_b ? n : k; }
  index_t b_cols() const { return trans_b ? k : n; }
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
  std::string shape() const {
    std::string s = std::to_string(m) + 'x' + std::to_string(n) + 'x' + std::to_string(k);
    if (!tag.empty()) {
      s += '_';
      s += tag;
    }
    if (offset != 0) {
      s += "_offset" + std::to_string(offset * 4);
    }
    return s;
  }
};

// Uniform in [-1, 1), from a fixed seed (splitmix64: fast enough to fill 4096^2 matrices per run).
template <class T> void fill_uniform(kern::aligned_buffer<T>& buffer, std::uint64_t seed) {
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ULL;
  for (T& x : buffer) {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    x = kern::from_float<T>(static_cast<float>(static_cast<double>(z >> 40) * 0x1p-23 - 1.0));
  }
}

// A, B and C of one problem, each g.offset elements past a 64-byte boundary, filled once per
// benchmark run (C too: beta = 1 reads it).
template <class TA, class TB> struct operands {
  kern::aligned_buffer<TA> a_buffer;
  kern::aligned_buffer<TB> b_buffer;
  kern::aligned_buffer<float> c_buffer;
  TA* a;
  TB* b;
  float* c;
  explicit operands(const gemm_case& g)
      : a_buffer(static_cast<std::size_t>(g.m * g.k + g.offset)),
        b_buffer(static_cast<std::size_t>(g.k * g.n + g.offset)),
        c_buffer(static_cast<std::size_t>(g.m * g.n + g.offset)), a(a_buffer.data() + g.offset),
        b(b_buffer.data() + g.offset), c(c_buffer.data() + g.offset) {
    fill_uniform(a_buffer, 1);
    fill_uniform(b_buffer, 2);
    fill_uniform(c_buffer, 3);
  }
};

void report(benchmark::State& state, const gemm_case& g, std::size_t weight_bytes_per_element) {
  report_flops(state, g.flops());
  if (g.tag == "decode") { // the weights B stream from memory once per call
    const double bytes =
        static_cast<double>(g.k) * static_cast<double>(g.n) * static_cast<double>(weight_bytes_per_element);
    state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  }
}

// Runs call() once untimed (thread start-up, JIT, first touch of the packing buffers), then times it.
template <class Call> void timed_loop(benchmark::State& state, Call&& call) {
  try {
    call();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
}

// ---- kern

template <class TA, class TB> kern::ops::gemm_params<TA, TB, float>
kern_params(const gemm_case& g, const TA* a, const TB* b, float* c, gemm_compute compute) {
  kern::ops::gemm_params<TA, TB, float> p;
  p.a = kern::matrix_view<const TA>(a, g.a_rows(), g.a_cols());
  p.b = kern::matrix_view<const TB>(b, g.b_rows(), g.b_cols());
  p.c = kern::matrix_view<float>(c, g.m, g.n);
  p.trans_a = g.trans_a ? kern::ops::transpose::trans : kern::ops::transpose::none;
  p.trans_b = g.trans_b ? kern::ops::transpose::trans : kern::ops::transpose::none;
  p.beta = g.beta;
  p.compute = compute;
  return p;
}

template <class TA, class TB> void bench_kern(benchmark::State& state, const gemm_case& g, gemm_compute compute) {
  operands<TA, TB> x(g);
  const kern::cpu::context ctx(threads_of(state));
  const auto p = kern_params<TA, TB>(g, x.a, x.b, x.c, compute);
  timed_loop(state, [&] { kern::cpu::gemm(ctx, p); });
  report(state, g, sizeof(TB));
}

// ---- OpenBLAS

#if defined(KERN_BENCH_HAVE_OPENBLAS)
void openblas_sgemm(const gemm_case& g, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(g.m), static_cast<blasint>(g.n), static_cast<blasint>(g.k), 1.0f, a,
              static_cast<blasint>(g.a_cols()), b, static_cast<blasint>(g.b_cols()), g.beta, c,
              static_cast<blasint>(g.n));
}

void bench_openblas(benchmark::State& state, const gemm_case& g) {
  operands<float, float> x(g);
  openblas_set_num_threads(threads_of(state));
  timed_loop(state, [&] { openblas_sgemm(g, x.a, x.b, x.c); });
  report(state, g, sizeof(float));
}
#endif

// ---- oneDNN

#if defined(KERN_BENCH_HAVE_ONEDNN)
void set_openmp_threads(int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#else
  static_cast<void>(threads);
#endif
}

void onednn_sgemm(const gemm_case& g, const float* a, const float* b, float* c) {
  const dnnl_status_t status = dnnl_sgemm(g.trans_a ? 'T' : 'N', g.trans_b ? 'T' : 'N', g.m, g.n, g.k, 1.0f, a,
                                          g.a_cols(), b, g.b_cols(), g.beta, c, g.n);
  if (status != dnnl_success) {
    throw std::runtime_error("dnnl_sgemm failed with status " + std::to_string(static_cast<int>(status)));
  }
}

void bench_onednn_sgemm(benchmark::State& state, const gemm_case& g) {
  operands<float, float> x(g);
  set_openmp_threads(threads_of(state));
  timed_loop(state, [&] { onednn_sgemm(g, x.a, x.b, x.c); });
  report(state, g, sizeof(float));
}

// oneDNN's matmul primitive over caller-owned A, B (T = f32 or bf16) and C (f32). Creating it picks
// and JIT-compiles an implementation for the current OpenMP thread count: do it outside timing.
template <class T> class onednn_matmul {
public:
  onednn_matmul(const gemm_case& g, bool fpmath_bf16, T* a, T* b, float* c)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    using dims = dnnl::memory::dims;
    using data_type = dnnl::memory::data_type;
    const data_type in = std::is_same_v<T, float> ? data_type::f32 : data_type::bf16;
    // Strides describe the transposes: op(A)(i, p) lives at A[p * m + i] when A is stored k x m.
    const dnnl::memory::desc a_md({g.m, g.k}, in, g.trans_a ? dims{1, g.m} : dims{g.k, 1});
    const dnnl::memory::desc b_md({g.k, g.n}, in, g.trans_b ? dims{1, g.k} : dims{g.n, 1});
    const dnnl::memory::desc c_md({g.m, g.n}, data_type::f32, dims{g.n, 1});
    dnnl::primitive_attr attr;
    if (g.beta != 0.0f) { // C = op(A) op(B) + beta C
      dnnl::post_ops ops;
      ops.append_sum(g.beta);
      attr.set_post_ops(ops);
    }
    if (fpmath_bf16) { // f32 data, bf16 products allowed (a permission: an ISA without bf16 keeps f32)
      attr.set_fpmath_mode(dnnl::fpmath_mode::bf16);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, engine_);
    impl_ = pd.impl_info_str();
    matmul_ = dnnl::matmul(pd);
    args_ = {{DNNL_ARG_SRC, dnnl::memory(a_md, engine_, a)},
             {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, engine_, b)},
             {DNNL_ARG_DST, dnnl::memory(c_md, engine_, c)}};
  }

  void run() {
    matmul_.execute(stream_, args_);
    stream_.wait();
  }
  const std::string& impl() const { return impl_; }

private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  dnnl::matmul matmul_;
  std::unordered_map<int, dnnl::memory> args_;
  std::string impl_;
};

template <class T> void bench_onednn_matmul(benchmark::State& state, const gemm_case& g, bool fpmath_bf16) {
  operands<T, T> x(g);
  set_openmp_threads(threads_of(state));
  try {
    onednn_matmul<T> mm(g, fpmath_bf16, x.a, x.b, x.c);
    state.SetLabel(mm.impl()); // oneDNN's implementation, e.g. brg:avx512_core_bf16
    timed_loop(state, [&] { mm.run(); });
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
    return;
  }
  report(state, g, sizeof(T));
}
#endif

// ---- Eigen

#if defined(KERN_BENCH_HAVE_EIGEN)
// The Eigen build this CPU runs (null members: neither).
struct eigen_build {
  decltype(&eigen_avx2::gemm) gemm;
  decltype(&eigen_avx2::describe) describe;
};

eigen_build eigen_for_this_cpu() {
  const kern::cpu::isa detected = kern::cpu::info().detected;
  if (detected >= kern::cpu::isa::avx512) {
    return {eigen_avx512::gemm, eigen_avx512::describe};
  }
  if (detected >= kern::cpu::isa::avx2) {
    return {eigen_avx2::gemm, eigen_avx2::describe};
  }
  return {nullptr, nullptr};
}

void bench_eigen(benchmark::State& state, const gemm_case& g) {
  const eigen_build eigen = eigen_for_this_cpu();
  if (eigen.gemm == nullptr) {
    state.SkipWithError("this benchmark's Eigen part is compiled for AVX-512 and for AVX2, which this CPU lacks");
    return;
  }
  operands<float, float> x(g);
  const int threads = threads_of(state);
  timed_loop(state, [&] { eigen.gemm(threads, g.trans_a, g.trans_b, g.m, g.n, g.k, x.a, x.b, g.beta, x.c); });
  report(state, g, sizeof(float));
}
#endif

// ---- registration

void add_gemm(const gemm_case& g, std::string_view impl, std::string_view dtype,
              std::function<void(benchmark::State&)> fn) {
  auto* b = add("gemm", impl, dtype, g.shape(), std::move(fn))->Unit(benchmark::kMillisecond);
  if (g.flops() > 1e11) { // 4096^3: 0.3 to 0.7 s a call; a larger --benchmark_min_time leaves these at 0.5 s
    b->MinTime(0.5);
  }
}

// Every impl of one shape, one after the other.
void add_shape(const gemm_case& g, bool bf16_compute) {
  add_gemm(g, "kern", "f32", [g](benchmark::State& s) { bench_kern<float, float>(s, g, gemm_compute::native); });
#if defined(KERN_BENCH_HAVE_OPENBLAS)
  add_gemm(g, "openblas", "f32", [g](benchmark::State& s) { bench_openblas(s, g); });
#endif
#if defined(KERN_BENCH_HAVE_ONEDNN)
  add_gemm(g, "onednn", "f32", [g](benchmark::State& s) { bench_onednn_sgemm(s, g); });
#endif
#if defined(KERN_BENCH_HAVE_EIGEN)
  add_gemm(g, "eigen", "f32", [g](benchmark::State& s) { bench_eigen(s, g); });
#endif

  add_gemm(g, "kern", "bf16",
           [g](benchmark::State& s) { bench_kern<kern::bf16, kern::bf16>(s, g, gemm_compute::native); });
#if defined(KERN_BENCH_HAVE_ONEDNN)
  add_gemm(g, "onednn", "bf16", [g](benchmark::State& s) { bench_onednn_matmul<kern::bf16>(s, g, false); });
#endif

  if (bf16_compute) {
    add_gemm(g, "kern", "f32_bf16compute",
             [g](benchmark::State& s) { bench_kern<float, float>(s, g, gemm_compute::bf16); });
#if defined(KERN_BENCH_HAVE_ONEDNN)
    add_gemm(g, "onednn", "f32_bf16compute", [g](benchmark::State& s) { bench_onednn_matmul<float>(s, g, true); });
#endif
  }
}

#if defined(KERN_BENCH_HAVE_ONEDNN)
std::string onednn_isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
  case dnnl_cpu_isa_avx512_core_amx:
    return "avx512_core_amx";
  case dnnl_cpu_isa_avx512_core_bf16:
    return "avx512_core_bf16";
  case dnnl_cpu_isa_avx512_core_vnni:
    return "avx512_core_vnni";
  case dnnl_cpu_isa_avx512_core:
    return "avx512_core";
  case dnnl_cpu_isa_avx2_vnni:
    return "avx2_vnni";
  case dnnl_cpu_isa_avx2:
    return "avx2";
  default:
    return "isa " + std::to_string(static_cast<int>(isa));
  }
}
#endif

// What each peer is and which kernels it uses, in the JSON context; and kern's kernel for bf16 work.
void describe_peers() {
  benchmark::AddCustomContext("kern_gemm_bf16", std::string(kern::cpu::detail::gemm_bf16_kernel_name()));
#if defined(KERN_BENCH_HAVE_OPENBLAS)
  benchmark::AddCustomContext("openblas", std::string(openblas_get_config()) + " core " + openblas_get_corename());
#endif
#if defined(KERN_BENCH_HAVE_ONEDNN)
  const dnnl_version_t* v = dnnl_version();
  benchmark::AddCustomContext("onednn", std::to_string(v->major) + '.' + std::to_string(v->minor) + '.' +
                                            std::to_string(v->patch) + ' ' +
                                            onednn_isa_name(dnnl_get_effective_cpu_isa()));
#endif
#if defined(KERN_BENCH_HAVE_EIGEN)
  if (const eigen_build eigen = eigen_for_this_cpu(); eigen.describe != nullptr) {
    benchmark::AddCustomContext("eigen", eigen.describe());
  }
#endif
}

const bool registered = [] {
  describe_peers();
  for (index_t s : {128, 256, 512, 1024, 2048, 4096}) {
    add_shape({.m = s, .n = s, .k = s}, true);
  }
  struct layer {
    index_t k, n;
  };
  for (index_t m : {256, 1024}) {
    for (const layer w : {layer{768, 2304}, layer{768, 768}, layer{768, 3072}, layer{3072, 768}}) {
      add_shape({.m = m, .n = w.n, .k = w.k}, true);                                             // Y = X W
      add_shape({.m = m, .n = w.k, .k = w.n, .trans_b = true, .tag = "dX"}, true);               // dX = dY W^T
      add_shape({.m = w.k, .n = w.n, .k = m, .trans_a = true, .beta = 1.0f, .tag = "dW"}, true); // dW += X^T dY
    }
  }
  // A weight gradient whose operands are not 64-byte aligned (as from std::vector): each row of a C
  // tile straddles three cache lines instead of filling two.
  add_shape({.m = 768, .n = 2304, .k = 256, .trans_a = true, .beta = 1.0f, .tag = "dW", .offset = 4}, false);
  add_shape({.m = 288, .n = 16, .k = 16384, .trans_a = true, .beta = 1.0f, .tag = "dW"}, true);
  add_shape({.m = 1, .n = 50304, .k = 768, .tag = "decode"}, true);
  return true;
}();

} // namespace

#endif
