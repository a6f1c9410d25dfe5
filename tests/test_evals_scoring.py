"""Scoring primitives: log-likelihoods equal a direct forward pass; bucketing, row sharing and batch size change no
score; rolling windows follow lm-eval's rule; 8 sharded devices give the scores of one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import sharding
from gptjax.evals import scoring
from gptjax.model import GPT, ModelConfig
from gptjax.tokenizer import CharTokenizer

CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(vocab_size=len(CHARS), num_layers=2, d_model=32, num_heads=4, max_len=48)
    params = jax.jit(lambda k: GPT(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"])(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    return cfg, params, CharTokenizer(CHARS)


@functools.cache
def _forward(cfg):
    return jax.jit(lambda params, x: jax.nn.log_softmax(GPT(cfg).apply({"params": params}, x)[0]))


def direct(cfg, params, ctx, cont):
    """Sum log p(cont | ctx) from one unpadded forward pass of the left-truncated input."""
    full = (list(ctx) + list(cont))[-(cfg.max_len + 1):]
    inp = np.asarray(full[:-1], np.int32)[None]
    logp = np.asarray(_forward(cfg)(params, inp))
    pos = np.arange(len(full) - 1 - len(cont), len(full) - 1)
    targets = np.asarray(full[1:])[pos]
    return logp[pos, targets].sum(), bool((logp[pos].argmax(-1) == targets).all())


def requests(n=12, seed=0, vocab=len(CHARS)):
    """Few distinct total lengths (the direct forward compiles once per length); some longer than the context."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        total = (6, 21, 60)[i % 3]  # 60 > max_len + 1: left-truncated
        m = int(rng.integers(1, 5))
        out.append((rng.integers(vocab, size=total - m).tolist(), rng.integers(vocab, size=m).tolist()))
    out.append((out[0][0], [3]))  # single-token continuations of one context share a row
    out.append((out[0][0], [7]))
    return out


def test_loglikelihood_equals_direct_forward(tiny):
    cfg, params, tok = tiny
    reqs = requests()
    got = scoring.Scorer(cfg, params, tok).loglikelihood_tokens(reqs)
    for (ctx, cont), (lp, greedy) in zip(reqs, got):
        want_lp, want_greedy = direct(cfg, params, ctx, cont)
        np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-4)
        assert greedy == want_greedy


def test_greedy_flag_true_for_argmax_continuation(tiny):
    cfg, params, tok = tiny
    ctx = tok.encode("hello there")
    cont = []
    for _ in range(3):  # build the greedy continuation token by token from the direct forward
        padded = np.asarray([ctx + cont + [0] * (16 - len(ctx) - len(cont))], np.int32)  # one shape; causal
        cont.append(int(np.argmax(_forward(cfg)(params, padded)[len(ctx) + len(cont) - 1])))
    s = scoring.Scorer(cfg, params, tok)
    (_, greedy), (_, not_greedy) = s.loglikelihood_tokens([(ctx, cont), (ctx, cont[:2] + [(cont[2] + 1) % 30])])
    assert greedy and not not_greedy


def test_bucketing_sharing_and_batch_size_change_no_score(tiny):
    cfg, params, tok = tiny
    reqs = requests(seed=1)
    a = scoring.Scorer(cfg, params, tok, tokens_per_batch=4096)
    b = scoring.Scorer(cfg, params, tok, tokens_per_batch=48, buckets=(48,))  # one row per batch, one shape
    got_a, got_b = a.loglikelihood_tokens(reqs), b.loglikelihood_tokens(reqs)
    np.testing.assert_allclose([x for x, _ in got_a], [x for x, _ in got_b], rtol=1e-5, atol=1e-5)
    assert [g for _, g in got_a] == [g for _, g in got_b]
    assert a.forward_rows == len(reqs) - 1  # the two requests that share their input ran as one row


def test_rolling_windows_follow_lm_eval():
    lm_utils = pytest.importorskip("lm_eval.utils")
    for n, L in ((1, 8), (8, 8), (9, 8), (30, 8), (17, 5)):
        tokens = list(range(100, 100 + n))
        want = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(tokens, 0, L, 1)]
        assert scoring.rolling_windows(tokens, 0, L) == [(list(a), list(b)) for a, b in want]


def test_rolling_windows_score_every_token_once():
    tokens = list(range(50))
    windows = scoring.rolling_windows(tokens, -1, 16)
    assert [t for _, cont in windows for t in cont] == tokens
    assert all(len(ctx) + len(cont) - 1 <= 16 for ctx, cont in windows)


def test_loglikelihood_rolling_equals_one_forward_when_it_fits(tiny):
    cfg, params, tok = tiny
    text = "to be or not to be, that is the q"  # 33 characters: the 32-token window of the direct forward
    ids = tok.encode(text)
    (got,) = scoring.Scorer(cfg, params, tok).loglikelihood_rolling([text])
    want, _ = direct(cfg, params, ids[:1], ids[1:])  # no end-of-text token: the first token is the context
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_encode_pair_moves_trailing_space(tiny):
    cfg, params, tok = tiny
    s = scoring.Scorer(cfg, params, tok)
    assert s.encode_pair("a b ", "c") == (tok.encode("a b"), tok.encode(" c"))


def test_sharded_equals_one_device(tiny):
    cfg, params, tok = tiny
    assert jax.device_count() == 8
    reqs = requests(seed=2)
    one = scoring.Scorer(cfg, params, tok, buckets=(48,)).loglikelihood_tokens(reqs)  # one shape: one compile
    mesh = sharding.make_mesh((4, 2, 1))
    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", None), ("mlp", None), ("heads", None))
    sharded = scoring.Scorer(cfg, params, tok, mesh=mesh, rules=rules, tokens_per_batch=256, buckets=(48,))
    got = sharded.loglikelihood_tokens(reqs)
    assert sharded.rows_for(48) % 8 == 0 and sharded.forward_rows == len(reqs) - 1
    np.testing.assert_allclose([x for x, _ in got], [x for x, _ in one], rtol=1e-5, atol=1e-5)
    assert [g for _, g in got] == [g for _, g in one]


def test_text_the_tokenizer_cannot_encode_is_a_data_error(tiny):
    from gptjax.errors import DataError

    cfg, params, tok = tiny
    with pytest.raises(DataError, match="cannot encode the evaluation text: character 'W'"):
        scoring.Scorer(cfg, params, tok).loglikelihood([("hello", " WORLD")])


def test_pack_rows_fills_rows_without_overflow():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 65, 300)]
    rows = scoring.pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= 1.15 * sum(lengths) / 64 + 1  # best fit decreasing wastes little


def test_packed_rows_score_as_each_input_alone(tiny):
    """Many short requests share packed rows (segments); each score equals its own unpacked forward pass."""
    cfg, params, tok = tiny
    reqs = [(tok.encode(c), tok.encode(x)) for c, x in [("to be", " or"), ("a", " b c"), ("the q", "ueen"),
                                                         ("hi", " there"), ("x y", " z")]]
    s = scoring.Scorer(cfg, params, tok)
    got = s.loglikelihood_tokens(reqs)
    assert s.forward_rows == len(reqs)
    for (ctx, cont), (lp, greedy) in zip(reqs, got):
        want_lp, want_greedy = direct(cfg, params, ctx, cont)
        np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-4)
        assert greedy == want_greedy
