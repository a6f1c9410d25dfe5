"""gptjax's offline tasks as lm-eval YAML tasks: `lm_eval --include_path gptjax/evals/lm_eval_tasks ...`."""
