"""Exercise: how many parameters each fine-tuning method trains, for any GPT shape.

Reference: ``minidist.peft.costs`` (``lora_parameters``, ``adapter_parameters``,
``prefix_parameters``, ``prefix_encoder_parameters``), checked here against real models built
by ``minidist.peft.get_peft_model`` (minidist/peft/__init__.py).
"""
from __future__ import annotations

import contextvars

from ..model import GPT, GPTConfig
from ..peft import costs as C
from ..peft import get_peft_model
from .grading import Wrong, on_case

NAME = "peft_parameter_counts"
TOPIC = "fine-tuning"
TITLE = "Counting what LoRA, adapters, P-tuning v2 and prefix-tuning train"
NOTEBOOK = "14_parameter_efficient_fine_tuning"
FUNCTIONS = ("lora_count", "adapter_count", "prefix_count")
FORBIDDEN_IMPORTS = ("minidist.peft", "minidist.estimate", "torch", "jax")

STUB = '''"""Count the trainable parameters of each fine-tuning method on a GPT of L blocks, width h.

Every block of minidist's GPT (nanoGPT's layout, weights stored (d_in, d_out)) has four
linear layers: attn.c_attn (h, 3h), attn.c_proj (h, h), mlp.c_fc (h, 4h), mlp.c_proj (4h, h).
The pretrained model is frozen; only what the method adds trains.

``lora_count(n_layer, n_embd, r, target_modules)``
    LoRA (Hu et al. 2021): beside every adapted matrix W (d_in, d_out), A (d_in, r) and
    B (r, d_out). ``target_modules`` is a list of names as PEFT matches them: a layer is
    adapted when its name (e.g. "attn.c_proj") equals a target or ends with "." + target,
    so "c_proj" adapts both projections and "mlp.c_proj" only the MLP's.

``adapter_count(n_layer, n_embd, m)``
    Houlsby adapters (Houlsby et al. 2019): two per block, after the attention and after
    the MLP, each a down-projection h -> m and an up-projection m -> h, both with biases.

``prefix_count(n_layer, n_embd, p, k=None)``
    p virtual key and value positions in every layer's attention (all heads side by side:
    a key and a value are h numbers each).
    k None: P-tuning v2 (Liu et al. 2022) — the prefixes themselves are the parameters.
    k given: prefix-tuning while training (Li & Liang 2021): the prefixes come from a
    reparameterisation — an embedding (p, k), then Linear(k, k) with bias, tanh, and
    Linear(k, every layer's keys and values at once) with bias.

Return ints. Pure Python: not allowed are minidist's own counts (minidist.peft,
minidist.estimate), torch and jax. The grader compares with real models of other shapes.
"""


def lora_count(n_layer, n_embd, r, target_modules):
    raise NotImplementedError


def adapter_count(n_layer, n_embd, m):
    raise NotImplementedError


def prefix_count(n_layer, n_embd, p, k=None):
    raise NotImplementedError
'''

HINTS = [
    "LoRA: r·(d_in + d_out) per adapted matrix — A has d_in·r numbers, B r·d_out — times n_layer.",
    "c_attn is (h, 3h): it makes q, k and v at once. The MLP is 4h wide.",
    "An adapter: (h·m + m) + (m·h + h). Two per block.",
    "P-tuning v2: keys AND values, in every layer: 2·L·p·h. The encoder's last layer outputs 2·L·h numbers per "
    "position.",
]


def reference():
    class Reference:
        @staticmethod
        def lora_count(n_layer, n_embd, r, target_modules):
            return C.lora_parameters(n_layer, n_embd, r, target_modules)

        @staticmethod
        def adapter_count(n_layer, n_embd, m):
            return C.adapter_parameters(n_layer, n_embd, m)

        @staticmethod
        def prefix_count(n_layer, n_embd, p, k=None):
            return C.prefix_parameters(n_layer, n_embd, p) if k is None else \
                C.prefix_encoder_parameters(n_layer, n_embd, p, k)
    return Reference


def measured(n_layer, n_embd, n_head, peft: dict) -> int:
    """What a real GPT of that shape trains once ``get_peft_model`` has changed it."""
    def build():
        model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
        get_peft_model(model, peft)
        return sum(p.size for p in model.parameters() if p.requires_grad)
    return contextvars.Context().run(build)


def _lora_mistakes(L, h, r, targets):
    shapes = C.lora_matrices(h, targets)
    out = [
        (L * sum(r * d_in * d_out for _, d_in, d_out in shapes), "you multiply r by d_in·d_out; A and B hold "
                                                                  "r·(d_in + d_out) numbers together"),
        (L * sum(r * d_in for _, d_in, _ in shapes), "you count A only; B (r, d_out) trains too"),
        (sum(r * (d_in + d_out) for _, d_in, d_out in shapes), "you count one block; every block is adapted"),
        (L * sum(r * (h + h) for _ in shapes), "you take every matrix as (h, h); c_attn is (h, 3h), c_fc (h, 4h), "
                                               "the MLP's c_proj (4h, h)"),
    ]
    if "c_proj" in targets:                 # matched as one layer instead of both
        for only in ("attn.c_proj", "mlp.c_proj"):
            one = [only if t == "c_proj" else t for t in targets]
            out.append((C.lora_parameters(L, h, r, one), "\"c_proj\" names both projections (attn.c_proj and "
                                                         "mlp.c_proj): PEFT matches the end of the name"))
    return out


def _adapter_mistakes(L, h, m):
    return [(L * 2 * 2 * h * m, "you forget the biases: the down-projection has m, the up-projection h"),
            (L * (2 * h * m + h + m), "you count one adapter per block; Houlsby puts two (after attention and "
                                      "after the MLP)"),
            (2 * (2 * h * m + h + m), "you count one block's adapters; every block has them")]


def _prefix_mistakes(L, h, p, k):
    if k is None:
        return [(L * p * h, "you count the keys only; every layer has p values too"),
                (2 * p * h, "you count one layer's prefixes; every layer has its own")]
    out = 2 * L * h
    return [(C.prefix_parameters(L, h, p), "that is the count once the MLP is dropped; while training, the "
                                            "embedding and the MLP are what trains"),
            (p * k + k * k + k * out, "you forget the biases of the MLP's layers"),
            (p * k + k * k + k + k * L * h + L * h, "the encoder's output holds keys AND values of every layer: 2·L·h")]


def _check(sol, fn, args, peft, mistakes, n_head):
    what = f"{fn}{args}"
    with on_case(sol, what):
        got = getattr(sol, fn)(*args)
    if isinstance(got, bool) or not isinstance(got, int) and not (hasattr(got, "is_integer") and got.is_integer()):
        raise Wrong(f"{what}: return an int, got {got!r}")
    want = measured(args[0], args[1], n_head, peft)
    if int(got) != want:
        why = next((msg for value, msg in mistakes if value == int(got)), "")
        raise Wrong(f"{what}: a real GPT of that shape trains {want} parameters, you counted {int(got)}"
                    + (f". It looks like {why}" if why else ""))


def check_lora(sol, L, h, n_head, r, targets):
    _check(sol, "lora_count", (L, h, r, list(targets)), {"peft_type": "LORA", "r": r, "target_modules": list(targets)},
           _lora_mistakes(L, h, r, targets), n_head)


def check_name_rule(sol):
    """PEFT's rule by name alone: a target matches a layer whose name equals it or ends with
    "." + target ("proj" matches nothing: "c_proj" does not end with ".proj"), and a layer two
    targets match is adapted once. Counted by the formula: a GPT refuses a target of no layer."""
    for targets in (["proj"], ["c_proj", "attn.c_proj"], ["c_fc", "c_fc"]):
        args = (2, 8, 2, list(targets))
        what = f"lora_count{tuple(args)}"
        with on_case(sol, what):
            got = sol.lora_count(*args)
        want = C.lora_parameters(*args)
        if got != want:
            raise Wrong(f"{what}: expected {want}, you counted {got!r}. A layer is adapted when its name equals a "
                        f"target or ends with '.' + target ('proj' matches no layer: 'c_proj' does not end with "
                        f"'.proj'), and once, however many targets match it")


def check_adapter(sol, L, h, n_head, m):
    _check(sol, "adapter_count", (L, h, m), {"peft_type": "ADAPTER", "bottleneck_size": m},
           _adapter_mistakes(L, h, m), n_head)


def check_prefix(sol, L, h, n_head, p, k=None):
    peft = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": p, "prefix_projection": k is not None}
    if k is not None:
        peft["encoder_hidden_size"] = k
    args = (L, h, p) if k is None else (L, h, p, k)
    _check(sol, "prefix_count", args, peft, _prefix_mistakes(L, h, p, k), n_head)


def held_out(sol, rng):
    """Shapes the statement does not show, drawn from the grader's seed."""
    targets = [["c_attn"], ["c_proj"], ["c_fc", "mlp.c_proj"], ["attn.c_proj", "c_fc"], ["c_attn", "c_proj", "c_fc"]]
    for _ in range(3):
        L, n_head = int(rng.integers(1, 4)), int(rng.choice([1, 2, 4]))
        h = n_head * int(rng.integers(2, 7))
        check_lora(sol, L, h, n_head, int(rng.integers(1, 9)), targets[int(rng.integers(len(targets)))])
        check_adapter(sol, L, h, n_head, int(rng.integers(1, 9)))
        check_prefix(sol, L, h, n_head, int(rng.integers(1, 6)))
        check_prefix(sol, L, h, n_head, int(rng.integers(1, 6)), int(rng.integers(2, 9)))


CHECKS = [
    ("LoRA on c_attn only (PEFT's default for GPT-2)", lambda sol: check_lora(sol, 2, 16, 4, 4, ["c_attn"])),
    ("LoRA on every linear layer, \"c_proj\" naming both", lambda sol: check_lora(sol, 3, 8, 2, 2,
                                                                                 ["c_attn", "c_proj", "c_fc"])),
    ("PEFT's name rule: a whole name or a '.'-suffix, each layer once", check_name_rule),
    ("Houlsby adapters, bottleneck 4", lambda sol: check_adapter(sol, 2, 16, 4, 4)),
    ("P-tuning v2, 5 prefix positions", lambda sol: check_prefix(sol, 3, 12, 3, 5)),
    ("prefix-tuning while training (the reparameterisation)", lambda sol: check_prefix(sol, 2, 8, 2, 3, 6)),
    ("held out: other shapes and targets", held_out),
]
