"""Every default and canonical name of minidist, defined once.

The trainer's config (:mod:`minidist.training.config`), the estimator
(:mod:`minidist.estimate`), the strategies, the demo and the CLIs import their defaults and
names from here, so that they cannot disagree. This module imports nothing from minidist:
it sits below every layer.

* :data:`DEFAULTS` — the DeepSpeed-style training config with every key filled (DeepSpeed's key names);
* :data:`DEFAULT_DEVICE` — the simulated device preset used when none is named;
* the ZeRO bucket sizes (DeepSpeed's defaults, in elements);
* :data:`STRATEGIES` — the data-parallel strategy names ("single" … "zero3");
* :data:`SCHEDULES` and :func:`normalize_schedule` — pipeline schedule names, with
  torch.distributed.pipelining's class names as aliases;
* :data:`PEFT_DEFAULTS` — the ``peft`` section (parameter-efficient fine-tuning), in the
  Hugging Face PEFT library's key names.
"""
from __future__ import annotations

# ----------------------------------------------------------------------------- hardware

DEFAULT_DEVICE = "A100-80GB-NVLink"      # a key of minidist.device.PRESETS

# ----------------------------------------------------------------------------- data

DEFAULT_DATASET = "english"              # the shipped corpus minidist/corpus/english.txt
TEXT_SEQ_LEN = 32                        # data.seq_len of a text corpus when the config leaves it out
TEXT_VAL_FRACTION = 0.1                  # share of a text corpus held out for validation
TASK_DIGITS = 6                          # data.n_digits of a synthetic task when left out

# ----------------------------------------------------------------------------- data parallelism

# DeepSpeed's zero_optimization defaults, in elements (not bytes).
REDUCE_BUCKET_SIZE = 500_000_000
ALLGATHER_BUCKET_SIZE = 500_000_000
STAGE3_PREFETCH_BUCKET_SIZE = 50_000_000
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
# PyTorch DDP's bucket_cap_mb=25, read here as 25M elements: the default of a DDP built by
# hand; a DDP built from a config gets zero_optimization.reduce_bucket_size instead.
DDP_BUCKET_SIZE = 25_000_000

# Data-parallel strategies: one rank, the naive parameter server, DDP, ZeRO stages 1-3.
SINGLE, PARAMETER_SERVER, DDP = "single", "parameter_server", "ddp"
ZERO1, ZERO2, ZERO3 = "zero1", "zero2", "zero3"
STRATEGIES = (SINGLE, PARAMETER_SERVER, DDP, ZERO1, ZERO2, ZERO3)
DATA_PARALLEL = (DDP, PARAMETER_SERVER)  # parallel.data_parallel: how stage 0 exchanges gradients
ZERO_STAGES = {DDP: 0, ZERO1: 1, ZERO2: 2, ZERO3: 3}   # zero_optimization.stage of each
# how tables and figures name them (the papers' spelling)
STRATEGY_LABELS = {SINGLE: "single rank", PARAMETER_SERVER: "parameter server", DDP: "DDP",
                   ZERO1: "ZeRO-1", ZERO2: "ZeRO-2", ZERO3: "ZeRO-3"}


def zero_strategy(stage: int) -> str:
    """The strategy name of ZeRO ``stage`` 1-3 ("zero1".."zero3"); stage 0 is plain DDP."""
    for name, s in ZERO_STAGES.items():
        if s == stage:
            return name
    raise ValueError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")

# ----------------------------------------------------------------------------- pipeline schedules

# naive: one micro-batch at a time; gpipe: all forwards then all backwards (Huang et al. 2019);
# 1f1b: PipeDream-Flush (Narayanan et al. 2021); interleaved_1f1b: v model chunks per device
# (Narayanan et al. 2021 §2.2.2); zb_h1, zb_h2, zb_v: zero bubble (Qi et al. 2023);
# dualpipe_v: DeepSeek-V3's DualPipe cut in half into a V (two chunks per device, one copy
# of the weights instead of DualPipe's two).
NAIVE, GPIPE, ONE_F_ONE_B, INTERLEAVED_1F1B = "naive", "gpipe", "1f1b", "interleaved_1f1b"
ZB_H1, ZB_H2, ZB_V, DUALPIPE_V = "zb_h1", "zb_h2", "zb_v", "dualpipe_v"
SCHEDULES = (NAIVE, GPIPE, ONE_F_ONE_B, INTERLEAVED_1F1B, ZB_H1, ZB_H2, ZB_V, DUALPIPE_V)
DEFAULT_SCHEDULE = ONE_F_ONE_B

# Other spellings, compared after lower-casing and dropping "-", "_" and spaces.
SCHEDULE_ALIASES = {
    # torch.distributed.pipelining's schedule classes
    "schedulegpipe": GPIPE,
    "schedule1f1b": ONE_F_ONE_B,
    "scheduleinterleaved1f1b": INTERLEAVED_1F1B,
    "schedulezbvzerobubble": ZB_V,
    "scheduledualpipev": DUALPIPE_V,
    # ScheduleLoopedBFS (breadth-first, Lamy-Poirier 2022) is none of minidist's schedules.
    # Names from papers, Megatron-LM and picotron
    "afab": GPIPE, "allforwardallbackward": GPIPE, "pipedreamflush": ONE_F_ONE_B,
    "interleaved": INTERLEAVED_1F1B, "dualpipev": DUALPIPE_V,
}

# Names of schedules minidist does not build, and what to use instead. Qi et al. 2023's ZB-1p
# and ZB-2p are found by their automatic scheduler (a heuristic refined by an ILP) for given
# pass times and memory; torch's ScheduleInterleavedZeroBubble is its ZB-1p order over v chunks
# per rank. minidist's zb_h1 and zb_h2 are the paper's hand-made one-chunk schedules (§2.2).
REFUSED_SCHEDULES = {
    "zb1p": "the zero-bubble paper's automatically searched ZB-1p; use 'zb_h1', its hand-made form with "
            "the same memory (1F1B's), or 'zb_v'",
    "zb2p": "the zero-bubble paper's automatically searched ZB-2p; use 'zb_h2', its hand-made form with "
            "the same memory (2p−1 micro-batches)",
    "scheduleinterleavedzerobubble": "torch's ZB-1p over several chunks per rank; use 'zb_h1' (the "
                                     "hand-made ZB-H1, one chunk per rank) or 'zb_v' (two chunks per rank)",
}


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "").replace(" ", "")


_SCHEDULE_KEYS = {**{_key(s): s for s in SCHEDULES}, **SCHEDULE_ALIASES}


def normalize_schedule(name: str) -> str:
    """The canonical name of a pipeline schedule, case-insensitive: "ZB-H1", "zbh1" -> "zb_h1",
    "ScheduleGPipe" -> "gpipe". Raises ValueError listing the choices for an unknown name, and
    saying what to use for a schedule minidist does not build (:data:`REFUSED_SCHEDULES`)."""
    if _key(name) in REFUSED_SCHEDULES:
        raise ValueError(f"minidist does not build pipeline schedule {name!r}: {REFUSED_SCHEDULES[_key(name)]}")
    try:
        return _SCHEDULE_KEYS[_key(name)]
    except KeyError:
        raise ValueError(f"unknown pipeline schedule {name!r}; choose one of {', '.join(SCHEDULES)} "
                         f"(or a torch.distributed.pipelining class name such as ScheduleGPipe)") from None

# ----------------------------------------------------------------------------- the training config

DEFAULTS = {
    "train_micro_batch_size_per_gpu": 16,
    "gradient_accumulation_steps": 1,    # also the pipeline's micro-batches per step
    "train_batch_size": None,            # DeepSpeed: micro × accumulation × data-parallel degree
    "gradient_clipping": 0.0,
    "steps": 200,
    "seed": 0,
    "dtype": "float32",                  # NumPy dtype of the parameters; float64 for exact checks
    "eval_interval": 0,                  # 0: evaluate only at the end
    "eval_iters": 4,
    "optimizer": {"type": "AdamW", "params": {}},
    "fp16": {"enabled": False, "loss_scale": 0.0, "initial_scale_power": 16, "loss_scale_window": 1000,
             "hysteresis": 2, "consecutive_hysteresis": False, "min_loss_scale": 1.0, "auto_cast": False},
    "bf16": {"enabled": False},
    "zero_optimization": {"stage": 0, "overlap_comm": False, "reduce_bucket_size": REDUCE_BUCKET_SIZE,
                          "allgather_bucket_size": ALLGATHER_BUCKET_SIZE,
                          "stage3_prefetch_bucket_size": STAGE3_PREFETCH_BUCKET_SIZE,
                          "stage3_max_live_parameters": STAGE3_MAX_LIVE_PARAMETERS,
                          "offload_optimizer": {"device": "none"}},
    "model": {"block_size": 64, "vocab_size": None, "n_layer": 2, "n_head": 4, "n_embd": 64,
              "dropout": 0.0, "bias": True,
              "moe": None},                 # a mixture of experts: MOE_DEFAULTS below (minidist.moe)
    # seq_len None: TEXT_SEQ_LEN for a text corpus, the task's own length for a synthetic task;
    # n_digits None: TASK_DIGITS; val_fraction None: TEXT_VAL_FRACTION (see config.data_config)
    "data": {"dataset": DEFAULT_DATASET, "seq_len": None, "n_digits": None, "val_fraction": None},
    # the pipeline's micro-batches per step are gradient_accumulation_steps (as in DeepSpeed)
    "parallel": {"data_parallel": DDP, "tensor": 1, "pipeline": 1, "schedule": DEFAULT_SCHEDULE,
                 "virtual_stages": 1, "sequence_parallel": False,
                 "sequence_parallel_naive": False,   # SP's column linear keeps the gathered input (sbh)
                 "pass_times": None,   # [T_F, T_B, T_W] of a stage that zb_v's order is built for; None: equal
                 "tp_comm_overlap": False,   # Megatron: backward's TP collectives under the matmuls
                 "overlap_f_b": False,   # dualpipe_v's F&B pairs overlapped (DualPipe; torch's OVERLAP_F_B)
                 "make_vocab_size_divisible_by": 1,    # Megatron's padding multiple (its default: 128)
                 # context parallelism: the sequence split over size ranks (minidist.parallel.context)
                 "context": {"size": 1, "algorithm": "ring"},
                 "expert": 1},        # expert parallelism: E/ep experts per rank, ep drawn from dp (minidist.parallel.expert)
    # Megatron's recompute_granularity / recompute_method / recompute_num_layers; DeepSpeed's
    # cpu_checkpointing and partition_activations (minidist.recompute)
    "activation_checkpointing": {"granularity": "none", "method": "uniform", "num_layers": 1,
                                 "cpu_checkpointing": False, "partition_activations": False},
    "device": DEFAULT_DEVICE,
    "distillation": None,
    "peft": None,                        # a fine-tuning method: PEFT_DEFAULTS below (minidist.peft)
}

# ----------------------------------------------------------------------------- mixture of experts

# The ``model.moe`` section (minidist.moe): Megatron-LM's names where it has one (num_experts,
# top_k, aux_loss_coef, z_loss_coef; its moe_layer_freq is every_n_layers). group_size: the
# tokens of one routing group (GShard's groups); None: every token a rank holds in one micro-batch.
MOE_DEFAULTS = {"num_experts": 4, "top_k": 2, "capacity_factor": 1.25, "aux_loss_coef": 0.01,
                "z_loss_coef": 0.001, "every_n_layers": 1, "group_size": None}

# ----------------------------------------------------------------------------- parameter-efficient fine-tuning

# The ``peft`` section, in Hugging Face PEFT's key names (LoraConfig, PrefixTuningConfig); the
# adapter's width is LLM-Adapters' ``bottleneck_size``; QLoRA's 4-bit base takes bitsandbytes'
# BitsAndBytesConfig names. Each key applies to the peft_types listed in PEFT_KEYS.
LORA, ADAPTER, PREFIX_TUNING = "LORA", "ADAPTER", "PREFIX_TUNING"
PEFT_TYPES = (LORA, ADAPTER, PREFIX_TUNING)
PEFT_DEFAULTS = {
    "peft_type": LORA,
    "r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["c_attn"],         # Hu et al. 2021
    "bottleneck_size": 8,                                                               # Houlsby et al. 2019
    "num_virtual_tokens": 4, "prefix_projection": False, "encoder_hidden_size": 16,     # Li & Liang 2021
    "load_in_4bit": False, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,  # Dettmers et al. 2023
    "paged_optimizer": False,            # QLoRA's paged optimizer: its states in the host pool
}
PEFT_KEYS = {"r": (LORA,), "lora_alpha": (LORA,), "lora_dropout": (LORA,), "target_modules": (LORA,),
             "load_in_4bit": (LORA,), "bnb_4bit_quant_type": (LORA,), "bnb_4bit_use_double_quant": (LORA,),
             "bottleneck_size": (ADAPTER,),
             "num_virtual_tokens": (PREFIX_TUNING,), "prefix_projection": (PREFIX_TUNING,),
             "encoder_hidden_size": (PREFIX_TUNING,),
             "peft_type": PEFT_TYPES, "paged_optimizer": PEFT_TYPES}
# the linear layers of a block LoRA can adapt (nanoGPT's names); "c_proj" names both
LORA_TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
