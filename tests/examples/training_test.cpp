// Training checkpoints: a run stopped at step k and resumed gives the same losses, bit for bit, as an
// uninterrupted run (one thread); a process killed in the middle of saving leaves the previous
// checkpoint complete and loadable; bad training input is reported.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "transformer/training_checkpoint.hpp"

namespace {

using kern::index_t;
using kern::examples::model_config;
using kern::examples::trainer;
using kern::examples::transformer;
namespace fs = std::filesystem;

fs::path scratch_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kern_training_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

kern::examples::token_stream random_data(index_t vocab, index_t seq) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> tokens(3000);
  for (auto& t : tokens) {
    t = id(rng);
  }
  return {tokens, 0.1, seq, "random tokens"};
}

kern::examples::train_options options() {
  kern::examples::train_options o;
  o.batch = 3;
  o.seq = 16;
  o.steps = 8;
  o.warmup_steps = 2;
  o.grad_accumulation = 2;
  return o;
}

TEST(Training, ResumedRunRepeatsTheUninterruptedOneBitForBit) {
  const fs::path dir = scratch_dir("resume");
  for (const model_config& c :
       {kern::examples::gpt2_config(2, 2, 32, 41, 16), kern::examples::llama_config(2, 4, 2, 32, 48, 41, 16)}) {
    const kern::examples::train_options o = options();
    const auto data = random_data(c.vocab, o.seq);
    const kern::cpu::context ctx(1);
    std::vector<float> straight;
    {
      transformer<> model(c);
      model.init_random(9);
      trainer<> train(model, o);
      for (index_t s = 0; s < o.steps; ++s) {
        straight.push_back(train.train_step(ctx, data).loss);
      }
    }
    std::vector<float> resumed;
    {
      transformer<> model(c);
      model.init_random(9);
      trainer<> train(model, o);
      for (index_t s = 0; s < 3; ++s) {
        resumed.push_back(train.train_step(ctx, data).loss);
      }
      kern::examples::save_training(dir, model, train);
    }
    transformer<> model = kern::examples::load_model(kern::examples::latest_checkpoint(dir) / "model.safetensors");
    trainer<> train(model, o);
    kern::examples::load_training(dir, model, train);
    EXPECT_EQ(train.step(), 3);
    while (train.step() < o.steps) {
      resumed.push_back(train.train_step(ctx, data).loss);
    }
    EXPECT_EQ(straight, resumed);
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  fs::remove_all(dir);
}

TEST(Training, KillDuringSaveLeavesTheLastCheckpointComplete) {
  const fs::path dir = scratch_dir("kill");
  const model_config c = kern::examples::gpt2_config(4, 4, 256, 300, 64); // ~3 M parameters: saves take a while
  kern::examples::train_options o = options();
  o.seq = 32;
  const auto data = random_data(c.vocab, o.seq);
  {
    transformer<> model(c);
    model.init_random(1);
    trainer<> train(model, o);
    train.train_step(kern::cpu::context(1), data);
    kern::examples::save_training(dir, model, train); // step 1: complete
  }
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) { // saves step after step until it is killed
    transformer<> model(c);
    model.init_random(2);
    trainer<> train(model, o);
    for (index_t s = 2;; ++s) {
      train.restore(s, train.data_state());
      kern::examples::save_training(dir, model, train);
    }
  }
  // Kill it while a checkpoint file is half written (its temporary exists and has data).
  const auto writing = [&] {
    for (const auto& entry : fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied)) {
      std::error_code ec;
      if (entry.path().filename().string().find(".tmp.") != std::string::npos && fs::file_size(entry.path(), ec) > 0) {
        return true;
      }
    }
    return false;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  bool mid_write = false;
  while (!mid_write && std::chrono::steady_clock::now() < deadline) {
    try {
      mid_write = writing();
    } catch (const fs::filesystem_error&) { // a file vanished while listed: look again
    }
  }
  ::kill(child, SIGKILL);
  EXPECT_TRUE(mid_write) << "the child never got to write a checkpoint";
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  // Whatever step `latest` names is complete: both files load and agree.
  const fs::path latest = kern::examples::latest_checkpoint(dir);
  transformer<> model = kern::examples::load_model(latest / "model.safetensors");
  trainer<> train(model, o);
  EXPECT_NO_THROW(kern::examples::load_training(dir, model, train));
  EXPECT_GE(train.step(), 1);
  fs::remove_all(dir);
}

TEST(Training, BadInputIsReported) {
  EXPECT_THROW(kern::examples::token_stream({1, 2, 3}, 0.1, 16, "short.txt"), kern::error);
  try {
    kern::examples::token_stream({1, 2, 3}, 0.1, 16, "short.txt");
  } catch (const kern::error& e) {
    EXPECT_NE(std::string(e.what()).find("short.txt"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kern::examples::read_text_file("/nonexistent/corpus.txt"), kern::error);
  transformer<> model(kern::examples::gpt2_config(1, 2, 16, 11, 8));
  EXPECT_THROW(model.plan(2, 9), kern::error); // longer than the context
  const fs::path dir = scratch_dir("empty");
  EXPECT_THROW(kern::examples::latest_checkpoint(dir), kern::error);
  fs::remove_all(dir);
}

} // namespace
