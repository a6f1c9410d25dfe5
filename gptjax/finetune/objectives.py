"""Fine-tuning tasks for `trainer.Trainer`: GPT-1 classification with the auxiliary LM loss, and instruction
tuning (next-token loss on response tokens only, `lm_objectives.LanguageModeling` with loss weights). Both optionally
train LoRA adapters instead of the whole model.

Params are {"model": the model's params} and, with LoRA, {"lora": adapters}: the step adds the adapters to the
frozen kernels (`lora.merge`) before the forward pass.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import objectives as lm_objectives
from gptjax.finetune import lora as lora_lib
from gptjax.model import cross_entropy


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple = ("qkv", "out", "fc", "proj")


class _Adapted:
    """Params as {"model": ..., "lora": ...}: init, the effective model params, and the frozen prefix."""

    lora: LoraSpec | None
    frozen_prefix = ("model",)

    def _wrap(self, model_params, rng):
        params = {"model": model_params}
        if self.lora is not None:
            base = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, model_params,
                                is_leaf=lambda x: hasattr(x, "unbox"))
            params["lora"] = lora_lib.init(rng, self._adapted_part(base), self.lora.targets, self.lora.rank)
        return params

    def _adapted_part(self, model_params):
        return model_params

    def model_params(self, params):
        """The params the model runs with (adapters merged when there are any)."""
        if "lora" not in params:
            return params["model"]
        return self._merge(params["model"], params["lora"])

    def _merge(self, model_params, adapters):
        return lora_lib.merge(model_params, adapters, self.lora.alpha, self.lora.rank)

    @property
    def frozen(self) -> tuple:
        """The param subtrees the optimizer leaves alone (`optimizer.make_optimizer(frozen=...)`): the base model
        when LoRA is on (the adapters and any head train)."""
        return () if self.lora is None else (self.frozen_prefix,)


@dataclasses.dataclass(frozen=True)
class Classification(_Adapted):
    """Batch keys: inputs_BxCxT (int32, right-padded with 0), lengths_BxC (real tokens per sequence; the head reads
    position length - 1), label_Bx1 (int32), weight_Bx1 (1 for real examples, 0 for the padding of a last eval
    batch); the trailing axis of 1 because the trainer splits every batch leaf as (batch, None).

    loss = cross-entropy of the head + lm_weight * next-token cross-entropy over the real tokens of every sequence
    (GPT-1's L3 = L2 + lambda L1). With lm_weight = 0 the LM loss is not computed at all."""

    seq_len: int
    num_choices: int
    lm_weight: float = 0.5
    loss_impl: str = "auto"
    lora: LoraSpec | None = None
    frozen_prefix = ("model", "gpt")  # with LoRA the head trains along with the adapters

    def example_batch(self) -> dict:
        return {"inputs": np.zeros((1, self.num_choices, self.seq_len), np.int32),
                "lengths": np.ones((1, self.num_choices), np.int32),
                "label": np.zeros((1, 1), np.int32), "weight": np.ones((1, 1), np.float32)}

    def init(self, model, rng, batch):
        init_rng, lora_rng = jax.random.split(rng)
        return self._wrap(model.init({"params": init_rng}, batch["inputs"], batch["lengths"])["params"], lora_rng)

    def _adapted_part(self, model_params):
        return model_params["gpt"]

    def _merge(self, model_params, adapters):
        return {**model_params, "gpt": lora_lib.merge(model_params["gpt"], adapters, self.lora.alpha, self.lora.rank)}

    def forward(self, model, params, batch, rng=None, train=False):
        return model.apply({"params": self.model_params(params)}, batch["inputs"], batch["lengths"], train=train,
                           rngs={"dropout": rng} if rng is not None else None)

    @staticmethod
    def head_losses(scores_BxK, batch):
        """(per-example cross-entropy, per-example correct) of the head."""
        nll_B = optax.softmax_cross_entropy_with_integer_labels(scores_BxK, batch["label"][:, 0])
        correct_B = (jnp.argmax(scores_BxK, axis=-1) == batch["label"][:, 0]).astype(jnp.float32)
        return nll_B, correct_B

    def lm_loss(self, logits_NxTxV, batch):
        """Next-token cross-entropy over the real tokens of every sequence of the batch."""
        inputs_NxT = batch["inputs"].reshape(-1, self.seq_len)
        lengths_N = batch["lengths"].reshape(-1)
        targets_NxT = jnp.concatenate([inputs_NxT[:, 1:], jnp.zeros_like(inputs_NxT[:, :1])], axis=1)
        weights_NxT = (jnp.arange(self.seq_len)[None, :] < (lengths_N - 1)[:, None]).astype(jnp.float32)
        weights_NxT = weights_NxT * jnp.repeat(batch["weight"][:, 0], self.num_choices)[:, None]
        return cross_entropy(logits_NxTxV, targets_NxT, weights_NxT, self.loss_impl)[0]

    def loss(self, model, params, batch, rng):
        scores_BxK, logits_NxTxV = self.forward(model, params, batch, rng, train=True)
        nll_B, correct_B = self.head_losses(scores_BxK, batch)
        w_B = batch["weight"][:, 0]
        clf = (nll_B * w_B).sum() / jnp.maximum(w_B.sum(), 1.0)
        metrics = {"clf_loss": clf, "train_accuracy": (correct_B * w_B).sum() / jnp.maximum(w_B.sum(), 1.0)}
        if not self.lm_weight:
            return clf, metrics
        lm = self.lm_loss(logits_NxTxV, batch)
        return clf + self.lm_weight * lm, {**metrics, "lm_loss": lm}

    def scores(self, model, params, batch):
        return self.forward(model, params, batch)[0]

    def evaluate(self, model, params, batch) -> dict:
        nll_B, correct_B = self.head_losses(self.scores(model, params, batch), batch)
        w_B = batch["weight"][:, 0]
        return {"val_loss": ((nll_B * w_B).sum(), w_B.sum()), "val_accuracy": ((correct_B * w_B).sum(), w_B.sum())}


@dataclasses.dataclass(frozen=True)
class InstructionTuning(_Adapted):
    """Next-token loss with per-token weights (1 on response tokens, 0 on the prompt and padding) and segment ids
    when several examples are packed in a row: `lm_objectives.LanguageModeling`'s loss on the (LoRA-)merged params."""

    seq_len: int
    loss_impl: str = "auto"
    lora: LoraSpec | None = None

    @property
    def lm(self):
        return lm_objectives.LanguageModeling(self.seq_len, self.loss_impl)

    def example_batch(self) -> dict:
        z = np.zeros((1, self.seq_len), np.int32)
        return {"inputs": z, "targets": z, "weights": np.zeros((1, self.seq_len), np.float32), "segment_ids": z}

    def init(self, model, rng, batch):
        init_rng, lora_rng = jax.random.split(rng)
        return self._wrap(self.lm.init(model, init_rng, batch), lora_rng)

    def loss(self, model, params, batch, rng):
        return self.lm.loss(model, self.model_params(params), batch, rng)

    def evaluate(self, model, params, batch) -> dict:
        return self.lm.evaluate(model, self.model_params(params), batch)
