"""What composes with what: one table, consulted by every entry point before any rank starts.

Each technique minidist trains with is a *feature*: a fragment of the config that turns it on
(:data:`FEATURES`). Two features either compose — and then a test proves that the pair trains
like one rank (``tests/test_composition.py`` walks every cell) — or are refused here, with one
message that names both keys and says what to use instead (:data:`REFUSED`). A few features
only make sense beside another (sequence parallelism beside tensor parallelism…):
:data:`NEEDS`. Features that set the same key differently (two optimizers, two ZeRO stages)
are not a pair at all.

:func:`check` is what :func:`minidist.training.config.load_config` calls — so the train CLI,
the Python API (``Trainer``), distillation and the estimator's config path all refuse the same
combinations with the same words; :func:`support_matrix` renders the table for the README and
``python -m minidist.train --support-matrix``.
"""
from __future__ import annotations

import dataclasses
import itertools

from ..defaults import DDP, PARAMETER_SERVER
from .config_schema import ConfigError


@dataclasses.dataclass(frozen=True)
class Feature:
    """One technique: the config fragment that turns it on, the key a message names, the
    ranks it needs (``tp``/``pp``/``dp`` factors of the world) and ``on(cfg)``, how to tell
    it is on in a merged config."""

    name: str
    key: str
    fragment: dict
    on: object
    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1


def _par(cfg):
    return cfg["parallel"]


def _zero(cfg):
    return cfg["zero_optimization"]["stage"]


def _dp(cfg, world):
    par = _par(cfg)
    return world // (par["tensor"] * par["pipeline"] * par["context"]["size"])


def _opt(name):
    return lambda cfg, world: cfg["optimizer"]["type"].lower() == name.lower()


_DATA = {"zero_optimization": {"stage": 0}}
FEATURES = {f.name: f for f in (
    Feature("DDP", "parallel.data_parallel", {"parallel": {"data_parallel": DDP}, **_DATA},
            lambda c, w: _zero(c) == 0 and _par(c)["data_parallel"] == DDP and _dp(c, w) > 1, dp=2),
    Feature("parameter server", "parallel.data_parallel", {"parallel": {"data_parallel": PARAMETER_SERVER}, **_DATA},
            lambda c, w: _zero(c) == 0 and _par(c)["data_parallel"] == PARAMETER_SERVER and _dp(c, w) > 1, dp=2),
    Feature("ZeRO-1", "zero_optimization.stage", {"zero_optimization": {"stage": 1}},
            lambda c, w: _zero(c) == 1, dp=2),
    Feature("ZeRO-2", "zero_optimization.stage", {"zero_optimization": {"stage": 2}},
            lambda c, w: _zero(c) == 2, dp=2),
    Feature("ZeRO-3", "zero_optimization.stage", {"zero_optimization": {"stage": 3}},
            lambda c, w: _zero(c) == 3, dp=2),
    Feature("ZeRO-Offload", "zero_optimization.offload_optimizer.device",
            {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
            lambda c, w: c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"),
    Feature("overlap_comm", "zero_optimization.overlap_comm", {"zero_optimization": {"overlap_comm": True}},
            lambda c, w: c["zero_optimization"]["overlap_comm"]),
    Feature("TP", "parallel.tensor", {"parallel": {"tensor": 2}}, lambda c, w: _par(c)["tensor"] > 1, tp=2),
    Feature("SP", "parallel.sequence_parallel", {"parallel": {"sequence_parallel": True}},
            lambda c, w: _par(c)["sequence_parallel"]),
    Feature("tp_comm_overlap", "parallel.tp_comm_overlap", {"parallel": {"tp_comm_overlap": True}},
            lambda c, w: _par(c)["tp_comm_overlap"]),
    Feature("PP", "parallel.pipeline", {"parallel": {"pipeline": 2}, "gradient_accumulation_steps": 4},
            lambda c, w: _par(c)["pipeline"] > 1, pp=2),
    Feature("fp16", "fp16.enabled", {"fp16": {"enabled": True}, "dtype": "float32"},
            lambda c, w: c["fp16"]["enabled"]),
    Feature("bf16", "bf16.enabled", {"bf16": {"enabled": True}, "dtype": "float32"},
            lambda c, w: c["bf16"]["enabled"]),
    Feature("SGD", "optimizer.type", {"optimizer": {"type": "SGD", "params": {"momentum": 0.9}}}, _opt("sgd")),
    Feature("Adam", "optimizer.type", {"optimizer": {"type": "Adam"}}, _opt("adam")),
    Feature("LAMB", "optimizer.type", {"optimizer": {"type": "LAMB"}}, _opt("lamb")),
    Feature("clipping", "gradient_clipping", {"gradient_clipping": 0.05}, lambda c, w: c["gradient_clipping"] > 0),
    Feature("selective recompute", "activation_checkpointing.granularity",
            {"activation_checkpointing": {"granularity": "selective"}},
            lambda c, w: c["activation_checkpointing"]["granularity"] == "selective"),
    Feature("full recompute", "activation_checkpointing.granularity",
            {"activation_checkpointing": {"granularity": "full", "num_layers": 2}},
            lambda c, w: c["activation_checkpointing"]["granularity"] == "full"),
    Feature("cpu_checkpointing", "activation_checkpointing.cpu_checkpointing",
            {"activation_checkpointing": {"cpu_checkpointing": True}},
            lambda c, w: c["activation_checkpointing"]["cpu_checkpointing"]),
    Feature("distillation", "distillation", {"distillation": {"teacher": {"steps": 1}}},
            lambda c, w: c["distillation"] is not None),
    Feature("PEFT (LoRA)", "peft", {"peft": {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "lora_dropout": 0.1,
                                             "target_modules": ["c_attn", "c_proj"]}},
            lambda c, w: c["peft"] is not None),
    Feature("CP", "parallel.context.size", {"parallel": {"context": {"size": 2, "algorithm": "ring"}}},
            lambda c, w: _par(c)["context"]["size"] > 1, cp=2),
    # a group of 8 tokens (one sequence) on every layout, so that every layout routes the same groups;
    # block 0 of 2 is MoE (every_n_layers 2: the walk stays cheap)
    Feature("MoE", "model.moe", {"model": {"moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0,
                                                   "group_size": 8, "every_n_layers": 2}}},
            lambda c, w: c["model"].get("moe") is not None),
    Feature("EP", "parallel.expert", {"parallel": {"expert": 2}}, lambda c, w: _par(c).get("expert", 1) > 1, dp=2),
)}

# the features that split the world: the ranks a pair needs is the product of theirs
PARALLEL = ("DDP", "parameter server", "ZeRO-1", "ZeRO-2", "ZeRO-3", "TP", "PP", "CP", "EP")


def _why(text: str, instead: str) -> str:
    return f"{text}; {instead}"


# pairs refused, with the one message that says why and what to use instead (the first
# feature's key is the one the error names)
REFUSED = {pair: message for pair, message in {
    ("LAMB", "ZeRO-1"): _why("LAMB needs whole-tensor norms and cannot update a ZeRO shard",
                             "use Adam, AdamW or SGD with zero_optimization.stage > 0, or LAMB with stage 0"),
    ("LAMB", "ZeRO-2"): _why("LAMB needs whole-tensor norms and cannot update a ZeRO shard",
                             "use Adam, AdamW or SGD with zero_optimization.stage > 0, or LAMB with stage 0"),
    ("LAMB", "ZeRO-3"): _why("LAMB needs whole-tensor norms and cannot update a ZeRO shard",
                             "use Adam, AdamW or SGD with zero_optimization.stage > 0, or LAMB with stage 0"),
    ("fp16", "bf16"): _why("fp16 and bf16 cannot both be enabled", "pick one"),
    ("PEFT (LoRA)", "TP"): _why("parameter-efficient fine-tuning wraps whole layers here, not Megatron's "
                                "column- and row-parallel shards", "set parallel.tensor 1 and fine-tune data "
                                                                   "parallel or with ZeRO"),
    ("PEFT (LoRA)", "PP"): _why("parameter-efficient fine-tuning wraps the whole model here, not the pipeline "
                                "engine's stages", "set parallel.pipeline 1 and fine-tune data parallel or with ZeRO"),
    ("PEFT (LoRA)", "distillation"): _why("a distillation student trains every parameter here",
                                          "remove the peft section or the distillation section"),
    ("CP", "PP"): _why("context parallelism is not built into the pipeline engine here (its stages exchange "
                       "whole sequences)", "set parallel.context.size 1, or parallel.pipeline 1 and combine CP "
                                           "with tensor and data parallelism"),
    ("CP", "distillation"): _why("distillation's losses need every position's logits and hidden states on one "
                                 "rank, which context parallelism splits", "set parallel.context.size 1 (the "
                                                                           "teacher can have its own ranks: "
                                                                           "distillation.teacher_ranks)"),
    ("MoE", "CP"): _why("a routing group is the tokens one rank holds, and context parallelism would split every "
                        "sequence's tokens (and so the groups) over its ranks", "set parallel.context.size 1"),
    ("MoE", "distillation"): _why("the distillation runner builds a dense teacher and student here",
                                  "remove model.moe or the distillation section"),
    ("MoE", "PEFT (LoRA)"): _why("fine-tuning methods wrap the dense MLP's layers by name, not the experts'",
                                 "remove model.moe or the peft section"),
}.items()}

# three features refused together though every two of them compose
REFUSED_TRIPLES = {
    ("clipping", "EP", "parameter server"): _why("the clipping norm over experts and the other parameters is taken "
                                                 "from gradients reduced before the step, and the parameter server "
                                                 "reduces them inside it", "use data_parallel 'ddp' or a ZeRO stage"),
    ("overlap_comm", "ZeRO-2", "PP"): _why("with parallel.pipeline > 1 the data-parallel reduction waits for the "
                                           "pipeline's flush (DeepSpeed's pipeline engine does the same), so ZeRO-2 "
                                           "cannot reduce-scatter during backward", "set overlap_comm false"),
    ("overlap_comm", "ZeRO-3", "PP"): _why("with parallel.pipeline > 1 the data-parallel reduction waits for the "
                                           "pipeline's flush, so ZeRO-3 reduce-scatters once per step, after it, "
                                           "with no backward left to overlap", "set overlap_comm false"),
}

# features that need another one beside them: (the other(s), one of which must be on; why)
NEEDS = {
    "ZeRO-Offload": (("ZeRO-1", "ZeRO-2", "ZeRO-3"), "offload needs ZeRO stage 1, 2 or 3 (DeepSpeed's "
                                                     "ZeRO-Offload); set zero_optimization.stage"),
    "SP": (("TP",), "needs parallel.tensor > 1 (it splits over the tensor-parallel ranks)"),
    "tp_comm_overlap": (("TP",), "needs parallel.tensor > 1 (it overlaps the tensor-parallel collectives)"),
    "EP": (("MoE",), "splits the experts of a mixture of experts over data-parallel ranks: add a model.moe "
                     "section (or set parallel.expert 1)"),
    "cpu_checkpointing": (("selective recompute", "full recompute"),
                          "moves the checkpoints of recomputation to the host: set "
                          "activation_checkpointing.granularity full or selective"),
}

# the same key set two ways: not a pair (the matrix shows "—")
EXCLUSIVE = [("DDP", "parameter server", "ZeRO-1", "ZeRO-2", "ZeRO-3"), ("SGD", "Adam", "LAMB"),
             ("selective recompute", "full recompute"),
             ("DDP", "ZeRO-Offload"), ("parameter server", "ZeRO-Offload")]   # offload needs a ZeRO stage


def active(cfg: dict, world_size: int) -> list:
    """The features a (merged) config turns on, in table order."""
    return [name for name, f in FEATURES.items() if f.on(cfg, world_size)]


def exclusive(a: str, b: str) -> bool:
    return any(a in group and b in group for group in EXCLUSIVE) or a == b


def refusal(a: str, b: str) -> tuple[str, str] | None:
    """``(first, message)`` when features ``a`` and ``b`` are refused together, else None."""
    for pair in ((a, b), (b, a)):
        if pair in REFUSED:
            return pair[0], REFUSED[pair]
    return None


def cell(a: str, b: str) -> str:
    """"works", "—" (not a pair) or the refusal message, for features ``a`` and ``b``. A
    feature that needs another (:data:`NEEDS`) runs only beside it: the pair is refused when
    the other feature is refused with every one it could run beside (SP needs TP, and TP is
    refused with PEFT: SP with PEFT cannot run either)."""
    if exclusive(a, b):
        return "—"
    r = refusal(a, b)
    if r:
        return r[1]
    for x, y in ((a, b), (b, a)):
        needed = NEEDS[x][0] if x in NEEDS else ()
        if needed and y not in needed:
            blocked = [refusal(n, y) for n in needed]
            if all(blocked):
                return blocked[0][1]
    return "works"


def _label(name: str, cfg: dict) -> str:
    """A feature's name in a refusal: the table's, or for fine-tuning the config's own method (the
    table's row is named after LoRA, and stands for every method)."""
    peft = cfg.get("peft")
    if name == "PEFT (LoRA)" and isinstance(peft, dict) and peft.get("peft_type"):
        return f"PEFT ({str(peft['peft_type']).upper()})"
    return name


def check(cfg: dict, world_size: int) -> None:
    """Refuse (ConfigError naming the keys and the way out) the first refused pair or unmet
    need among the features ``cfg`` turns on."""
    on = active(cfg, world_size)
    for name in on:
        if name in NEEDS and not any(other in on for other in NEEDS[name][0]):
            raise ConfigError(FEATURES[name].key, NEEDS[name][1])
    for a, b in itertools.combinations(on, 2):
        r = refusal(a, b)
        if r:
            first, message = r
            second = b if first == a else a
            raise ConfigError(FEATURES[first].key, f"{_label(first, cfg)} ({FEATURES[first].key}) with "
                                                   f"{_label(second, cfg)} ({FEATURES[second].key}): {message}")
    for triple, message in REFUSED_TRIPLES.items():
        if all(t in on for t in triple):
            raise ConfigError(FEATURES[triple[0]].key, f"{' with '.join(triple)}: {message}")


def support_matrix() -> str:
    """The table as Markdown: one row per feature, ✓ works, ✗ refused (numbered reasons
    below), — not a pair."""
    names = list(FEATURES)
    reasons: list[str] = []
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a in names:
        row = []
        for b in names:
            c = cell(a, b)
            if c in ("works", "—"):
                row.append("✓" if c == "works" else "—")
            else:
                if c not in reasons:
                    reasons.append(c)
                row.append(f"✗{reasons.index(c) + 1}")
        lines.append(f"| **{a}** | " + " | ".join(row) + " |")
    lines += [""] + [f"{i}. {r}" for i, r in enumerate(reasons, 1)]
    lines += [""] + [f"* {' with '.join(t)}: refused: {m}" for t, m in REFUSED_TRIPLES.items()]
    lines += [f"* {a} needs {' or '.join(others)}: {why}" for a, (others, why) in NEEDS.items()]
    return "\n".join(lines)
