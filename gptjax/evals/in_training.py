"""Evaluation inside training: a few tasks at a few K on params in memory, as scalar metrics for the training log.

The training loop calls `evaluate_in_training(...)` every N steps with its own mesh and rules; the parameters stay
where training put them. Keep it cheap: a `limit` of 50-200 examples per task costs a few forward batches.
"""

from gptjax.evals import evaluator, scoring, tasks


def evaluate_in_training(task_names, shots, limit, model_cfg, params, tokenizer, mesh=None, rules=(), seed=0,
                         tokens_per_batch=4096) -> dict[str, float]:
    """{"icl/<task>/<k>shot_<metric>": value} for every task and K (the task kind's main metric, plus acc_norm for
    multiple choice and perplexity for cloze tasks)."""
    scorer = scoring.Scorer(model_cfg, params, tokenizer, mesh=mesh, rules=rules, tokens_per_batch=tokens_per_batch)
    out = {}
    for name in task_names:
        task = tasks.get(name)
        main = evaluator.MAIN_METRIC[task.kind]
        keep = {main, "acc_norm", "perplexity"}
        for k in (0,) if task.kind == "perplexity" else shots:
            metrics = evaluator.evaluate(scorer, task, k, seed=seed, limit=limit)
            out.update({f"icl/{task.name}/{k}shot_{m}": float(v) for m, v in metrics.items() if m in keep})
    return out
