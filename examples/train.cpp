// Trains the example transformer on a text file (byte-level tokens), from scratch or resumed:
//
//   train --data input.txt --out runs/shakespeare [--preset gpt2-6L] [--steps 500] [--resume]
//
// Progress goes to stderr; the loss curve to OUT/loss.csv (and OUT/loss.png, when Python with
// matplotlib is there); checkpoints to OUT/step_NNNNNN/ (see transformer/training_checkpoint.hpp).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "transformer/cli.hpp"
#include "transformer/training_checkpoint.hpp"

namespace {

using namespace kern::examples;
using kern::index_t;

model_config preset(const std::string& name, index_t vocab, index_t context) {
  if (name == "gpt2-124m") {
    return gpt2_config(12, 12, 768, vocab, context);
  }
  if (name == "gpt2-6L") {
    return gpt2_config(6, 6, 384, vocab, context);
  }
  if (name == "gpt2-tiny") {
    return gpt2_config(4, 4, 128, vocab, context);
  }
  if (name == "llama-tiny") {
    return llama_config(4, 8, 4, 128, 344, vocab, context);
  }
  // llama2.c's TinyStories shapes (with this program's byte-level vocabulary).
  if (name == "stories260K") {
    return llama_config(5, 8, 4, 64, 172, vocab, context);
  }
  if (name == "stories15M") {
    return llama_config(6, 6, 6, 288, 768, vocab, context);
  }
  if (name == "stories42M") {
    return llama_config(8, 8, 8, 512, 1376, vocab, context);
  }
  if (name == "stories110M") {
    return llama_config(12, 12, 12, 768, 2048, vocab, context);
  }
  kern::detail::fail("train", "unknown --preset '", name,
                     "' (gpt2-124m, gpt2-6L, gpt2-tiny, llama-tiny, stories260K, stories15M, stories42M, stories110M)");
}

// Keeps the rows of a loss log up to `step` (a resumed run rewrites what follows).
void truncate_log(const std::filesystem::path& csv, index_t step) {
  std::ifstream in(csv);
  std::string kept, line;
  while (std::getline(in, line)) {
    const bool header = line.rfind("step", 0) == 0;
    if (header || (!line.empty() && std::stoll(line.substr(0, line.find(','))) <= step)) {
      kept += line + "\n";
    }
  }
  std::ofstream(csv) << kept;
}

int run(int argc, char** argv) {
  command_line cli("train", "Trains the example transformer (byte-level tokens) on a text file.");
  cli.option("data", "", "text file to train on (required)");
  cli.option("out", "train_run", "folder for checkpoints and the loss log");
  cli.option("preset", "gpt2-tiny",
             "model: gpt2-tiny, gpt2-6L, gpt2-124m, llama-tiny, stories260K, stories15M, stories42M, stories110M");
  cli.option("batch", "8", "sequences per micro-batch");
  cli.option("seq", "128", "tokens per sequence");
  cli.option("steps", "300", "optimizer steps in all");
  cli.option("grad-accum", "1", "micro-batches per step");
  cli.option("lr", "1e-3", "peak learning rate");
  cli.option("warmup", "20", "warmup steps");
  cli.option("weight-decay", "0.1", "AdamW weight decay (matrices only)");
  cli.option("clip", "1.0", "global gradient-norm clip (0: none)");
  cli.option("eval-every", "50", "steps between validation losses");
  cli.option("eval-batches", "8", "batches per validation");
  cli.option("val-fraction", "0.1", "held-out fraction of the data");
  cli.option("save-every", "100", "steps between checkpoints (and one at the end)");
  cli.option("seed", "1337", "seed of the weights and the data order");
  cli.option("threads", "0", "CPU threads (0: all)");
  cli.option("precision", "fp32", "GEMM operands: fp32, or bf16 (fp32 accumulation, weights and optimizer state)");
  cli.flag("resume", "continue from the newest checkpoint in --out");
  if (!cli.parse(argc, argv)) {
    return 0;
  }
  kern::require(cli.given("data"), "train", "--data FILE is required (see --help)");
  const std::filesystem::path out = cli.text("out");
  train_options o;
  o.batch = cli.integer("batch");
  o.seq = cli.integer("seq");
  o.steps = cli.integer("steps");
  o.grad_accumulation = cli.integer("grad-accum");
  o.lr = static_cast<float>(cli.real("lr"));
  o.warmup_steps = cli.integer("warmup");
  o.weight_decay = static_cast<float>(cli.real("weight-decay"));
  o.clip_norm = static_cast<float>(cli.real("clip"));
  o.eval_every = cli.integer("eval-every");
  o.eval_batches = cli.integer("eval-batches");
  o.seed = static_cast<std::uint64_t>(cli.integer("seed"));
  const index_t save_every = cli.integer("save-every");
  const kern::cpu::context ctx =
      cli.integer("threads") > 0 ? kern::cpu::context(static_cast<int>(cli.integer("threads"))) : kern::cpu::context();

  const byte_tokenizer tokenizer;
  const token_stream data(tokenizer.encode(read_text_file(cli.text("data"))), cli.real("val-fraction"), o.seq,
                          cli.text("data"));
  const bool resume = cli.is_set("resume");
  transformer<> model = resume ? load_model(latest_checkpoint(out) / "model.safetensors")
                               : transformer<>(preset(cli.text("preset"), byte_tokenizer::vocab, o.seq));
  kern::require(o.seq <= model.config().context, "train", "--seq ", o.seq, " is longer than the model's context ",
                model.config().context);
  if (!resume) {
    model.init_random(o.seed);
  }
  const std::string precision_name = cli.text("precision");
  kern::require(precision_name == "fp32" || precision_name == "bf16", "train", "--precision '", precision_name,
                "' is neither fp32 nor bf16");
  model.set_precision(precision_name == "bf16" ? precision::bf16 : precision::fp32);
  trainer<> train(model, o);
  if (resume) {
    load_training(out, model, train);
    std::fprintf(stderr, "resumed from %s at step %lld\n", latest_checkpoint(out).string().c_str(),
                 static_cast<long long>(train.step()));
  }
  std::filesystem::create_directories(out);
  const std::filesystem::path csv = out / "loss.csv";
  if (resume) {
    truncate_log(csv, train.step());
  } else {
    std::ofstream(csv) << "step,train_loss,val_loss,lr,grad_norm\n";
  }
  std::fprintf(stderr, "model: %lld parameters, %lld layers, d_model %lld | data: %lld train, %lld validation tokens\n",
               static_cast<long long>(model.layout().total()), static_cast<long long>(model.config().n_layers),
               static_cast<long long>(model.config().d_model), static_cast<long long>(data.train_tokens()),
               static_cast<long long>(data.validation_tokens()));

  progress_bar bar(o.steps, o.batch * o.seq * o.grad_accumulation);
  bar.start_at(train.step());
  std::ofstream log(csv, std::ios::app);
  while (train.step() < o.steps) {
    const auto r = train.train_step(ctx, data);
    std::string val;
    if (train.step() % o.eval_every == 0 || train.step() == o.steps) {
      val = std::to_string(train.evaluate(ctx, data));
    }
    log << train.step() << ',' << r.loss << ',' << val << ',' << r.lr << ',' << r.grad_norm << '\n';
    log.flush();
    bar.update(train.step(), r.loss);
    if (!val.empty()) {
      std::fprintf(stderr, "\nstep %lld: validation loss %s\n", static_cast<long long>(train.step()), val.c_str());
    }
    if (train.step() % save_every == 0 || train.step() == o.steps) {
      save_training(out, model, train);
    }
  }
  bar.finish();
  log.close();
  // The PATH's python3 first, then the system's (where Debian's python3-matplotlib lives).
  const std::string args = " \"" + std::string(KERN_TOOLS_DIR) + "/plot_loss.py\" \"" + csv.string() + "\" \"" +
                           (out / "loss.png").string() + "\" > /dev/null 2>&1";
  const std::string plot = "python3" + args + " || /usr/bin/python3" + args;
  if (std::system(plot.c_str()) == 0) {
    std::fprintf(stderr, "loss curve: %s\n", (out / "loss.png").string().c_str());
  } else {
    std::fprintf(stderr, "loss curve: %s (no PNG: python3 with matplotlib not found)\n", csv.string().c_str());
  }
  std::fprintf(stderr, "checkpoint: %s\n", latest_checkpoint(out).string().c_str());
  return 0;
}

} // namespace

int main(int argc, char** argv) { return kern::examples::run_program(argc, argv, run); }
