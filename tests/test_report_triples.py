"""The report's formula rows hold for triples of features, as tests/test_composition.py checks
them for pairs (its ``formula_rows``): every row the report prints beside a measurement equals
the measurement. The triples are those where a pair's row was right for a reason the third
feature takes away:

* the mixed-precision overflow flag is agreed over the whole grid under tensor/pipeline
  parallelism, whatever the data-parallel strategy (also with one replica, and over dp × cp);
* the clipping norm's all-reduce over ``grid.mp`` is measured in the data-parallel row when
  ``grid.mp`` is neither the tp group nor the pipeline's tied-embedding pair (tp × pp), and in
  their rows when it is one of them (it was counted in both, or in none);
* the parameter server over p = dp · cp > 2 ranks sends the linear reduce and broadcast, not
  the ring all-reduce the layout's estimate predicts (the two agree at p = 2 only), and its
  workers take no clipping norm;
* under fine-tuning full recomputation re-runs every unit with trainable adapters, the first
  one too, whose input (the frozen embeddings') needs no gradient: ZeRO-3 gathers it again,
  ring attention sends its forward again; a unit per block holds only its shards at the step
  (the recompute of one block prefetched the next one's parameters, in forward order);
* under expert parallelism the experts' overflow flag (over the world) comes beside the other
  parameters' own check — two flags over the world under tensor/pipeline parallelism, the
  server's over its group — and the experts' norm crosses ``grid.mp`` beside the other
  parameters' (on a pipeline stage without experts too), each counted in the row that
  measures its group (the tp row when ``grid.mp`` is the tp group, the pipeline's when it is
  the tied pair).

Every triple with expert parallelism holds too (188 of them at the time of writing); the ones
below are those whose rows were wrong."""
import pytest

from minidist import distributed as dist
from minidist.testing import train_steps
from test_composition import cell_config, formula_rows

pytestmark = [pytest.mark.timeout(60)]

TRIPLES = [
    ("ZeRO-1", "TP", "fp16"),                   # the flag over the world, not over dp (+32 B)
    ("ZeRO-3", "SP", "bf16"),
    ("DDP", "TP", "bf16"),                       # DDP's flag: over the world, not none (+48 B)
    ("DDP", "PP", "bf16"),
    ("TP", "PP", "bf16"),                        # one replica: the flag alone in the data-parallel row
    ("TP", "bf16", "CP"),                        # the flag over tp × cp
    ("parameter server", "TP", "fp16"),
    ("TP", "PP", "clipping"),                    # the norm over tp × pp: neither the tp row nor the tied pair
    ("ZeRO-1", "TP", "clipping"),                # the norm over grid.mp = grid.tp: in the tp row only
    ("ZeRO-2", "PP", "clipping"),                # the norm over grid.mp = the tied pair: in the pipeline's
    ("parameter server", "PP", "clipping"),      # the workers take no norm
    ("parameter server", "TP", "CP"),            # p = 4: the root sends 3Ψ, a worker Ψ
    ("ZeRO-3", "full recompute", "PEFT (LoRA)"),
    ("full recompute", "PEFT (LoRA)", "CP"),
    ("PP", "fp16", "EP"),                        # two flags over the world: the experts' and the others'
    ("PP", "bf16", "EP"),
    ("PP", "clipping", "EP"),                    # the stage without experts: both norms on the tied pair
    ("TP", "fp16", "EP"),
    ("TP", "bf16", "EP"),
    ("SP", "fp16", "EP"),
    ("SP", "bf16", "EP"),
    ("tp_comm_overlap", "fp16", "EP"),
    ("tp_comm_overlap", "bf16", "EP"),
    ("TP", "clipping", "EP"),                    # the experts' norm over grid.mp = grid.tp: in the tp row
    ("SP", "clipping", "EP"),
    ("tp_comm_overlap", "clipping", "EP"),
    ("parameter server", "fp16", "EP"),          # the server's flag over dp × ep: the layout's estimate
    ("parameter server", "bf16", "EP"),
]


@pytest.mark.parametrize("names", TRIPLES, ids=["+".join(t) for t in TRIPLES])
def test_the_reports_formula_rows_hold_for_triples(names):
    cfg, world = cell_config(names)
    runs = dist.spawn(train_steps, world, cfg, timeout=45)
    assert formula_rows(runs) == []


@pytest.mark.parametrize("peft", [False, True], ids=["full-training", "peft"])
def test_full_recomputation_under_zero3_reruns_every_trainable_unit_and_keeps_shards_only(peft):
    """The formulas' R: every checkpointed unit with trainable parameters is recomputed — under
    fine-tuning the first one too, though the frozen embeddings feed it — and with a unit per
    block ZeRO-3 holds only its shards at the step (formula_rows covers the model states)."""
    from minidist.recompute import rerun_blocks
    cfg, world = cell_config(("ZeRO-3", "full recompute") + (("PEFT (LoRA)",) if peft else ()))
    one = {**cfg, "activation_checkpointing": {**cfg["activation_checkpointing"], "num_layers": 1, "method": "uniform"}}
    for c in (cfg, one):
        runs = dist.spawn(train_steps, world, c, timeout=45)
        assert rerun_blocks(runs[0]["trainer"].model) == [0, 1]
        assert formula_rows(runs) == []


@pytest.mark.parametrize("parallel,world", [({"tensor": 2, "pipeline": 2, "schedule": "zb_v"}, 4),
                                            ({"tensor": 2, "pipeline": 3, "schedule": "1f1b"}, 6)],
                         ids=["tp2-zb_v", "tp2-pp3"])
def test_the_report_of_a_tensor_parallel_stage_without_the_token_table(parallel, world):
    """Under TP × PP a stage that holds neither the embedding nor the LM head (the middle of
    pp 3, the V schedule's second rank) builds no token table; its report still gives the padded
    vocabulary (from the config) and its rows still hold (it raised on ``None · int``)."""
    cfg = {"model": {"n_layer": 3 if parallel["pipeline"] == 3 else 4, "n_embd": 16, "n_head": 4, "block_size": 8},
           "data": {"dataset": "english", "seq_len": 8}, "steps": 1, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4, "parallel": parallel}
    runs = dist.spawn(train_steps, world, cfg, timeout=45)
    assert any(r["trainer"].model.layers.padded_vocab_size is None for r in runs)     # the case itself
    assert formula_rows(runs) == []
    from minidist.report import rank_report
    assert {rank_report(r["trainer"])["tensor_parallel"]["padded_vocab_size"] for r in runs} == {76}


@pytest.mark.parametrize("granularity", ["none", "selective", "full"])
@pytest.mark.parametrize("algorithm", ["ring", "ulysses"])
@pytest.mark.parametrize("peft", [{"peft_type": "ADAPTER", "bottleneck_size": 4},
                                  {"peft_type": "LORA", "r": 2, "target_modules": ["c_fc"]},
                                  {"peft_type": "LORA", "r": 2}], ids=["adapter", "lora-c_fc", "lora-c_attn"])
def test_context_parallel_row_under_fine_tuning_counts_the_attention_backwards_that_run(peft, algorithm, granularity):
    """Behind the frozen embeddings, a block whose LayerNorm and ``c_attn`` are frozen and whose
    input needs no gradient runs no attention backward (an adapter after attention, LoRA on
    ``c_fc``: block 0), so context parallelism sends nothing for it in backward, nor its
    recomputed forward under selective recomputation: the report's row counts the blocks that
    run (``report.attention_backward_blocks``), not every layer."""
    from minidist.report import attention_backward_blocks, build_report, rank_report
    cfg = {"model": {"n_layer": 3, "n_embd": 16, "n_head": 4, "block_size": 4, "dropout": 0.0},
           "data": {"dataset": "english", "seq_len": 4}, "steps": 1, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 2, "peft": peft,
           "activation_checkpointing": {"granularity": granularity},
           "parallel": {"context": {"size": 2, "algorithm": algorithm}}}
    runs = dist.spawn(train_steps, 2, cfg, timeout=45)
    for r in runs:
        r["trainer"].final, r["trainer"].wall_time = {}, 0.0
    assert attention_backward_blocks(runs[0]["trainer"].model) == ([0, 1, 2] if "target_modules" not in peft
                                                                     and peft["peft_type"] == "LORA" else [1, 2])
    rep = build_report(runs[0]["trainer"], [rank_report(r["trainer"]) for r in runs])
    for r in rep["ranks"]:
        c = r["context_parallel"]
        assert c["bytes_sent_per_step"] == c["bytes_sent_per_step_expected"] > 0
