"""The models of learning from preferences, and the sequence layout they share.

A rollout or a comparison is a left-padded prompt (P tokens) followed by a right-padded response (N tokens): one row
of S = P + N tokens. Position ids skip the prompt's padding, and key masks hide it, so a row means what its prompt
alone would (as in `decoding.prefill`). `ScalarHeadGPT` is the GPT backbone with a scalar head at every position:
the reward model reads it at the response's last token (InstructGPT), PPO's value function at every response token
(a value head on the policy, as in Ziegler et al. 2019).
"""

import flax.linen as nn
import jax.numpy as jnp

from gptjax.model import DTYPES, GPT, ModelConfig


class ScalarHeadGPT(nn.Module):
    """tokens_BxS -> (scores_BxS float32, lm logits_BxSxV). Params: {"gpt": the GPT's, "score": {kernel, bias}}."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxS, positions_BxS=None, kv_mask_BxS=None, train: bool = False):
        c = self.cfg
        hidden_BxSxD, logits_BxSxV = GPT(c, name="gpt")(tokens_BxS, positions_BxS, kv_mask_BxS, train=train,
                                                        return_hidden=True)
        score = nn.Dense(1, dtype=DTYPES[c.dtype], param_dtype=DTYPES[c.param_dtype], name="score",
                         kernel_init=nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ("embed", None)))
        return score(hidden_BxSxD)[..., 0].astype(jnp.float32), logits_BxSxV


def layout(prompt_BxP, prompt_mask_BxP, response_BxN, lengths_B):
    """(tokens_BxS, positions_BxS, kv_mask_BxS, response_mask_BxN) of prompts followed by their responses.
    Tokens after a response's end are masked out of every loss but stay visible as keys (they come last, so no
    real token attends to them)."""
    N = response_BxN.shape[1]
    response_mask_BxN = jnp.arange(N)[None, :] < lengths_B[:, None]
    kv_mask_BxS = jnp.concatenate([prompt_mask_BxP, jnp.ones_like(response_BxN, bool)], axis=1)
    positions_BxS = jnp.maximum(jnp.cumsum(kv_mask_BxS, axis=1) - 1, 0).astype(jnp.int32)
    tokens_BxS = jnp.concatenate([prompt_BxP, response_BxN], axis=1).astype(jnp.int32)
    return tokens_BxS, positions_BxS, kv_mask_BxS, response_mask_BxN.astype(jnp.float32)


def response_part(x_BxS, P: int):
    """The entries at positions P-1 .. S-2: those that predict (or value the state before) each response token."""
    return x_BxS[:, P - 1:-1]


def last_response_entry(x_BxS, P: int, lengths_B):
    """x at each row's last response token (the reward model's score of the whole response)."""
    return jnp.take_along_axis(x_BxS, (P + lengths_B - 1)[:, None], axis=1)[:, 0]
