"""The generation chapter (python -m minidist.demo --chapters inference) on 2 in-process ranks: the
same tokens with and without the cache, every cache byte and FLOP equal to its formula, TP 2 equal to
one rank with the bytes of its collectives, the figures, and the README quoting what it prints."""
import pathlib

import pytest

from minidist import distributed as dist

pytestmark = [pytest.mark.inference, pytest.mark.timeout(120)]


def test_the_chapter_on_two_ranks_and_the_readme_quotes_it(tmp_path, capsys):
    from minidist.demo import inference as chapter
    results = dist.spawn(chapter.run, 2, tmp_path)
    printed = capsys.readouterr().out.splitlines()
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    for start in ("same tokens with", "KV cache per token", "matmul FLOPs of the last token", "all 34 tokens",
                  " TP  same tokens", "  2 "):
        line = next(x for x in printed if x.startswith(start))      # on 4 ranks the lines go on with TP 4
        assert any(q.startswith(line) for q in readme), f"the README's inference section is stale: {line!r}"
    r = results[0]
    assert r["same_greedy"] and r["same_sampled"]
    assert all(m == f for row in r["cache"].values() for m, f in zip(row["measured"], row["formula"]))
    assert all(row["measured"] == row["formula"] for row in r["flops"].values())
    (tp,) = r["tp"]
    assert tp["t"] == 2 and tp["same_tokens"] and tp["bytes_per_decode_step"] == [tp["bytes_formula"]]
    assert tp["cache"]["measured"] == tp["cache"]["formula"]
    for name in ("11_kv_cache_bytes.png", "11_flops_per_token.png", "11_generation_timeline.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
