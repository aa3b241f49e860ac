"""What ``ray job submit`` runs: ``conceptprune run`` on the cluster it was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/ray_job.py CONFIG [--set KEY=VALUE ...]

The arguments are those of ``conceptprune run``; the engine is ray, joined to the running
cluster (``engine.address=auto``) unless the config names another address.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from pipeline.cli import app

    given = any(a.startswith("engine.address=") for a in argv)
    extra = [] if given else ["--set", "engine.address=auto"]
    app(["run", *argv, *extra, "--engine", "ray"], prog_name="ray_job.py")


if __name__ == "__main__":
    main(sys.argv[1:])
