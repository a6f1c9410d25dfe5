"""Evaluation: scoring primitives (`scoring`), tasks as data plus a template (`tasks`), the evaluator that runs
K-shot grids (`evaluator`), the `gptjax eval` command (`cli`), in-training evaluation (`hook`) and the
lm-evaluation-harness bridge (`harness`)."""
