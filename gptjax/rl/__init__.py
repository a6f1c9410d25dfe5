"""Learning from preferences, the parts the stages in gptjax/runs/ (reward, ppo, rloo, dpo) are built from: losses,
models (scalar heads), objectives, rollouts and advantages, the probe, the simulated labellers, the judge, prompts and
comparisons, and what the stages share (`stage`)."""
