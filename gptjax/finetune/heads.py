"""A GPT backbone with a linear task head on the final hidden state of each sequence's last real token (GPT-1's
extract token), and the backbone's LM logits for the auxiliary language-modelling loss (HF's
`GPT2DoubleHeadsModel` is the same shape)."""

import flax.linen as nn
import jax.numpy as jnp

from gptjax.model import DTYPES, GPT, ModelConfig

# How the C sequences of one example meet the head: one sequence (classification, entailment); the final states
# of both orders added (similarity); one score per choice, softmaxed over the choices (multiple choice).
COMBINE = {"classification": "first", "entailment": "first", "similarity": "sum", "multiple_choice": "choices"}


def last_token_states(hidden_NxTxD, lengths_N):
    """The hidden state at position length - 1 of each row (the last token that is not padding)."""
    return jnp.take_along_axis(hidden_NxTxD, (lengths_N - 1)[:, None, None], axis=1)[:, 0]


class ClassifierGPT(nn.Module):
    """tokens_BxCxT (C sequences per example, right-padded), lengths_BxC -> (scores_BxK, lm_logits_(BC)xTxV).
    K is `num_classes`, or C for multiple choice."""

    cfg: ModelConfig
    num_classes: int
    combine: str = "first"

    @nn.compact
    def __call__(self, tokens_BxCxT, lengths_BxC, train: bool = False):
        c = self.cfg
        B, C, T = tokens_BxCxT.shape
        hidden_NxTxD, logits_NxTxV = GPT(c, name="gpt")(tokens_BxCxT.reshape(B * C, T), train=train,
                                                        return_hidden=True)
        x_BxCxD = last_token_states(hidden_NxTxD, lengths_BxC.reshape(B * C)).reshape(B, C, -1)
        out = 1 if self.combine == "choices" else self.num_classes
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ("embed", None)),
                            (c.d_model, out), DTYPES[c.param_dtype])
        bias = self.param("bias", nn.initializers.zeros, (out,), DTYPES[c.param_dtype])
        head = lambda x: jnp.einsum("...d,dk->...k", x, kernel.astype(x.dtype)) + bias.astype(x.dtype)  # noqa: E731
        if self.combine == "choices":
            scores_BxK = head(x_BxCxD)[..., 0]
        elif self.combine == "sum":
            scores_BxK = head(x_BxCxD.sum(axis=1))
        else:
            scores_BxK = head(x_BxCxD[:, 0])
        return scores_BxK.astype(jnp.float32), logits_NxTxV
