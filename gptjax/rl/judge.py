"""A fine-tuned classifier (a `finetune.kind=classify` workdir) as the "true" preference of an experiment: the
probability it gives one label to a text. It labels comparisons in place of human labellers and scores policies
(`true_reward`), as the sentiment classifier does in the IMDB steering example. Texts are re-encoded with the
classifier's own tokenizer, so it judges any policy's text."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from gptjax import checkpoint, sharding
from gptjax.errors import ConfigError
from gptjax.finetune import data as ft_data
from gptjax.finetune import heads, objectives, transforms
from gptjax.model import ModelConfig
from gptjax.tokenizer import load_tokenizer


class Judge:
    def __init__(self, workdir: str, label: str, mesh, batch_size: int = 64):
        config = ml_collections.ConfigDict(checkpoint.read_config(workdir))
        f = config.get("finetune")
        if f is None or f.kind != "classify" or f.task_type != "classification":
            raise ConfigError(f"rl.judge_from: {workdir} is not a text classifier (finetune.kind=classify, "
                              "task_type=classification)")
        labels = [str(x) for x in f.labels]
        if label not in labels:
            raise ConfigError(f"rl.judge_label: {label!r} is not one of {workdir}'s labels {labels}")
        self.f, self.label, self.index = f, label, labels.index(label)
        self.tokenizer = load_tokenizer(workdir)
        self.seq_len, self.batch_size, self.mesh = config.data.seq_len, batch_size, mesh
        model_cfg = ModelConfig.from_config(config.model)
        self.specials = transforms.Specials.after(model_cfg.vocab_size - transforms.NUM_SPECIAL)
        lora = objectives.LoraSpec(f.lora_rank, f.lora_alpha, tuple(f.lora_targets)) if f.lora_rank else None
        model = heads.ClassifierGPT(model_cfg, len(labels), heads.COMBINE[f.task_type])
        task = objectives.Classification(self.seq_len, 1, 0.0, model_cfg.loss_impl, lora)
        rules = sharding.hashable_rules(config.mesh.logical_axis_rules)
        with jax.set_mesh(mesh):
            abstract, _ = sharding.abstract_state(
                lambda: task.init(model, jax.random.PRNGKey(0), task.example_batch()), mesh, rules)
            self.params = checkpoint.load_params(workdir, abstract)
        self._batch_sharding = sharding.batch_sharding(mesh)
        self._scores = jax.jit(lambda p, b: jax.nn.softmax(task.scores(model, p, b), axis=-1)[:, self.index])
        self.rules = rules

    def __call__(self, texts: list[str]) -> np.ndarray:
        """P(label | text) for each text (host numpy, float32)."""
        recs = [(f"text {i}", {**{k: "" for k in self.f.fields}, self.f.fields[0]: t, self.f.label_field: self.label})
                for i, t in enumerate(texts)]
        enc = ft_data.encode_classification(recs, self.tokenizer, self.f, self.specials, self.seq_len)
        rows = ft_data.classification_arrays(enc)
        B = self.batch_size
        out = []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for start in range(0, len(enc), B):
                idx = np.arange(start, start + B)
                batch = {k: v[np.minimum(idx, len(enc) - 1)] for k, v in rows.items()}
                batch = jax.device_put(batch, self._batch_sharding)  # every process holds all the texts
                out.append(sharding.to_host(self._scores(self.params, batch)))
        return np.concatenate(out)[:len(texts)].astype(np.float32)
