"""GPT-1 (Radford et al. 2018, section 4.1): 12 post-LN layers, 768 wide, 12 heads, 512 context, dropout 0.1, no
final LayerNorm and every weight initialised at std 0.02 (GPT-2 added both), Adam lr 2.5e-4 with 2000 warmup steps
and cosine annealing to 0, batch 64, L2 weight decay 0.01 on non-bias weights: 116.5M parameters with GPT-1's
40,478-token vocabulary. Here on the local `text` source with a BPE of that size trained on it (it needs a corpus
large enough for 40,478 pieces); point data.path at BooksCorpus-like text.

gptjax train --config=experiments/pretrain/gpt1.py --config.data.path=books.txt --workdir=runs/gpt1
"""

from gptjax.configs import default


def get_config():
    c = default.get_config()
    c.model.preset = "gpt1"
    c.model.dropout = 0.1
    c.data.source = "text"
    c.data.tokenizer = "sentencepiece"
    c.data.vocab_size = 40478  # GPT-1's BPE: 40,000 merges over 478 base symbols
    c.data.seq_len = 512
    c.train.update(steps=100 * 2000, batch_size=64)
    c.optim.update(lr=2.5e-4, min_lr=0.0, warmup_steps=2000, b1=0.9, b2=0.999, weight_decay=0.01, clip_norm=1.0)
    return c
