"""Tasks: what a `trainer.Trainer` trains, as (example batch, init, loss, eval metrics) over a model.

`LanguageModeling` is pretraining: next-token cross-entropy with optional per-token loss weights (a weight of 0
leaves a token out: prompts in instruction tuning, padding) and segment ids (several examples packed in one row,
attending only within their own segment, positions restarting in each). Fine-tuning, reward modelling and RL add
their tasks beside it.
"""

import dataclasses

import numpy as np

from gptjax.model import chunked_cross_entropy, cross_entropy, lm_head_params


@dataclasses.dataclass(frozen=True)
class LanguageModeling:
    """Batch keys: inputs_BxT and targets_BxT (int32); optional weights_BxT (float), segment_ids_BxT (int32, 0 is
    padding) and positions_BxT."""

    seq_len: int
    loss_impl: str = "auto"  # model.loss_impl

    @staticmethod
    def from_windows(windows_BxT1: np.ndarray) -> dict:
        """Token windows of seq_len + 1 (the data pipeline's rows) -> inputs and the next tokens as targets."""
        return {"inputs": windows_BxT1[:, :-1], "targets": windows_BxT1[:, 1:]}

    def example_batch(self) -> dict:
        return {"inputs": np.zeros((1, self.seq_len), np.int32), "targets": np.zeros((1, self.seq_len), np.int32)}

    @staticmethod
    def forward(model, params, batch: dict, rng=None, train: bool = False, **kwargs):
        return model.apply({"params": params}, batch["inputs"], positions_BxT=batch.get("positions"),
                           segment_ids_BxT=batch.get("segment_ids"), train=train,
                           rngs={"dropout": rng} if rng is not None else None, **kwargs)

    def init(self, model, rng, batch: dict):
        return model.init({"params": rng}, batch["inputs"], positions_BxT=batch.get("positions"),
                          segment_ids_BxT=batch.get("segment_ids"))["params"]

    def _loss(self, model, params, batch: dict, rng=None, train: bool = False):
        chunks = getattr(model.cfg, "loss_chunks", 1)
        if chunks > 1:  # the whole logits are never made (the model's own, unused, are dead code under jit)
            x_BxTxD, _ = self.forward(model, params, batch, rng, train=train, return_hidden=True)
            return chunked_cross_entropy(model.cfg, x_BxTxD, lm_head_params(model.cfg, params), batch["targets"],
                                         batch.get("weights"), chunks, self.loss_impl)
        logits_BxTxV = self.forward(model, params, batch, rng, train=train)
        return cross_entropy(logits_BxTxV, batch["targets"], batch.get("weights"), self.loss_impl)

    def loss(self, model, params, batch: dict, rng):
        loss, _ = self._loss(model, params, batch, rng, train=True)
        return loss, {}

    def evaluate(self, model, params, batch: dict) -> dict:
        loss, count = self._loss(model, params, batch)
        return {"val_loss": (loss * count, count)}
