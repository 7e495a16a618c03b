"""What notebook 02's prose and exercises say agrees with its own numbers and the α-β model
(read from the committed notebook, whose outputs test_notebook_02 checks are a fresh run's)."""
import re

import nbformat
import pytest
from _notebook import NOTEBOOKS, cell_text

from minidist.device import PRESETS
from minidist.distributed import cost

pytestmark = [pytest.mark.notebook, pytest.mark.dist, pytest.mark.timeout(60)]
SPEC = PRESETS["A100-80GB-NVLink"]
NB = nbformat.read(NOTEBOOKS / "02_collectives.ipynb", as_version=4)


def _cell(kind, needle):
    return next(c for c in NB.cells if c.cell_type == kind and needle in c.source)


def _us(alg, nbytes, p):
    return round(cost.time("all_reduce", alg, nbytes, p, SPEC) * 1e6, 1)


def test_world_growth_prose_states_what_the_right_plot_shows():
    text = _cell("markdown", "as the world grows").source
    out = cell_text(_cell("code", "world_rows = "))
    header = re.search(r"16 MiB, simulated µs: +p = ([\d ]+)\n", out).group(1).split()
    table = {line.split()[0]: dict(zip(map(int, header), map(float, line.split()[1:])))
             for line in out.splitlines() if line.startswith(("ring ", "recursive_doubling ", "rabenseifner "))}
    ring2, ring16 = map(float, re.search(r"from ([\d.]+) µs at p = 2 to ([\d.]+) µs at p = 16", text).groups())
    rd16 = float(re.search(r"recursive doubling \(([\d.]+) µs", text).group(1))
    rab16 = float(re.search(r"\(([\d.]+) µs at p = 16\)", text).group(1))
    # the prose quotes the notebook's measured table, which is the model on powers of two
    assert (ring2, ring16, rd16, rab16) == (table["ring"][2], table["ring"][16],
                                            table["recursive_doubling"][16], table["rabenseifner"][16])
    assert (ring2, ring16, rd16, rab16) == (_us("ring", 1 << 24, 2), _us("ring", 1 << 24, 16),
                                            _us("recursive_doubling", 1 << 24, 16), _us("rabenseifner", 1 << 24, 16))
    assert ring16 > 3 * ring2 and ring16 > rd16 and "slower" in text and "hardly moves" not in text
    # the reason given: 2α per extra rank
    assert "2α` = 10 µs" in text and round(2 * SPEC.alpha * 1e6) == 10
    # "Rabenseifner wins on every power of two from p = 4"; "on p = 3, 6, 12 the ring wins"
    for p in (4, 8, 16):
        assert table["rabenseifner"][p] == min(t[p] for t in table.values())
    for p in (3, 6, 12):
        assert table["ring"][p] == min(t[p] for t in table.values())


def test_exercise_2_has_a_definite_answer_with_the_notebooks_preset():
    text = _cell("markdown", "Rabenseifner beats").source
    nbytes = int(re.search(r"for a (\d+) MiB all-reduce", text).group(1)) << 20
    wins = [p for p in range(2, 257) if cost.time("all_reduce", "rabenseifner", nbytes, p, SPEC)
            < cost.time("all_reduce", "recursive_doubling", nbytes, p, SPEC)]
    assert wins and wins == list(range(wins[0], 257))          # one threshold, and it wins for every larger p
    assert wins[0] == 8
    # and the question's "never for 1 MiB": n/β < α
    assert (1 << 20) / SPEC.beta < SPEC.alpha
    assert not any(cost.time("all_reduce", "rabenseifner", 1 << 20, p, SPEC)
                   < cost.time("all_reduce", "recursive_doubling", 1 << 20, p, SPEC) for p in range(2, 257))


def test_beta_is_a_bandwidth_so_bytes_divide_by_it():
    sources = "".join(c.source for c in NB.cells)
    assert "nβ" not in sources and "n/β" in sources
    assert "nβ" not in cost.__doc__ and "n/β" in cost.__doc__
