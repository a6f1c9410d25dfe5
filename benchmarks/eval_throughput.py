"""Log-likelihood requests per second: lm-eval driving gptjax (`--model gptjax`) against lm-eval's `hf` backend
driving transformers' GPT2LMHeadModel, same random weights, same tokenizer, same local multiple-choice task, one
process, back to back.

The weights are gptjax's init exported with gptjax.convert.hf and imported back as a gptjax workdir; the tokenizer
is a byte-level BPE (2,048 tokens) trained here on the embedded Shakespeare and saved as tokenizer.json in the
transformers directory (the models' vocabularies are larger; the extra rows are never used). The task is
shakespeare_next_line (held-out plays, four choices) written as a local lm-eval YAML task: each example is four
loglikelihood requests. lm-eval's `hf` runs with torch.set_num_threads(2) and batch_size=--hf_batch; gptjax with
tokens_per_batch=--tokens_per_batch. The time is lm_eval.simple_evaluate on an already loaded model, so both
include lm-eval's own request building; the accuracies must agree.

  python benchmarks/eval_throughput.py                      # 124M and 4 x 128, 200 examples (800 requests)
  python benchmarks/eval_throughput.py --shapes=small --examples=400 --rounds=3

Under GPTJAX_SMOKE=1 (benchmarks/common.py): the smallest shape asked for, shrunk to gptjax's smoke model, 4
examples, one timed round.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import common  # benchmarks/common.py (imports gptjax before jax starts: quiet libtpu)
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.configs import smoke

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {
    "124m": dict(num_layers=12, d_model=768, num_heads=12, vocab_size=50257, max_len=1024),
    "small": dict(num_layers=4, d_model=128, num_heads=4, vocab_size=2048, max_len=1024),
}
YAML = """task: bench_next_line
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
target_delimiter: "\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from gptjax import data

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    plays = list(data.shakespeare_plays().values())
    if smoke.enabled():  # a few plays give a vocabulary as large, in a fraction of the time
        plays = plays[:4]
    tok.train_from_iterator(plays, trainer)
    tok.save(os.path.join(out_dir, "tokenizer.json"))


def _task_dir(root, n):
    from gptjax.evals import tasks

    task = tasks.get("shakespeare_next_line")
    path = os.path.join(root, "next_line.jsonl")
    with open(path, "w") as f:
        for ex in task.examples[:n]:
            f.write(json.dumps({"query": ex.query, "choices": list(ex.choices), "label": int(ex.target)}) + "\n")
    with open(os.path.join(root, "bench_next_line.yaml"), "w") as f:
        f.write(YAML.format(path=path))
    return root


def run(shape, model, examples, rounds, hf_batch, tokens_per_batch):
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from gptjax import workdirs
    from gptjax.convert import hf
    from gptjax.evals.harness import GptjaxLM
    from gptjax.model import GPT, ModelConfig

    torch.set_num_threads(2)
    cfg = ModelConfig(**model)
    params = jax.jit(lambda k: GPT(cfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"])(jax.random.key(0))
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, workdir, task_dir = (os.path.join(tmp, d) for d in ("hf", "workdir", "task"))
        os.makedirs(task_dir)
        hf.save_hf_gpt2(params, cfg, hf_dir)
        _tokenizer(hf_dir)
        workdirs.import_hf(hf_dir, workdir)
        # The local task only: indexing lm-eval's own thousands of task files takes half a minute.
        manager = TaskManager(include_path=_task_dir(task_dir, examples), include_defaults=False)
        models = {
            "lm-eval hf (transformers)": HFLM(pretrained=hf_dir, device="cpu", batch_size=hf_batch, dtype="float32"),
            "lm-eval gptjax": GptjaxLM(workdir, tokens_per_batch=tokens_per_batch),
        }
        n_requests = 4 * examples
        times = {k: [] for k in models}
        accs = {}
        for r in range(rounds + 1):  # round 0 warms up (jit compiles, torch allocates) and is not timed
            for name, lm in (list(models.items())[::-1] if r % 2 else list(models.items())):
                t = time.perf_counter()
                res = lm_eval.simple_evaluate(model=lm, tasks=["bench_next_line"], task_manager=manager,
                                              num_fewshot=0, verbosity="ERROR")["results"]["bench_next_line"]
                if r:
                    times[name].append(time.perf_counter() - t)
                accs[name] = (res["acc,none"], res["acc_norm,none"])
        ref = statistics.median(n_requests / t for t in times["lm-eval hf (transformers)"])
        for name, ts in times.items():
            rates = [n_requests / t for t in ts]
            print(f"| {shape} | {name} | {statistics.median(rates):,.1f} | {min(rates):,.1f}..{max(rates):,.1f} | "
                  f"{statistics.median(rates) / ref:.2f}x | acc {accs[name][0]:.3f}, acc_norm {accs[name][1]:.3f} |",
                  flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="small,124m")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hf_batch", type=int, default=16)
    parser.add_argument("--tokens_per_batch", type=int, default=4096)
    args = parser.parse_args()
    smoke_run = common.smoke_run("the smallest shape, shrunk to gptjax's smoke model, 4 examples, 1 timed round")
    if smoke_run:
        args.shapes = min(args.shapes.split(","), key=lambda s: SHAPES[s]["num_layers"] * SHAPES[s]["d_model"] ** 2)
        args.examples, args.rounds = smoke.EVAL_EXAMPLES, 1
    print(f"jax {jax.__version__}, devices {jax.devices()}, {args.examples} examples x 4 choices")
    print(f"| shape | backend | requests/s (median of {args.rounds}) | min..max | ratio vs hf | accuracy |")
    print("|---|---|---:|---|---:|---|")
    for shape in args.shapes.split(","):
        model = common.smoke_model(SHAPES[shape]) if smoke_run else SHAPES[shape]
        run(shape, model, args.examples, args.rounds, args.hf_batch, args.tokens_per_batch)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
