"""The engine a run's ``engine:`` section names."""

from __future__ import annotations

import importlib

from pipeline.config import RunConfig
from pipeline.engines.base import Engine
from pipeline.engines.local import LocalEngine
from pipeline.errors import RunError


def _require(module: str, what: str, extra: str, name: str) -> None:
    """A clear error naming the extra to install when an engine's library is missing."""
    try:
        importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RunError(
            f"engine.name={name} needs {what}: pip install 'conceptprune[{extra}]' (or set "
            "engine.name=local)"
        ) from err


def make_engine(cfg: RunConfig) -> Engine:
    e = cfg.engine
    if e.name == "ray":
        _require("ray", "Ray", "ray", e.name)
        from pipeline.engines.ray_engine import RayEngine

        return RayEngine(address=e.address, num_cpus=e.num_cpus,
                         object_store_gb=e.object_store_gb, temp_dir=e.temp_dir,
                         max_retries=e.max_retries, progress=cfg.progress, threads=e.threads)
    if e.name == "spark":
        _require("pyspark", "pyspark", "spark", e.name)
        from pipeline.engines.spark_engine import SparkEngine

        return SparkEngine(master=e.master, app_name=e.app_name, conf=e.conf,
                           progress=cfg.progress, threads=e.threads, max_retries=e.max_retries)
    return LocalEngine(progress=cfg.progress, threads=e.threads)
