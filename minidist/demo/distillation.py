"""Chapter: knowledge distillation.

A 3-block teacher is trained on the ``reverse`` task (shipped synthetic data: ``3141|1413.``);
then the same 2-block student is trained twice per seed for the same steps on the same
batches — once on the hard labels alone, once distilled from the frozen teacher
(soft targets at temperature T, Hinton et al. 2015, plus Patient KD on the hidden states,
Sun et al. 2019) — and both are scored on held-out examples. Then a temperature sweep,
KD vs PKD-Skip vs PKD-Last, and a distributed run where teacher ranks stream the soft
targets to student ranks, full logits against top-K.

The runs are spread over the ranks (each rank trains its share; the teacher is trained
once on rank 0 and broadcast), so ``mpirun -n 4`` runs them in parallel.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import distributed as dist
from ..device import Device
from ..distill.runner import distil_with, distill_rank
from ..distill.streaming import payload_bytes
from ..distill.teacher import FrozenTeacher
from ..model import GPT, GPTConfig
from ..tensor import no_grad
from ..training.trainer import Trainer
from ..plotting.distill import plot_distill_vs_hard, plot_stream_bytes, plot_sweeps
from .jobs import run_jobs

TITLE = "Knowledge distillation: soft targets, Patient KD, teacher ranks"

SEEDS = 3
TEMPERATURES = (1.0, 2.0, 4.0)
MAIN = {"temperature": 2.0, "alpha": 0.5, "patient": {"mapping": "skip", "beta": 1.0}}
TEACHER = {"n_layer": 3, "n_embd": 32, "n_head": 4, "block_size": 32}
STUDENT = {"n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 32}
BASE = {"data": {"dataset": "reverse", "n_digits": 4}, "train_micro_batch_size_per_gpu": 32, "eval_iters": 8}
# batches of 32 and fewer steps: a step's cost is mostly per-op overhead, so the tour's time halves
TEACHER_STEPS, STUDENT_STEPS = 80, 32


def config(model, steps, seed=0, lr=5e-3, distillation=None) -> dict:
    c = copy.deepcopy(BASE)
    c.update(model=dict(model), steps=steps, seed=seed, optimizer={"type": "AdamW", "params": {"lr": lr}})
    if distillation is not None:
        c["distillation"] = {"teacher": {"model": dict(TEACHER)}, **distillation}
    return c


def token_accuracy(trainer) -> float:
    """Fraction of held-out answer tokens the model predicts right (argmax, teacher forcing)."""
    m = trainer.model.eval()
    hits = total = 0
    with no_grad():
        for x, y in trainer.dataset.eval_batches(64, 4):
            valid = y >= 0
            hits += int((m(x)[0].data.argmax(-1) == y)[valid].sum())
            total += int(valid.sum())
    m.train()
    return hits / total


def _teacher(comm) -> np.ndarray:
    """The teacher's weights, one flat array: trained on rank 0 and broadcast, so every rank
    distils from the same frozen teacher (:func:`_frozen`)."""
    flat = np.zeros(_teacher_model().num_parameters(), dtype=np.float32)
    if comm.rank == 0:
        run = Trainer(config(TEACHER, TEACHER_STEPS, seed=100, lr=3e-3), device=Device())
        run.fit(progress=False)
        flat = np.concatenate([p.data.ravel() for p in run.model.parameters()])
    # why: the other ranks need the trained teacher's weights to distil their share of the students
    return dist.broadcast(comm, flat, root=0)


def _teacher_model() -> GPT:
    return GPT(GPTConfig(**TEACHER, vocab_size=14), seed=100)


def _frozen(flat: np.ndarray) -> FrozenTeacher:
    """The frozen teacher with the weights :func:`_teacher` trained."""
    model, i = _teacher_model(), 0
    for p in model.parameters():
        p.data[...] = flat[i:i + p.size].reshape(p.shape)
        i += p.size
    return FrozenTeacher(model, Device())


def _experiments():
    jobs = [("hard", s, None) for s in range(SEEDS)] + [("distilled", s, MAIN) for s in range(SEEDS)]
    jobs += [(f"T={t:g}", 0, dict(MAIN, temperature=t)) for t in TEMPERATURES if t != MAIN["temperature"]]
    jobs += [("KD only", 0, dict(MAIN, patient=None)), ("PKD-Last", 0, dict(MAIN, patient={"mapping": "last",
                                                                                           "beta": 1.0}))]
    return jobs


def _run_job(flat, label, seed, d):
    """One student: hard labels (``d`` None) or distilled from the teacher of weights ``flat``
    (a job of :func:`minidist.demo.jobs.run_jobs`: a worker process's in the in-process tour)."""
    if d is None:
        tr = Trainer(config(STUDENT, STUDENT_STEPS, seed))
        tr.fit(progress=False)
        curve = [h["loss"] for h in tr.history]
    else:
        tr = distil_with(_frozen(flat), config(STUDENT, STUDENT_STEPS, seed, distillation=d))
        curve = [h["ce"] for h in tr.history]
    return {"label": label, "seed": seed, "val_loss": tr.final["val_loss"], "exact_match": tr.final["exact_match"],
            "token_accuracy": token_accuracy(tr), "curve": curve}


def _stream_bytes(comm) -> dict:
    """Teacher rank 0 → students 1…W−1: bytes per student per step, measured and by formula."""
    if comm.size < 2:
        return {}
    rows = {}
    for k in (None, 4, 2):
        d = {"teacher": {"model": dict(TEACHER), "steps": 2}, "teacher_ranks": 1, "top_k": k}
        cfg = dict(config(STUDENT, 2, lr=5e-3), train_micro_batch_size_per_gpu=4, distillation=d)
        run = distill_rank(comm, cfg)
        # why: rank 0 prints what every student received
        got = dist.gather_object(comm, run.section().get("stream", {}).get("bytes_received", 0))
        if comm.rank == 0:
            formula = payload_bytes(4, 9, 14, 4, k)
            rows["all logits" if k is None else f"top-{k}"] = (max(got[1:]) // 2, formula)
    return rows


def run(comm, out_dir) -> dict:
    # rank 0 also trains the teacher, so it takes its share of the jobs last in the deal
    jobs = [job for i, job in enumerate(_experiments()) if (i + 1) % comm.size == comm.rank]
    # the hard-label students need no teacher: they train while rank 0 trains it
    mine = run_jobs([(_run_job, None, *job) for job in jobs if job[2] is None])
    flat = _teacher(comm)
    mine += run_jobs([(_run_job, flat, *job) for job in jobs if job[2] is not None])
    # why: rank 0 prints the tables and draws the figures from every rank's runs
    gathered = dist.gather_object(comm, mine)
    stream = _stream_bytes(comm)
    if comm.rank != 0:
        return {}
    res = {}
    for part in gathered:
        for r in part:
            res[(r["label"], r["seed"])] = r
    hard = [res[("hard", s)] for s in range(SEEDS)]
    kd = [res[("distilled", s)] for s in range(SEEDS)]
    margins = np.array([h["val_loss"] - k["val_loss"] for h, k in zip(hard, kd)])
    acc = np.array([k["token_accuracy"] - h["token_accuracy"] for h, k in zip(hard, kd)])
    print(f"teacher: {TEACHER['n_layer']} blocks × {TEACHER['n_embd']}, {TEACHER_STEPS} steps; students: "
          f"{STUDENT['n_layer']} blocks × {STUDENT['n_embd']}, {STUDENT_STEPS} steps, same batches")
    print(f"{'seed':>4} {'hard val loss':>14} {'distilled':>10} {'margin':>8} {'hard acc':>9} {'distilled':>10}")
    for s, (h, k) in enumerate(zip(hard, kd)):
        print(f"{s:>4} {h['val_loss']:>14.4f} {k['val_loss']:>10.4f} {h['val_loss'] - k['val_loss']:>8.4f} "
              f"{h['token_accuracy']:>9.3f} {k['token_accuracy']:>10.3f}")
    print(f"held-out loss margin over {SEEDS} seeds: mean {margins.mean():.4f}, min {margins.min():.4f}, max "
          f"{margins.max():.4f}; token accuracy +{acc.mean():.3f} (min {acc.min():+.3f})")
    temps = {t: res[(f"T={t:g}", 0)]["val_loss"] if t != MAIN["temperature"] else kd[0]["val_loss"]
             for t in TEMPERATURES}
    variants = {"KD": res[("KD only", 0)]["val_loss"], "KD + PKD-Skip": kd[0]["val_loss"],
                "KD + PKD-Last": res[("PKD-Last", 0)]["val_loss"]}
    print("temperature sweep (seed 0): " + ", ".join(f"T={t:g} {v:.4f}" for t, v in temps.items()))
    print("seed 0: " + ", ".join(f"{k} {v:.4f}" for k, v in variants.items()) + f", hard labels {hard[0]['val_loss']:.4f}")
    for label, (got, formula) in stream.items():
        print(f"teacher -> student, {label}: {got} B per step measured, formula {formula} B")
    plot_distill_vs_hard({"hard labels": [h["curve"] for h in hard], "distilled": [k["curve"] for k in kd]},
                         {"hard labels": [h["val_loss"] for h in hard], "distilled": [k["val_loss"] for k in kd]},
                         out_dir / "08_distill_vs_hard.png")
    plot_sweeps(temps, variants, hard[0]["val_loss"], out_dir / "08_temperature_and_pkd.png")
    if stream:
        plot_stream_bytes(stream, out_dir / "08_stream_bytes.png")
    return {"margins": margins.tolist(), "accuracy_gain": acc.tolist(), "temperatures": temps,
            "variants": variants, "stream": stream}
