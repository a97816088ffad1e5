"""torchrun, keeping the exit code that says "bad input".

`python -m torch.distributed.run` exits 1 whatever its workers exited with, so a
rank that found the spec or its inputs wrong (EXIT_BAD_INPUT, 2) would be retried
like a crash: the Job's podFailurePolicy fails at once only on exit 2. This runs
torchrun in-process and exits 2 when any worker did.

    python -m kubeslim.stages.torchrun TORCHRUN_ARGS...
"""

from __future__ import annotations

import sys

from kubeslim.errors import EXIT_BAD_INPUT, EXIT_FAILED


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
