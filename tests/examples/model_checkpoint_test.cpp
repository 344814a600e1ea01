// Model checkpoints: kern's safetensors round trip (same logits, bit for bit), Hugging Face names and
// layouts, bad files, and the real pretrained stories260K (llama2.c .bin) against llama2.c's own logits.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/kernel_test.hpp"
#include "transformer/checkpoint.hpp"

namespace {

using kern::index_t;
using kern::examples::model_config;
using kern::examples::transformer;
namespace fs = std::filesystem;

fs::path scratch_dir() {
  fs::path dir = fs::temp_directory_path() / ("kern_model_checkpoint_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

std::vector<model_config> configs() {
  model_config mixed = kern::examples::gpt2_config(1, 2, 16, 23, 16);
  mixed.position = kern::examples::positions::rope;
  mixed.mlp = kern::examples::mlp_kind::swiglu;
  model_config half = kern::examples::llama_config(2, 4, 2, 32, 48, 37, 16, false);
  half.rope_pairing = kern::ops::rope_pairing::half;
  return {kern::examples::gpt2_config(2, 4, 32, 37, 16), kern::examples::llama_config(2, 4, 2, 32, 48, 37, 16), half,
          mixed};
}

std::vector<float> logits_of(transformer<>& model, const std::vector<std::int32_t>& tokens, index_t batch,
                             index_t seq) {
  model.plan(batch, seq);
  model.forward(kern::cpu::context(1), tokens.data());
  return {model.logits().begin(), model.logits().end()};
}

TEST(ModelCheckpoint, SaveLoadGivesIdenticalLogits) {
  const fs::path dir = scratch_dir();
  for (const model_config& c : configs()) {
    transformer<> model(c);
    model.init_random(kern::test::fresh_seed());
    std::vector<std::int32_t> tokens;
    for (index_t i = 0; i < index_t{2} * 11; ++i) {
      tokens.push_back(static_cast<std::int32_t>((i * 13 + 5) % c.vocab));
    }
    const std::vector<float> before = logits_of(model, tokens, 2, 11);
    const fs::path path = dir / "model.safetensors";
    kern::examples::save_model(path, model);
    transformer<> loaded = kern::examples::load_model(path);
    EXPECT_EQ(loaded.config().n_layers, c.n_layers);
    EXPECT_EQ(loaded.config().rope_pairing, c.rope_pairing);
    const std::vector<float> after = logits_of(loaded, tokens, 2, 11);
    EXPECT_EQ(before, after);
    const std::vector<float> p0(model.parameters().begin(), model.parameters().end());
    const std::vector<float> p1(loaded.parameters().begin(), loaded.parameters().end());
    EXPECT_EQ(p0, p1);
  }
  fs::remove_all(dir);
}

TEST(ModelCheckpoint, UsesHuggingFaceNamesAndLayouts) {
  const fs::path dir = scratch_dir();
  // GPT-2: Conv1D weights [in, out]; the file holds the real vocabulary only.
  model_config g = kern::examples::gpt2_config(1, 2, 8, 11, 4);
  transformer<> gpt(g);
  gpt.init_random(3);
  kern::examples::save_model(dir / "gpt2.safetensors", gpt);
  const auto file = kern::examples::safetensors_file::read(dir / "gpt2.safetensors");
  EXPECT_EQ(file.info("wte.weight").shape, (std::vector<index_t>{11, 8}));
  EXPECT_EQ(file.info("h.0.attn.c_attn.weight").shape, (std::vector<index_t>{8, 24}));
  EXPECT_EQ(file.info("h.0.mlp.c_proj.weight").shape, (std::vector<index_t>{32, 8}));
  std::vector<float> c_attn(std::size_t{8} * 24);
  file.read_f32("h.0.attn.c_attn.weight", c_attn, {8, 24});
  const kern::examples::layer_offsets& w = gpt.layout().layers[0];
  for (index_t in = 0; in < 8; ++in) {
    for (index_t out = 0; out < 24; ++out) { // kern stores [out, in]
      EXPECT_EQ(c_attn[static_cast<std::size_t>(in * 24 + out)],
                gpt.parameters()[static_cast<std::size_t>(w.qkv_weight + out * 8 + in)]);
    }
  }
  // Llama that rotates adjacent pairs: q rows permuted into the half-rotation order.
  const model_config l = kern::examples::llama_config(1, 2, 1, 8, 12, 11, 4);
  transformer<> llama(l);
  llama.init_random(4);
  kern::examples::save_model(dir / "llama.safetensors", llama);
  const auto lf = kern::examples::safetensors_file::read(dir / "llama.safetensors");
  for (const char* name :
       {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.norm.weight"}) {
    EXPECT_TRUE(lf.contains(name)) << name;
  }
  EXPECT_FALSE(lf.contains("lm_head.weight")); // tied
  std::vector<float> q(std::size_t{8} * 8);
  lf.read_f32("model.layers.0.self_attn.q_proj.weight", q, {8, 8});
  const index_t qkv = llama.layout().layers[0].qkv_weight, hd = 4;
  for (index_t k = 0; k < 8; ++k) { // kern row k = 2i + j of a head sits at row j * hd / 2 + i
    const index_t head = k / hd, i = (k % hd) / 2, j = k % 2;
    const index_t row = head * hd + j * (hd / 2) + i;
    for (index_t col = 0; col < 8; ++col) {
      EXPECT_EQ(q[static_cast<std::size_t>(row * 8 + col)],
                llama.parameters()[static_cast<std::size_t>(qkv + k * 8 + col)]);
    }
  }
  fs::remove_all(dir);
}

// Copies a kern checkpoint's tensors into a file as Hugging Face writes it: no kern metadata, names
// with an optional prefix; the configuration goes into config.json.
void write_hugging_face_copy(const fs::path& from, const fs::path& to, const std::string& prefix,
                             const std::string& config_json) {
  const auto file = kern::examples::safetensors_file::read(from);
  std::vector<std::vector<float>> storage;
  kern::examples::safetensors_writer writer;
  for (const std::string& name : file.names()) {
    const std::vector<index_t> shape = file.info(name).shape;
    index_t n = 1;
    for (index_t e : shape) {
      n *= e;
    }
    std::vector<float>& values = storage.emplace_back(static_cast<std::size_t>(n));
    file.read_f32(name, values, shape);
    writer.add(prefix + name, shape, values);
  }
  writer.set_metadata("format", "pt");
  writer.write(to);
  std::ofstream(to.parent_path() / "config.json") << config_json;
}

TEST(ModelCheckpoint, LoadsHuggingFaceFilesWithTheirConfigJson) {
  const fs::path dir = scratch_dir();
  fs::create_directories(dir / "gpt2");
  fs::create_directories(dir / "llama");
  std::vector<std::int32_t> tokens;
  for (index_t i = 0; i < 10; ++i) {
    tokens.push_back(static_cast<std::int32_t>((i * 7 + 2) % 11));
  }
  // GPT-2, its trunk named "transformer.*" as some exports do.
  transformer<> gpt(kern::examples::gpt2_config(2, 2, 16, 11, 8));
  gpt.init_random(5);
  kern::examples::save_model(dir / "kern_gpt2.safetensors", gpt);
  write_hugging_face_copy(dir / "kern_gpt2.safetensors", dir / "gpt2" / "model.safetensors", "transformer.",
                          R"({"activation_function": "gelu_new", "model_type": "gpt2", "n_ctx": 8, "n_embd": 16,
                              "n_head": 2, "n_inner": null, "n_layer": 2, "n_positions": 8,
                              "layer_norm_epsilon": 1e-05, "initializer_range": 0.02, "scale_attn_weights": true,
                              "vocab_size": 11})");
  transformer<> gpt_hf = kern::examples::load_model(dir / "gpt2" / "model.safetensors");
  EXPECT_EQ(logits_of(gpt, tokens, 1, 8), logits_of(gpt_hf, tokens, 1, 8));
  // Llama: Hugging Face rotates halves; the file holds q and k in that order, so the same function.
  transformer<> llama(kern::examples::llama_config(2, 4, 2, 16, 24, 11, 8));
  llama.init_random(6);
  kern::examples::save_model(dir / "kern_llama.safetensors", llama);
  write_hugging_face_copy(dir / "kern_llama.safetensors", dir / "llama" / "model.safetensors", "",
                          R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
                              "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "vocab_size": 11, "max_position_embeddings": 8,
                              "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true,
                              "rope_scaling": null})");
  transformer<> llama_hf = kern::examples::load_model(dir / "llama" / "model.safetensors");
  EXPECT_EQ(llama_hf.config().rope_pairing, kern::ops::rope_pairing::half);
  const std::vector<float> a = logits_of(llama, tokens, 1, 8), b = logits_of(llama_hf, tokens, 1, 8);
  const std::vector<double> reference(a.begin(), a.end());
  EXPECT_LT(kern::test::relative_error(b, reference), 1e-6);
  // Neither kern metadata nor config.json: a clear error.
  fs::remove(dir / "llama" / "config.json");
  EXPECT_THROW(kern::examples::load_model(dir / "llama" / "model.safetensors"), kern::error);
  fs::remove_all(dir);
}

TEST(ModelCheckpoint, BadFilesAreReportedAndNothingIsLoaded) {
  const fs::path dir = scratch_dir();
  transformer<> model(kern::examples::gpt2_config(1, 2, 8, 11, 4));
  model.init_random(1);
  kern::examples::save_model(dir / "ok.safetensors", model);
  // A file without kern's configuration.
  kern::examples::safetensors_writer bare;
  const std::vector<float> one{1.0f};
  bare.add("x", {1}, one);
  bare.write(dir / "bare.safetensors");
  try {
    kern::examples::load_model(dir / "bare.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const kern::error& e) {
    EXPECT_NE(std::string(e.what()).find("bare.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  // A tensor missing: the configuration says 2 layers, the weights hold 1.
  transformer<> two(kern::examples::gpt2_config(2, 2, 8, 11, 4));
  const auto file = kern::examples::safetensors_file::read(dir / "ok.safetensors");
  try {
    kern::examples::load_weights(two, file);
    ADD_FAILURE() << "no error";
  } catch (const kern::error& e) {
    EXPECT_NE(std::string(e.what()).find("h.1."), std::string::npos) << e.what();
  }
  // Truncated.
  const auto size = fs::file_size(dir / "ok.safetensors");
  fs::copy_file(dir / "ok.safetensors", dir / "cut.safetensors");
  fs::resize_file(dir / "cut.safetensors", size - 7);
  EXPECT_THROW(kern::examples::load_model(dir / "cut.safetensors"), kern::error);
  fs::remove_all(dir);
}

// run.c's logits for positions 0..15 of its greedy run from BOS: the model must compute the same.
TEST(ModelCheckpoint, Stories260KMatchesLlama2cLogits) {
  const fs::path data = fs::path(KERN_SHARED_DATA_DIR) / "stories260K";
  if (!fs::exists(data / "stories260K.bin")) {
    GTEST_SKIP() << data << " is absent: the pretrained model is not here";
  }
  transformer<> model = kern::examples::load_model(data / "stories260K.bin");
  EXPECT_EQ(model.config().d_model, 64);
  EXPECT_EQ(model.config().n_kv_heads, 4);
  std::ifstream ids(data / "reference" / "empty.tokens.txt");
  std::string line;
  std::vector<std::int32_t> sequence;
  while (std::getline(ids, line)) {
    if (line.rfind("sequence_ids:", 0) == 0) {
      std::istringstream in(line.substr(13));
      for (std::int32_t id = 0; in >> id;) {
        sequence.push_back(id);
      }
    }
  }
  ASSERT_GE(sequence.size(), 16u);
  sequence.resize(16);
  const std::vector<float> logits = logits_of(model, sequence, 1, 16);
  std::ifstream raw(data / "reference" / "empty.logits_pos0-15.f32", std::ios::binary);
  std::vector<float> expected(std::size_t{16} * 512);
  raw.read(reinterpret_cast<char*>(expected.data()), static_cast<std::streamsize>(expected.size() * sizeof(float)));
  ASSERT_TRUE(raw.good());
  std::vector<double> reference(expected.begin(), expected.end());
  EXPECT_LT(kern::test::relative_error(logits, reference), 1e-5);
  for (index_t pos = 0; pos + 1 < 16; ++pos) { // greedy: the next token is the arg max
    const float* row = logits.data() + pos * 512;
    EXPECT_EQ(std::max_element(row, row + 512) - row, sequence[static_cast<std::size_t>(pos + 1)]) << "pos " << pos;
  }
}

} // namespace
