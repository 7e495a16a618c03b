"""One rank of a distillation job: train the teacher, freeze it, distil the student.

``python -m minidist.train --config C.json`` with a ``distillation`` section calls
:func:`distill_rank` on every rank (the Python API: :func:`run`). Two phases:

1. **Teacher training** — the teacher (``distillation.teacher.model``, ``.steps``) is trained
   on the same data as the student, on the students' global batch, by the ranks that will
   hold it: every rank when ``teacher_ranks`` is 0 (data parallel), else the k teacher ranks.
   It runs on a device of its own (a separate job on the same ranks), so the student's
   memory figures are the distillation's alone; co-located, it trains in the student's layout
   (tensor, pipeline, ZeRO). Then it is frozen (:mod:`.teacher`), whole on every rank.
   With ``distillation.teacher.load: DIR`` it is read from a ``--save`` checkpoint instead
   (:func:`~.teacher.read_teacher`, every rank, before any message) and frozen the same way.
2. **Distillation** — the student trains with ``kd_loss`` (+ β·``pkd_loss``) instead of
   cross-entropy: a :class:`~.student.StudentTrainer` is the ordinary
   :class:`~minidist.training.Trainer` (any layout: :mod:`.student`) whose loss asks a
   *source* for the teacher's outputs — the co-located frozen teacher, or a teacher rank
   (:mod:`.streaming`).

``--save``/``--load`` write and resume save points of either phase (:mod:`.resume`).
"""
from __future__ import annotations


from .. import distributed as dist
from ..device import Device
from ..training.config import ConfigError, load_config
from ..training.data import shard_batch
from ..training.trainer import Trainer
from ..checkpoint import full_state_dict, load_into, load_weights
from .losses import pkd_pairs
from .student import StudentTrainer
from .resume import Saver, check_resume, read_distill_checkpoint
from .streaming import (TAGS, LocalSource, RemoteSource, Wire, payload_bytes, replicas_of, serve, student_need,
                        teacher_of)
from .teacher import FrozenTeacher, one_rank_config, read_teacher, run_precision, teacher_config, whole_model, wire_dtype
from ..training.config_distillation import student_replicas

TEACHER_TRAINING_WAIT = 24 * 3600.0    # seconds a student may wait for its first payload (teacher training)


def _wire(cfg: dict, d: dict, vocab_size: int) -> Wire:
    """How the teacher's outputs travel: in the run's precision, full logits or top-K."""
    return Wire(wire_dtype(run_precision(cfg), cfg["dtype"]), vocab_size, d["temperature"], d["top_k"])


def _loaded_run(tcfg: dict, device, ckpt, state: dict) -> Trainer:
    """The teacher's Trainer holding a checkpoint's weights instead of training them: its
    loss history is the manifest's, its held-out figures are evaluated here."""
    run = Trainer(one_rank_config(tcfg), None, device=device)
    run.model.load_state_dict(state)
    run.history[:] = [{"step": i, "loss": loss} for i, loss in enumerate(ckpt.manifest.get("losses") or [])]
    run.final = run.evaluate()
    return run


def _group(comm, device):
    """A private copy of ``comm`` computing on ``device`` (None for a group of one)."""
    if comm is None or comm.size == 1:
        return None
    g = comm.dup()
    g.device = device
    return g


class DistillRank:
    """What one rank did: its role, the teacher's training run and frozen teacher (teacher
    ranks), the student trainer (student ranks), and the bytes it streamed.

    ``save``/``save_interval``: write save points there (:class:`~.resume.Saver`);
    ``loaded``: a :class:`~.resume.DistillCheckpoint` already read and checked (before any
    rank started) to resume — or, with ``weights_only``, whose weights start a new run."""

    def __init__(self, comm, config, progress: bool = False, stream=None, save=None, save_interval: int = 0,
                 loaded=None, weights_only: bool = False):
        self.comm = comm
        self.world_size = W = comm.size if comm is not None else 1
        self.rank = r = comm.rank if comm is not None else 0
        self.cfg = cfg = load_config(config, W)
        d = self.d = cfg["distillation"]
        if d is None:
            raise ConfigError("distillation", "this config has no distillation section; use minidist.train's Trainer")
        self.loaded = state = None
        if d["teacher"]["load"] is not None:
            # before any message: a missing, damaged or mismatched checkpoint fails alike on every rank
            d, self.loaded, state = read_teacher(cfg)
            self.d = d
        # --load of a save point (minidist.distill.resume): in the student phase the teacher is its last step, frozen
        student_phase = loaded is not None and loaded.phase == "student"
        if student_phase and loaded.teacher is not None:
            self.loaded, state = loaded.teacher, full_state_dict(loaded.teacher.universal)
        saver = Saver(save, save_interval, cfg, W, None if d["teacher"]["load"] else d["teacher"]["steps"]) \
            if save else None
        if saver is not None and loaded is not None and (student_phase or (
                not weights_only and loaded.step == d["teacher"]["steps"])):    # the teacher is done: keep it
            saver.keep_teacher(loaded.teacher, r)
        k = d["teacher_ranks"]
        self.is_teacher, self.is_student = (k == 0 or r < k), (k == 0 or r >= k)
        self.role = "teacher+student" if k == 0 else ("teacher" if self.is_teacher else "student")
        self.n_students = W - k
        self.replicas = student_replicas(cfg, self.n_students)     # the student's data-parallel degree
        if comm is not None and k:
            # why: two groups from one world (collective: every rank takes part in both splits)
            tcomm = comm.split(0 if self.is_teacher else None, r)
            scomm = comm.split(0 if self.is_student else None, r)
        else:
            tcomm = scomm = comm
        self.device = comm.device if comm is not None else Device(cfg["device"], rank=0)
        self.teacher_run = self.teacher = self.student = None
        if self.is_teacher:                                           # phase 1
            dev = Device(cfg["device"], rank=r)
            tcfg = teacher_config(dict(cfg, distillation=d), self.n_students, k)
            if state is None:
                self.teacher_run = Trainer(tcfg, _group(tcomm, dev), device=dev)
                if loaded is not None:                                # a save point of the teacher phase
                    (load_weights if weights_only else load_into)(self.teacher_run, loaded.teacher)
                self.teacher_run.fit(progress=progress, stream=stream,   # a collective: every rank or none
                                     on_step=saver.teacher if saver is not None else None)
            else:
                self.teacher_run = _loaded_run(tcfg, dev, self.loaded, state)
            self.teacher = FrozenTeacher(whole_model(self.teacher_run), self.device, run_precision(cfg))
        scfg = dict(cfg, distillation=None)
        lt, ls = d["teacher"]["model"]["n_layer"], cfg["model"]["n_layer"]
        self.blocks = [j for _, j in pkd_pairs(ls, lt, d["patient"]["mapping"])] if d["patient"] else []
        mark = comm.log.mark() if comm is not None else None
        start = loaded.step if student_phase and not weights_only else 0
        if self.is_student:                                           # phase 2, student side
            self.student = StudentTrainer(scfg, scomm if scomm is not None and scomm.size > 1 else None,
                                          self.device, d)
            self.student.cfg["distillation"] = d                      # the report shows the whole config
            if student_phase:
                (load_weights if weights_only else load_into)(self.student, loaded.student)
            self.wire = _wire(cfg, d, self.student.model_config.vocab_size)
            if k == 0:
                self.student.source = LocalSource(self.teacher, self.wire, self.blocks)
            else:
                replica, need = student_need(cfg, self.student.pairs, r - k, self.n_students)
                self.student.source = RemoteSource(comm, teacher_of(replica, k), self.wire, need,
                                                   TEACHER_TRAINING_WAIT)
            self.student.fit(progress=progress, stream=stream,
                             on_step=saver.student if saver is not None else None)
        else:                                                         # phase 2, teacher side
            self.wire = _wire(cfg, d, self.teacher_run.model_config.vocab_size)
            serve(comm, self.teacher, self.wire, self._batches(k, start))
        self.stream_log = comm.log.since(mark) if comm is not None else None

    def _batches(self, k, start: int = 0):
        """(micro-batch, [(student world rank, its Need), …]) in the order the students consume
        them, from step ``start`` (where resumed students continue): for every micro-batch each
        replica this rank serves, with the ranks of that replica that need something."""
        run, b = self.teacher_run, self.cfg["train_micro_batch_size_per_gpu"]
        acc, D = self.cfg["gradient_accumulation_steps"], self.replicas
        pairs = pkd_pairs(self.cfg["model"]["n_layer"], self.d["teacher"]["model"]["n_layer"],
                          self.d["patient"]["mapping"]) if self.d["patient"] else []
        receivers = {d: [] for d in replicas_of(self.rank, k, D)}
        for j in range(self.n_students):
            replica, need = student_need(self.cfg, pairs, j, self.n_students)
            if replica in receivers and (need.soft or need.blocks):
                receivers[replica].append((k + j, need))
        for step in range(start, self.cfg["steps"]):
            for micro in range(acc):
                x, _ = run.dataset.get_batch(b * D, step * acc + micro, self.cfg["seed"])
                for d, ranks in receivers.items():
                    yield shard_batch(x, d, D), ranks                 # (b, s) replica d's slice

    # -- figures for the report ----------------------------------------------------------
    def expected_bytes_per_step(self, top_k="config") -> int:
        """Bytes one student receives per step, from :func:`~.streaming.payload_bytes`: one
        student rank of a data-parallel layout, one tensor column of a replica under tensor and
        pipeline parallelism (its stages together: the soft targets once, every matched block's
        states once). The stream's whole is replicas × tp times it (:func:`~.streaming.stream_bytes`)."""
        cfg, d = self.cfg, self.d
        seq = (self.student or self.teacher_run).dataset.seq_len
        vocab = self.wire.vocab
        per_micro = payload_bytes(cfg["train_micro_batch_size_per_gpu"], seq, vocab, self.wire.value_bytes,
                                  d["top_k"] if top_k == "config" else top_k, cfg["model"]["n_embd"],
                                  len(self.blocks))
        return per_micro * cfg["gradient_accumulation_steps"]

    def student_model_states(self) -> dict:
        """The student's model states at its optimizer step: the rank's snapshot (see
        :mod:`minidist.parallel.data.base`) less what a co-located frozen teacher holds."""
        ms = self.student.strategy.model_states
        if ms is None:                       # no step taken (a resumed run that had nothing to train): now
            cur = self.device.memory.current
            ms = {c: int(cur[c]) for c in ("parameters", "gradients", "optimizer_states")}
            ms["total"] = sum(ms.values())
        ms = dict(ms)
        held = self.teacher.memory() if self.teacher is not None else {}
        for c in ("parameters", "gradients", "optimizer_states"):
            ms[c] -= held.get(c, 0)
            ms["total"] -= held.get(c, 0)
        return ms

    def section(self) -> dict:
        """This rank's part of the report's ``distillation`` section (plain data)."""
        out = {"rank": self.rank, "role": self.role}
        log = self.stream_log
        if self.d["teacher_ranks"] and log is not None:
            out["stream"] = {
                "bytes_sent": sum(e.nbytes for e in log.messages("send") if e.tag in TAGS),
                "bytes_received": sum(e.nbytes for e in log.messages("recv", "recv") if e.tag in TAGS),
                "messages_sent": sum(e.tag in TAGS for e in log.messages("send"))}
        if self.teacher is not None:
            t = self.teacher_run
            trained = self.loaded is None               # else read from a checkpoint: not trained here
            out["teacher"] = {"n_params": self.teacher.n_params, "model": vars(t.model_config),
                              "steps": self.d["teacher"]["steps"],
                              "train_loss": t.history[-1]["loss"] if t.history else None, "final": t.final,
                              "memory": self.teacher.memory(), "bytes_per_parameter": self.teacher.bytes_per_parameter(),
                              "holds_no_state": self.teacher.holds_no_state(),
                              "loaded_from": None if trained else self.loaded.step_dir,
                              "training_peak_bytes": t.device.memory.peak if trained else None,
                              "training_sim_time": t.device.clock.time if trained else None}
        if self.student is not None:
            s = self.student
            out["student"] = {"n_params": s.n_params, "model": vars(s.model_config), "final": s.final,
                              "model_states": self.student_model_states(),
                              "history": s.history,
                              "bytes_per_step_expected": self.expected_bytes_per_step(),
                              "bytes_per_step_full_logits": self.expected_bytes_per_step(top_k=None)}
        return out


def distil_with(teacher: FrozenTeacher, config, progress: bool = False) -> StudentTrainer:
    """Distil a student of ``config`` from an already trained, frozen ``teacher`` in this
    process (no teacher training phase): the building block of the demo's comparisons."""
    cfg = load_config(config)
    d = cfg["distillation"]
    d = dict(d, teacher=dict(d["teacher"], model=vars(teacher.config)))     # the teacher given (or loaded) is the truth
    student = StudentTrainer(dict(cfg, distillation=None), None, None, d)
    blocks = [j for _, j in student.pairs]
    student.source = LocalSource(teacher, _wire(cfg, d, student.model_config.vocab_size), blocks)
    student.fit(progress=progress)
    return student


def distill_rank(comm, config, progress: bool = False, stream=None, **checkpoint) -> DistillRank:
    """Run this rank's part of the distillation job of ``config`` (every rank calls it).
    ``checkpoint``: ``save``, ``save_interval``, ``loaded`` (a verified
    :class:`~.resume.DistillCheckpoint`), ``weights_only`` — see :class:`DistillRank`."""
    return DistillRank(comm, config, progress, stream, **checkpoint)


def run(config, world_size: int = 1, save=None, save_interval: int = 0, load=None, weights_only: bool = False,
        **spawn_kwargs) -> list[DistillRank]:
    """The whole job on ``world_size`` in-process ranks (one: no communicator); one
    :class:`DistillRank` per rank, in rank order. ``save``/``save_interval``: write save
    points (:mod:`.resume`); ``load``: resume the one in that folder (checked first, as
    ``python -m minidist.train --load`` does), ``weights_only``: start anew from its weights."""
    loaded = None
    if load is not None:
        loaded = read_distill_checkpoint(load)
        check_resume(loaded, load_config(config, world_size), world_size, weights_only)
    ckpt = {"save": save, "save_interval": save_interval, "loaded": loaded, "weights_only": weights_only}
    if world_size == 1:
        return [DistillRank(None, config, **ckpt)]
    return dist.spawn(distill_rank, world_size, config, **ckpt, **spawn_kwargs)
