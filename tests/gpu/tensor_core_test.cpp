// kern/gpu/tensor_core.hpp: mma.sync m16n8k16, ldmatrix and cp.async against float64 references.
//
// One block of two warps computes D = A * B + C for a 32x16 tile over K = 60 (four k-steps of 16,
// the last one partly past K): A and B come from global memory into shared memory with cp.async in
// two commit groups (wait_group 1, then 0), the row ends past K zero-filled (their global padding
// holds NaN, and B stored k-major has no rows past K at all); the fragments are built with ldmatrix
// x1, x2 or x4 (B also with .trans) or by per-lane loads, for bf16 and f16. Small integer inputs
// give exact sums, compared bit for bit; random inputs are compared with the float64 reference.
//
// The CPU execution mode also checks that misuse is reported: ldmatrix rows misaligned or outside
// shared memory, cp.async copies read before their wait (stale data), never waited for, or with
// bad addresses. NVIDIA's layouts are for 32-lane warps: the emulation of 64-lane warps and hipcc
// have no such API, and the test skips there.
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/tensor_core.hpp"
#include "kern/gpu/warp.hpp"
#include "support/gpu_test.hpp"

#if KERN_GPU_TENSOR_CORE_API

namespace {

using kern::bf16;
using kern::f16;
using namespace kern::gpu;
using namespace kern::test;

constexpr int tile_m = 32, tile_n = 16, depth = 60, padded_depth = 64, k_steps = padded_depth / 16;
constexpr int block_threads = 64; // two warps, 16 rows of the tile each

// How B (depth x tile_n) is stored: n-major is "col" for mma (ldmatrix), k-major needs ldmatrix.trans.
enum class b_storage { n_major, k_major };

// `Matrices` 1, 2 or 4: fragments by ldmatrix with that many matrices a call; 0: per-lane loads.
// Each variant also copies A with its own cp.async: 16-byte .cg (x4 and lane loads), 8-byte .ca (x2),
// 4-byte .ca (x1). B goes by 16-byte .cg (n-major) or .ca (k-major).
template <int Matrices> constexpr int copy_bytes = Matrices == 2 ? 8 : Matrices == 1 ? 4 : 16;

template <int Bytes> KERN_DEVICE void copy_async(void* destination, const void* source, int source_bytes) {
  if constexpr (Bytes == 16) {
    cp_async_cg(destination, source, source_bytes);
  } else {
    cp_async_ca<Bytes>(destination, source, source_bytes);
  }
}

// Starts the copies of columns [32 half, 32 half + 32) of `rows` rows of padded_depth elements; the
// bytes past `depth` are zero-filled, not read.
template <int Bytes, class T> KERN_DEVICE void copy_depth_half(T* tile, const T* source, int rows, int half) {
  constexpr int per_copy = Bytes / 2, copies_per_row = 32 / per_copy;
  for (int c = linear_thread_id(); c < rows * copies_per_row; c += block_threads) {
    const int row = c / copies_per_row, k = 32 * half + per_copy * (c % copies_per_row);
    const int source_bytes = k >= depth ? 0 : depth - k >= per_copy ? Bytes : 2 * (depth - k);
    copy_async<Bytes>(tile + row * padded_depth + k, source + row * padded_depth + k, source_bytes);
  }
}

// B stored k-major: rows k in [32 half, 32 half + 32) of tile_n elements; rows past `depth` do not
// exist in global memory and are zero-filled from a valid address.
template <class T> KERN_DEVICE void copy_k_major_half(T* tile, const T* source, int half) {
  for (int c = linear_thread_id(); c < 32 * 2; c += block_threads) {
    const int k = 32 * half + c / 2, n = 8 * (c % 2);
    const bool exists = k < depth;
    cp_async_ca<16>(tile + k * tile_n + n, exists ? source + k * tile_n + n : source, exists ? 16 : 0);
  }
}

template <int Matrices, b_storage BStorage, class T>
KERN_DEVICE void copy_stage(T* a_tile, T* b_tile, const T* a, const T* b, int half) {
  copy_depth_half<copy_bytes<Matrices>>(a_tile, a, tile_m, half);
  if constexpr (BStorage == b_storage::n_major) {
    copy_depth_half<16>(b_tile, b, tile_n, half);
  } else {
    copy_k_major_half(b_tile, b, half);
  }
}

// Registers [first, first + Matrices) of a fragment in one ldmatrix; lane l gives row l % 8 of
// register first + (l / 8) % Matrices (lanes past 8 Matrices repeat valid addresses).
template <int Matrices, bool Transposed, int Count, class RowOf>
KERN_DEVICE void ldmatrix_into(fragment<Count>& out, int first, RowOf row_of) {
  const int lane = lane_id();
  const auto* row = row_of(first + (lane / 8) % Matrices, lane % 8);
  fragment<Matrices> part{};
  if constexpr (Transposed) {
    part = ldmatrix_trans<Matrices>(row);
  } else {
    part = ldmatrix<Matrices>(row);
  }
  for (int m = 0; m < Matrices; ++m) {
    out.reg[first + m] = part.reg[m];
  }
}

// A's fragment for rows [row0, row0 + 16), columns [k0, k0 + 16): register r is the 8x8 block at
// rows row0 + 8 (r % 2), columns k0 + 8 (r / 2).
template <int Matrices, class T> KERN_DEVICE mma_a_fragment load_a(const T* a_tile, int row0, int k0) {
  mma_a_fragment a{};
  if constexpr (Matrices == 0) {
    for (int r = 0; r < 4; ++r) {
      const matrix_position p = mma_a_position(lane_id(), 2 * r);
      const T* pair = a_tile + (row0 + p.row) * padded_depth + k0 + p.col;
      a.reg[r] = pack_pair(pair[0], pair[1]);
    }
  } else {
    for (int first = 0; first < 4; first += Matrices) {
      ldmatrix_into<Matrices, false>(a, first, [&](int r, int row) {
        return a_tile + (row0 + 8 * (r % 2) + row) * padded_depth + k0 + 8 * (r / 2);
      });
    }
  }
  return a;
}

// The two B fragments (columns 0-7 and 8-15) of k-step k0, as four registers: register q is the 8x8
// block of columns 8 (q / 2), depth k0 + 8 (q % 2).
template <int Matrices, b_storage BStorage, class T> KERN_DEVICE fragment<4> load_b(const T* b_tile, int k0) {
  fragment<4> b{};
  if constexpr (Matrices == 0) {
    for (int q = 0; q < 4; ++q) {
      const matrix_position p = mma_b_position(lane_id(), 2 * (q % 2));
      const int k = k0 + p.row, n = 8 * (q / 2) + p.col;
      b.reg[q] = BStorage == b_storage::n_major
                     ? pack_pair(b_tile[n * padded_depth + k], b_tile[n * padded_depth + k + 1])
                     : pack_pair(b_tile[k * tile_n + n], b_tile[(k + 1) * tile_n + n]);
    }
  } else {
    for (int first = 0; first < 4; first += Matrices) {
      // The stored rows of block q: n-major rows are columns n of B, k-major rows are depths k.
      ldmatrix_into<Matrices, BStorage == b_storage::k_major>(b, first, [&](int q, int row) {
        return BStorage == b_storage::n_major ? b_tile + (8 * (q / 2) + row) * padded_depth + k0 + 8 * (q % 2)
                                              : b_tile + (k0 + 8 * (q % 2) + row) * tile_n + 8 * (q / 2);
      });
    }
  }
  return b;
}

// D = A * B + C: a (tile_m x padded_depth), b (tile_n x padded_depth n-major, or depth x tile_n
// k-major), c and d (tile_m x tile_n, fp32), all row-major.
template <class T, b_storage BStorage, int Matrices>
__global__ void mma_tile_kernel(const T* a, const T* b, const float* c, float* d) {
  KERN_DYNAMIC_SHARED(T, tiles);
  T* const a_tile = tiles.data();
  T* const b_tile = tiles.data() + tile_m * padded_depth;
  copy_stage<Matrices, BStorage>(a_tile, b_tile, a, b, 0);
  cp_async_commit_group();
  copy_stage<Matrices, BStorage>(a_tile, b_tile, a, b, 1);
  cp_async_commit_group();

  const int row0 = 16 * warp_id(), lane = lane_id();
  mma_accumulator acc[2];
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 4; ++i) {
      const matrix_position p = mma_c_position(lane, i);
      acc[j].reg[i] = c[(row0 + p.row) * tile_n + 8 * j + p.col];
    }
  }
  for (int step = 0; step < k_steps; ++step) {
    if (step == 0) {
      cp_async_wait_group<1>(); // the first half of the depth has landed
      __syncthreads();
    } else if (step == k_steps / 2) {
      cp_async_wait_group<0>();
      __syncthreads();
    }
    const mma_a_fragment a_fragment = load_a<Matrices>(a_tile, row0, 16 * step);
    const fragment<4> b = load_b<Matrices, BStorage>(b_tile, 16 * step);
    acc[0] = mma_m16n8k16<T>(a_fragment, {{b.reg[0], b.reg[1]}}, acc[0]);
    acc[1] = mma_m16n8k16<T>(a_fragment, {{b.reg[2], b.reg[3]}}, acc[1]);
  }
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 4; ++i) {
      const matrix_position p = mma_c_position(lane, i);
      d[(row0 + p.row) * tile_n + 8 * j + p.col] = acc[j].reg[i];
    }
  }
}

enum class inputs { small_integers, random };

// Row-major position on the host.
std::size_t at(int row, int col, int ld) {
  return static_cast<std::size_t>(row) * static_cast<std::size_t>(ld) + static_cast<std::size_t>(col);
}

template <class T, b_storage BStorage, int Matrices> void check_mma(inputs kind) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << type_name<T>() << (BStorage == b_storage::n_major ? " B n-major" : " B k-major")
                                  << " fragments by " << (Matrices == 0 ? "lane loads" : "ldmatrix.x")
                                  << (Matrices == 0 ? "" : std::to_string(Matrices)) << " seed " << seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-4, 4);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const auto draw = [&](float integer_scale) {
    return kind == inputs::small_integers ? static_cast<float>(small(rng)) * integer_scale : uniform(rng);
  };
  // A and n-major B hold NaN in their padding past `depth`: a copy that is not zero-filled poisons D.
  constexpr bool n_major = BStorage == b_storage::n_major;
  std::vector<T> a(at(tile_m, 0, padded_depth), T(nan_value));
  std::vector<T> b(n_major ? at(tile_n, 0, padded_depth) : at(depth, 0, tile_n), T(nan_value));
  std::vector<float> c(at(tile_m, 0, tile_n));
  const auto a_at = [&](int i, int k) -> T& { return a[at(i, k, padded_depth)]; };
  const auto b_at = [&](int k, int n) -> T& { return b[n_major ? at(n, k, padded_depth) : at(k, n, tile_n)]; };
  for (int i = 0; i < tile_m; ++i) {
    for (int k = 0; k < depth; ++k) {
      a_at(i, k) = T(draw(1.0f));
    }
  }
  for (int k = 0; k < depth; ++k) {
    for (int n = 0; n < tile_n; ++n) {
      b_at(k, n) = T(draw(1.0f));
    }
  }
  for (float& x : c) {
    x = draw(2.0f);
  }
  std::vector<double> reference(c.size());
  for (int i = 0; i < tile_m; ++i) {
    for (int n = 0; n < tile_n; ++n) {
      double sum = c[at(i, n, tile_n)];
      for (int k = 0; k < depth; ++k) {
        sum +=
            static_cast<double>(static_cast<float>(a_at(i, k))) * static_cast<double>(static_cast<float>(b_at(k, n)));
      }
      reference[at(i, n, tile_n)] = sum;
    }
  }

  const auto a_device = to_device(a);
  const auto b_device = to_device(b);
  const auto c_device = to_device(c);
  const auto d_device = to_device(poisoned<float>(static_cast<kern::index_t>(c.size())));
  const std::size_t shared_bytes = at(tile_m + tile_n, 0, padded_depth) * sizeof(T);
  launch(mma_tile_kernel<T, BStorage, Matrices>, dim3(1), dim3(block_threads), shared_bytes, nullptr, a_device.data(),
         b_device.data(), c_device.data(), d_device.data());
  const std::vector<float> d = to_host(d_device);
  if (kind == inputs::small_integers) { // |D| <= 60 * 16 + 8: every partial sum is exact in fp32
    std::vector<float> exact(reference.begin(), reference.end());
    EXPECT_EQ(bits_of(d), bits_of(exact));
  } else {
    EXPECT_LT(relative_error(d, reference), 1e-5);
  }
}

// The instructions need sm_80 or newer; on an older GPU they trap.
bool gpu_has_sm80() {
#if defined(KERN_GPU_CUDA)
  int device = 0, major = 0;
  kern::gpu::check(cudaGetDevice(&device), "cudaGetDevice");
  kern::gpu::check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  return major >= 8;
#else
  return true;
#endif
}

template <class T, b_storage BStorage> void check_fragment_sources(inputs kind) {
  check_mma<T, BStorage, 0>(kind);
  check_mma<T, BStorage, 1>(kind);
  check_mma<T, BStorage, 2>(kind);
  check_mma<T, BStorage, 4>(kind);
}

template <class T> void check_all(inputs kind) {
  check_fragment_sources<T, b_storage::n_major>(kind);
  check_fragment_sources<T, b_storage::k_major>(kind);
}

// The layout functions against the PTX ISA's formulas, and each fragment covering its matrix once.
TEST(TensorCore, FragmentPositionsFollowThePtxLayouts) {
  KERN_REQUIRE_GPU();
  std::vector<int> a_hits(at(16, 0, 16)), b_hits(at(16, 0, 8)), c_hits(at(16, 0, 8));
  for (int lane = 0; lane < 32; ++lane) {
    const int group = lane >> 2, in_group = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const matrix_position p = mma_a_position(lane, i);
      EXPECT_EQ(p.row, (i < 2 || (i >= 4 && i < 6)) ? group : group + 8) << "lane " << lane << " a" << i;
      EXPECT_EQ(p.col, in_group * 2 + (i & 1) + (i >= 4 ? 8 : 0)) << "lane " << lane << " a" << i;
      ++a_hits[at(p.row, p.col, 16)];
    }
    for (int i = 0; i < 4; ++i) {
      const matrix_position pb = mma_b_position(lane, i);
      EXPECT_EQ(pb.row, in_group * 2 + (i & 1) + (i >= 2 ? 8 : 0)) << "lane " << lane << " b" << i;
      EXPECT_EQ(pb.col, group) << "lane " << lane << " b" << i;
      ++b_hits[at(pb.row, pb.col, 8)];
      const matrix_position pc = mma_c_position(lane, i);
      EXPECT_EQ(pc.row, i < 2 ? group : group + 8) << "lane " << lane << " c" << i;
      EXPECT_EQ(pc.col, in_group * 2 + (i & 1)) << "lane " << lane << " c" << i;
      ++c_hits[at(pc.row, pc.col, 8)];
    }
  }
  EXPECT_EQ(a_hits, std::vector<int>(a_hits.size(), 1));
  EXPECT_EQ(b_hits, std::vector<int>(b_hits.size(), 1));
  EXPECT_EQ(c_hits, std::vector<int>(c_hits.size(), 1));
}

TEST(TensorCore, MmaIsExactOnSmallIntegers) {
  KERN_REQUIRE_GPU();
  if (!gpu_has_sm80()) {
    GTEST_SKIP() << "mma.m16n8k16 with bf16 and cp.async need sm_80 or newer";
  }
  check_all<bf16>(inputs::small_integers);
  check_all<f16>(inputs::small_integers);
}

TEST(TensorCore, MmaMatchesFloat64Reference) {
  KERN_REQUIRE_GPU();
  if (!gpu_has_sm80()) {
    GTEST_SKIP() << "mma.m16n8k16 with bf16 and cp.async need sm_80 or newer";
  }
  check_all<bf16>(inputs::random);
  check_all<f16>(inputs::random);
}

#if defined(KERN_GPU_EMULATED)

// On a GPU these kernels race or fault; the CPU execution mode reports them.

enum class ldmatrix_misuse { none, misaligned, past_allocation, global_memory };

// One warp loads an 8x8 matrix of bf16; lane 3 supplies the row that `misuse` says.
__global__ void ldmatrix_misuse_kernel(ldmatrix_misuse misuse, const bf16* global, std::uint32_t* out) {
  KERN_DYNAMIC_SHARED(bf16, rows);
  const int lane = lane_id();
  for (int i = 2 * lane; i < 2 * lane + 2; ++i) {
    rows[static_cast<std::size_t>(i)] = bf16(static_cast<float>(i));
  }
  sync_warp();
  const int first = 8 * (lane % 8);
  const bf16* row = rows.data() + first;
  if (lane == 3) {
    row = misuse == ldmatrix_misuse::misaligned        ? row + 1
          : misuse == ldmatrix_misuse::past_allocation ? rows.data() + 64
          : misuse == ldmatrix_misuse::global_memory   ? global
                                                       : row;
  }
  out[lane] = ldmatrix<1>(row).reg[0];
}

TEST(TensorCore, EmulatorReportsBadLdmatrixRows) {
  KERN_REQUIRE_GPU();
  const auto global = to_device(std::vector<bf16>(64, bf16(1.0f)));
  const auto out = to_device(std::vector<std::uint32_t>(32));
  const auto run = [&](ldmatrix_misuse misuse) {
    launch(ldmatrix_misuse_kernel, dim3(1), dim3(32), 64 * sizeof(bf16), nullptr, misuse, global.data(), out.data());
  };
  run(ldmatrix_misuse::none);
  const std::vector<std::uint32_t> loaded = to_host(out);
  for (int lane = 0; lane < 32; ++lane) {
    const int k = 8 * (lane / 4) + 2 * (lane % 4);
    EXPECT_EQ(loaded[static_cast<std::size_t>(lane)],
              pack_pair(bf16(static_cast<float>(k)), bf16(static_cast<float>(k + 1))))
        << "lane " << lane;
  }
  expect_error([&] { run(ldmatrix_misuse::misaligned); }, "lane 3's row address");
  expect_error([&] { run(ldmatrix_misuse::misaligned); }, "is not 16-byte aligned");
  expect_error([&] { run(ldmatrix_misuse::past_allocation); }, "is not inside one shared-memory allocation");
  expect_error([&] { run(ldmatrix_misuse::global_memory); }, "is not inside one shared-memory allocation");
}

// A block whose only warp has 16 lanes, or whose lanes disagree on the input type.
template <bool MixTypes> __global__ void mma_misuse_kernel(float* out) {
  const mma_accumulator d =
      MixTypes && lane_id() % 2 == 1 ? mma_m16n8k16<f16>({}, {}, {}) : mma_m16n8k16<bf16>({}, {}, {});
  out[lane_id()] = d.reg[0];
}

TEST(TensorCore, EmulatorReportsMmaWithoutAFullWarp) {
  KERN_REQUIRE_GPU();
  const auto out = to_device(std::vector<float>(32));
  expect_error([&] { launch(mma_misuse_kernel<false>, dim3(1), dim3(16), 0, nullptr, out.data()); },
               "needs all 32 lanes of a warp");
  expect_error([&] { launch(mma_misuse_kernel<true>, dim3(1), dim3(32), 0, nullptr, out.data()); },
               "call different warp collectives");
}

// One thread: a 16-byte group 0, two 8-byte copies in group 1, and a 4-byte zero-fill left
// uncommitted; it records the staging area after each wait.
__global__ void cp_async_groups_kernel(const float* source, float* seen) {
  KERN_DYNAMIC_SHARED(float, staging);
  for (int i = 0; i < 12; ++i) {
    staging[static_cast<std::size_t>(i)] = -1.0f;
  }
  const auto record = [&](int pass) {
    for (int i = 0; i < 12; ++i) {
      seen[12 * pass + i] = staging[static_cast<std::size_t>(i)];
    }
  };
  cp_async_ca<16>(staging.data(), source);
  cp_async_commit_group();
  cp_async_ca<8>(staging.data() + 4, source + 4);
  cp_async_ca<8>(staging.data() + 6, source + 6);
  cp_async_commit_group();
  cp_async_ca<4>(staging.data() + 8, source + 8, 0);
  record(0); // nothing has landed
  cp_async_wait_group<1>();
  record(1); // group 0
  cp_async_wait_group<0>();
  record(2); // groups 0 and 1; the uncommitted copy is in no group
  cp_async_wait_all();
  record(3);
}

TEST(TensorCore, EmulatorLandsCopiesOnlyAtTheirWait) {
  KERN_REQUIRE_GPU();
  std::vector<float> source(12);
  for (std::size_t i = 0; i < source.size(); ++i) {
    source[i] = static_cast<float>(i + 1);
  }
  const auto source_device = to_device(source);
  const auto seen_device = to_device(poisoned<float>(48));
  launch(cp_async_groups_kernel, dim3(1), dim3(1), 12 * sizeof(float), nullptr, source_device.data(),
         seen_device.data());
  const std::vector<float> seen = to_host(seen_device);
  const std::vector<float> expected = {
      -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, // stale: read before any wait
      1,  2,  3,  4,  -1, -1, -1, -1, -1, -1, -1, -1, //
      1,  2,  3,  4,  5,  6,  7,  8,  -1, -1, -1, -1, //
      1,  2,  3,  4,  5,  6,  7,  8,  0,  -1, -1, -1, // the zero-fill, and nothing past its 4 bytes
  };
  EXPECT_EQ(seen, expected);
}

enum class cp_async_misuse { never_waited, destination_global, destination_misaligned, source_shared, source_too_long };

__global__ void cp_async_misuse_kernel(cp_async_misuse misuse, const float* source, float* global_destination) {
  KERN_DYNAMIC_SHARED(float, staging);
  float* const destination = misuse == cp_async_misuse::destination_global       ? global_destination
                             : misuse == cp_async_misuse::destination_misaligned ? staging.data() + 1
                                                                                 : staging.data();
  const float* const from = misuse == cp_async_misuse::source_shared ? staging.data() + 4 : source;
  cp_async_cg(destination, from, misuse == cp_async_misuse::source_too_long ? 17 : 16);
  if (misuse != cp_async_misuse::never_waited) {
    cp_async_wait_all();
  }
}

TEST(TensorCore, EmulatorReportsBadCpAsync) {
  KERN_REQUIRE_GPU();
  const auto source = to_device(std::vector<float>(8, 1.0f));
  const auto global_destination = to_device(std::vector<float>(8));
  const auto run = [&](cp_async_misuse misuse) {
    launch(cp_async_misuse_kernel, dim3(1), dim3(1), 8 * sizeof(float), nullptr, misuse, source.data(),
           global_destination.data());
  };
  expect_error([&] { run(cp_async_misuse::never_waited); }, "exits with 1 cp.async copies still pending");
  expect_error([&] { run(cp_async_misuse::destination_global); }, "is not inside one shared-memory allocation");
  expect_error([&] { run(cp_async_misuse::destination_misaligned); }, "must be aligned to the copy size, 16 bytes");
  expect_error([&] { run(cp_async_misuse::source_shared); }, "is not in global memory");
  expect_error([&] { run(cp_async_misuse::source_too_long); }, "the source size 17 is not within the copy size 16");
}

#endif // KERN_GPU_EMULATED

} // namespace

#else

TEST(TensorCore, NotAvailable) {
  KERN_REQUIRE_GPU();
  GTEST_SKIP() << "mma.sync, ldmatrix and cp.async are NVIDIA instructions with layouts for 32-lane warps: "
                  "this build (hipcc, or the CPU execution mode at warp size 64) has no kern/gpu/tensor_core.hpp API";
}

#endif // KERN_GPU_TENSOR_CORE_API
