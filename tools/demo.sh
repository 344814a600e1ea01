#!/usr/bin/env bash
# kern's main job, end to end on a fresh machine: transfer learning on real text.
#
#  1. a real public-domain English corpus from apt (the fortunes packages: thousands of short texts
#     in topic files); one topic is held out;
#  2. pretrain a small byte-level GPT on the other topics;
#  3. on the held-out topic, with the same step budget: train from scratch, and fine-tune the
#     pretrained model; print the held-out loss of scratch / pretrained / pretrained + fine-tuned;
#  4. generate samples from the fine-tuned model;
#  5. where ../shared/data/stories260K exists, fine-tune that real pretrained TinyStories model on a
#     small text and generate from it.
# Outputs (checkpoints, loss logs, the loss-curve PNG) go to demo_run/ (DEMO_DIR to change).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${DEMO_DIR:-$root/demo_run}
held_out=${DEMO_TOPIC:-computers}
pretrain_steps=${DEMO_PRETRAIN_STEPS:-4000}
topic_steps=${DEMO_TOPIC_STEPS:-300}

tools/setup-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target train finetune generate -j "$(nproc)" >/dev/null
bin=$root/build/release/examples

# 1. The corpus: every fortunes topic file (texts separated by "%" lines), one held out.
fortunes=/usr/share/games/fortunes
[ -f "$fortunes/$held_out" ] || { echo "demo: $fortunes/$held_out not found (apt-get install fortunes)" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out"
for f in "$fortunes"/*; do
  case "$f" in *.dat | *.u8 | *.pdat) continue ;; esac
  [ -f "$f" ] || continue
  if [ "$(basename "$f")" = "$held_out" ]; then
    sed 's/^%$//' "$f" > "$out/topic.txt"
  else
    sed 's/^%$//' "$f" >> "$out/pretrain.txt"
  fi
done
echo "corpus: $(wc -c < "$out/pretrain.txt") bytes of fortunes to pretrain on; held-out topic '$held_out': $(wc -c < "$out/topic.txt") bytes"

common=(--batch 16 --seq 128 --eval-batches 16 --val-fraction 0.1)

# 2. Pretraining on every other topic.
echo; echo "== pretraining a byte-level GPT (4 layers, d 128) on the other topics: $pretrain_steps steps"
"$bin/train" --data "$out/pretrain.txt" --out "$out/pretrained" --preset gpt2-tiny --steps "$pretrain_steps" \
  --lr 2e-3 --warmup 100 --eval-every 500 --save-every 1000 "${common[@]}"

# 3. The held-out topic: from scratch, and fine-tuned, with the same step budget.
echo; echo "== from scratch on '$held_out': $topic_steps steps"
"$bin/train" --data "$out/topic.txt" --out "$out/scratch" --preset gpt2-tiny --steps "$topic_steps" \
  --lr 2e-3 --warmup 20 --eval-every "$topic_steps" --save-every "$topic_steps" "${common[@]}"
scratch=$(tail -n 1 "$out/scratch/loss.csv" | cut -d, -f3)

echo; echo "== fine-tuning the pretrained model on '$held_out': $topic_steps steps"
"$bin/finetune" --checkpoint "$out/pretrained/$(cat "$out/pretrained/latest")/model.safetensors" \
  --data "$out/topic.txt" --out "$out/finetuned" --steps "$topic_steps" --lr 5e-4 "${common[@]}" > "$out/finetune.txt"
read -r pretrained finetuned < "$out/finetune.txt"

echo
echo "held-out loss on '$held_out' (cross-entropy, nats per byte; lower is better):"
printf '| %-38s | %8s |\n' "model" "loss"
printf '|%s|%s|\n' "----------------------------------------" "----------"
printf '| %-38s | %8.4f |\n' "trained from scratch ($topic_steps steps)" "$scratch"
printf '| %-38s | %8.4f |\n' "pretrained, not fine-tuned" "$pretrained"
printf '| %-38s | %8.4f |\n' "pretrained + fine-tuned ($topic_steps steps)" "$finetuned"

plot_args=("$out/pretrained/loss.csv" "$out/scratch/loss.csv" "$out/finetuned/loss.csv" "$out/loss_curves.png"
           --labels "pretraining (other topics),from scratch ($held_out),fine-tuning ($held_out)")
if python3 tools/plot_loss.py "${plot_args[@]}" 2>/dev/null || /usr/bin/python3 tools/plot_loss.py "${plot_args[@]}" 2>/dev/null; then
  echo "loss curves: $out/loss_curves.png"
fi

# 4. Samples from the fine-tuned model.
echo; echo "== samples from the fine-tuned model"
for prompt in "The computer " "Unix is " "A program "; do
  "$bin/generate" --checkpoint "$out/finetuned/model.safetensors" --prompt "$prompt" --max-new-tokens 160 \
    --temperature 0.8 --top-p 0.95 --seed 7
  echo "--"
done

# 5. A real pretrained model: llama2.c's stories260K, fine-tuned on a small text.
stories=$root/../shared/data/stories260K
if [ -f "$stories/stories260K.bin" ]; then
  echo; echo "== fine-tuning the pretrained TinyStories model stories260K on a small text"
  cat > "$out/stories.txt" <<'TEXT'
Once upon a time, there was a little robot named Bolt. Bolt lived in a big workshop with many tools.
Every day, Bolt helped the old man fix clocks. Bolt liked the sound of the clocks. Tick, tock, tick, tock.
One day, a clock would not tick. Bolt looked inside and found a tiny mouse. The mouse was sleeping on the gears.
Bolt did not want to wake the mouse. He waited and waited. When the mouse woke up, it said, "Thank you, Bolt!"
The mouse and Bolt became best friends. They fixed clocks together every day, and the workshop was full of happy ticks.
Once upon a time, there was a little girl named Mia. Mia had a red kite. She loved to fly her kite in the park.
One windy day, the kite flew very high. It got stuck in a tall tree. Mia was sad. Her friend Tom came to help.
Tom was tall and strong. He climbed the tree and got the kite. Mia was so happy. She said, "Thank you, Tom!"
They flew the kite together until the sun went down. Then they went home and ate warm soup.
TEXT
  "$bin/finetune" --checkpoint "$stories/stories260K.bin" --tokenizer "$stories/tok512.bin" \
    --data "$out/stories.txt" --out "$out/stories_finetuned" --steps 40 --batch 4 --seq 32 --lr 3e-4 \
    --val-fraction 0.25 --eval-batches 4 > "$out/stories_finetune.txt"
  read -r before after < "$out/stories_finetune.txt"
  echo "stories260K loss on the last quarter of that text: $before before, $after after fine-tuning on the rest"
  "$bin/generate" --checkpoint "$out/stories_finetuned/model.safetensors" --tokenizer "$stories/tok512.bin" \
    --prompt "Once upon a time, there was a little robot" --max-new-tokens 120 --temperature 0.7 --seed 3
fi
