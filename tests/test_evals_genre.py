"""shakespeare_genre: real examples from the embedded plays, gold answers that are the passages' genres,
demonstrations only from training plays, 5-shot prompts within the default model's 256-token context (with the
default run's own BPE-2048, retrained here in seconds), and scoring through the evaluator on a tiny random model."""

import collections

import numpy as np
import pytest

from gptjax.evals import evaluator, tasks
from gptjax.evals.tasks import shakespeare
from gptjax.finetune import data


@pytest.fixture(scope="module")
def task():
    return tasks.get("shakespeare_genre")


@pytest.fixture(scope="module")
def validation():
    return [r for _, r in data.genre_records("validation")]


def test_examples_are_the_classifiers_validation_passages_with_their_genre(task, validation):
    exs, plays = shakespeare.genre_examples()
    assert [e.query for e in exs] == [e.query for e in task.examples] and len(exs) == len(validation)
    words = ("comedy", "history", "problem play", "Roman play", "romance", "tragedy")
    by_text = {shakespeare.cut_passage(r["text"]): r for r in validation}
    for ex, play in zip(exs, plays):
        assert ex.choices == words and ex.query.endswith("\nGenre:")
        passage = ex.query[:-len("\nGenre:")]
        rec = by_text[passage]  # a real passage, cut at a line boundary
        assert rec["text"].startswith(passage + "\n") and len(passage) <= shakespeare.GENRE_CHARS
        assert rec["play"] == play and data.GENRES[ex.target] == rec["label"]  # gold = the passage's genre
    assert set(plays) == set(data.GENRE_VALIDATION_PLAYS)
    assert set(plays[:300]) == set(data.GENRE_VALIDATION_PLAYS)  # `limit` takes every held-out play
    assert task.render(exs[0]) == exs[0].query + " " + words[exs[0].target]
    assert task.chance == pytest.approx(1 / 6)


def test_majority_class_baseline(task, validation):
    """The baseline to beat: always answering the most frequent genre of the validation passages."""
    counts = collections.Counter(data.GENRES[e.target] for e in task.examples)
    assert counts == collections.Counter(r["label"] for r in validation)
    genre, n = counts.most_common(1)[0]
    majority = n / len(task.examples)
    print(f"majority class: {genre}, {n}/{len(task.examples)} = {majority:.4f}; chance {1 / 6:.4f}")
    assert genre == "histories" and 1 / 6 < majority < 0.25


def test_demonstrations_never_come_from_held_out_plays(task):
    demos, plays = shakespeare.genre_demos()
    assert demos == list(task.demos)
    assert not set(plays) & set(data.GENRE_VALIDATION_PLAYS)
    train_text = "\n".join(r["text"] for _, r in data.genre_records("train"))
    assert all(d.query[:-len("\nGenre:")] in train_text for d in demos)
    per_genre = collections.Counter(data.GENRES[d.target] for d in demos)
    assert per_genre == {g: shakespeare.DEMOS_PER_GENRE for g in data.GENRES}  # balanced pool
    assert not {d.query for d in demos} & {e.query for e in task.examples}
    rendered = {task.render(d) for d in demos}
    for i in range(50):  # the prompts' demonstrations are the pool's
        blocks = task.prefix(i, 5, seed=0).split(task.separator)[:-1]
        assert len(blocks) == 5 and set(blocks) <= rendered
    assert task.prefix(3, 5, seed=0) == task.prefix(3, 5, seed=0) != task.prefix(3, 5, seed=1)


def test_cut_passage_keeps_whole_lines():
    assert shakespeare.cut_passage("ab\ncd\nef", 5) == "ab\ncd"
    assert shakespeare.cut_passage("ab\ncd\nef", 4) == "ab"
    assert shakespeare.cut_passage("one two three\nx", 9) == "one two"  # a long first line is cut at a space
    assert shakespeare.cut_passage("abcdefghij", 4) == "abcd"


def test_five_shot_prompts_fit_the_default_context(task, tmp_path):
    """Every 5-shot prompt (seeds 0-2) plus its longest answer is within 256 tokens of the default run's tokenizer:
    BPE-2048 learned on the pretraining plays (the same bytes as runs/shakespeare/tokenizer/spm.model)."""
    from gptjax import data as text_data
    from gptjax import tokenizer
    from gptjax.configs import default
    from gptjax.datasets.shakespeare import plays

    cfg = default.get_config()
    assert (cfg.model.max_len, cfg.data.vocab_size, cfg.data.spm_model_type) == (256, 2048, "bpe")
    texts = [s for i, s in enumerate(text_data.shakespeare_plays().values()) if not plays.is_validation(i)]
    tok = tokenizer.build_tokenizer(cfg.data, str(tmp_path), lambda: texts)
    longest = max(task.examples[0].choices, key=lambda c: len(tok.encode(" " + c)))
    prompts = [task.prompt(i, 5, s) + " " + longest for s in range(3) for i in range(len(task.examples))]
    # the character bound: six passages, their "\nGenre: answer" and the separators
    assert max(map(len, prompts)) <= 6 * (shakespeare.GENRE_CHARS + len("\nGenre: problem play")) + 5 * 2
    lengths = np.array([len(ids) for ids in tok.encode_batch(prompts)])
    assert lengths.max() <= cfg.model.max_len, np.sort(lengths)[-5:]


@pytest.mark.slow
def test_scoring_on_a_tiny_random_model(task):
    import jax
    import jax.numpy as jnp

    from gptjax.evals import scoring
    from gptjax.model import GPT, ModelConfig
    from gptjax.tokenizer import CharTokenizer

    chars = "".join(sorted({c for e in (*task.examples, *task.demos) for c in task.render(e) + task.separator}))
    tok = CharTokenizer(chars)
    cfg = ModelConfig(vocab_size=tok.vocab_size, num_layers=1, d_model=32, num_heads=2, max_len=256)
    params = jax.jit(lambda k: GPT(cfg).init(k, jnp.zeros((1, 4), jnp.int32))["params"])(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    scorer = scoring.Scorer(cfg, params, tok)
    n = 6
    for k in (0, 1):
        m = evaluator.evaluate(scorer, task, k, seed=0, limit=n)
        assert m["n"] == n and set(m) == {"acc", "acc_norm", "n"}
        reqs = [(task.prompt(i, k, 0), " " + c) for i in range(n) for c in task.examples[i].choices]
        lls = np.array([r[0] for r in scorer.loglikelihood(reqs)]).reshape(n, 6)
        assert np.isfinite(lls).all()
        gold = np.array([task.examples[i].target for i in range(n)])
        assert m["acc"] == pytest.approx(np.mean(lls.argmax(1) == gold))
        lens = np.array([len(c) for c in task.examples[0].choices])
        assert m["acc_norm"] == pytest.approx(np.mean((lls / lens).argmax(1) == gold))
