"""The engine a run's ``engine:`` section names."""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.engines.base import Engine
from pipeline.engines.local import LocalEngine


def make_engine(cfg: RunConfig) -> Engine:
    e = cfg.engine
    if e.name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ValueError(
                "engine.name=ray needs Ray: pip install 'conceptprune[ray]' (or set "
                "engine.name=local)"
            ) from err
        from pipeline.engines.ray_engine import RayEngine

        return RayEngine(address=e.address, num_cpus=e.num_cpus,
                         object_store_gb=e.object_store_gb, temp_dir=e.temp_dir,
                         max_retries=e.max_retries, progress=cfg.progress, threads=e.threads)
    if e.name == "spark":
        try:
            import pyspark  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ValueError(
                "engine.name=spark needs pyspark: pip install 'conceptprune[spark]' (or set "
                "engine.name=local)"
            ) from err
        from pipeline.engines.spark_engine import SparkEngine

        return SparkEngine(master=e.master, app_name=e.app_name, conf=e.conf,
                           progress=cfg.progress, threads=e.threads, max_retries=e.max_retries)
    return LocalEngine(progress=cfg.progress, threads=e.threads)
