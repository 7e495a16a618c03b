"""What the demo-chapter tests share: run one chapter on in-process ranks into a folder."""
import contextlib
import io

from minidist import distributed as dist


def run_chapter(run, out, world: int = 4, **spawn_kwargs) -> tuple:
    """``run(comm, out)`` on ``world`` in-process ranks: (rank 0's result, what it printed)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):          # the ranks are threads of this process
        res = dist.spawn(run, world, out, **spawn_kwargs)[0]
    return res, text.getvalue()
