"""The HTML pages of `gptjax inspect`, each one self-contained: they open in a browser with no network.

attention.html holds BertViz's head view and model view. BertViz writes pages that fetch require.js, d3 and jQuery
from a CDN; here those three come from `vendor/` (copies from the npm registry, with their licences) and are
inlined, d3 and jQuery as globals that are then registered as the require.js modules BertViz asks for.
tokens.html is plain HTML and CSS: the text coloured by loss, the top predictions in a tooltip on hover.
"""

import html
import json
import os
import re

from gptjax.errors import GptjaxError

VENDOR = os.path.join(os.path.dirname(__file__), "vendor")
SCRIPTS = ("d3-5.7.0.min.js", "jquery-2.1.0.min.js", "require-2.3.6.js")
INSTALL_HINT = "attention.html needs bertviz: pip install 'gptjax[viz]' (or pass --nohtml to skip the BertViz page)"
_CDN_SCRIPT = re.compile(r'<script src="https://[^"]*require[^"]*"></script>')
_REQUIRE_CONFIG = re.compile(r"require\.config\(\{.*?\}\);", re.DOTALL)


def check_bertviz() -> None:
    """Raises a one-line GptjaxError with the install hint when the [viz] extra is missing."""
    try:
        import bertviz  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise GptjaxError(INSTALL_HINT) from None


def _inline_scripts() -> str:
    parts = []
    for name in SCRIPTS:
        with open(os.path.join(VENDOR, name), encoding="utf-8") as fh:
            parts.append(f"<script>/* {name}: see vendor/README.md */\n{fh.read()}\n</script>")
    parts.append("<script>define('d3', [], function () { return window.d3; });\n"
                 "define('jquery', [], function () { return window.jQuery; });</script>")
    return "\n".join(parts)


def _offline(view_html: str) -> str:
    """A BertViz view without its CDN loads: the require.js tag and the require.config of CDN paths go."""
    view_html = _CDN_SCRIPT.sub("", view_html)
    view_html = _REQUIRE_CONFIG.sub("", view_html)
    if "cdnjs" in view_html or 'src="http' in view_html:
        raise RuntimeError("bertviz's page still loads something over the network; update pages._offline")
    return view_html


def attention_page(probs_LxHxTxT, labels, layers, heads, title: str) -> str:
    """attention.html: BertViz's head view (one layer at a time, a layer menu) and model view (every chosen layer
    and head as thumbnails), for the given layers and heads."""
    check_bertviz()
    import torch
    from bertviz import head_view, model_view

    attn = [torch.from_numpy(probs_LxHxTxT[layer][None].astype("float32")) for layer in range(len(probs_LxHxTxT))]
    head = head_view(attn, list(labels), layer=layers[0], heads=list(heads), include_layers=list(layers),
                     html_action="return").data
    model = model_view(attn, list(labels), include_layers=list(layers), include_heads=list(heads),
                       html_action="return").data
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"{_inline_scripts()}\n</head>\n<body style=\"font-family: sans-serif\">\n"
            f"<h2>Head view</h2>\n<div id=\"head-view\" data-layers=\"{len(layers)}\" data-heads=\"{len(heads)}\">"
            f"{_offline(head)}</div>\n"
            f"<h2>Model view</h2>\n<div id=\"model-view\">{_offline(model)}</div>\n</body></html>\n")


_TOKENS_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
#text { font-family: monospace; font-size: 15px; line-height: 2.1; white-space: pre-wrap; }
.tok { position: relative; padding: 1px 0; border-radius: 2px; cursor: default; }
.tok .tip { display: none; position: absolute; left: 0; top: 1.9em; z-index: 1; background: #222; color: #eee;
            padding: 4px 8px; border-radius: 4px; white-space: pre; font-size: 12px; line-height: 1.4; }
.tok:hover .tip { display: block; }
.legend span { display: inline-block; width: 3em; text-align: center; font-size: 12px; }
"""


def _colour(bits: float, top: float) -> str:
    """White (0 bits) to red (the text's highest loss)."""
    x = 0.0 if top <= 0 else min(max(bits / top, 0.0), 1.0)
    return f"rgb(255,{int(255 - 190 * x)},{int(255 - 190 * x)})"


def tokens_page(labels, bits, top_labels, top_probs, title: str) -> str:
    """tokens.html: each token on a background coloured by its loss in bits (what the model paid to predict it from
    the tokens before); hovering shows the loss and the model's top predictions at that point."""
    top = max(bits) if len(bits) else 0.0
    spans = []
    for i, label in enumerate(labels):
        if i == 0:
            tip, colour, data = "first token: nothing to predict it from", "#e8e8e8", ""
        else:
            preds = "\n".join(f"{p:6.1%}  {json.dumps(t, ensure_ascii=False)}"
                              for t, p in zip(top_labels[i - 1], top_probs[i - 1]))
            tip = f"loss {bits[i - 1]:.2f} bits\npredicted here:\n{preds}"
            colour, data = _colour(bits[i - 1], top), f' data-bits="{bits[i - 1]:.4f}"'
        spans.append(f'<span class="tok" style="background:{colour}"{data}>{html.escape(label)}'
                     f'<span class="tip">{html.escape(tip)}</span></span>')
    legend = "".join(f'<span style="background:{_colour(top * k / 4, top)}">{top * k / 4:.1f}</span>' for k in range(5))
    mean = sum(bits) / len(bits) if len(bits) else float("nan")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>{_TOKENS_CSS}</style></head>\n<body>\n<h2>{html.escape(title)}</h2>\n"
            f"<p>{len(labels)} tokens, mean loss {mean:.3f} bits per predicted token. Hover over a token for its "
            f"loss and the model's top predictions for it.</p>\n<p class=\"legend\">loss (bits): {legend}</p>\n"
            f"<div id=\"text\">{''.join(spans)}</div>\n</body></html>\n")
