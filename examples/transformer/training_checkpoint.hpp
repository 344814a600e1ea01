// Training checkpoints: a folder of steps, each complete or absent.
//
//   DIR/step_000300/model.safetensors       weights + configuration (+ kern.step)
//   DIR/step_000300/optimizer.safetensors   AdamW moments, step, the data generator's state
//   DIR/latest                              "step_000300": the newest complete checkpoint
//
// Each file is written atomically (temporary file, fsync, rename), and `latest` is replaced only
// after both files of the new step are on disk, so a process killed at any moment of a save leaves
// `latest` naming a complete checkpoint. Older steps are removed after that (the newest two stay).
#pragma once

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "file_io.hpp"
#include "safetensors.hpp"
#include "trainer.hpp"

namespace kern::examples {

inline std::string step_folder_name(index_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%06lld", static_cast<long long>(step));
  return name;
}

// The newest complete checkpoint's folder; a clear error if there is none.
inline std::filesystem::path latest_checkpoint(const std::filesystem::path& dir) {
  const std::string where = describe_file("kern::examples::latest_checkpoint", dir / "latest");
  std::ifstream in(dir / "latest");
  require(in.good(), where, "cannot be read: no checkpoint in this folder");
  std::string name;
  std::getline(in, name);
  require(name.rfind("step_", 0) == 0 && std::filesystem::is_directory(dir / name), where, "names \"", name,
          "\", which is not a checkpoint folder");
  return dir / name;
}

template <class Backend>
void save_training(const std::filesystem::path& dir, const transformer<Backend>& model, trainer<Backend>& train) {
  std::filesystem::create_directories(dir);
  const std::string name = step_folder_name(train.step());
  if (std::filesystem::exists(dir / "latest") && latest_checkpoint(dir).filename() == name) {
    return; // this step is saved already: rewriting it in place would not be atomic
  }
  const std::filesystem::path folder = dir / name;
  std::filesystem::create_directories(folder);
  const std::string step = std::to_string(train.step());
  save_model(folder / "model.safetensors", model, {{"kern.step", step}});
  safetensors_writer optimizer;
  const auto total = static_cast<index_t>(train.first_moment().size());
  optimizer.add("adamw.m", {total}, train.first_moment());
  optimizer.add("adamw.v", {total}, train.second_moment());
  optimizer.set_metadata("kern.step", step);
  optimizer.set_metadata("kern.data_state", train.data_state());
  optimizer.write(folder / "optimizer.safetensors");
  write_file_atomically("kern::examples::save_training", dir / "latest", [&](const output_file& out) {
    const std::string text = name + "\n";
    out.write(std::as_bytes(std::span<const char>(text.data(), text.size())));
  });
  // Older steps go once `latest` no longer names them; the previous one stays as a spare.
  std::vector<std::filesystem::path> steps;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string entry_name = entry.path().filename().string();
    if (entry.is_directory() && entry_name.rfind("step_", 0) == 0 && entry_name < name) {
      steps.push_back(entry.path());
    }
  }
  std::sort(steps.begin(), steps.end());
  for (std::size_t i = 0; i + 1 < steps.size(); ++i) {
    std::filesystem::remove_all(steps[i]);
  }
}

// Restores the model's weights and the trainer's state from the newest checkpoint in `dir`; the
// model must have the checkpoint's configuration (load_model(latest_checkpoint(dir) / "model...")).
template <class Backend>
void load_training(const std::filesystem::path& dir, transformer<Backend>& model, trainer<Backend>& train) {
  const std::filesystem::path folder = latest_checkpoint(dir);
  const safetensors_file weights = safetensors_file::read(folder / "model.safetensors");
  const safetensors_file optimizer = safetensors_file::read(folder / "optimizer.safetensors");
  const std::string where = describe_file("kern::examples::load_training", folder);
  const auto step_of = [&](const safetensors_file& f) {
    const auto it = f.metadata().find("kern.step");
    require(it != f.metadata().end(), where, "a file has no kern.step");
    return it->second;
  };
  require(step_of(weights) == step_of(optimizer), where, "model (step ", step_of(weights), ") and optimizer (step ",
          step_of(optimizer), ") files disagree");
  load_weights(model, weights);
  const auto total = static_cast<index_t>(train.first_moment().size());
  optimizer.read_f32("adamw.m", train.first_moment(), {total});
  optimizer.read_f32("adamw.v", train.second_moment(), {total});
  const auto state = optimizer.metadata().find("kern.data_state");
  require(state != optimizer.metadata().end(), where, "the optimizer file has no kern.data_state");
  train.restore(std::stoll(step_of(weights)), state->second);
}

} // namespace kern::examples
