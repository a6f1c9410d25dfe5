"""Looking inside a model: attention, per-token loss, logit lens, induction-head scores and embedding geometry.

The functions here return numpy arrays (for notebooks); `gptjax inspect` (`inspect_cli.py`) draws them. See
docs/inspect.md.
"""

from gptjax.analysis.core import (attention, checkpoint_steps, cosine_similarity, embedding_neighbours,
                                  embedding_pca, forward, head_scores, logit_lens, params_at, position_embeddings,
                                  position_similarity, recording_config, repeated_random_tokens, token_losses,
                                  top_predictions, unembed)

__all__ = ["attention", "checkpoint_steps", "cosine_similarity", "embedding_neighbours", "embedding_pca", "forward",
           "head_scores", "logit_lens", "params_at", "position_embeddings", "position_similarity",
           "recording_config", "repeated_random_tokens", "token_losses", "top_predictions", "unembed"]
