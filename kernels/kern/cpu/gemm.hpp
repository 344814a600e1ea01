// CPU GEMM entry points. Parameters and semantics: kern/ops/gemm.hpp; algorithm, tiling and
// measurements: docs/kernels/gemm.md.
//
//   kern::cpu::gemm(ctx, params)              C = epilogue(alpha op(A) op(B) + beta C)
//   kern::cpu::pack_gemm_b(ctx, b, trans_b)    op(B) packed once (a weight matrix, for inference)
//   kern::cpu::gemm(ctx, params, packed_b)     the same product with the packed B (params.b and
//                                              params.trans_b are not used); same bits as unpacked
#pragma once

#include <cstddef>
#include <string_view>

#include "kern/core/memory.hpp"
#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/driver.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/ops/gemm.hpp"

// The entries each ISA translation unit instantiates (kern_enable_isa_dispatch), and that every
// other translation unit of a dispatching target declares extern; EXTERN is `extern` or empty.
// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_GEMM_RUN(ARCH, EXTERN, TA, TB, TC)                                                                    \
  EXTERN template void kern::cpu::detail::gemm_run<ARCH, TA, TB, TC>(                                                  \
      const ::kern::cpu::context&, const ::kern::ops::gemm_params<TA, TB, TC>&, const void*);
#define KERN_CPU_GEMM_PACK(ARCH, EXTERN, TB)                                                                           \
  EXTERN template void kern::cpu::detail::pack_b_run<ARCH, TB>(                                                        \
      const ::kern::cpu::context&, ::kern::matrix_view<const TB>, ::kern::ops::transpose, ::kern::ops::gemm_compute,   \
      ::kern::index_t, ::kern::index_t, void*);
#define KERN_CPU_GEMM_INSTANCES(ARCH, EXTERN)                                                                          \
  KERN_CPU_GEMM_RUN(ARCH, EXTERN, float, float, float)                                                                 \
  KERN_CPU_GEMM_RUN(ARCH, EXTERN, ::kern::bf16, ::kern::bf16, float)                                                   \
  KERN_CPU_GEMM_RUN(ARCH, EXTERN, ::kern::bf16, ::kern::bf16, ::kern::bf16)                                            \
  KERN_CPU_GEMM_PACK(ARCH, EXTERN, float)                                                                              \
  KERN_CPU_GEMM_PACK(ARCH, EXTERN, ::kern::bf16)                                                                       \
  EXTERN template std::size_t kern::cpu::detail::packed_b_bytes<ARCH>(::kern::dtype, ::kern::ops::gemm_compute,        \
                                                                      ::kern::index_t, ::kern::index_t);               \
  EXTERN template const char* kern::cpu::detail::bf16_kernel_name<ARCH>();
// NOLINTEND(bugprone-macro-parentheses)
KERN_CPU_EXTERN_INSTANCES(KERN_CPU_GEMM_INSTANCES)

namespace kern::cpu {

namespace detail {

// The micro-kernel that bf16 work (bf16 inputs, or f32 with compute = bf16) runs on in this process:
// "amx", "amx (emulated)", "avx512_bf16" or "fp32 fma".
inline std::string_view gemm_bf16_kernel_name() {
  return dispatch([](auto arch) -> std::string_view { return bf16_kernel_name<decltype(arch)>(); });
}

} // namespace detail

template <element_type TA, element_type TB, element_type TC>
void gemm(const context& ctx, const ops::gemm_params<TA, TB, TC>& params) {
  ops::validate("kern::cpu::gemm", params);
  if constexpr (ops::gemm_types_supported<TA, TB, TC>()) {
    detail::dispatch([&](auto arch) { detail::gemm_run<decltype(arch)>(ctx, params, nullptr); });
  }
}

class gemm_packed_b;

// Packs op(B) (K x N: B itself, or B's transpose with trans_b) for kern::cpu::gemm.
template <element_type TB> gemm_packed_b pack_gemm_b(const context& ctx, matrix_view<const TB> b,
                                                     ops::transpose trans_b,
                                                     ops::gemm_compute compute = ops::gemm_compute::native);

// op(B) packed in the layout kern::cpu::gemm reads on this machine (its ISA and kernel), made
// once by pack_gemm_b and reused by any number of gemm calls with the same K, N, B type and
// compute mode. Owns its memory; move-only.
class gemm_packed_b {
public:
  index_t k() const noexcept { return k_; }
  index_t n() const noexcept { return n_; }
  dtype b_type() const noexcept { return type_; }
  ops::gemm_compute compute() const noexcept { return compute_; }
  isa packed_for() const noexcept { return isa_; }
  std::size_t bytes() const noexcept { return storage_.size(); }
  const void* data() const noexcept { return storage_.data(); }

private:
  template <element_type TB>
  friend gemm_packed_b pack_gemm_b(const context&, matrix_view<const TB>, ops::transpose, ops::gemm_compute);

  aligned_buffer<std::byte> storage_;
  index_t k_ = 0, n_ = 0;
  dtype type_ = dtype::f32;
  ops::gemm_compute compute_ = ops::gemm_compute::native;
  isa isa_ = isa::scalar;
};

template <element_type TB> gemm_packed_b pack_gemm_b(const context& ctx, matrix_view<const TB> b,
                                                     ops::transpose trans_b, ops::gemm_compute compute) {
  constexpr std::string_view op = "kern::cpu::pack_gemm_b";
  require(dtype_of_v<TB> == dtype::f32 || dtype_of_v<TB> == dtype::bf16, op,
          "unsupported type B = ", name(dtype_of_v<TB>), " (supported: f32, bf16)");
  require(compute == ops::gemm_compute::native || dtype_of_v<TB> == dtype::f32, op,
          "compute = bf16 applies to f32 inputs only (B is ", name(dtype_of_v<TB>), ")");
  ops::detail::require_matrix(op, "b", b);
  gemm_packed_b packed;
  packed.k_ = trans_b == ops::transpose::trans ? b.cols : b.rows;
  packed.n_ = trans_b == ops::transpose::trans ? b.rows : b.cols;
  packed.type_ = dtype_of_v<TB>;
  packed.compute_ = compute;
  packed.isa_ = active_isa();
  if constexpr (dtype_of_v<TB> == dtype::f32 || dtype_of_v<TB> == dtype::bf16) {
    detail::dispatch([&](auto arch) {
      using Arch = decltype(arch);
      packed.storage_ =
          aligned_buffer<std::byte>(detail::packed_b_bytes<Arch>(dtype_of_v<TB>, compute, packed.k_, packed.n_));
      if (packed.k_ > 0 && packed.n_ > 0) {
        detail::pack_b_run<Arch>(ctx, b, trans_b, compute, packed.k_, packed.n_, packed.storage_.data());
      }
    });
  }
  return packed;
}

template <element_type TA, element_type TB, element_type TC>
void gemm(const context& ctx, const ops::gemm_params<TA, TB, TC>& params, const gemm_packed_b& b) {
  constexpr std::string_view op = "kern::cpu::gemm";
  require(b.b_type() == dtype_of_v<TB>, op, "packed B holds ", name(b.b_type()), " but B is ", name(dtype_of_v<TB>));
  require(b.compute() == params.compute, op, "packed B was packed for compute mode ", ops::name(b.compute()),
          ", the call asks for ", ops::name(params.compute));
  require(b.packed_for() == active_isa(), op, "packed B was packed for ISA ", name(b.packed_for()),
          ", this process runs ", name(active_isa()));
  // Validate as if B were there: a stand-in view with the packed shape (never read).
  ops::gemm_params<TA, TB, TC> shaped = params;
  shaped.trans_b = ops::transpose::none;
  shaped.b = matrix_view<const TB>(reinterpret_cast<const TB*>(b.data()), b.k(), b.n(), b.n() > 0 ? b.n() : 1);
  require(b.bytes() > 0 || b.k() == 0 || b.n() == 0, op, "packed B is empty (moved from?)");
  ops::validate(op, shaped);
  if constexpr (ops::gemm_types_supported<TA, TB, TC>()) {
    detail::dispatch([&](auto arch) { detail::gemm_run<decltype(arch)>(ctx, shaped, b.data()); });
  }
}

} // namespace kern::cpu
