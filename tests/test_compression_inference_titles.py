"""Chapter 11's figures say what they show: "1 seed" (not "1 seeds", and no whiskers to speak
of) when drawn from one seed, and the zoomed generation timeline has its time axis labelled."""
import pytest

import minidist.plotting.compression as compression_plots
import minidist.plotting.inference as inference_plots

pytestmark = [pytest.mark.compression, pytest.mark.inference, pytest.mark.timeout(60)]
ST = {"mean": 0.01, "min": 0.005, "max": 0.02}


def _capture(monkeypatch, module) -> list:
    figs = []

    def save(fig, path, *args, **kwargs):
        figs.append(fig)
        return path
    monkeypatch.setattr(module, "save", save)
    return figs


@pytest.mark.parametrize("n_seeds, want", [(1, "(1 seed)"), (3, "(3 seeds; whiskers: smallest to largest seed)")])
def test_accuracy_figures_count_their_seeds(tmp_path, monkeypatch, n_seeds, want):
    figs = _capture(monkeypatch, compression_plots)
    delta = {"absmax": {4: ST, 8: ST}, "NF4 (double quant)": ST, "W8A8 static": ST, "W8A8 dynamic": ST,
             "qat": {"QAT": ST, "PTQ": ST}}
    compression_plots.plot_quantization_accuracy(delta, {"mean": 2.0, "min": 2.0, "max": 2.0}, [4, 8], n_seeds,
                                                 tmp_path / "q.png")
    trained = {"L1 then magnitude, global": {0.25: ST, 0.5: ST}, "iterative magnitude + fine-tune": {0.25: ST, 0.5: ST},
               "dense": ST}
    compression_plots.plot_pruning_accuracy({"magnitude, global": {0.25: ST, 0.5: ST}}, trained,
                                            {"mean": 2.0, "min": 2.0, "max": 2.0}, [0.25, 0.5], n_seeds, 10,
                                            tmp_path / "p.png")
    for fig in figs:
        assert fig._suptitle.get_text().endswith(want)


def test_generation_timeline_labels_every_time_axis(tmp_path, monkeypatch):
    figs = _capture(monkeypatch, inference_plots)

    def spans(step):
        return [{"name": "prefill" if i == 0 else "decode", "t_start": i * step, "t_end": (i + 1) * step,
                 "kv_cache_bytes": 1024 * (i + 1)} for i in range(4)]
    inference_plots.plot_generation_timeline({"KV cache": spans(1e-6), "no cache": spans(4e-6)}, tmp_path / "g.png",
                                             cached="KV cache")
    top, mid, mem = figs[0].axes[:3]
    assert top.get_xlabel() == "simulated time (µs)"                   # 16 µs for the run without a cache
    # the zoom on the cached run (4 µs) has its own unit, shared with the KV-cache panel below it
    assert mid.get_title().startswith("KV cache, zoomed in") and mid.get_xlabel() == "simulated time (ns)"
    assert mem.get_xlabel().startswith("simulated time (ns)")


@pytest.mark.parametrize("n_seeds, want", [(1, "(1 seed)"), (3, "(3 seeds; whiskers: smallest to largest)")])
def test_the_fine_tuning_comparison_counts_its_seeds(tmp_path, monkeypatch, n_seeds, want):
    """The fine-tuning figure (chapter 14) as the ones above: "1 seed", not "1 seeds"."""
    import minidist.plotting.peft as peft_plots
    figs = _capture(monkeypatch, peft_plots)
    states = {"parameters": 100, "gradients": 10, "optimizer_states": 20, "host": 0}
    summary = {m: {"share": ST, "model_states": states, "peak_bytes": {"mean": 200.0}, "step_time": ST,
                   "held_out_loss": ST, "exact_match": ST} for m in ("LoRA", "full")}
    results = [{"method": m, "losses": [2.0, 1.5]} for m in summary for _ in range(n_seeds)]
    peft_plots.plot_comparison(summary, results, n_seeds, tmp_path / "c.png")
    titles = [ax.get_title() for ax in figs[0].axes]
    assert sum(t.endswith(want) for t in titles) >= 2 and "1 seeds" not in " ".join(titles)
