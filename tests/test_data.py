"""Tokenizers and the data pipeline: lossless round trips, reuse from the workdir, the embedded plays, nanoGPT's
character split, batches that depend only on (seed, step), per-process slices and one-line errors."""

import json
import pathlib

import numpy as np
import pytest

from gptjax import data, tokenizer
from gptjax.configs import get_config

TRICKY = "ROMEO:\nBut, soft!  what light\n\n   through yonder window breaks?\n\tcafé ☃ — 日本\n\n\n"


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One data_dir for the whole session, so the Shakespeare TFDS dataset is built once."""
    return str(tmp_path_factory.mktemp("tfds"))


def make_config(**data_fields):
    cfg = get_config()
    cfg.data.seq_len = 64
    cfg.train.batch_size = 8
    for key, value in data_fields.items():
        cfg.data[key] = value
    return cfg


def text_config(path, **data_fields):
    return make_config(source="text", path=path, tokenizer="char", **data_fields)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- tokenizers -----------------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_vocab(tmp_path, corpus_file):
    text = read(corpus_file)
    tok = tokenizer.build_tokenizer(text_config(corpus_file).data, str(tmp_path), lambda: [text])
    assert tok.vocab_size == len(set(text)) and tok.eos_id is None
    ids = tok.encode(text[:5000])
    assert ids[:3] == [sorted(set(text)).index(c) for c in text[:3]]
    assert tok.decode(ids) == text[:5000] and tok.decode(np.array(ids)) == text[:5000]
    with pytest.raises(ValueError, match="☃"):
        tok.encode("snow ☃")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_trained_round_trip(tmp_path, corpus_file, model_type):
    text = read(corpus_file)
    cfg = make_config(tokenizer="sentencepiece", spm_model_type=model_type, vocab_size=512)
    tok = tokenizer.build_tokenizer(cfg.data, str(tmp_path), lambda: [text])
    assert tok.vocab_size == 512 and tok.eos_id is not None
    for sample in (TRICKY, text[:20_000], " leading space", "trailing  \n"):
        assert tok.decode(tok.encode(sample)) == sample
    assert len(tok.encode(text[:20_000])) < 20_000 / 1.5  # it learned pieces, not characters
    assert "\n" in [tok.sp.id_to_piece(i) for i in tok.encode("A\nB")]  # newline is a piece of its own


@pytest.mark.parametrize("layout", ["vocab_merges", "tokenizer_json"])
def test_hf_byte_level_bpe_round_trip(tmp_path, corpus_file, layout):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([read(corpus_file)], vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    if layout == "vocab_merges":  # GPT-2's files
        bpe.save_model(str(hf_dir))
    else:
        bpe.save(str(hf_dir / "tokenizer.json"))
    cfg = make_config(tokenizer="hf", tokenizer_path=str(hf_dir))
    tok = tokenizer.build_tokenizer(cfg.data, str(tmp_path / "work"), lambda: pytest.fail("hf needs no training"))
    assert tok.vocab_size == 400 and tok.eos_id == bpe.token_to_id("<|endoftext|>")
    assert tok.encode("ROMEO: hello") == bpe.encode("ROMEO: hello").ids
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
    assert tokenizer.load_tokenizer(str(tmp_path / "work")).encode(TRICKY) == tok.encode(TRICKY)


def test_tokenizer_saved_and_reused(tmp_path, corpus_file):
    text, workdir = read(corpus_file), str(tmp_path / "work")
    cfg = make_config(tokenizer="sentencepiece", vocab_size=400)
    first = tokenizer.build_tokenizer(cfg.data, workdir, lambda: [text])
    manifest = json.loads((tmp_path / "work" / "tokenizer" / "tokenizer.json").read_text())
    assert manifest["kind"] == "sentencepiece" and (tmp_path / "work" / "tokenizer" / manifest["file"]).is_file()
    cfg.data.vocab_size = 999  # a resumed run reuses the saved model, whatever the config now says
    again = tokenizer.build_tokenizer(cfg.data, workdir, lambda: pytest.fail("must not retrain"))
    loaded = tokenizer.load_tokenizer(workdir)
    assert again.fingerprint == loaded.fingerprint == first.fingerprint and loaded.vocab_size == 400
    assert loaded.encode(text[:3000]) == first.encode(text[:3000])

    # An existing .model through data.tokenizer_path: copied into the new workdir.
    cfg2 = make_config(tokenizer="sentencepiece", tokenizer_path=str(tmp_path / "work" / "tokenizer" / "spm.model"))
    other = tokenizer.build_tokenizer(cfg2.data, str(tmp_path / "other"), lambda: pytest.fail("must not train"))
    assert other.fingerprint == first.fingerprint

    with pytest.raises(data.DataError, match="data.tokenizer: 'char'.*'sentencepiece'"):
        tokenizer.build_tokenizer(make_config(tokenizer="char").data, workdir, lambda: [text])
    with pytest.raises(data.DataError, match="no tokenizer saved"):
        tokenizer.load_tokenizer(str(tmp_path / "empty"))


# --- sources ----------------------------------------------------------------------------------------------------


def test_shakespeare_plays_are_clean_scripts():
    plays = data.shakespeare_plays()
    assert len(plays) == 38 and sum(map(len, plays.values())) > 4_500_000
    romeo = plays["Romeo and Juliet"]
    assert romeo.startswith("Romeo and Juliet\n\nACT I\n")
    assert "ROMEO:\nHe jests at scars that never felt a wound.\n" in romeo
    assert "[JULIET appears above at a window]\n\nBut, soft! what light through yonder window breaks?\n" in romeo
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in plays["Hamlet"]
    assert "Measure for Measure" in plays  # the one play without a title heading
    for text in plays.values():
        assert not any(mark in text for mark in ("**", "_", "\\", "#", "  \n"))


def test_shakespeare_source_holds_out_whole_plays(tmp_path, tfds_dir, monkeypatch):
    from gptjax.datasets.shakespeare import shakespeare_dataset_builder

    builder = shakespeare_dataset_builder.Builder(data_dir=tfds_dir, file_format="array_record")
    builder.download_and_prepare()
    titles = {s: [r["title"].decode() for r in builder.as_data_source(s)] for s in ("train", "validation")}
    plays = data.shakespeare_plays()
    assert len(titles["validation"]) == 4 and not set(titles["train"]) & set(titles["validation"])
    assert sorted(titles["train"] + titles["validation"]) == sorted(plays)

    cfg = make_config(tokenizer="char", data_dir=tfds_dir)
    pipe = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    assert pipe.tokenizer.decode(pipe.val_tokens) == "".join(plays[t] for t in titles["validation"])
    assert pipe.tokenizer.decode(pipe.train_tokens).startswith(plays[titles["train"][0]])

    # Restart: tokenizer and token arrays come from the workdir, the source is not read again.
    monkeypatch.setattr(data, "_read_shakespeare", lambda _: pytest.fail("source read again"))
    again = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    np.testing.assert_array_equal(again.train_batch(5), pipe.train_batch(5))


def test_shakespeare_sentencepiece_pipeline(tmp_path, tfds_dir):
    pipe = data.make_pipeline(make_config(data_dir=tfds_dir), str(tmp_path), 0, 1)  # default: BPE, 2048 pieces
    tok = pipe.tokenizer
    assert tok.vocab_size == 2048
    assert np.count_nonzero(np.asarray(pipe.train_tokens) == tok.eos_id) == 34  # one eos after each play
    assert np.count_nonzero(np.asarray(pipe.val_tokens) == tok.eos_id) == 4
    val_text = tok.decode(pipe.val_tokens)  # lossless: eos decodes to nothing
    assert len(val_text.encode()) / len(pipe.val_tokens) == pytest.approx(pipe.val_bytes_per_token)
    assert 2.0 < pipe.val_bytes_per_token < 4.0
    batch = pipe.train_batch(0)
    assert batch.shape == (8, 65) and batch.dtype == np.int32 and batch.max() < 2048


def test_text_source_matches_nanogpt_char_split(tmp_path, corpus_file):
    text = read(corpus_file)
    n = len(text)
    pipe = data.make_pipeline(text_config(corpus_file), str(tmp_path), 0, 1)
    assert pipe.tokenizer.vocab_size == len(sorted(set(text)))  # nanoGPT: chars = sorted(list(set(data)))
    assert pipe.tokenizer.decode(pipe.train_tokens) == text[:int(n * 0.9)]
    assert pipe.tokenizer.decode(pipe.val_tokens) == text[int(n * 0.9):]
    assert pipe.val_bytes_per_token == pytest.approx(len(text[int(n * 0.9):].encode()) / (n - int(n * 0.9)))


def test_text_source_several_files(tmp_path, corpus_file):
    text = read(corpus_file)[:30_000]
    for i, part in enumerate((text[:10_000], text[10_000:])):
        (tmp_path / f"part{i}.txt").write_text(part, encoding="utf-8")
    glob_pipe = data.make_pipeline(text_config(str(tmp_path / "part*.txt")), str(tmp_path / "w1"), 0, 1)
    files = f"{tmp_path / 'part0.txt'}, {tmp_path / 'part1.txt'}"
    list_pipe = data.make_pipeline(text_config(files), str(tmp_path / "w2"), 0, 1)
    for pipe in (glob_pipe, list_pipe):
        assert pipe.tokenizer.decode(pipe.train_tokens) == text[:27_000]
        assert pipe.tokenizer.decode(pipe.val_tokens) == text[27_000:]


# --- batches ----------------------------------------------------------------------------------------------------


def test_train_batches_are_a_function_of_seed_and_step(tmp_path, corpus_file):
    cfg = text_config(corpus_file)
    first = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    resumed = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    for step in (0, 1, 1234):
        np.testing.assert_array_equal(first.train_batch(step), resumed.train_batch(step))
    b0 = first.train_batch(0)
    assert b0.shape == (8, 65) and b0.dtype == np.int32
    assert not np.array_equal(b0, first.train_batch(1))
    cfg.seed = 1
    assert not np.array_equal(b0, data.make_pipeline(cfg, str(tmp_path), 0, 1).train_batch(0))
    train_text = first.tokenizer.decode(first.train_tokens)
    assert all(first.tokenizer.decode(row) in train_text for row in b0)  # contiguous windows of the train split
    assert first.state(7)["step"] == 7 and json.dumps(first.state(7))


def test_process_slices_partition_the_global_batch(tmp_path, corpus_file):
    cfg = text_config(corpus_file)
    cfg.eval.batch_size = 4
    single = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    hosts = [data.make_pipeline(cfg, str(tmp_path), p, 2) for p in (0, 1)]
    for step in (0, 9):
        slices = [h.train_batch(step) for h in hosts]
        assert slices[0].shape == (4, 65)
        assert not {r.tobytes() for r in slices[0]} & {r.tobytes() for r in slices[1]}
        np.testing.assert_array_equal(np.concatenate(slices), single.train_batch(step))
    host_evals = [list(h.eval_batches(2)) for h in hosts]
    for b, full in enumerate(single.eval_batches(2)):
        assert host_evals[0][b].shape == (2, 65)
        np.testing.assert_array_equal(np.concatenate([host_evals[0][b], host_evals[1][b]]), full)
    with pytest.raises(data.DataError, match="train.batch_size: 8 sequences"):
        data.make_pipeline(cfg, str(tmp_path), 0, 3)


def test_eval_batches_are_fixed_validation_windows(tmp_path, corpus_file):
    pipe = data.make_pipeline(text_config(corpus_file), str(tmp_path), 0, 1)
    first, second = list(pipe.eval_batches(3)), list(pipe.eval_batches(3))
    assert len(first) == 3 and all(b.shape == (8, 65) and b.dtype == np.int32 for b in first)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    val = np.asarray(pipe.val_tokens)
    np.testing.assert_array_equal(first[0][1], val[64:129])  # consecutive windows, stride seq_len
    many = list(pipe.eval_batches(200))  # more than the split holds: wraps around
    np.testing.assert_array_equal(many[0], first[0])


# --- errors -----------------------------------------------------------------------------------------------------


def test_errors_name_the_problem_and_key(tmp_path, tfds_dir):
    empty, short = tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.write_text("")
    short.write_text("To be, or not to be.\n" * 3)
    cases = [
        (text_config(str(tmp_path / "missing.txt")), "data.path: no such file: .*missing.txt"),
        (text_config(str(tmp_path / "nothing*.txt")), "data.path: no file matches .*nothing"),
        (text_config(str(empty)), "data.path: empty corpus"),
        (text_config(str(short)), "data.seq_len: the train split of text has 56 tokens"),
        (make_config(source="tfds:no_such_dataset", data_dir=tfds_dir), "data.source: unknown tfds dataset"),
        (make_config(source="text", path=str(short), tokenizer_path=str(tmp_path / "x.model")),
         "data.tokenizer_path: no such file"),
        (make_config(source="text", path=str(short), vocab_size=100_000), "data.vocab_size: sentencepiece training"),
    ]
    for i, (cfg, message) in enumerate(cases):
        with pytest.raises(data.DataError, match=message) as err:
            data.make_pipeline(cfg, str(tmp_path / f"work{i}"), 0, 1)
        assert "\n" not in str(err.value)


def test_tfds_source_reads_a_registered_builder(tmp_path, tfds_dir):
    cfg = make_config(source="tfds:shakespeare", tokenizer="char", data_dir=tfds_dir)
    pipe = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    assert "Macbeth\n\nACT I\n" in pipe.tokenizer.decode(pipe.val_tokens)
    cfg.data.tfds_text_key = "body"
    with pytest.raises(data.DataError, match="data.tfds_text_key: shakespeare has no feature 'body'"):
        data.make_pipeline(cfg, str(tmp_path / "other"), 0, 1)


# --- per-host data ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [2, 4])
def test_hosts_read_only_their_records_and_together_every_record(tmp_path, tfds_dir, processes, monkeypatch):
    """TFDS: process p of P reads the train examples i whose shard i mod S lies in its block of shards (i mod P
    when S = P), never the others; the processes' records add up to the single process's, shard by shard and
    batch by batch."""
    import shutil

    cfg = make_config(source="tfds:shakespeare", tokenizer="char", data_dir=tfds_dir)
    cfg.eval.batch_size = 4
    reads, reader = {}, [None]
    train_shard = data._TfdsSource.train_shard

    def spy(self, shard, shards):
        reads.setdefault(reader[0], []).extend(range(shard, len(self.splits["train"]), shards))
        return train_shard(self, shard, shards)

    monkeypatch.setattr(data._TfdsSource, "train_shard", spy)
    reader[0] = "single"
    single = data.make_pipeline(cfg, str(tmp_path / "single"), 0, 1)
    shards, records = single.num_shards, len(reads["single"])
    assert shards == 8 and sorted(reads["single"]) == list(range(records)) and records == 34
    shutil.copytree(tmp_path / "single" / "tokenizer", tmp_path / "hosts" / "tokenizer")  # process 0's, shared
    hosts = []
    for p in range(processes):
        reader[0] = p
        hosts.append(data.make_pipeline(cfg, str(tmp_path / "hosts"), p, processes))
        assert all((i % shards) * processes // shards == p for i in reads[p])
        assert sorted(hosts[p].train_shards) == list(range(p * shards // processes, (p + 1) * shards // processes))
    assert sorted(i for p in range(processes) for i in reads[p]) == list(range(records))  # each record once
    assert sum(len(lengths) for h in hosts for lengths in h.record_lengths.values()) == records
    assert sum(len(h.train_tokens) for h in hosts) == len(single.train_tokens)
    for h in hosts:
        for j, tokens in h.train_shards.items():
            np.testing.assert_array_equal(tokens, single.train_shards[j])
        np.testing.assert_array_equal(h.val_tokens, single.val_tokens)
    for step in (0, 1, 77):
        np.testing.assert_array_equal(np.concatenate([h.train_batch(step) for h in hosts]), single.train_batch(step))


def test_text_hosts_tokenize_only_their_parts(tmp_path, corpus_file):
    """Text: the train text is cut into S parts at line starts; each process tokenizes only its parts, which
    together are the whole train text."""
    text = read(corpus_file)
    cfg = text_config(corpus_file)
    single = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    assert single.tokenizer.decode(single.train_tokens) == text[:int(len(text) * 0.9)]
    parts = [single.tokenizer.decode(single.train_shards[j]) for j in range(8)]
    assert all(p.endswith("\n") for p in parts[:-1]) and "".join(parts) == text[:int(len(text) * 0.9)]
    hosts = [data.make_pipeline(cfg, str(tmp_path / "hosts"), p, 2) for p in (0, 1)]
    assert [sorted(h.train_shards) for h in hosts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    cached = sorted(f.name for f in (tmp_path / "hosts" / "data").glob("train-*.npy") if "lengths" not in f.name)
    assert len(cached) == 8  # four parts tokenized by each process, none twice
    assert single.tokenizer.decode(np.concatenate([h.train_tokens for h in hosts])) == text[:int(len(text) * 0.9)]


@pytest.mark.parametrize("batch", [1, 2, 4, 6, 8, 12, 16, 24])
def test_rows_draw_from_their_process_shards_for_any_process_count(batch):
    """Rows and shards are dealt into gcd(B, S) groups: the rows of process p (a contiguous block) belong to groups
    whose shards are all p's, for every process count P dividing both B and S; every shard is in a group."""
    for processes in (1, 2, 4, 8):
        if batch % processes:
            continue
        pipe = data.Pipeline(None, {}, np.zeros(0), 1.0, seq_len=4, seed=0, batch_size=batch, eval_batch_size=batch,
                             process_count=processes, num_shards=8)
        local, groups = batch // processes, pipe.row_groups()
        for p in range(processes):
            for k in groups[p * local:(p + 1) * local]:
                assert all(p * 8 // processes <= j < (p + 1) * 8 // processes for j in pipe.group_shards(k))
        assert sorted(j for k in range(pipe.num_groups) for j in pipe.group_shards(k)) == list(range(8))
        assert np.bincount(groups).tolist() == [batch // pipe.num_groups] * pipe.num_groups


def _start_histogram(pipes, steps, bins):
    """How often each of `bins` equal stretches of the train split (token coordinates, shards in order) holds the
    start of a row's window over `steps` steps, gathered from every process's pipeline."""
    counts = np.zeros(bins)
    first = pipes[0]
    lengths = {j: len(t) for p in pipes for j, t in p.train_shards.items()}
    total = sum(lengths.values())
    shard_start = np.concatenate([[0], np.cumsum([lengths[j] for j in range(first.num_shards)])])
    for p in pipes:
        for step in range(steps):
            for k, start in p.window_starts(step):
                pos = shard_start[p.group_shards(k)[0]] + start
                counts[min(int(pos * bins // total), bins - 1)] += 1
    return counts


def _chi_square_p(counts, expected):
    from scipy import stats

    return stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue


@pytest.mark.parametrize("batch,shards,processes", [(12, 8, 1), (12, 8, 4), (16, 8, 2), (5, 8, 1), (6, 3, 3),
                                                    (12, 1, 1), (24, 16, 8)])
def test_sampled_tokens_are_uniform_over_the_train_split(tmp_path, corpus_file, batch, shards, processes):
    """The window starts of many steps, over every process, fall uniformly on the train tokens (chi-square over 20
    equal stretches; a window cannot start in the last seq_len tokens of its group, a small known deficit that the
    expected counts include). nanoGPT's baby run is (12, 8, 1): row r used to draw from shards
    [r * S // B, (r + 1) * S // B), which sampled half of the corpus twice as often as the other half."""
    cfg = text_config(corpus_file, shards=shards)
    cfg.train.batch_size = cfg.eval.batch_size = batch
    single = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    pipes = [single] if processes == 1 else [data.make_pipeline(cfg, str(tmp_path), p, processes)
                                             for p in range(processes)]
    bins, steps = 20, 6000 // batch
    counts = _start_histogram(pipes, steps, bins)
    total = len(single.train_tokens)
    # expected: uniform over the starts each group allows (its tokens less the last seq_len), in bins
    expected = np.zeros(bins)
    offset = 0
    for k in range(single.num_groups):
        n = sum(len(single.train_shards[j]) for j in single.group_shards(k))
        allowed = np.arange(offset, offset + n - cfg.data.seq_len)
        expected += np.bincount(np.minimum(allowed * bins // total, bins - 1), minlength=bins) / len(allowed)
        offset += n
    assert counts.sum() == steps * batch
    assert _chi_square_p(counts, expected) > 1e-3, counts
    # the groups hold equal shares of the text, so that is uniform over the whole train split too
    assert _chi_square_p(counts, np.ones(bins)) > 1e-3, counts
    if (batch, shards) == (12, 8):  # the old row -> shard rule is caught by the same statistic
        old = np.repeat(np.bincount(np.arange(batch) * shards // batch, minlength=shards), bins // shards + 1)[:bins]
        assert _chi_square_p(np.round(old * counts.sum() / old.sum()), np.ones(bins)) < 1e-6


@pytest.mark.parametrize("source", ["synthetic:icl", "synthetic:icl_control"])
@pytest.mark.parametrize("processes", [1, 2, 8])
def test_single_document_sources_split_over_any_process_count(tmp_path, source, processes):
    """A source of one long document (the ICL episodes) is cut into S parts of near-equal length at line starts,
    so it trains on 1, 2 or 8 processes' worth of shards: every shard holds about 1/S of it, whole episodes."""
    cfg = make_config(source=source, tokenizer="char")
    cfg.train.batch_size = cfg.eval.batch_size = 32
    pipe0 = data.make_pipeline(cfg, str(tmp_path), 0, processes)
    pipes = [pipe0] + [data.make_pipeline(cfg, str(tmp_path), p, processes) for p in range(1, processes)]
    sizes = [len(t) for p in pipes for t in p.train_shards.values()]
    assert len(sizes) == pipe0.num_shards == (8 if processes <= 8 else processes)
    assert all(abs(n - np.mean(sizes)) <= 60 for n in sizes)  # 1/S of the text, to within an episode (60 chars)
    texts = [pipe0.tokenizer.decode(p.train_shards[j]) for p in pipes for j in sorted(p.train_shards)]
    assert all(t.endswith("\n") for t in texts) and all(len(line.split()) == 20 for t in texts for line in
                                                        t.splitlines())
    batch = np.concatenate([p.train_batch(3) for p in pipes])
    assert batch.shape == (32, 65)


def test_text_of_one_line_is_cut_anywhere(tmp_path):
    """A text with no line breaks is cut at equal character counts rather than leaving shards empty."""
    path = tmp_path / "one_line.txt"
    path.write_text("abcdefghij" * 1000, encoding="utf-8")
    cfg = text_config(str(path))
    pipe = data.make_pipeline(cfg, str(tmp_path / "w"), 0, 1)
    assert [len(t) for t in pipe.train_shards.values()] == [1125] * 8
    assert pipe.tokenizer.decode(pipe.train_tokens) == ("abcdefghij" * 1000)[:9000]


def test_sentencepiece_is_trained_once_by_process_0_on_a_bounded_sample(tmp_path, tfds_dir, monkeypatch):
    cfg = make_config(source="tfds:shakespeare", data_dir=tfds_dir, tokenizer="sentencepiece", vocab_size=400)
    trained, consumed = [], []
    train_spm = tokenizer._train_sentencepiece
    monkeypatch.setattr(tokenizer, "_train_sentencepiece", lambda d, texts: trained.append(1) or train_spm(d, texts))
    train_texts = data._TfdsSource.train_texts

    def counted(self):
        for t in train_texts(self):
            consumed.append(1)
            yield t

    monkeypatch.setattr(data._TfdsSource, "train_texts", counted)
    monkeypatch.setattr(tokenizer, "_SPM_MAX_LINES", 3000)
    with pytest.raises(data.DataError, match="no tokenizer saved in"):  # process 1 never trains its own
        data.make_pipeline(cfg, str(tmp_path), 1, 2)
    assert not trained
    first = data.make_pipeline(cfg, str(tmp_path), 0, 2)
    second = data.make_pipeline(cfg, str(tmp_path), 1, 2)
    assert len(trained) == 1 and 0 < len(consumed) < 34  # a few plays of the 34, not the whole train split
    assert second.tokenizer.fingerprint == first.tokenizer.fingerprint and first.tokenizer.vocab_size == 400
