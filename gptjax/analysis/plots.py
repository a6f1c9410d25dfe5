"""The PNGs of `gptjax inspect`, drawn with matplotlib from the arrays of `gptjax.analysis`. Each `path` may be local
or a cloud URL (gs://...): the PNG is written through gptjax.files.

Tokens are drawn through `visible`: no font has a glyph for a control character (matplotlib warns "Glyph 9 missing
from font(s)" and draws a box), and a newline would break a tick label over two lines. A newline is drawn as ⏎, a
tab as ⇥, any other control or format character as its Python escape (\\r, \\x1b, \\u200b)."""

import unicodedata

import numpy as np

from gptjax import files

_LABELLED = 48  # label the axes with tokens up to this many positions; longer texts get position numbers
_SYMBOLS = {"\n": "⏎", "\t": "⇥"}  # both in DejaVu Sans and DejaVu Sans Mono, matplotlib's own fonts


def visible(label: str) -> str:
    """`label` with each control, format, line or paragraph separator character (Unicode categories C*, Zl, Zp)
    replaced by a symbol or its escape, so that it draws without a missing glyph."""
    out = []
    for ch in label:
        if ch in _SYMBOLS:
            out.append(_SYMBOLS[ch])
        elif unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path, dpi: int) -> None:
    """The figure as a PNG at `path`, never seen half-written; then closed."""
    files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)


def _label_axes(ax, labels, x=True, y=True, fontsize=6):
    labels = [visible(t) for t in labels]
    T = len(labels)
    if T <= _LABELLED:
        if x:
            ax.set_xticks(range(T), labels, rotation=90, fontsize=fontsize)
        if y:
            ax.set_yticks(range(T), labels, fontsize=fontsize)
    else:
        ax.tick_params(labelsize=fontsize)


def attention_grid(probs_LxHxTxT, labels, layers, heads, path):
    """A layers x heads grid of attention heatmaps: query positions down, key positions across."""
    plt = _plt()
    L, H = len(layers), len(heads)
    size = 2.2 if len(labels) <= 16 else 3.2
    fig, axes = plt.subplots(L, H, figsize=(size * H + 0.6, size * L + 0.4), squeeze=False)
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = axes[i, j]
            ax.imshow(probs_LxHxTxT[layer, head], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            _label_axes(ax, labels, x=i == L - 1, y=j == 0)
            if i != L - 1:
                ax.set_xticks([])
            if j != 0:
                ax.set_yticks([])
    fig.supxlabel("key (attended to)", fontsize=8)
    fig.supylabel("query", fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path, dpi=110)


def tokens_text(labels, bits, path, width=10.0):
    """The text with each token on a background coloured by its loss in bits (the first token has none: grey)."""
    plt = _plt()
    from matplotlib import cm, colors

    norm = colors.Normalize(vmin=0, vmax=max(float(np.max(bits)) if len(bits) else 1.0, 1e-6))
    cmap = cm.get_cmap("Reds") if hasattr(cm, "get_cmap") else plt.colormaps["Reds"]
    fig = plt.figure(figsize=(width, 1.0))
    renderer = fig.canvas.get_renderer()
    x, y, line_h, pad = 0.01, 0.0, 0.0, 0.004
    placed = []
    for i, label in enumerate(labels):
        face = "#dddddd" if i == 0 else cmap(0.85 * norm(bits[i - 1]))
        t = fig.text(x, 0, visible(label), fontsize=9, family="monospace",
                     bbox=dict(boxstyle="square,pad=0.15", facecolor=face, edgecolor="none"))
        w = t.get_window_extent(renderer).width / fig.bbox.width
        if x + w > 0.99 and x > 0.011:
            x, y = 0.01, y + 1
        t.set_x(x)
        placed.append((t, y))
        x += w + pad
        line_h = max(line_h, t.get_window_extent(renderer).height)
        if "\n" in label and i + 1 < len(labels):  # drawn as ⏎, with its loss; the text goes on below
            x, y = 0.01, y + 1
    lines = int(y) + 1
    height_in = max(1.0, lines * (line_h * 1.6) / fig.dpi + 0.9)
    fig.set_size_inches(width, height_in)
    step = (line_h * 1.6) / (height_in * fig.dpi)
    for t, row in placed:
        t.set_y(1 - 0.15 / height_in - step * (row + 1))
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    cax = fig.add_axes([0.3, 0.25 / height_in, 0.4, 0.12 / height_in])
    fig.colorbar(sm, cax=cax, orientation="horizontal").set_label("loss (bits)", fontsize=8)
    _save(plt, fig, path, dpi=110)


def logit_lens(logprob_target_LxT, top_labels_LxT, labels, path):
    """Rows: the residual stream after the embeddings and after each block; columns: positions. Colour: the
    log-probability (bits) the lens gives the token that actually comes next; text: the lens's top guess."""
    plt = _plt()
    L1, T = logprob_target_LxT.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.55 * T, 40), 1.2 + 0.45 * L1))
    im = ax.imshow(logprob_target_LxT, cmap="magma", aspect="auto", interpolation="nearest")
    if T <= _LABELLED:
        for i in range(L1):
            for j in range(T):
                ax.text(j, i, visible(top_labels_LxT[i][j][:8]), ha="center", va="center", fontsize=6,
                        color="#40a0ff")
        ax.set_xticks(range(T), [visible(t) for t in labels], rotation=90, fontsize=7)
    ax.set_yticks(range(L1), ["embed"] + [f"block {i}" for i in range(L1 - 1)], fontsize=7)
    ax.set_xlabel("input token (the lens predicts the next one)", fontsize=8)
    ax.set_title("logit lens: log2 p(actual next token); text: the lens's top guess", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03).set_label("bits", fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path, dpi=110)


def embeddings(pca_Vx2, explained, pca_labels, pca_ids, position_sim, pos_kind, neighbours, path):
    """Three panels: the token-embedding PCA (the text's tokens labelled), the position-embedding cosine
    similarity, and the nearest neighbours of the text's tokens."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.8), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    ax = axes[0]
    ax.scatter(pca_Vx2[:, 0], pca_Vx2[:, 1], s=3, c="#999999", alpha=0.5, linewidths=0)
    for i, label in zip(pca_ids, pca_labels):
        ax.scatter(pca_Vx2[i, 0], pca_Vx2[i, 1], s=12, c="#d62728")
        ax.annotate(visible(label), (pca_Vx2[i, 0], pca_Vx2[i, 1]), fontsize=7)
    ax.set_title(f"token embeddings, PCA (explained variance {explained[0]:.1%}, {explained[1]:.1%})", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax = axes[1]
    im = ax.imshow(position_sim, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(f"{pos_kind} position embeddings: cosine similarity", fontsize=9)
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    ax.axis("off")
    lines = [f"{tok!r:>12} -> " + ", ".join(f"{n!r} {s:.2f}" for n, s in near[:4]) for tok, near in neighbours]
    ax.text(0, 1, "nearest tokens by cosine similarity\n\n" + "\n".join(lines[:30]), va="top", family="monospace",
            fontsize=7)
    fig.tight_layout()
    _save(plt, fig, path, dpi=100)


def head_scores(scores: dict, path):
    """Two layers x heads heatmaps: previous-token and induction scores."""
    plt = _plt()
    L, H = scores["induction"].shape
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.2 * H, 1.6 + 0.5 * L), squeeze=False)
    for ax, key in zip(axes[0], ("previous_token", "induction")):
        im = ax.imshow(scores[key], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        for i in range(L):
            for j in range(H):
                ax.text(j, i, f"{scores[key][i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if scores[key][i, j] > 0.6 else "black")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{key.replace('_', '-')} score", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"attention on {scores['batch']} random sequences of {scores['seq_len']} tokens, repeated",
                 fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path, dpi=110)
