"""What ``spark-submit`` runs: ``conceptprune run`` on the Spark context spark-submit set up.

    spark-submit --master yarn jobs/spark_job.py CONFIG [--set KEY=VALUE ...]

The arguments are those of ``conceptprune run``; the engine is spark, and its maps run in
the context made here from spark-submit's settings (master, executors, conf).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from pyspark import SparkContext

    from pipeline.cli import app

    SparkContext.getOrCreate()  # from spark-submit's settings: the engine joins it
    app(["run", *argv, "--engine", "spark"], prog_name="spark_job.py")


if __name__ == "__main__":
    main(sys.argv[1:])
