"""`gptjax inspect --workdir=DIR (--text=... | --text_file=...) --out=DIR [--layers=0,1 --heads=0,2]`.

Writes into --out: attention.png and attention.html (BertViz head and model views, no network needed),
tokens.html and tokens.png (the text coloured by loss in bits), logit_lens.png, embeddings.png and
embeddings.json, heads.png and heads.json (previous-token and induction scores). Every check of the flags and the
text happens before the parameters are loaded. --workdir, --out and --text_file may be local paths or cloud URLs
(gs://...): every file is read and written through gptjax.files.
"""

import json
import math
import os

import numpy as np
from absl import flags

from gptjax import files
from gptjax.errors import GptjaxError, PromptError

OUTPUTS = ("attention.png", "attention.html", "tokens.html", "tokens.png", "logit_lens.png", "embeddings.png",
           "embeddings.json", "heads.png", "heads.json")


def define_flags(fv, argv=None):
    flags.DEFINE_string("text", None, "Text to look at.", flag_values=fv)
    flags.DEFINE_string("text_file", None, "File whose text to look at.", flag_values=fv)
    flags.DEFINE_string("out", None, "Directory for the pictures, pages and JSON.", flag_values=fv)
    flags.DEFINE_list("layers", None, "Layers to draw in the attention views (default: all), e.g. 0,3.",
                      flag_values=fv)
    flags.DEFINE_list("heads", None, "Heads to draw in the attention views (default: all), e.g. 0,1.", flag_values=fv)
    flags.DEFINE_enum("truncate", "right", ["right", "error"],
                      "A text longer than the context: keep its first tokens (with a note), or fail.", flag_values=fv)
    flags.DEFINE_bool("html", True, "Write attention.html (needs the [viz] extra: bertviz).", flag_values=fv)
    flags.DEFINE_integer("neighbours", 5, "Nearest tokens to list for each token of the text.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the random sequences for the head scores.", flag_values=fv)


def _indices(values, size: int, flag: str) -> list[int]:
    if not values:
        return list(range(size))
    out = []
    for v in values:
        try:
            i = int(v)
        except ValueError:
            raise GptjaxError(f"--{flag}: {v!r} is not an integer") from None
        if not 0 <= i < size:
            raise GptjaxError(f"--{flag}: {i} is out of range; the model has {size} {flag} (0..{size - 1})")
        out.append(i)
    return out


def read_text(f) -> str:
    if (f.text is None) == (f.text_file is None):
        raise GptjaxError("give exactly one of --text and --text_file")
    if f.text_file is not None:
        files.check_url(f.text_file, "--text_file", workdir=False)
        if not files.path(f.text_file).is_file():
            raise GptjaxError(f"--text_file: no such file: {f.text_file}")
        text = files.read_text(f.text_file, PromptError, "UTF-8 text")  # a binary file or a picture: one line
        if not text.strip():
            raise PromptError(f"--text_file: {f.text_file} is empty; give some text to inspect")
        return text
    return f.text


def fit_tokens(ids: list[int], max_len: int, truncate: str) -> list[int]:
    """The token ids the model can take: all of them, or their first max_len with a note (or an error)."""
    if len(ids) < 2:
        raise PromptError(f"text: {len(ids)} token{'s' * (len(ids) != 1)}; inspecting needs at least 2 "
                          "(a token and one to predict)")
    if len(ids) > max_len:
        if truncate == "error":
            raise PromptError(f"text: {len(ids)} tokens is longer than the model's context of {max_len} tokens "
                              "(pass --truncate=right to keep its start)")
        print(f"gptjax: note: the text is {len(ids)} tokens; inspecting its first {max_len} (the model's context)",
              flush=True)
        ids = ids[:max_len]
    return ids


def _label(tok, i: int) -> str:
    return tok.decode([int(i)])


def run(f) -> None:
    from gptjax import workdirs
    from gptjax.analysis import pages

    if not f.out:
        raise GptjaxError("--out: required (a directory for the pictures and pages)")
    files.check_url(f.workdir)
    files.check_url(f.out, "--out", workdir=False)
    text = read_text(f)
    if not text.strip():
        raise PromptError("text: empty; give some text to inspect")
    if f.html:
        pages.check_bertviz()
    config, model_cfg, tok = workdirs.load_config(f.workdir)
    layers = _indices(f.layers, model_cfg.num_layers, "layers")
    heads = _indices(f.heads, model_cfg.num_heads, "heads")
    ids = fit_tokens(tok.encode(text), model_cfg.max_len, f.truncate)
    what = "the inspect outputs (--out)"
    out_dir = files.writable_dir(f.out, what)  # a file in the way, read-only: one line before the params load
    params = workdirs.load_params(workdirs.model_dir(f.workdir), config, model_cfg)
    with files.writing(out_dir, what):  # a disk that fills up while writing: one line naming --out
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_outputs(f, model_cfg, tok, params, ids, layers, heads, out_dir)


def _write_outputs(f, model_cfg, tok, params, ids, layers, heads, out_dir) -> None:
    """Every output of `gptjax inspect` into `out_dir`: one recording pass, then each picture, page and file."""
    from gptjax import analysis
    from gptjax.analysis import pages, plots

    out = lambda name: out_dir / name  # noqa: E731
    labels = [_label(tok, i) for i in ids]
    title = f"{os.path.basename(os.path.normpath(f.workdir))}: {len(ids)} tokens"

    # One recording pass gives the attention, the logits and the residual stream.
    rec = analysis.forward(model_cfg, params, np.asarray(ids), attention=True, residuals=True)
    probs_LxHxTxT = np.asarray(rec["attention"])[:, 0]
    plots.attention_grid(probs_LxHxTxT, labels, layers, heads, out("attention.png"))
    if f.html:
        files.write_text(out("attention.html"), pages.attention_page(probs_LxHxTxT, labels, layers, heads, title))

    nats = analysis.token_losses(model_cfg, params, np.asarray(ids))
    bits = (nats / math.log(2)).tolist()
    top_ids, top_p = analysis.top_predictions(model_cfg, params, np.asarray(ids), k=5)
    top_labels = [[_label(tok, i) for i in row] for row in top_ids]
    files.write_text(out("tokens.html"), pages.tokens_page(labels, bits, top_labels, top_p.tolist(), title))
    plots.tokens_text(labels, bits, out("tokens.png"))

    # Logit lens: each layer's guess and what it gives the real next token (the last position has none: NaN).
    import jax

    lens_LxTxV = np.asarray(analysis.unembed(model_cfg, params, rec["residuals"][:, 0]))
    logp_LxTxV = np.asarray(jax.nn.log_softmax(lens_LxTxV, axis=-1)) / math.log(2)
    target = np.full((logp_LxTxV.shape[0], len(ids)), np.nan, np.float32)
    target[:, :-1] = np.take_along_axis(logp_LxTxV[:, :-1], np.asarray(ids[1:])[None, :, None], axis=-1)[..., 0]
    guesses = [[_label(tok, i) for i in row] for row in logp_LxTxV.argmax(-1)]
    plots.logit_lens(target, guesses, labels, out("logit_lens.png"))

    # Embedding geometry.
    uniq = list(dict.fromkeys(ids))[:40]
    near_ids, near_sim = analysis.embedding_neighbours(model_cfg, params, uniq, k=f.neighbours)
    neighbours = [(_label(tok, t), [(_label(tok, n), float(s)) for n, s in zip(row, sims)])
                  for t, row, sims in zip(uniq, near_ids, near_sim)]
    pca, explained = analysis.embedding_pca(model_cfg, params)
    pos_sim = analysis.position_similarity(model_cfg, params)
    plots.embeddings(pca, explained, [_label(tok, t) for t in uniq], uniq, pos_sim, model_cfg.pos_embedding,
                     neighbours, out("embeddings.png"))
    offsets = [1, 2, 4, 8, 16, 32, 64]
    files.write_text(out("embeddings.json"), json.dumps({
        "neighbours": [{"token": t, "id": int(i), "nearest": [{"token": n, "cosine": s} for n, s in near]}
                       for i, (t, near) in zip(uniq, neighbours)],
        "pca": {"explained_variance_ratio": explained.tolist(),
                "tokens": [{"token": _label(tok, i), "id": int(i), "xy": pca[i].tolist()} for i in uniq]},
        "positions": {"kind": model_cfg.pos_embedding, "max_len": model_cfg.max_len,
                      "mean_cosine_at_distance": {str(d): float(np.mean(np.diagonal(pos_sim, d)))
                                                  for d in offsets if d < model_cfg.max_len}},
    }, indent=1, ensure_ascii=False))

    # Previous-token and induction heads.
    scores = analysis.head_scores(model_cfg, params, seed=f.seed)
    plots.head_scores(scores, out("heads.png"))
    files.write_text(out("heads.json"), json.dumps({
        "seq_len": scores["seq_len"], "batch": scores["batch"], "seed": f.seed,
        "previous_token": [[round(float(x), 4) for x in row] for row in scores["previous_token"]],
        "induction": [[round(float(x), 4) for x in row] for row in scores["induction"]],
        "top_induction_head": [int(x) for x in np.unravel_index(np.argmax(scores["induction"]),
                                                                scores["induction"].shape)]}, indent=1))
    written = [name for name in OUTPUTS if f.html or name != "attention.html"]
    print(f"wrote {', '.join(written)} to {f.out} (mean loss {np.mean(bits):.3f} bits/token over {len(ids)} tokens)")
