"""Generation: cached decoding against the full forward, left padding, samplers' supports and distributions,
beam search against brute force, stop strings and end tokens, seeds, prompt errors, sharded generation."""

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gptjax import beam_search, decoding, sampling, sharding
from gptjax.configs import get_config
from gptjax.model import GPT, ModelConfig
from gptjax.tokenizer import CharTokenizer

ALPHABET = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOK = CharTokenizer(ALPHABET)
# A larger init than GPT-2's spreads the random model's next-token distributions, so argmaxes are clear-cut.
CFG = ModelConfig(vocab_size=TOK.vocab_size, num_layers=2, d_model=32, num_heads=4, max_len=64, init_std=0.3)
PROMPTS = [TOK.encode("ROMEO:"), TOK.encode("O"), TOK.encode("What light through yonder")]


def init(cfg=CFG, seed=0):
    return nn.unbox(GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.fixture(scope="module")
def params():
    return init()


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens_1xT):
    return jax.nn.log_softmax(GPT(cfg).apply({"params": params}, tokens_1xT)[0])


def full_log_probs(params, ids, cfg=CFG):
    """log p(next token | prefix) at every position of one unpadded sequence, by the plain forward pass (padded on
    the right to the context length, which a causal model never sees, so that it compiles once)."""
    tokens = np.zeros((1, cfg.max_len), np.int32)
    tokens[0, : len(ids)] = ids
    return np.asarray(_forward(cfg, params, tokens))[: len(ids)]


def test_prefill_and_steps_equal_full_forward_with_left_padding(params):
    model = decoding.inference_model(CFG)
    tokens, mask = decoding.left_pad(PROMPTS)
    rest = np.asarray(jax.random.randint(jax.random.key(5), (len(PROMPTS), 6), 0, CFG.vocab_size))
    state = jax.jit(decoding.prefill, static_argnums=(0, 4))(model, params, tokens, mask, tokens.shape[1] + 6)
    step = jax.jit(decoding.step, static_argnums=0)
    for t in range(6):
        for r, prompt in enumerate(PROMPTS):
            full = full_log_probs(params, prompt + list(rest[r, :t]))[-1]
            np.testing.assert_allclose(jax.nn.log_softmax(state.logits_BxV[r]), full, atol=1e-5, rtol=0)
        state = step(model, params, state, jnp.asarray(rest[:, t]))


def test_logprobs_match_the_full_forward(params):
    out = sampling.generate(CFG, params, PROMPTS, max_new_tokens=12, temperature=1.0, seed=1, logprobs=True)
    for c, prompt in zip(out, PROMPTS):
        ids = prompt + list(c.tokens)
        lp = full_log_probs(params, ids)
        expected = lp[np.arange(len(prompt) - 1, len(ids) - 1), c.tokens]
        np.testing.assert_allclose(c.logprobs, expected, atol=1e-5)


@pytest.mark.slow  # the fast tier checks left padding in test_prefill_and_steps_equal_full_forward_with_left_padding
@pytest.mark.parametrize("options", [dict(temperature=0.0), dict(temperature=0.9, top_k=20, top_p=0.9, seed=4)])
def test_left_padded_batch_equals_each_prompt_alone(params, options):
    batch = sampling.generate(CFG, params, PROMPTS, max_new_tokens=20, logprobs=True, **options)
    for r, prompt in enumerate(PROMPTS):
        # Row r's draws depend on (seed, row, step): put the prompt alone at row r by repeating it.
        alone = sampling.generate(CFG, params, [prompt], num_samples=r + 1, max_new_tokens=20, logprobs=True,
                                  **options)[r]
        np.testing.assert_array_equal(batch[r].tokens, alone.tokens)
        np.testing.assert_allclose(batch[r].logprobs, alone.logprobs, atol=1e-5)


@pytest.mark.slow  # the fast tier checks the prefill, the steps and the log-probs against the full forward
def test_greedy_is_the_argmax_of_the_full_forward(params):
    (c,) = sampling.generate(CFG, params, [PROMPTS[0]], max_new_tokens=15, temperature=0.0)
    ids = list(PROMPTS[0])
    for _ in range(15):
        ids.append(int(full_log_probs(params, ids)[-1].argmax()))
    np.testing.assert_array_equal(c.tokens, ids[len(PROMPTS[0]):])


@pytest.mark.slow  # beam search's fast check is the brute-force one
def test_greedy_equals_beam_search_of_width_one(params):
    greedy = sampling.generate(CFG, params, PROMPTS, max_new_tokens=15, temperature=0.0, logprobs=True)
    seqs, lengths, scores, lps, _ = beam_search.search(decoding.inference_model(CFG), params, *decoding.left_pad(PROMPTS),
                                                    max_new_tokens=15, beam_size=1, alpha=0.6, eos_id=None)
    for r in range(len(PROMPTS)):
        assert int(lengths[r, 0]) == 15
        np.testing.assert_array_equal(greedy[r].tokens, np.asarray(seqs[r, 0]))
        np.testing.assert_allclose(greedy[r].logprobs, np.asarray(lps[r, 0]), atol=1e-5)
        assert float(scores[r, 0]) == pytest.approx(greedy[r].logprobs.sum() / beam_search.length_penalty(15, 0.6))


@pytest.mark.parametrize("alpha", [0.6, pytest.param(0.0, marks=pytest.mark.slow),
                                   pytest.param(2.0, marks=pytest.mark.slow)])
def test_beam_search_finds_the_best_sequence_found_by_brute_force(alpha):
    V, N, eos = 5, 4, 0
    cfg = ModelConfig(vocab_size=V, num_layers=1, d_model=16, num_heads=2, max_len=16, init_std=1.0)
    params = init(cfg, seed=3)
    prompt = [1, 2, 3]
    scored = []
    for n in range(1, N + 1):
        for body in itertools.product(range(1, V), repeat=n - 1):
            for last in range(V):
                if n < N and last != eos:
                    continue  # shorter than N only by ending
                seq = list(body) + [last]
                lp = full_log_probs(params, prompt + seq, cfg)
                total = lp[np.arange(len(prompt) - 1, len(prompt) + n - 1), seq].sum()
                scored.append((total / float(beam_search.length_penalty(n, alpha)), seq))
    scored.sort(key=lambda x: -x[0])
    assert scored[0][0] - scored[1][0] > 1e-4  # a unique best, so the comparison is meaningful
    # A width of (V - 1) ** (N - 1) keeps every unfinished sequence: beam search is then exact.
    (best,) = sampling.generate(cfg, params, [prompt], max_new_tokens=N, beam_size=(V - 1) ** (N - 1),
                                length_penalty=alpha, eos_id=eos)
    assert best.tokens.tolist() == scored[0][1]
    assert best.score == pytest.approx(scored[0][0], abs=1e-4)
    # Width 4 returns 4 sequences, best first, each scored as brute force scores it.
    found = sampling.generate(cfg, params, [prompt], max_new_tokens=N, beam_size=4, length_penalty=alpha, eos_id=eos,
                              num_samples=4)
    table = {tuple(seq): score for score, seq in scored}
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    for c in found:
        assert c.score == pytest.approx(table[tuple(c.tokens.tolist())], abs=1e-4)
        assert c.finish_reason == ("eos" if c.tokens[-1] == eos else "length")


@pytest.mark.slow
def test_beam_search_stops_early_when_no_beam_can_improve():
    # A model that likes its end token (final LayerNorm biased towards that token's embedding): the search stops
    # long before max_new_tokens and returns exactly what running to max_new_tokens returns.
    cfg = ModelConfig(vocab_size=5, num_layers=1, d_model=16, num_heads=2, max_len=64, init_std=1.0)
    params = init(cfg, seed=3)
    end = params["wte"][0]
    params["ln_f"] = {"scale": params["ln_f"]["scale"] * 0.3, "bias": end * 0.5 / jnp.dot(end, end)}
    runs = [beam_search.search(decoding.inference_model(cfg), params, *decoding.left_pad([[1, 2, 3], [4, 4]]),
                               max_new_tokens=40, beam_size=4, alpha=0.6, eos_id=0, early_stop=early)
            for early in (True, False)]
    assert int(runs[0].steps) < 25 and int(runs[1].steps) == 40
    for a, b in zip(runs[0][:4], runs[1][:4]):
        np.testing.assert_array_equal(a, b)
    assert (np.asarray(runs[0].lengths_BxW) < 15).all()


def draws(logits, n, **options):
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(sampling.sample_logits(keys, jnp.broadcast_to(jnp.asarray(logits), (n, len(logits))),
                                             **options))


LOGITS = np.log(np.array([0.3, 0.05, 0.2, 0.15, 0.02, 0.1, 0.08, 0.06, 0.03, 0.01]))


def test_top_k_never_leaves_the_k_most_likely():
    got = draws(LOGITS, 20_000, temperature=1.5, top_k=3)
    assert set(got.tolist()) == {0, 2, 3}
    probs = np.exp(LOGITS / 1.5)[[0, 2, 3]]
    observed = np.bincount(got, minlength=10)[[0, 2, 3]]
    assert stats.chisquare(observed, probs / probs.sum() * observed.sum()).pvalue > 1e-3


@pytest.mark.parametrize("top_p, nucleus", [(0.6, [0, 2, 3]), (0.45, [0, 2]), (0.01, [0]),
                                            (0.96, [0, 2, 3, 5, 6, 7, 1, 8])])
def test_top_p_keeps_the_nucleus_with_renormalised_probabilities(top_p, nucleus):
    got = draws(LOGITS, 20_000, temperature=1.0, top_p=top_p)
    assert set(got.tolist()) == set(nucleus)
    probs = np.exp(LOGITS)[nucleus]
    observed = np.bincount(got, minlength=10)[nucleus]
    if len(nucleus) > 1:
        assert stats.chisquare(observed, probs / probs.sum() * observed.sum()).pvalue > 1e-3


def test_sampling_without_truncation_matches_the_softmax():
    got = draws(LOGITS, 20_000, temperature=1.0)
    assert stats.chisquare(np.bincount(got, minlength=10), np.exp(LOGITS) * 20_000).pvalue > 1e-3
    assert (draws(LOGITS, 100, temperature=0.0) == 0).all()


@pytest.mark.slow  # the fast tier checks top-k and top-p on the sampler's draws above
def test_top_k_and_top_p_inside_generate(params):
    """Every generated token is in the top-k / nucleus of the distribution the model gave at that step."""
    out = sampling.generate(CFG, params, [PROMPTS[2]], num_samples=16, max_new_tokens=10, temperature=1.0, top_k=3,
                            top_p=0.8, seed=7)
    for c in out:
        ids = PROMPTS[2] + list(c.tokens)
        lp = full_log_probs(params, ids)
        for t, token in enumerate(c.tokens):
            p = np.exp(lp[len(PROMPTS[2]) - 1 + t])
            order = np.argsort(-p)[:3]
            keep = order[: int(np.sum(np.cumsum(p[order]) - p[order] < 0.8))]
            assert token in keep


def test_temperature_towards_zero_equals_greedy_and_seeds_reproduce(params):
    greedy = sampling.generate(CFG, params, PROMPTS, max_new_tokens=20, temperature=0.0)
    cold = sampling.generate(CFG, params, PROMPTS, max_new_tokens=20, temperature=1e-4, seed=9)
    for g, c in zip(greedy, cold):
        np.testing.assert_array_equal(g.tokens, c.tokens)
    a, b, c = (sampling.generate(CFG, params, PROMPTS, max_new_tokens=20, temperature=1.0, seed=s) for s in (1, 1, 2))
    assert all((x.tokens == y.tokens).all() for x, y in zip(a, b))
    assert any((x.tokens != z.tokens).any() for x, z in zip(a, c))


def test_stop_strings_end_each_row_at_the_right_place_and_stream(params):
    options = dict(max_new_tokens=36, temperature=1.0, seed=3, tokenizer=TOK)
    free = sampling.generate(CFG, params, PROMPTS, **options)
    stop = free[0].text[10:12]  # occurs in row 0 (perhaps earlier than 10) and maybe in other rows
    streamed = {}
    out = sampling.generate(CFG, params, PROMPTS, stop_strings=["QQQ", stop], chunk_size=4,
                            on_text=lambda r, t: streamed.__setitem__(r, streamed.get(r, "") + t), **options)
    for f, c in zip(free, out):
        cut = f.text.find(stop)
        if cut < 0:
            assert c.text == f.text and c.finish_reason == "length"
        else:
            assert c.text == f.text[:cut] and c.finish_reason == "stop"
            np.testing.assert_array_equal(c.tokens, f.tokens[: cut + len(stop)])  # one token per character
        assert streamed.get(c.prompt_index, "") == c.text
    assert out[0].finish_reason == "stop"


@pytest.mark.slow
def test_end_token_ends_a_row(params):
    options = dict(max_new_tokens=36, temperature=1.0, seed=3, logprobs=True)
    free = sampling.generate(CFG, params, PROMPTS, **options)
    eos = int(free[0].tokens[7])
    out = sampling.generate(CFG, params, PROMPTS, eos_id=eos, **options)
    for f, c in zip(free, out):
        hits = np.flatnonzero(f.tokens == eos)
        n = hits[0] + 1 if hits.size else len(f.tokens)
        np.testing.assert_array_equal(c.tokens, f.tokens[:n])
        np.testing.assert_allclose(c.logprobs, f.logprobs[:n], atol=1e-5)
        assert c.finish_reason == ("eos" if hits.size else "length")
    assert len(out[0].tokens) <= 8


def test_prompt_errors(params):
    with pytest.raises(decoding.PromptError, match="prompt: 64 tokens leaves no room for a new token in the model's "
                                                   "context of 64"):
        sampling.generate(CFG, params, [[1] * 64], max_new_tokens=4)
    with pytest.raises(decoding.PromptError, match="prompt: 60 tokens \\+ max_new_tokens=8 exceed the model's context"):
        sampling.generate(CFG, params, [[1] * 60], max_new_tokens=8, beam_size=2)  # beam search: the strict rule
    with pytest.raises(decoding.PromptError, match="prompt 1: empty"):
        sampling.generate(CFG, params, [[1], []], max_new_tokens=4)
    with pytest.raises(decoding.PromptError, match="top_p: must be in"):
        sampling.generate(CFG, params, [[1]], top_p=0.0)
    with pytest.raises(decoding.PromptError, match="num_samples: beam search returns at most"):
        sampling.generate(CFG, params, [[1]], beam_size=2, num_samples=3)


@pytest.mark.slow  # two generations with prompts that fill the context
def test_left_truncation_keeps_the_end_of_the_prompt(params):
    long = list(np.random.default_rng(0).integers(0, CFG.vocab_size, 100))
    cut = sampling.generate(CFG, params, [long], max_new_tokens=8, temperature=0.0, truncate="left")[0]
    last = sampling.generate(CFG, params, [long[-63:]], max_new_tokens=8, temperature=0.0)[0]
    np.testing.assert_array_equal(cut.tokens, last.tokens)


@pytest.mark.slow  # about 6 s: programs for a second context length; the CLI's sliding test is slow too
def test_generation_slides_past_the_context():
    """Past the context the window slides, as nanoGPT's sampler crops its input: when the (left-padded) batch fills
    the context, every row keeps its last 3/4 of the context and goes on. Each greedy token is the argmax of the plain
    forward pass over the window it was generated in, and its log-prob is that pass's."""
    cfg = dataclasses.replace(CFG, max_len=24)
    params = init(cfg)
    keep = 24 - 24 // 4
    prompts = [TOK.encode("ROMEO:"), TOK.encode("O")]
    out = sampling.generate(cfg, params, prompts, max_new_tokens=50, temperature=0.0, logprobs=True)
    assert all(len(c.tokens) == 50 and c.finish_reason == "length" for c in out)
    seqs, starts = [list(p) for p in prompts], [0, 0]
    padded = max(map(len, prompts))
    generated = 0
    for t in range(50):
        if generated == cfg.max_len - padded:  # the batch's cache is full: slide every row
            starts = [max(0, len(s) - keep) for s in seqs]
            padded, generated = max(len(s) - st for s, st in zip(seqs, starts)), 0
        for r, c in enumerate(out):
            lp = full_log_probs(params, seqs[r][starts[r]:], cfg)[-1]
            assert int(np.argmax(lp)) == c.tokens[t], (r, t)
            np.testing.assert_allclose(c.logprobs[t], lp[c.tokens[t]], atol=1e-4)
            seqs[r].append(int(c.tokens[t]))
        generated += 1
    assert starts[0] > 0 and starts[1] > 0  # it did slide
    sampled = sampling.generate(cfg, params, prompts, max_new_tokens=50, temperature=1.0, seed=4)
    again = sampling.generate(cfg, params, prompts, max_new_tokens=50, temperature=1.0, seed=4)
    assert all(len(c.tokens) == 50 for c in sampled)
    assert [c.tokens.tolist() for c in sampled] == [c.tokens.tolist() for c in again]
    assert sampled[0].tokens[:19].tolist() != sampled[0].tokens[19:38].tolist()  # windows do not replay draws


@pytest.mark.slow  # the fast sharded check is tests/test_evals_scoring.py::test_sharded_equals_one_device
@pytest.mark.parametrize("shape", [(2, 1, 4), (1, 8, 1), (4, 1, 2)])
def test_generation_on_a_sharded_model_matches_one_device(params, shape):
    cfg = dataclasses.replace(CFG, scan_layers=shape == (1, 8, 1))
    if cfg.scan_layers:
        from gptjax.convert.hf import stack_layers

        params = jax.tree.map(jnp.asarray, stack_layers(params, cfg.num_layers))
    rules = get_config().mesh.logical_axis_rules
    mesh = sharding.make_mesh(shape)
    boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    placed = jax.device_put(params, sharding.logical_shardings(boxed, mesh, rules))
    prompts = PROMPTS + [TOK.encode("JULIET: ")] * 5  # 8 rows: split over the data axes
    for options in (dict(temperature=0.0), dict(temperature=1.0, top_k=10, seed=2), dict(beam_size=2)):
        ref = sampling.generate(cfg, params, prompts, max_new_tokens=12, logprobs=True, **options)
        out = sampling.generate(cfg, placed, prompts, max_new_tokens=12, logprobs=True, mesh=mesh, rules=rules,
                                **options)
        for a, b in zip(ref, out):
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_a_padded_table_never_yields_ids_the_tokenizer_lacks():
    # GPT-1's and GPT-2's tables have more rows than their tokenizers have tokens; a barely trained model puts most of
    # its mass on the padded rows. Sampling and beam search draw only the tokenizer's ids.
    cfg = ModelConfig(vocab_size=8 * TOK.vocab_size, num_layers=1, d_model=16, num_heads=2, max_len=32, init_std=2.0)
    params = init(cfg)
    for options in (dict(temperature=1.0, seed=1), dict(beam_size=2)):
        out = sampling.generate(cfg, params, PROMPTS[:2], max_new_tokens=12, tokenizer=TOK, **options)
        assert all(int(t) < TOK.vocab_size for c in out for t in c.tokens), options
        assert all(len(c.text) == len(c.tokens) for c in out)  # every id decodes to its character
    free = sampling.generate(cfg, params, PROMPTS[:2], max_new_tokens=12, temperature=1.0, seed=1)  # no tokenizer
    assert any(int(t) >= TOK.vocab_size for c in free for t in c.tokens)  # the test can fail: the rows are drawn
