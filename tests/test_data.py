"""Data: corpus, tokenizer, text batches, synthetic tasks, config and sharding."""
import math
from collections import Counter

import numpy as np
import pytest

from minidist.training.data import (
    TASKS,
    CharTokenizer,
    SyntheticTask,
    TextDataset,
    greedy_decode,
    load_corpus,
    make_dataset,
    shard_batch,
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def train():
    return TextDataset(seq_len=32, split="train")


# ----------------------------------------------------------------------------- corpus, tokenizer

def test_corpus_is_plain_ascii_of_the_promised_size():
    text = load_corpus("english")
    assert 40_000 <= len(text) <= 62_000
    assert text.isascii() and "\r" not in text and "\t" not in text
    assert "Four score and seven years ago" in text


def test_unknown_corpus_lists_available_names():
    with pytest.raises(ValueError, match="english"):
        load_corpus("klingon")


def test_tokenizer_round_trip_and_unknown_character():
    tok = CharTokenizer("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    ids = tok.encode("low row")
    assert ids.dtype == np.int64 and ids.tolist() == [tok.chars.index(c) for c in "low row"]
    assert tok.decode(ids) == "low row"
    with pytest.raises(ValueError, match=r"'z' at position 2"):
        tok.encode("loz")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


# ----------------------------------------------------------------------------- text batches

def test_batches_are_deterministic_in_seed_and_step(train):
    x1, y1 = train.get_batch(8, step=3, seed=7)
    x2, y2 = train.get_batch(8, step=3, seed=7)
    assert x1.shape == y1.shape == (8, 32) and x1.dtype == y1.dtype == np.int64
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, train.get_batch(8, step=4, seed=7)[0])
    assert not np.array_equal(x1, train.get_batch(8, step=3, seed=8)[0])


def test_targets_are_inputs_shifted_by_one(train):
    x, y = train.get_batch(4, step=0)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):
        assert train.format(row_x) == train.tokenizer.decode(row_x) and len(train.format(row_x)) == 32
        assert train.tokenizer.decode(np.r_[row_x[:1], row_y]) in load_corpus()


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_shards_concatenate_to_the_global_batch(train, world_size):
    x, y = train.get_batch(8, step=5, seed=1)
    # every rank draws the same global batch, then keeps its own rows
    xs = [shard_batch(train.get_batch(8, step=5, seed=1)[0], r, world_size) for r in range(world_size)]
    ys = [shard_batch(y, r, world_size) for r in range(world_size)]
    assert all(len(s) == 8 // world_size for s in xs)
    assert np.array_equal(np.concatenate(xs), x) and np.array_equal(np.concatenate(ys), y)


def test_shard_batch_errors():
    with pytest.raises(ValueError, match="not divisible by the data-parallel degree 4"):
        shard_batch(np.zeros((6, 3)), 0, 4)
    with pytest.raises(ValueError, match="rank 2"):
        shard_batch(np.zeros((6, 3)), 2, 2)


def test_unigram_entropy_matches_an_independent_count(train):
    n_train = int(len(load_corpus()) * 0.9)
    counts = Counter(load_corpus()[:n_train])
    total = sum(counts.values())
    expected = -sum(c / total * math.log(c / total) for c in counts.values())
    assert train.unigram_entropy() == pytest.approx(expected, rel=1e-12)
    assert 2.0 < expected < math.log(train.vocab_size)


def test_train_and_val_splits_are_disjoint_and_cover_the_corpus():
    text = load_corpus()
    tr, va = TextDataset(seq_len=16, split="train"), TextDataset(seq_len=16, split="val")
    assert tr.tokenizer.chars == va.tokenizer.chars
    assert tr.tokenizer.decode(tr.data) + va.tokenizer.decode(va.data) == text
    assert len(va.data) == len(text) - int(len(text) * 0.9)
    val_text = va.tokenizer.decode(va.data)
    for x, y in va.eval_batches(8, 3) + [va.get_batch(16, step=s) for s in range(3)]:
        for row_x, row_y in zip(x, y):   # every val window, targets included, lies in the val text
            assert va.tokenizer.decode(np.r_[row_x, row_y[-1:]]) in val_text
    windows = {tr.format(row) for s in range(20) for row in tr.get_batch(64, s)[0]}
    assert len(windows) > 1200   # 1280 draws from ~48k start positions: few repeats


def test_eval_batches_are_fixed():
    va = TextDataset(seq_len=16, split="val")
    a, b = va.eval_batches(4, 5), va.eval_batches(4, 5)
    assert len(a) == 5 and all(x.shape == (4, 16) for x, _ in a)
    assert all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ----------------------------------------------------------------------------- synthetic tasks

def _check_answer(name, prompt_digits, answer_digits):
    """Independent oracle: the expected answer string from the prompt string."""
    if name == "add":
        a, b = prompt_digits.split("+")
        return answer_digits == str(int(a) + int(b)).zfill(len(a) + 1)
    return answer_digits == {"copy": prompt_digits, "reverse": prompt_digits[::-1],
                             "sort": "".join(sorted(prompt_digits))}[name]


@pytest.mark.parametrize("name", TASKS)
def test_task_targets_are_the_correct_answers(name):
    task = SyntheticTask(name, n=5)
    x, y = task.get_batch(64, step=2, seed=3)
    assert x.shape == y.shape == (64, task.seq_len) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x, task.get_batch(64, step=2, seed=3)[0])
    assert not np.array_equal(x, task.get_batch(64, step=3, seed=3)[0])
    assert (y[:, : task.prompt_len - 1] == -1).all() and (y[:, task.prompt_len - 1:] >= 0).all()
    for row_x, row_y in zip(x, y):
        seq = task.tokenizer.decode(np.r_[row_x, row_y[-1:]])
        prompt, answer = seq.split("=" if name == "add" else "|")
        assert answer.endswith(".") and _check_answer(name, prompt, answer[:-1]), seq
        # the kept targets are exactly the answer tokens, and agree with x shifted by one
        assert task.tokenizer.decode(row_y[row_y >= 0]) == answer
        assert np.array_equal(row_x[task.prompt_len:], row_y[task.prompt_len - 1:-1])
    assert len({task.format(r) for r in x}) > 50   # prompts are random


@pytest.mark.parametrize("name", TASKS)
def test_exact_match_oracle_and_constant(name):
    task = SyntheticTask(name, n=4)
    digit = {str(d): task.tokenizer.stoi[str(d)] for d in range(10)}

    def oracle(prompts):               # computes the answer from the prompt text, independently
        out = []
        for s in (task.tokenizer.decode(p) for p in prompts):
            digits = s[:-1]
            if name == "add":
                a, b = digits.split("+")
                ans = str(int(a) + int(b)).zfill(len(a) + 1)
            else:
                ans = {"copy": digits, "reverse": digits[::-1], "sort": "".join(sorted(digits))}[name]
            out.append(task.tokenizer.encode(ans + "."))
        return np.array(out)

    assert task.exact_match(oracle, n_examples=50) == 1.0
    const = lambda p: np.full((len(p), task.answer_len), digit["0"])
    assert task.exact_match(const, n_examples=200) < 0.05
    with pytest.raises(ValueError, match="expected"):
        task.exact_match(lambda p: np.zeros((len(p), 1), dtype=np.int64))


class _CopyModel:
    """A fake model whose logits favour 'the token seen n+1 positions ago': it solves copy."""

    def __init__(self, task):
        self.task, self.calls, self.training = task, [], True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def __call__(self, idx):
        from minidist.tensor import is_grad_enabled
        self.calls.append((idx.shape, self.training, is_grad_enabled()))
        B, T = idx.shape
        logits = np.zeros((B, T, self.task.vocab_size))
        lag = self.task.n + 1
        src = idx[:, T - lag] if T - lag < self.task.n else np.full(B, self.task.tokenizer.stoi["."])
        logits[np.arange(B), -1, src] = 1.0

        class _T:
            data = logits
        return _T(), None


def test_greedy_decode_with_a_fake_model():
    task = SyntheticTask("copy", n=3)
    model = _CopyModel(task)
    score = task.exact_match(lambda p: greedy_decode(model, p, task.answer_len), n_examples=20)
    assert score == 1.0
    # one call per new token, growing context, in eval mode and without a graph; mode restored
    assert [c[0][1] for c in model.calls[:task.answer_len]] == list(range(4, 4 + task.answer_len))
    assert all(not training and not grad for _, training, grad in model.calls)
    assert model.training


# ----------------------------------------------------------------------------- config

def test_make_dataset_builds_and_rejects():
    ds = make_dataset({"dataset": "english", "seq_len": 16})
    assert isinstance(ds, TextDataset) and ds.seq_len == 16
    assert isinstance(make_dataset({}), TextDataset)
    assert make_dataset({"dataset": "english"}, split="val").split == "val"
    task = make_dataset({"dataset": "add", "n_digits": 3})
    assert isinstance(task, SyntheticTask) and task.seq_len == 3 * 3 + 3
    assert make_dataset({"dataset": "sort", "seq_len": 64}).seq_len == 6 + 6 + 1
    with pytest.raises(ValueError, match=r"data\.seq_len"):
        make_dataset({"dataset": "reverse", "seq_len": 5})
    with pytest.raises(ValueError, match=r"data\.batch_size.*dataset, seq_len"):
        make_dataset({"dataset": "english", "batch_size": 4})
    with pytest.raises(ValueError, match="copy, reverse, sort, add"):
        make_dataset({"dataset": "wikipedia"})
    with pytest.raises(ValueError, match=r"data\.seq_len"):
        make_dataset({"dataset": "english", "seq_len": 10**6})
