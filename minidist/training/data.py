"""Training data: a shipped public-domain text corpus and synthetic tasks with exact answers.

Two kinds of data, one interface (``vocab_size``, ``seq_len``, ``get_batch``,
``eval_batches``, ``unigram_entropy``, ``format``):

* :class:`TextDataset` -- character-level language modelling on ``corpus/english.txt``
  (nanoGPT's "shakespeare_char" idea: no tokenizer library, one token per character).
* :class:`SyntheticTask` -- ``copy``, ``reverse``, ``sort`` and ``add`` on digit strings
  such as ``314159|951413.``; the loss is only taken on the answer, and
  :meth:`SyntheticTask.exact_match` says what fraction of answers a model gets exactly right.

**Determinism across rank layouts.** A batch is a pure function of ``(seed, step)``: the
generator is ``np.random.default_rng([seed, step])``, created afresh for every step. Every
rank builds the same *global* batch and keeps its own slice with :func:`shard_batch`, so
1 rank x batch 8 and 4 ranks x batch 2 see exactly the same sequences -- the property the
"every parallel mode matches serial training" tests rely on. (Real frameworks get the same
effect with a ``DistributedSampler`` seeded identically on every rank.)
"""
from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from ..defaults import DEFAULT_DATASET, TASK_DIGITS, TEXT_SEQ_LEN, TEXT_VAL_FRACTION
from ..tensor import no_grad

# ----------------------------------------------------------------------------- corpus

def available_corpora() -> list[str]:
    """Names of the text corpora shipped in ``minidist/corpus/`` (file names without ``.txt``)."""
    folder = resources.files("minidist") / "corpus"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


@functools.cache
def load_corpus(name: str = DEFAULT_DATASET) -> str:
    """The text of a shipped corpus (see ``corpus/SOURCES.md`` for where each piece comes from)."""
    path = resources.files("minidist") / "corpus" / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(available_corpora())}")
    return path.read_text(encoding="utf-8")


class CharTokenizer:
    """One token per character; ids are positions in the sorted list of distinct characters."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.vocab_size = len(self.chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, s: str) -> np.ndarray:
        try:
            return np.array([self.stoi[c] for c in s], dtype=np.int64)      # (len(s),)
        except KeyError as e:
            pos = next(i for i, c in enumerate(s) if c not in self.stoi)
            raise ValueError(f"character {e.args[0]!r} at position {pos} is not in the tokenizer's "
                             f"vocabulary of {self.vocab_size} characters") from None

    def decode(self, ids) -> str:
        ids = np.asarray(ids).ravel()
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def decode_rows(self, x) -> str:
        """The sequences of ``x`` (..., T) as text, one per line."""
        x = np.asarray(x)
        return "\n".join(self.decode(row) for row in x.reshape(-1, x.shape[-1]))


def _entropy_nats(ids: np.ndarray, vocab_size: int) -> float:
    """H(p) = -sum_c p(c) ln p(c) of the empirical distribution of ``ids``."""
    p = np.bincount(ids.ravel(), minlength=vocab_size) / ids.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------- text

class TextDataset:
    """Character-level language modelling: predict character t+1 from characters <= t.

    The first ``1 - val_fraction`` of the corpus is the train split, the rest the val split,
    so no training window ever overlaps a validation window. The tokenizer is built on the
    whole corpus, so both splits share one vocabulary.
    """

    def __init__(self, seq_len: int = TEXT_SEQ_LEN, split: str = "train",
                 val_fraction: float = TEXT_VAL_FRACTION, name: str = DEFAULT_DATASET):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if int(seq_len) < 1:
            raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
        text = load_corpus(name)
        self.name, self.split, self.seq_len = name, split, int(seq_len)
        self.tokenizer = CharTokenizer(text)
        self.vocab_size = self.tokenizer.vocab_size
        ids = self.tokenizer.encode(text)
        n_train = int(len(ids) * (1.0 - val_fraction))
        self.data = ids[:n_train] if split == "train" else ids[n_train:]     # (N,)
        if len(self.data) <= self.seq_len + 1:
            fix = (f"use a shorter data.seq_len, or a data.val_fraction that leaves the {split} split more than "
                   f"seq_len + 1 characters (it is {val_fraction!r} of {len(ids)})")
            raise ValueError(f"data.seq_len={seq_len} is too long for the {split} split of "
                             f"{name!r} ({len(self.data)} characters); {fix}")

    def _windows(self, starts: np.ndarray):
        offs = starts[:, None] + np.arange(self.seq_len)                    # (B, T)
        return self.data[offs], self.data[offs + 1]                         # x, y: (B, T)

    def get_batch(self, batch_size: int, step: int, seed: int = 0):
        """The global batch for this step: ``batch_size`` random windows, ``y`` = ``x`` shifted by one."""
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.data) - self.seq_len, size=batch_size)  # last y index <= N-1
        return self._windows(starts)

    def eval_batches(self, batch_size: int, n_batches: int):
        """A fixed list of ``n_batches`` (x, y) batches: windows spread evenly over the split."""
        starts = np.linspace(0, len(self.data) - self.seq_len - 1, batch_size * n_batches)
        starts = starts.round().astype(np.int64).reshape(n_batches, batch_size)
        return [self._windows(s) for s in starts]

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the split's character frequencies: the loss of a model that ignores context."""
        return _entropy_nats(self.data, self.vocab_size)

    def format(self, x) -> str:
        return self.tokenizer.decode_rows(x)


# ----------------------------------------------------------------------------- synthetic tasks

TASKS = ("copy", "reverse", "sort", "add")
TASK_ALPHABET = "0123456789+=|."   # digits, the operator and separators; '.' ends every answer

_TRAIN_STREAM, _EVAL_STREAM = 1, 2  # keeps exact_match's examples apart from training batches


class SyntheticTask:
    """Algorithmic tasks whose answers can be checked exactly.

    * ``copy``:    ``314159|314159.``         the digits again
    * ``reverse``: ``314159|951413.``         the digits backwards
    * ``sort``:    ``314159|113459.``         the digits in ascending order
    * ``add``:     ``314159+271828=0585987.`` a + b with n+1 digits, zero-padded

    A sequence is ``prompt + answer``; the model reads ``seq[:-1]`` and is trained to
    predict ``seq[1:]`` only where the next token belongs to the answer (``y = -1``,
    cross-entropy's ``ignore_index``, everywhere else: the prompt digits are random, so
    predicting them only adds noise to the loss).
    """

    def __init__(self, name: str, n: int = TASK_DIGITS, seed_offset: int = 0):
        if name not in TASKS:
            raise ValueError(f"unknown synthetic task {name!r}; available: {', '.join(TASKS)}")
        if int(n) < 1:
            raise ValueError(f"number of digits n must be >= 1, got {n}")
        self.name, self.n, self.seed_offset = name, int(n), int(seed_offset)
        self.tokenizer = CharTokenizer(TASK_ALPHABET)
        self.vocab_size = self.tokenizer.vocab_size
        n = self.n
        self.prompt_len = 2 * n + 2 if name == "add" else n + 1            # "a+b=" or "digits|"
        self.answer_len = n + 2 if name == "add" else n + 1                 # answer digits + "."
        self.seq_len = self.prompt_len + self.answer_len - 1                # model input length T

    # -- building examples ----------------------------------------------------------------

    def answer(self, digits: np.ndarray) -> np.ndarray:
        """The answer digits (B, answer_len - 1) for the random digits (B, n) or (B, 2n) of a prompt."""
        if self.name == "copy":
            return digits
        if self.name == "reverse":
            return digits[:, ::-1]
        if self.name == "sort":
            return np.sort(digits, axis=1)
        n = self.n                                                          # add, schoolbook carries
        a, b = digits[:, :n], digits[:, n:]
        out = np.zeros((len(digits), n + 1), dtype=np.int64)
        carry = np.zeros(len(digits), dtype=np.int64)
        for i in range(n - 1, -1, -1):                                      # least significant first
            s = a[:, i] + b[:, i] + carry
            out[:, i + 1], carry = s % 10, s // 10
        out[:, 0] = carry
        return out

    def _sequences(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Whole sequences prompt + answer as token ids, (B, prompt_len + answer_len)."""
        tok = self.tokenizer.stoi
        n_digits = 2 * self.n if self.name == "add" else self.n
        digits = rng.integers(0, 10, size=(batch_size, n_digits))           # (B, n) or (B, 2n)
        ans = self.answer(digits)
        digit_ids = np.array([tok[str(d)] for d in range(10)])             # digit -> token id

        def col(c):                                                         # (B, 1) of one symbol
            return np.full((batch_size, 1), tok[c])
        if self.name == "add":
            n = self.n
            parts = [digit_ids[digits[:, :n]], col("+"), digit_ids[digits[:, n:]], col("=")]
        else:
            parts = [digit_ids[digits], col("|")]
        parts += [digit_ids[ans], col(".")]
        return np.concatenate(parts, axis=1).astype(np.int64)

    def _xy(self, seq: np.ndarray):
        x, y = seq[:, :-1], seq[:, 1:].copy()                               # (B, T), T = seq_len
        y[:, : self.prompt_len - 1] = -1                                    # only answer tokens count
        return x, y

    def get_batch(self, batch_size: int, step: int, seed: int = 0):
        """The global batch for this step, a pure function of (seed, step, seed_offset)."""
        rng = np.random.default_rng([seed, step, self.seed_offset, _TRAIN_STREAM])
        return self._xy(self._sequences(batch_size, rng))

    def _eval_sequences(self, n_examples: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, self.seed_offset, _EVAL_STREAM])
        return self._sequences(n_examples, rng)                             # (n_examples, L)

    def eval_batches(self, batch_size: int, n_batches: int, seed: int = 123):
        """A fixed list of (x, y) batches, drawn from a stream that training batches never use."""
        seq = self._eval_sequences(batch_size * n_batches, seed)
        return [self._xy(s) for s in np.split(seq, n_batches)]

    def unigram_entropy(self, n_examples: int = 4096) -> float:
        """Entropy (nats) of the answer tokens' frequencies, measured on a fixed sample."""
        (_, y), = self.eval_batches(n_examples, 1)
        return _entropy_nats(y[y >= 0], self.vocab_size)

    # -- evaluation ----------------------------------------------------------------------

    def exact_match(self, predict_fn, n_examples: int = 100, seed: int = 123) -> float:
        """Fraction of examples whose whole answer (digits and the final '.') ``predict_fn`` gets right.

        ``predict_fn(prompts)`` receives prompt ids (B, prompt_len) and returns answer ids
        (B, answer_len); for a model, ``lambda p: greedy_decode(model, p, task.answer_len)``.
        """
        seq = self._eval_sequences(n_examples, seed)
        prompts, answers = seq[:, : self.prompt_len], seq[:, self.prompt_len:]
        pred = np.asarray(predict_fn(prompts.copy()))
        if pred.shape != answers.shape:
            raise ValueError(f"predict_fn returned shape {pred.shape}, expected (batch, answer_len) = "
                             f"{answers.shape}")
        return float((pred == answers).all(axis=1).mean())

    def format(self, x) -> str:
        return self.tokenizer.decode_rows(x)


def greedy_decode(model, prompt, n_tokens: int) -> np.ndarray:
    """Append ``n_tokens`` argmax tokens to ``prompt`` (B, P); returns only the new tokens,
    (B, n_tokens).

    The GPT decodes with its KV cache (``model.generate(..., temperature=0)``, see
    :mod:`minidist.inference`): one prefill of the prompts, then one position per token. Any
    other ``model(idx) -> (logits, loss)`` re-runs the whole context per token. Either way
    in eval mode (no dropout) and under ``no_grad``; the model's mode is restored afterwards.
    """
    idx = np.asarray(prompt, dtype=np.int64)                                # (B, P)
    if callable(getattr(model, "generate", None)):
        return model.generate(idx, n_tokens, temperature=0.0)[:, idx.shape[1]:]
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad():
            for _ in range(n_tokens):
                context = idx if block_size is None else idx[:, -block_size:]
                logits, _ = model(context)                                  # (B, t, V)
                nxt = np.asarray(logits.data)[:, -1, :].argmax(axis=-1)     # (B,)
                idx = np.concatenate([idx, nxt[:, None].astype(np.int64)], axis=1)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return idx[:, idx.shape[1] - n_tokens:]


# ----------------------------------------------------------------------------- config & sharding

DATA_KEYS = ("dataset", "seq_len", "val_fraction", "n_digits")


def make_dataset(data_cfg: dict | None = None, split: str = "train"):
    """Build the dataset a config's ``data`` section describes (section 9 of the spec).

    ``{"dataset": "english", "seq_len": 32}`` (defaults, :mod:`minidist.defaults`) or a synthetic task such as
    ``{"dataset": "add", "n_digits": 3}``, whose ``seq_len`` follows from the task; a given
    ``seq_len`` shorter than that is an error.
    """
    cfg = dict(data_cfg or {})
    unknown = sorted(set(cfg) - set(DATA_KEYS))
    if unknown:
        raise ValueError(f"unknown key data.{unknown[0]}; allowed keys in 'data': {', '.join(DATA_KEYS)}")
    name = cfg.get("dataset", DEFAULT_DATASET)
    if name in TASKS:
        if "val_fraction" in cfg:
            raise ValueError("data.val_fraction applies to text corpora only, not to synthetic tasks")
        task = SyntheticTask(name, n=cfg.get("n_digits", TASK_DIGITS))
        if cfg.get("seq_len") is not None and cfg["seq_len"] < task.seq_len:
            raise ValueError(f"data.seq_len={cfg['seq_len']} is too short for task {name!r} with "
                             f"{task.n} digits, which needs {task.seq_len}; raise data.seq_len or "
                             f"leave it out")
        return task
    corpora = available_corpora()
    if name not in corpora:
        raise ValueError(f"unknown data.dataset {name!r}; choose one of: {', '.join(corpora + list(TASKS))}")
    if "n_digits" in cfg:
        raise ValueError("data.n_digits applies to synthetic tasks only, not to text corpora")
    return TextDataset(seq_len=cfg.get("seq_len", TEXT_SEQ_LEN), split=split,
                       val_fraction=cfg.get("val_fraction", TEXT_VAL_FRACTION), name=name)


def shard_batch(x, rank: int, world_size: int):
    """This rank's contiguous slice of a global batch along axis 0 (rank r gets rows r*b .. r*b+b-1)."""
    x = np.asarray(x)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a data-parallel group of size {world_size}")
    if x.shape[0] % world_size:
        raise ValueError(f"the global batch of {x.shape[0]} sequences is not divisible by the "
                         f"data-parallel degree {world_size}; make the global batch a multiple of it")
    b = x.shape[0] // world_size                                            # per-rank micro-batch
    return x[rank * b:(rank + 1) * b]

