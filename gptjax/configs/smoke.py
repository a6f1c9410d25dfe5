"""Smoke runs: `GPTJAX_SMOKE=1` before any gptjax command shrinks it to a run of seconds that goes through the same
code: two training steps of a model a few layers wide, one eval batch, a few eval examples, a few sampled tokens.

It is how the tests run every command the documents give and every experiment file (tests/test_docs.py,
tests/test_experiments.py), and how a user checks a config end to end before a long run or a pod launch:

    GPTJAX_SMOKE=1 gptjax train --config=experiments/finetune/genre.py --workdir=/tmp/smoke

What shrinks (the config is otherwise as given, so a bad key or value fails as it would in the real run):
train.steps to 2 (also for a fine-tuning run that counts epochs), the batch to 8 sequences (kept whole for
`gptjax plan`, whose mesh must split it), every model to at most 4 layers and 8 heads of 16 dimensions, training
sequences to 64 tokens (128 for plans; fine-tuning keeps its own), a trained sentencepiece vocabulary to 512 pieces,
evaluation to one batch, 4 examples per task and 16 validation examples, sampling to 16 tokens, and the RL section's
sizes (prompts, rollouts, minibatches of 8 rows, epochs); a sweep runs its first two entries. The shrunk config is
what the workdir's config.json records; a run resumed without GPTJAX_SMOKE refuses it as a different model.
"""

import math
import os
import sys

ENV = "GPTJAX_SMOKE"
STEPS = 2
BATCH = 8
HEADS, HEAD_DIM, LAYERS = 8, 16, 4  # 4 layers: the default model's depth, which commands may name
SEQ_LEN, PLAN_SEQ_LEN = 64, 128
SPM_VOCAB = 512
EVAL_EXAMPLES = 4
NEW_TOKENS = 16


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _cap(section, key, value):
    if key in section and section[key] > value:
        section[key] = value


def shrink(c, plan: bool = False):
    """Shrinks a train (or plan) config in place for a smoke run; `plan` keeps the batch (the target mesh must
    split it) and plans 128-token sequences. Returns the config."""
    m, d, t, e, k = c.model, c.data, c.train, c.eval, c.checkpoint
    _cap(t, "steps", STEPS)
    t.log_every_steps = 1
    if not plan and t.batch_size > BATCH:
        t.batch_size = BATCH
    t.grad_accum_steps = math.gcd(t.grad_accum_steps, t.batch_size)
    e.steps, e.every_steps = 1, min(e.every_steps, t.steps)
    _cap(e, "batch_size", t.batch_size)
    _cap(e, "tasks_limit", EVAL_EXAMPLES)
    if "max_examples" in e:  # fine-tuning, reward and DPO validation: a few examples, not the whole split
        e.max_examples = min(e.max_examples or 4 * EVAL_EXAMPLES, 4 * EVAL_EXAMPLES)
    e.tasks_every_steps = min(e.tasks_every_steps, t.steps)
    if tuple(t.get("profile_steps", (0, 0))) != (0, 0):  # a profile of the smoke run's last step
        t.profile_steps = (t.steps - 1, t.steps)
    k.every_steps = min(k.every_steps, t.steps)
    heads = min(m.num_heads, HEADS)
    head_dim = min(m.d_model // m.num_heads, HEAD_DIM)
    m.num_layers, m.num_heads, m.d_model = min(m.num_layers, LAYERS), heads, heads * head_dim
    if m.d_ff:
        m.d_ff = 4 * m.d_model
    if "finetune" not in c:  # fine-tuning data sets its own lengths (an example longer than seq_len is refused)
        _cap(d, "seq_len", PLAN_SEQ_LEN if plan else SEQ_LEN)  # max_len (the position table) stays: it costs little
    _cap(d, "vocab_size", SPM_VOCAB)
    if "sample" in c:
        _cap(c.sample, "max_new_tokens", NEW_TOKENS)
        _cap(c.sample, "num_samples", 1)
    if "finetune" in c:
        f = c.finetune
        if f.get("epochs", 0) > 0:  # the length was epochs of the data: two steps instead, as every smoke run
            f.epochs = 0.0
            t.steps = STEPS
            e.every_steps, e.tasks_every_steps, k.every_steps = t.steps, t.steps, t.steps
    if "rl" in c:
        r = c.rl
        # A minibatch of BATCH rows, as a training batch: it divides every rollout batch below (8 prompts, each
        # with up to 2 responses) and splits over as many data-parallel devices as the batch does.
        for key, value in (("num_prompts", 16), ("rollout_batch", 8), ("minibatch", BATCH), ("epochs", 1),
                           ("probe_prompts", 8), ("prompt_tokens", 8), ("response_tokens", 8), ("group_size", 2)):
            _cap(r, key, value)
    return c


def announce(what: str) -> None:
    print(f"gptjax: {ENV}=1: {what}", file=sys.stderr, flush=True)
