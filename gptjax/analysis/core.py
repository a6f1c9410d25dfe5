"""The analyses as functions of (model config, params, token ids) that return numpy arrays.

Every function runs the model with `attention_impl=reference` and `remat=none` on a copy of its config (same
params), because only the reference attention records its probabilities. Recording happens through Flax's `sow`:
attention probabilities into the `intermediates` collection, the residual stream (after the embeddings and after
each block) into `residuals`; a collection is only kept when `apply` is told it is mutable, so training and
decoding, which never ask, compile as before.

Token arguments are 1-D (T,) or 2-D (B, T) int arrays; results keep a batch axis only when the input had one.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import PromptError
from gptjax.model import GPT, LayerNorm, ModelConfig, sinusoidal_table


def recording_config(model_cfg: ModelConfig) -> ModelConfig:
    """The same model with the attention implementation that records its probabilities."""
    return dataclasses.replace(model_cfg, attention_impl="reference", remat="none", dropout=0.0)


def _batched(tokens, model_cfg: ModelConfig):
    tokens = np.asarray(tokens, np.int32)
    squeeze = tokens.ndim == 1
    tokens_BxT = tokens[None] if squeeze else tokens
    if tokens_BxT.ndim != 2 or tokens_BxT.shape[1] == 0:
        raise PromptError(f"tokens: need a non-empty (T,) or (B, T) array, got shape {tokens.shape}")
    if tokens_BxT.shape[1] > model_cfg.max_len:
        raise PromptError(f"tokens: {tokens_BxT.shape[1]} positions is longer than the model's context of "
                          f"{model_cfg.max_len}")
    if tokens_BxT.min() < 0 or tokens_BxT.max() >= model_cfg.vocab_size:
        raise PromptError(f"tokens: ids must lie in [0, {model_cfg.vocab_size})")
    return tokens_BxT, squeeze


@functools.partial(jax.jit, static_argnums=(0, 3))
def _record(model_cfg: ModelConfig, params, tokens_BxT, collections: tuple):
    logits_BxTxV, state = GPT(model_cfg).apply({"params": params}, tokens_BxT, mutable=list(collections))
    return logits_BxTxV, state


def _stacked(tree, name: str, model_cfg: ModelConfig):
    """The sown values called `name` of every block, stacked on a leading layer axis: (L, ...)."""
    if model_cfg.scan_layers:
        return tree["h"]["block"][name][0] if name == "stream" else tree["h"]["block"]["attn"][name][0]
    per_layer = [tree[f"h_{i}"][name][0] if name == "stream" else tree[f"h_{i}"]["attn"][name][0]
                 for i in range(model_cfg.num_layers)]
    return jnp.stack(per_layer)


def forward(model_cfg: ModelConfig, params, tokens, *, attention: bool = False, residuals: bool = False):
    """One recording forward pass: dict with `logits` (B, T, V) and, when asked, `attention` (L, B, H, T, T) and
    `residuals` (L + 1, B, T, D): the stream after the embeddings, then after each block."""
    cfg, params = recording_config(model_cfg), nn.unbox(params)
    tokens_BxT, _ = _batched(tokens, cfg)
    collections = tuple(c for c, on in (("intermediates", attention), ("residuals", residuals)) if on)
    logits_BxTxV, state = _record(cfg, params, jnp.asarray(tokens_BxT), collections)
    out = {"logits": logits_BxTxV}
    if attention:
        out["attention"] = _stacked(state["intermediates"], "attention_probs", cfg)
    if residuals:
        stream_LxBxTxD = _stacked(state["residuals"], "stream", cfg)
        out["residuals"] = jnp.concatenate([state["residuals"]["embeddings"][0][None], stream_LxBxTxD])
    return out


def attention(model_cfg: ModelConfig, params, tokens) -> np.ndarray:
    """Attention probabilities, (L, H, T, T) for (T,) tokens or (L, B, H, T, T): row t is query t's distribution
    over keys 0..t (zero above the diagonal)."""
    _, squeeze = _batched(tokens, model_cfg)
    probs = np.asarray(forward(model_cfg, params, tokens, attention=True)["attention"])
    return probs[:, 0] if squeeze else probs


def token_losses(model_cfg: ModelConfig, params, tokens) -> np.ndarray:
    """-log p(token t+1 | tokens <= t) in nats for t = 0..T-2: (T-1,) or (B, T-1). The first token has no loss."""
    from gptjax.kernels import reference

    _, squeeze = _batched(tokens, model_cfg)
    tokens_BxT = np.atleast_2d(np.asarray(tokens, np.int32))
    logits_BxTxV = forward(model_cfg, params, tokens_BxT)["logits"]
    nll = np.asarray(reference.token_nll(logits_BxTxV[:, :-1], jnp.asarray(tokens_BxT[:, 1:])))
    return nll[0] if squeeze else nll


def top_predictions(model_cfg: ModelConfig, params, tokens, k: int = 5):
    """The k most likely next tokens after each position: (ids, probabilities), each (T, k) or (B, T, k)."""
    _, squeeze = _batched(tokens, model_cfg)
    probs_BxTxV = jax.nn.softmax(forward(model_cfg, params, tokens)["logits"], axis=-1)
    p, ids = jax.lax.top_k(probs_BxTxV, k)
    p, ids = np.asarray(p), np.asarray(ids)
    return (ids[0], p[0]) if squeeze else (ids, p)


def unembed(model_cfg: ModelConfig, params, x_NxD):
    """The model's head on residual-stream vectors: the final LayerNorm (if the model has one), then the
    unembedding. Float32 logits (..., V)."""
    cfg, params = recording_config(model_cfg), nn.unbox(params)
    if cfg.final_norm:
        x_NxD = LayerNorm(cfg).apply({"params": params["ln_f"]}, x_NxD)
    head_DxV = params["wte"].T if cfg.tie_embeddings else params["lm_head"]
    return jnp.einsum("...d,dv->...v", x_NxD, head_DxV.astype(x_NxD.dtype)).astype(jnp.float32)


def logit_lens(model_cfg: ModelConfig, params, tokens) -> np.ndarray:
    """Logits read off the residual stream after the embeddings and after each block (nostalgebraist's logit lens):
    (L + 1, T, V) or (L + 1, B, T, V). Row L is the model's own output."""
    _, squeeze = _batched(tokens, model_cfg)
    residuals = forward(model_cfg, params, tokens, residuals=True)["residuals"]
    lens = np.asarray(unembed(model_cfg, params, residuals))
    return lens[:, 0] if squeeze else lens


def repeated_random_tokens(vocab_size: int, seq_len: int, batch: int, seed: int = 0, token_ids=None) -> np.ndarray:
    """(batch, 2 * seq_len): random tokens followed by the same tokens again (Olsson et al. 2022), drawn uniformly
    from 0..vocab_size-1 or from `token_ids`."""
    pool = np.arange(vocab_size) if token_ids is None else np.asarray(token_ids)
    first = np.random.default_rng(seed).choice(pool, (batch, seq_len)).astype(np.int32)
    return np.concatenate([first, first], axis=1)


def head_scores(model_cfg: ModelConfig, params, *, seq_len: int | None = None, batch: int = 16,
                seed: int = 0, token_ids=None, sequences=None) -> dict:
    """Previous-token and induction scores for every layer and head, each (L, H), on `batch` sequences of
    `seq_len` random tokens repeated once (default seq_len: half the context, at most 64); `token_ids` limits the
    random tokens to those ids (a model trained on a narrow format: its letters and digits). `sequences`, a
    (B, 2 * seq_len) array whose second half repeats its first, replaces the random sequences.

    previous_token: mean attention from position t to t - 1, over every t >= 1.
    induction: mean attention from position t in the repeat to t - seq_len + 1, the token that followed the earlier
    occurrence of token t; a head that copies what came next last time puts its weight there. Uniform attention
    scores about 1 / t; an induction head scores near 1."""
    if sequences is not None:
        sequences = np.asarray(sequences, np.int32)
        seq_len, batch = sequences.shape[1] // 2, sequences.shape[0]
        if sequences.shape[1] % 2 or not np.array_equal(sequences[:, :seq_len], sequences[:, seq_len:]):
            raise PromptError("head_scores: each of `sequences` must be a block of tokens followed by itself")
    n = seq_len or min(model_cfg.max_len // 2, 64)
    if 2 * n > model_cfg.max_len or n < 2:
        raise PromptError(f"head_scores: seq_len={n} repeated twice does not fit the context of {model_cfg.max_len}")
    tokens_BxT = sequences if sequences is not None else repeated_random_tokens(model_cfg.vocab_size, n, batch, seed,
                                                                                 token_ids)
    probs_LxBxHxTxT = attention(model_cfg, params, tokens_BxT)
    prev = np.diagonal(probs_LxBxHxTxT, offset=-1, axis1=-2, axis2=-1)  # (L, B, H, 2n - 1): t -> t - 1
    induction = np.diagonal(probs_LxBxHxTxT, offset=-(n - 1), axis1=-2, axis2=-1)  # t -> t - n + 1, t >= n - 1
    return {"previous_token": prev.mean(axis=(1, 3)), "induction": induction[..., 1:].mean(axis=(1, 3)),
            "seq_len": n, "batch": batch}


def token_embeddings(model_cfg: ModelConfig, params) -> np.ndarray:
    return np.asarray(nn.unbox(params)["wte"], np.float32)


def position_embeddings(model_cfg: ModelConfig, params) -> np.ndarray:
    """The position table the model adds: the learned `wpe`, or the sinusoidal table. (max_len, D)."""
    if model_cfg.pos_embedding == "learned":
        return np.asarray(nn.unbox(params)["wpe"], np.float32)
    return np.asarray(sinusoidal_table(model_cfg.max_len, model_cfg.d_model))


def cosine_similarity(a_NxD, b_MxD) -> np.ndarray:
    a = a_NxD / np.maximum(np.linalg.norm(a_NxD, axis=-1, keepdims=True), 1e-12)
    b = b_MxD / np.maximum(np.linalg.norm(b_MxD, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


def embedding_neighbours(model_cfg: ModelConfig, params, token_ids, k: int = 5):
    """The k nearest tokens to each of `token_ids` by cosine similarity of their embeddings, the token itself
    left out: (ids, similarities), each (N, k), most similar first."""
    wte = token_embeddings(model_cfg, params)
    token_ids = np.asarray(token_ids, np.int64).reshape(-1)
    sim_NxV = cosine_similarity(wte[token_ids], wte)
    sim_NxV[np.arange(len(token_ids)), token_ids] = -np.inf
    k = min(k, wte.shape[0] - 1)
    ids = np.argsort(-sim_NxV, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sim_NxV, ids, axis=1)


def position_similarity(model_cfg: ModelConfig, params) -> np.ndarray:
    """Cosine similarity between every pair of position embeddings: (max_len, max_len). A sinusoidal table gives
    smooth bands that depend only on the distance; a learned table shows what training made of it."""
    table = position_embeddings(model_cfg, params)
    return cosine_similarity(table, table)


def embedding_pca(model_cfg: ModelConfig, params, num_components: int = 2):
    """The token embeddings projected on their first principal components: (coordinates (V, n), explained variance
    ratio (n,))."""
    wte = token_embeddings(model_cfg, params).astype(np.float64)
    centred = wte - wte.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    return (centred @ vt[:num_components].T).astype(np.float32), (var[:num_components] / var.sum()).astype(np.float32)


def checkpoint_steps(workdir: str) -> list[int]:
    """The complete checkpoints of a workdir, oldest first."""
    from gptjax import checkpoint

    mngr = checkpoint.manager(workdir, read_only=True)
    try:
        return sorted(mngr.all_steps())
    finally:
        mngr.close()


def params_at(workdir: str, step: int):
    """(model_cfg, params) of checkpoint `step` of a workdir (workdirs.load gives the latest)."""
    from gptjax import checkpoint, sharding, workdirs

    config, model_cfg, _ = workdirs.load_config(workdir)
    abstract, _ = sharding.abstract_state(
        lambda: GPT(model_cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"],
        sharding.make_mesh((-1, 1, 1)), config.mesh.logical_axis_rules)
    mngr = checkpoint.manager(workdir, read_only=True)
    try:
        return model_cfg, checkpoint.restore(mngr, step, abstract)[0]
    finally:
        mngr.close()
