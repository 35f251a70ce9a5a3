"""The ``dmcondense`` program (also ``python -m orchestrator``): SIGINT and SIGTERM are handled
from its first instant, through the seconds that importing torch and Ray takes, then the command
line runs (``orchestrator.cli``)."""

from __future__ import annotations

import sys

from orchestrator import stopping


def main() -> int:
    return stopping.program(_command)


def _command(stop: stopping.Stop) -> int:
    try:
        from orchestrator import cli  # the heavy imports

        stop.check()  # a signal a library's import swallowed
    except BaseException as exc:
        interrupted = stop.interrupted(exc)
        if interrupted is None:
            raise
        # the command line is not echoed: showing it masks secrets, which needs what is being imported
        print(stopping.stopped_before_work(interrupted), flush=True)
        return interrupted.exit_code
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
