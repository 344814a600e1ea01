// The GPU portability layer and the CPU execution mode: block barriers, shared memory (static and
// dynamic), warp shuffles, votes and reductions, block reductions, atomics and launches. These run
// in every mode (on a GPU they test the layer); the checks of misuse that the CPU execution mode
// reports (a barrier or collective not every thread reaches, shared memory used outside its
// allocation, bad launch configurations) run in that mode only.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu.hpp" // the front door compiles on its own, in every mode
#include "kern/gpu/device.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/shared.hpp"
#include "kern/gpu/warp.hpp"
#include "support/gpu_test.hpp"

namespace {

using kern::gpu::lane_mask;
using kern::gpu::warp_size;
namespace gpu = kern::gpu;

// Each thread writes its id to shared memory, meets the others at a barrier, then reads the value
// of the thread mirrored across the block: only a barrier makes that value visible.
__global__ void mirror_through_shared(int* out) {
  KERN_SHARED(int, values, 1024);
  const int t = static_cast<int>(threadIdx.x);
  const int n = static_cast<int>(blockDim.x);
  values[static_cast<std::size_t>(t)] = t + 1000 * static_cast<int>(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = values[static_cast<std::size_t>(n - 1 - t)];
}

TEST(GpuLayer, BarrierPublishesSharedWrites) {
  KERN_REQUIRE_GPU();
  for (const unsigned threads : {32u, 64u, 96u, 256u, 1024u}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    const unsigned blocks = 3;
    gpu::device_buffer<int> out(std::size_t{threads} * blocks);
    gpu::launch(mirror_through_shared, dim3(blocks), dim3(threads), 0, nullptr, out.data());
    const auto host = kern::test::to_host(out);
    for (unsigned b = 0; b < blocks; ++b) {
      for (unsigned t = 0; t < threads; ++t) {
        ASSERT_EQ(host[b * threads + t], static_cast<int>(threads - 1 - t + 1000 * b))
            << "block " << b << " thread " << t;
      }
    }
  }
}

// Dynamic shared memory: a block reverses its slice of the input through it.
__global__ void reverse_through_dynamic_shared(const float* in, float* out) {
  KERN_DYNAMIC_SHARED(float, tile);
  const unsigned t = threadIdx.x, n = blockDim.x;
  tile[t] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = tile[n - 1 - t];
}

TEST(GpuLayer, DynamicSharedMemory) {
  KERN_REQUIRE_GPU();
  const unsigned threads = 128, blocks = 4;
  std::vector<float> in(std::size_t{threads} * blocks);
  std::iota(in.begin(), in.end(), 0.0f);
  const auto d_in = kern::test::to_device(in);
  gpu::device_buffer<float> out(in.size());
  gpu::launch(reverse_through_dynamic_shared, dim3(blocks), dim3(threads), threads * sizeof(float), nullptr,
              d_in.data(), out.data());
  const auto host = kern::test::to_host(out);
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < threads; ++t) {
      ASSERT_EQ(host[b * threads + t], in[b * threads + threads - 1 - t]);
    }
  }
}

// One row of results per thread: every shuffle flavour, at full width and in segments of 8.
constexpr int shuffle_results = 8;
__global__ void shuffles(int* out) {
  const int lane = gpu::lane_id();
  const int value = 100 * static_cast<int>(threadIdx.x);
  int* row = out + static_cast<std::size_t>(threadIdx.x) * shuffle_results;
  row[0] = gpu::shfl(value, 3);
  row[1] = gpu::shfl_xor(value, 5);
  row[2] = gpu::shfl_down(value, 2);
  row[3] = gpu::shfl_up(value, 3);
  row[4] = gpu::shfl(value, lane + 1, 8);
  row[5] = gpu::shfl_xor(value, 4, 8);
  row[6] = gpu::shfl_down(value, 5, 8);
  row[7] = gpu::shfl_up(value, 1, 8);
}

TEST(GpuLayer, ShufflesFollowCudaSemantics) {
  KERN_REQUIRE_GPU();
  const int threads = 2 * warp_size;
  gpu::device_buffer<int> out(static_cast<std::size_t>(threads * shuffle_results));
  gpu::launch(shuffles, dim3(1), dim3(threads), 0, nullptr, out.data());
  const auto host = kern::test::to_host(out);
  for (int t = 0; t < threads; ++t) {
    const int warp_base = t / warp_size * warp_size, lane = t % warp_size;
    const int segment = lane / 8 * 8, in_segment = lane % 8;
    const auto value_of = [&](int source_lane) { return 100 * (warp_base + source_lane); };
    const int expected[shuffle_results] = {
        value_of(3),
        value_of(lane ^ 5),
        value_of(lane + 2 < warp_size ? lane + 2 : lane),
        value_of(lane >= 3 ? lane - 3 : lane),
        value_of(segment + (in_segment + 1) % 8),
        value_of(segment + (in_segment ^ 4)),
        value_of(in_segment + 5 < 8 ? lane + 5 : lane),
        value_of(in_segment >= 1 ? lane - 1 : lane),
    };
    for (int r = 0; r < shuffle_results; ++r) {
      EXPECT_EQ(host[static_cast<std::size_t>(t * shuffle_results + r)], expected[r])
          << "thread " << t << " result " << r;
    }
  }
}

// Votes: ballot of "lane is a multiple of 3", any/all of lane-dependent predicates.
__global__ void votes(lane_mask* ballots, int* flags) {
  const int lane = gpu::lane_id();
  const lane_mask mask = gpu::ballot(lane % 3 == 0);
  const bool any_big = gpu::any(lane == warp_size - 1);
  const bool all_small = gpu::all(lane < warp_size - 1);
  const bool all_true = gpu::all(true);
  if (lane == 0) {
    ballots[gpu::warp_id()] = mask;
    flags[gpu::warp_id() * 3 + 0] = any_big ? 1 : 0;
    flags[gpu::warp_id() * 3 + 1] = all_small ? 1 : 0;
    flags[gpu::warp_id() * 3 + 2] = all_true ? 1 : 0;
  }
}

TEST(GpuLayer, Votes) {
  KERN_REQUIRE_GPU();
  const int warps = 3;
  gpu::device_buffer<lane_mask> ballots(warps);
  gpu::device_buffer<int> flags(std::size_t{warps} * 3);
  gpu::launch(votes, dim3(1), dim3(warps * warp_size), 0, nullptr, ballots.data(), flags.data());
  lane_mask expected = 0;
  for (int l = 0; l < warp_size; l += 3) {
    expected |= lane_mask{1} << l;
  }
  const auto host_ballots = kern::test::to_host(ballots);
  const auto host_flags = kern::test::to_host(flags);
  for (int w = 0; w < warps; ++w) {
    EXPECT_EQ(host_ballots[static_cast<std::size_t>(w)], expected);
    EXPECT_EQ(host_flags[static_cast<std::size_t>(w * 3 + 0)], 1);
    EXPECT_EQ(host_flags[static_cast<std::size_t>(w * 3 + 1)], 0);
    EXPECT_EQ(host_flags[static_cast<std::size_t>(w * 3 + 2)], 1);
  }
}

// Warp and block reductions of small integers (exact in float): every thread gets the result.
__global__ void reductions(const float* in, float* warp_sums, float* warp_maxima, float* block_sums,
                           float* block_maxima) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = in[i];
  warp_sums[i] = gpu::warp_sum(v);
  warp_maxima[i] = gpu::warp_max(v);
  block_sums[i] = gpu::block_sum(v);
  block_maxima[i] = gpu::block_max(v);
}

TEST(GpuLayer, WarpAndBlockReductions) {
  KERN_REQUIRE_GPU();
  for (const int threads : {warp_size, 4 * warp_size, 1024}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    const int blocks = 2, n = threads * blocks;
    std::vector<float> in(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      in[static_cast<std::size_t>(i)] = static_cast<float>((i * 37) % 101 - 50);
    }
    const auto d_in = kern::test::to_device(in);
    gpu::device_buffer<float> ws(in.size()), wm(in.size()), bs(in.size()), bm(in.size());
    gpu::launch(reductions, dim3(blocks), dim3(threads), 0, nullptr, d_in.data(), ws.data(), wm.data(), bs.data(),
                bm.data());
    const auto h_ws = kern::test::to_host(ws), h_wm = kern::test::to_host(wm);
    const auto h_bs = kern::test::to_host(bs), h_bm = kern::test::to_host(bm);
    for (int i = 0; i < n; ++i) {
      const auto at = [&](int group) { return in.begin() + static_cast<std::ptrdiff_t>(i / group) * group; };
      const float warp_sum = std::accumulate(at(warp_size), at(warp_size) + warp_size, 0.0f);
      const float warp_max = *std::max_element(at(warp_size), at(warp_size) + warp_size);
      const float block_sum = std::accumulate(at(threads), at(threads) + threads, 0.0f);
      const float block_max = *std::max_element(at(threads), at(threads) + threads);
      const auto k = static_cast<std::size_t>(i);
      ASSERT_EQ(h_ws[k], warp_sum) << i;
      ASSERT_EQ(h_wm[k], warp_max) << i;
      ASSERT_EQ(h_bs[k], block_sum) << i;
      ASSERT_EQ(h_bm[k], block_max) << i;
    }
  }
}

// Atomics from every thread of a grid: integer add and max, float add of exact values, and a
// per-block counter in shared memory.
__global__ void atomics(int* total, int* maximum, float* float_total, int* per_block) {
  KERN_SHARED(int, block_count, 1);
  if (threadIdx.x == 0) {
    block_count[0] = 0;
  }
  __syncthreads();
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(total, i);
  atomicMax(maximum, (i * 7919) % 1000);
  atomicAdd(float_total, 0.5f);
  atomicAdd(block_count.data(), 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    per_block[blockIdx.x] = block_count[0];
  }
}

TEST(GpuLayer, Atomics) {
  KERN_REQUIRE_GPU();
  const int blocks = 8, threads = 128, n = blocks * threads;
  gpu::device_buffer<int> total(1), maximum(1), per_block(blocks);
  gpu::device_buffer<float> float_total(1);
  gpu::zero(total.data(), 1, nullptr);
  gpu::zero(maximum.data(), 1, nullptr);
  gpu::zero(float_total.data(), 1, nullptr);
  gpu::launch(atomics, dim3(blocks), dim3(threads), 0, nullptr, total.data(), maximum.data(), float_total.data(),
              per_block.data());
  int expected_max = 0;
  for (int i = 0; i < n; ++i) {
    expected_max = std::max(expected_max, (i * 7919) % 1000);
  }
  EXPECT_EQ(kern::test::to_host(total)[0], n * (n - 1) / 2);
  EXPECT_EQ(kern::test::to_host(maximum)[0], expected_max);
  EXPECT_EQ(kern::test::to_host(float_total)[0], 0.5f * static_cast<float>(n));
  EXPECT_EQ(kern::test::to_host(per_block), std::vector<int>(blocks, threads));
}

// 2-D and 3-D blocks and grids: the linear thread id is x-major, warps follow it.
__global__ void indices(int* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned i = block * blockDim.x * blockDim.y * blockDim.z + static_cast<unsigned>(gpu::linear_thread_id());
  out[std::size_t{2} * i] = static_cast<int>(threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z + 1000 * block);
  out[std::size_t{2} * i + 1] = gpu::shfl(gpu::linear_thread_id(), 0); // lane 0 of this thread's warp
}

TEST(GpuLayer, MultiDimensionalIndices) {
  KERN_REQUIRE_GPU();
  const dim3 grid(2, 3, 2), block(8, 4, 4); // 128 threads per block
  const unsigned per_block = 128, total = 12 * per_block;
  gpu::device_buffer<int> out(std::size_t{2} * total);
  gpu::launch(indices, grid, block, 0, nullptr, out.data());
  const auto host = kern::test::to_host(out);
  for (unsigned b = 0; b < 12; ++b) {
    for (unsigned t = 0; t < per_block; ++t) {
      const unsigned x = t % 8, y = t / 8 % 4, z = t / 32;
      const unsigned i = b * per_block + t;
      ASSERT_EQ(host[std::size_t{2} * i], static_cast<int>(x + 10 * y + 100 * z + 1000 * b));
      ASSERT_EQ(host[std::size_t{2} * i + 1], static_cast<int>(t / warp_size * warp_size));
    }
  }
}

#if defined(KERN_GPU_EMULATED)

using kern::test::expect_error;

// A barrier inside a branch that only some threads take.
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Two different barriers, one per half of the block.
__global__ void split_barriers(int* out) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Threads that return early while the rest wait.
__global__ void early_exit(int* out) {
  if (threadIdx.x % 2 == 1) {
    return;
  }
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(Emulator, ReportsBarriersNotEveryThreadReaches) {
  gpu::device_buffer<int> out(256);
  expect_error([&] { gpu::launch(divergent_barrier, dim3(1), dim3(64), 0, nullptr, out.data()); },
               "never reaches: it has exited");
  expect_error([&] { gpu::launch(split_barriers, dim3(1), dim3(64), 0, nullptr, out.data()); }, "waits at another one");
  expect_error([&] { gpu::launch(early_exit, dim3(2), dim3(128), 0, nullptr, out.data()); }, "block (0,0,0)");
  // The runner recovers: a correct kernel runs after the failures.
  gpu::launch(mirror_through_shared, dim3(1), dim3(64), 0, nullptr, out.data());
  EXPECT_EQ(kern::test::to_host(out.data(), 1)[0], 63);
}

// A warp collective that half the warp skips.
__global__ void divergent_shuffle(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (gpu::lane_id() < warp_size / 2) {
    v = gpu::shfl_xor(v, 1);
  }
  out[threadIdx.x] = v;
}

// Lanes of one warp in two different collectives.
__global__ void mismatched_collectives(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (gpu::lane_id() % 2 == 0) {
    v = gpu::shfl_xor(v, 1);
  } else {
    v = gpu::shfl_down(v, 1);
  }
  out[threadIdx.x] = v;
}

// A shuffle in a partial warp that reads a lane the block does not have.
__global__ void read_missing_lane(int* out) { out[threadIdx.x] = gpu::shfl(static_cast<int>(threadIdx.x), 20); }

TEST(Emulator, ReportsWarpCollectivesNotEveryLaneReaches) {
  gpu::device_buffer<int> out(256);
  expect_error([&] { gpu::launch(divergent_shuffle, dim3(1), dim3(warp_size), 0, nullptr, out.data()); },
               "warp collective shfl_xor that thread");
  expect_error([&] { gpu::launch(mismatched_collectives, dim3(1), dim3(warp_size), 0, nullptr, out.data()); },
               "different warp collectives");
  expect_error([&] { gpu::launch(read_missing_lane, dim3(1), dim3(16), 0, nullptr, out.data()); },
               "reads lane 20, which does not exist");
}

__global__ void shared_index_past_end(int* out) {
  KERN_SHARED(int, values, 32);
  values[threadIdx.x] = 1; // 64 threads, 32 slots
  out[threadIdx.x] = 0;
}

__global__ void shared_raw_write_past_end(int* out) {
  KERN_SHARED(float, values, 8);
  if (threadIdx.x == 0) {
    values.data()[9] = 1.0f; // through a raw pointer: lands in the guard bytes
  }
  out[threadIdx.x] = 0;
}

__global__ void dynamic_index_past_end(int* out) {
  KERN_DYNAMIC_SHARED(int, values);
  values[threadIdx.x + 1] = 1;
  out[threadIdx.x] = 0;
}

// Fresh shared memory holds all-ones bytes: a float read before any write is NaN.
__global__ void read_fresh_shared(float* out) {
  KERN_SHARED(float, values, 4);
  out[0] = values[0];
}

TEST(Emulator, ReportsSharedMemoryOutsideItsAllocation) {
  gpu::device_buffer<int> out(64);
  expect_error([&] { gpu::launch(shared_index_past_end, dim3(1), dim3(64), 0, nullptr, out.data()); },
               "index 32 of a 32-element shared array");
  expect_error([&] { gpu::launch(shared_raw_write_past_end, dim3(1), dim3(32), 0, nullptr, out.data()); },
               "the bytes after values (32 bytes) were overwritten");
  expect_error([&] { gpu::launch(dynamic_index_past_end, dim3(1), dim3(32), 32 * sizeof(int), nullptr, out.data()); },
               "index 32 of 32 elements of dynamic shared memory");
  gpu::device_buffer<float> fresh(1);
  gpu::launch(read_fresh_shared, dim3(1), dim3(32), 0, nullptr, fresh.data());
  EXPECT_TRUE(std::isnan(kern::test::to_host(fresh)[0]));
}

// Reads a neighbour's shared-memory write with no barrier in between: a race.
__global__ void missing_barrier(int* out) {
  KERN_SHARED(int, values, 64);
  const unsigned t = threadIdx.x, n = blockDim.x;
  values[t] = static_cast<int>(t);
  out[blockIdx.x * n + t] = values[(t + 1) % n];
}

// The emulator runs even blocks' threads in increasing order and odd blocks' in decreasing order,
// so the race shows in both: some thread of each block reads fresh memory (all-ones bytes, -1).
TEST(Emulator, MissingBarrierShowsInEitherThreadOrder) {
  const std::size_t n = 64;
  gpu::device_buffer<int> out(2 * n);
  gpu::launch(missing_barrier, dim3(2), dim3(static_cast<unsigned>(n)), 0, nullptr, out.data());
  const auto host = kern::test::to_host(out);
  for (std::size_t b = 0; b < 2; ++b) {
    const auto first = host.begin() + static_cast<std::ptrdiff_t>(b * n);
    const auto last = first + static_cast<std::ptrdiff_t>(n);
    EXPECT_NE(std::find(first, last, -1), last) << "block " << b << " never read an unwritten value";
  }
}

// A 16-byte load one float past an aligned address.
__global__ void misaligned_vector_load(const float* in, float* out) {
  out[threadIdx.x] = kern::gpu::load_vector(in + 1).values[0];
}

TEST(Emulator, ReportsMisalignedVectorAccess) {
  gpu::device_buffer<float> in(64), out(32);
  expect_error([&] { gpu::launch(misaligned_vector_load, dim3(1), dim3(32), 0, nullptr, in.data(), out.data()); },
               "which is not 16-byte aligned");
}

__global__ void do_nothing() {}

TEST(Emulator, ReportsBadLaunchConfigurations) {
  expect_error([] { gpu::launch(do_nothing, dim3(0), dim3(32), 0, nullptr); }, "grid (0, 1, 1)");
  expect_error([] { gpu::launch(do_nothing, dim3(1), dim3(2048), 0, nullptr); }, "block (2048, 1, 1)");
  // 48 KiB is what a kernel gets without raising its limit: all of it works, a byte more does not.
  gpu::launch(do_nothing, dim3(1), dim3(32), std::size_t{48} * 1024, nullptr);
  expect_error([] { gpu::launch(do_nothing, dim3(1), dim3(32), std::size_t{48} * 1024 + 1, nullptr); },
               "dynamic shared memory of 49153 bytes exceeds the 49152 bytes a block may use without opting in");
  gpu::device_buffer<int> out(64);
  expect_error(
      [&] { gpu::launch(shared_index_past_end, dim3(1), dim3(32), std::size_t{48} * 1024, nullptr, out.data()); },
      "exceeds the 49152 bytes a block may use without opting in");
}

__global__ void throws_kern_error(int* out) {
  if (threadIdx.x == 5) {
    kern::require(false, "kernel", "thread 5 refuses");
  }
  out[threadIdx.x] = 0;
}

TEST(Emulator, ErrorsInsideAKernelComeOutOfTheLaunch) {
  gpu::device_buffer<int> out(32);
  expect_error([&] { gpu::launch(throws_kern_error, dim3(1), dim3(32), 0, nullptr, out.data()); }, "thread 5 refuses");
}

// Blocks on several CPU threads: the same results, atomics included.
TEST(Emulator, GridOnSeveralCpuThreads) {
  kern::gpu::emulator::set_grid_threads(3);
  const int blocks = 16, threads = 64;
  gpu::device_buffer<int> total(1), maximum(1), per_block(blocks);
  gpu::device_buffer<float> float_total(1);
  gpu::zero(total.data(), 1, nullptr);
  gpu::zero(maximum.data(), 1, nullptr);
  gpu::zero(float_total.data(), 1, nullptr);
  gpu::launch(atomics, dim3(blocks), dim3(threads), 0, nullptr, total.data(), maximum.data(), float_total.data(),
              per_block.data());
  gpu::device_buffer<int> out(256);
  expect_error([&] { gpu::launch(early_exit, dim3(4), dim3(64), 0, nullptr, out.data()); }, "never reaches");
  kern::gpu::emulator::set_grid_threads(1);
  const int n = blocks * threads;
  EXPECT_EQ(kern::test::to_host(total)[0], n * (n - 1) / 2);
  EXPECT_EQ(kern::test::to_host(float_total)[0], 0.5f * static_cast<float>(n));
  EXPECT_EQ(kern::test::to_host(per_block), std::vector<int>(blocks, threads));
}

// Every failed runtime call is a kern::error naming the call and the code.
TEST(Emulator, FailedRuntimeCallsNameTheCall) {
  expect_error([] { gpu::copy(static_cast<float*>(nullptr), static_cast<const float*>(nullptr), 4, nullptr); },
               "kern::gpu: emulator::copy(destination, source, count * sizeof(T), stream) failed: invalid value");
#if !defined(KERN_GPU_EMULATOR_ASAN) // AddressSanitizer stops the process on an impossible allocation
  expect_error([] { gpu::device_buffer<float> huge(std::size_t{1} << 60); }, "failed: out of memory");
#endif
}

TEST(Emulator, BuiltinsOutsideAKernelAreAnError) {
  expect_error([] { (void)threadIdx.x; }, "outside a kernel launch");
}

#endif

} // namespace
