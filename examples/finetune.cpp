// Fine-tunes a pretrained checkpoint on a text file (transfer learning): evaluates the held-out part
// of the text before and after, and saves the result as a safetensors checkpoint that generate reads.
//
//   finetune --checkpoint stories260K.bin --data my_stories.txt --out tuned --steps 200
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "transformer/checkpoint.hpp"
#include "transformer/cli.hpp"
#include "transformer/tokenizer.hpp"
#include "transformer/trainer.hpp"

namespace {

using namespace kern::examples;
using kern::index_t;

int run(int argc, char** argv) {
  command_line cli("finetune", "Continues training a pretrained checkpoint on a text file, and evaluates it.");
  cli.option("checkpoint", "", "pretrained model: safetensors or llama2.c .bin (required)");
  cli.option("tokenizer", "",
             "llama2.c tokenizer.bin (default: bytes for a 256-token vocabulary, else beside the checkpoint)");
  cli.option("data", "", "text file to fine-tune on (required)");
  cli.option("out", "finetuned", "folder for the fine-tuned model.safetensors and loss.csv");
  cli.option("steps", "200", "optimizer steps");
  cli.option("batch", "8", "sequences per step");
  cli.option("seq", "128", "tokens per sequence (at most the model's context)");
  cli.option("lr", "3e-4", "peak learning rate");
  cli.option("warmup", "10", "warmup steps");
  cli.option("weight-decay", "0.0", "AdamW weight decay (matrices only)");
  cli.option("freeze-layers", "0", "freeze the embeddings and the lowest N layers (0: train everything)");
  cli.option("val-fraction", "0.1", "held-out fraction of the data");
  cli.option("eval-batches", "8", "batches per evaluation");
  cli.option("seed", "1337", "seed of the data order");
  cli.option("threads", "0", "CPU threads (0: all)");
  if (!cli.parse(argc, argv)) {
    return 0;
  }
  kern::require(cli.given("checkpoint"), "finetune", "--checkpoint PATH is required (see --help)");
  kern::require(cli.given("data"), "finetune", "--data FILE is required (see --help)");
  const std::filesystem::path checkpoint = cli.text("checkpoint");
  const std::filesystem::path out = cli.text("out");
  const std::filesystem::path saved = out / "model.safetensors";
  kern::require(!std::filesystem::exists(saved) || !std::filesystem::equivalent(saved, checkpoint), "finetune",
                "--out would overwrite the input checkpoint ", checkpoint.string(), ": choose another folder");
  const kern::cpu::context ctx =
      cli.integer("threads") > 0 ? kern::cpu::context(static_cast<int>(cli.integer("threads"))) : kern::cpu::context();

  transformer<> model = load_model(checkpoint);
  const model_config& c = model.config();
  train_options o;
  o.batch = cli.integer("batch");
  o.seq = std::min<index_t>(cli.integer("seq"), c.context);
  o.steps = cli.integer("steps");
  o.lr = static_cast<float>(cli.real("lr"));
  o.warmup_steps = cli.integer("warmup");
  o.weight_decay = static_cast<float>(cli.real("weight-decay"));
  o.eval_batches = cli.integer("eval-batches");
  o.eval_every = std::max<index_t>(1, o.steps);
  o.seed = static_cast<std::uint64_t>(cli.integer("seed"));
  const index_t freeze = cli.integer("freeze-layers");
  kern::require(freeze >= 0 && freeze <= c.n_layers, "finetune", "--freeze-layers ", freeze, " is not in [0, ",
                c.n_layers, "]");

  const text_codec codec = codec_for(checkpoint, cli.text("tokenizer"), c.vocab);
  std::vector<std::int32_t> tokens = codec.encode_corpus(read_text_file(cli.text("data")));
  for (std::int32_t id : tokens) {
    kern::require(id < c.vocab, "finetune", "the tokenizer made id ", id, ", outside the model's ", c.vocab,
                  "-token vocabulary: tokenizer and checkpoint do not match");
  }
  const token_stream data(std::move(tokens), cli.real("val-fraction"), o.seq, cli.text("data"));
  trainer<> train(model, o);
  train.freeze_lowest(freeze);
  const float before = train.evaluate(ctx, data);
  std::fprintf(stderr, "%s: %lld parameters | data: %lld train, %lld held-out tokens | held-out loss before: %.4f\n",
               checkpoint.string().c_str(), static_cast<long long>(model.layout().total()),
               static_cast<long long>(data.train_tokens()), static_cast<long long>(data.validation_tokens()), before);
  std::filesystem::create_directories(out);
  std::ofstream log(out / "loss.csv");
  log << "step,train_loss,val_loss,lr,grad_norm\n0,," << before << ",0,0\n";
  progress_bar bar(o.steps, o.batch * o.seq);
  while (train.step() < o.steps) {
    const auto r = train.train_step(ctx, data);
    const bool last = train.step() == o.steps;
    const std::string val = last ? std::to_string(train.evaluate(ctx, data)) : "";
    log << train.step() << ',' << r.loss << ',' << val << ',' << r.lr << ',' << r.grad_norm << '\n';
    bar.update(train.step(), r.loss);
  }
  bar.finish();
  const float after = train.evaluate(ctx, data);
  save_model(saved, model, {{"kern.finetuned_from", checkpoint.filename().string()}});
  std::fprintf(stderr, "held-out loss: %.4f before, %.4f after %lld steps | saved %s\n", before, after,
               static_cast<long long>(o.steps), saved.string().c_str());
  std::printf("%.6f %.6f\n", before, after);
  return 0;
}

} // namespace

int main(int argc, char** argv) { return kern::examples::run_program(argc, argv, run); }
