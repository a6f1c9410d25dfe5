"""Checkpoint conversion between gptjax and other formats (`hf`: Hugging Face transformers GPT-2)."""
