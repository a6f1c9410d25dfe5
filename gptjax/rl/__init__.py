"""Learning from preferences: reward model, PPO, DPO, GRPO."""
