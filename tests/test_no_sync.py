"""DDP's ``no_sync()`` (torch's name): backward inside it sends nothing; the first backward
after it reduces the accumulated gradient once — the trainer's own gradient accumulation,
bit for bit, bytes included."""
import contextlib
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.zero, pytest.mark.checkpointing, pytest.mark.timeout(60)]

CFG = {"model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8}, "data": {"seq_len": 8},
       "dtype": "float64", "train_micro_batch_size_per_gpu": 2, "steps": 1, "eval_iters": 1}


def _by_hand(comm):
    """Two micro-batches by hand, the first inside no_sync()."""
    trainer = Trainer(copy.deepcopy(CFG), comm)
    s, sent = trainer.strategy, []
    with trainer.device:
        for micro in range(2):
            x, y = trainer.batch(0, micro)
            mark = comm.log.mark()
            loss = trainer.model(x, y)[1] * np.float64(0.5)
            with s.no_sync() if micro == 0 else contextlib.nullcontext():
                loss.backward()
                s.after_backward()
            sent.append(comm.log.since(mark).bytes_sent())
        s.step()
    return sent, {n: p.data.copy() for n, p in trainer.model.named_parameters()}


def _trainer(comm):
    """The trainer's own accumulation of the same two micro-batches."""
    trainer = Trainer({**copy.deepcopy(CFG), "gradient_accumulation_steps": 2}, comm)
    trainer.train_step(0)
    return trainer.history[-1]["bytes_sent"], {n: p.data.copy() for n, p in trainer.model.named_parameters()}


def test_no_sync_sends_nothing_and_the_next_backward_reduces_once():
    for (sent, weights), (step_bytes, want) in zip(dist.spawn(_by_hand, 2), dist.spawn(_trainer, 2)):
        assert sent[0] == 0                           # inside no_sync(): not one message
        assert sent[1] == step_bytes > 0              # then the step's one reduction of the whole gradient
        for k in want:
            assert np.array_equal(weights[k], want[k]), k
