"""The run configuration: strict pydantic models, YAML files and ``--set`` overrides.

Unknown keys are errors that name their path and the nearest valid key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workers.augment import DEFAULT_STRATEGY, parse_strategy
from workers.networks import CONVNET_WORDS, check_network_name
from workers.training.protocols import PROTOCOLS, ProtocolRule

# condense.compile: auto compiles the embedding from this many iterations on: a cold
# compile costs tens of seconds and saves about a quarter of every iteration.
COMPILE_FROM_ITERATIONS = 1000

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def once_each(values: list | None, *, empty: str | None = None) -> list | None:
    """A list whose entries name units of work (methods, models, proxies): an entry given twice
    would name two units alike and every later command would fail on it. ``empty``: why an empty
    list cannot run (None: it may be empty)."""
    if values is None:
        return values
    if not values and empty is not None:
        raise ValueError(f"is empty; {empty}")
    twice = [str(v) for v in dict.fromkeys(values) if values.count(v) > 1]
    if twice:
        kept = ", ".join(str(v) for v in dict.fromkeys(values))
        raise ValueError(f"lists {', '.join(twice)} more than once; name each once: [{kept}]")
    return values


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    name: str = "digits"
    root: str | None = None
    resolution: int | None = Field(default=None, gt=0)
    download: bool = False


# Named recipes: each a combination of the condense pieces. The papers' figures (ConvNet,
# CIFAR-10 at 1/10/50 images per class) are in the configs that run them (configs/*-<recipe>.yaml).
RECIPES: dict[str, dict[str, Any]] = {
    "dm": {},
    "m3d": {"factor": 2, "loss": "mmd", "kernel": "rbf"},
    "idm": {"factor": 2, "networks": "queue", "ce_weight": 0.5, "ce_network": "matching"},
    "dance": {"factor": 2, "networks": "blend", "ce_weight": 0.5, "ce_network": "trained"},
    "ncfm": {"factor": 2, "networks": "blend", "loss": "cfd", "ce_weight": 0.5, "ce_network": "trained"},
}
# Where each recipe is a stated substitute for a piece of its paper (its report says so).
RECIPE_DEPARTURES: dict[str, str] = {
    "m3d": "M3D's code is not released, so its kernel bandwidths are this project's rule: 3 Gaussian kernels at "
           "0.25, 1 and 4 times the mean squared distance of the class's real embeddings, each scaled by h/2",
    "idm": "IDM's queue is trained per shard on the shard's own real images (classes stay independent)",
    "dance": "the calibration cross-entropy is summed into the matching loss with weight 0.5, where DANCE takes "
             "it as its own step of weight 1",
    "ncfm": "the images are optimised with SGD, where NCFM uses Adam",
}


class RdedConfig(_Strict):
    """RDED's selection (Sun et al., CVPR 2024; the defaults are its scripts' and torchvision's):
    per class, ``candidates`` real images, ``crops`` random square crops of each, the teacher's
    best crop of each image, and the ipc x stitch^2 best of those stitched into the stored images."""

    stitch: int = Field(default=1, ge=1, le=4, description="each stored image is stitch x stitch crops at "
                        "1/stitch resolution, trained on as one image (RDED's factor: 1 on CIFAR, 2 on ImageNet)")
    crops: int = Field(default=5, gt=0, description="random crops scored per real image (RDED's num_crop)")
    candidates: int = Field(default=300, gt=0, description="real images drawn per class (RDED's mipc); a class "
                            "with fewer uses all of its images")
    scale: tuple[float, float] = Field(default=(0.08, 1.0), description="the crops' share of the image area, "
                                       "[lo, hi] (RandomResizedCrop's scale; square crops)")
    batch: int = Field(default=256, gt=0, description="crops per teacher forward (memory, not the result)")

    @field_validator("scale")
    @classmethod
    def _scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"condense.rded.scale is [lo, hi] with 0 < lo <= hi <= 1, got {list(scale)}")
        return scale


class CondenseConfig(_Strict):
    method: Literal["dm", "mmd_pixel", "rded"] = Field(
        default="dm", description="dm: Distribution Matching; mmd_pixel: MMD of the images themselves, no network "
        "and no augmentation (the paper's appendix B.2), with condense.kernel; rded: real crops selected by a "
        "teacher (condense.teacher) and stitched (condense.rded)")
    rded: RdedConfig | None = Field(default=None, description="method rded: its selection; null: RDED's defaults")
    teacher: TeacherConfig | None = Field(
        default=None, description="method rded: the network that scores the crops, as evaluate.teacher; "
        "null: evaluate.teacher")
    recipe: Literal[tuple(RECIPES)] | None = Field(  # type: ignore[valid-type]
        default=None, description="a named combination of the pieces below (RECIPES); a key set beside it wins")
    networks: Literal["random", "pool", "blend", "queue"] = Field(
        default="random", description="random: a fresh random network every iteration (DM); pool: a state of a "
        "trained network of the pool (pool: section), drawn from condense.pool_group (paper 3.4); blend: a "
        "pool network between its initial and final states, a ~ U(0, 1) (DANCE, NCFM); queue: IDM's queue of "
        "networks trained on the shard's real images while condensing (workers.model_queue), no pool needed")
    loss: Literal["mean", "mmd", "cfd"] = Field(
        default="mean", description="mean: squared distance of the class means (DM); mmd: kernel MMD with "
        "condense.kernel (M3D: rbf); cfd: distance of the characteristic functions (NCFM)")
    cfd_sampler: bool = Field(
        default=False, description="loss cfd: learn each class's frequencies with NCFM's sampling network, "
        "trained to maximise the distance the images minimise (min-max); off: standard Gaussian frequencies, "
        "as NCFM's released CIFAR-10 configs")
    factor: int = Field(default=1, ge=1, le=4, description="each stored image holds factor x factor images at "
                        "1/factor resolution, decoded before any training (IDM, M3D, DANCE, NCFM: 2)")
    ce_weight: float = Field(default=0.0, ge=0, description="weight of the cross-entropy of the synthetic images' "
                             "labels (IDM, DANCE calibration); needs pool or blend networks")
    ce_network: Literal["matching", "trained"] = Field(
        default="trained", description="the cross-entropy's network: the matching network itself (IDM) or the final "
        "state of the pool network drawn (DANCE)")
    pool_group: tuple[float, float] | None = Field(
        default=None, description="[lo, hi]: the pool states whose validation accuracy (%) is at least lo and "
        "below hi (hi 100 includes 100); null: every state")
    kernel: Literal["linear", "rbf"] = Field(
        default="linear", description="the MMD's kernel (loss: mmd, and mmd_pixel): linear (the squared distance of "
        "the means) or rbf (Gaussian, three bandwidths)")
    ipc: int = Field(default=10, gt=0, description="synthetic images per class")
    iterations: int = Field(default=20000, ge=0)
    lr_img: float | None = Field(default=None, gt=0, description="null: 1, or 10 above 50 images per class")
    momentum: float = Field(default=0.5, ge=0)
    batch_real: int = Field(default=256, gt=0)
    init: Literal["real", "noise"] = "real"
    model: str = "ConvNet"
    dsa_strategy: str = DEFAULT_STRATEGY
    checkpoint_every: int = Field(default=500, ge=0)
    keep_checkpoints: bool = Field(
        default=False, description="also keep the images of every checkpoint under RUN/snapshots/ "
        "(an iteration sweep from one run: dmcondense evaluate RUN --snapshots)")
    embed_chunk: int | None = Field(default=None, ge=0, description="real images per forward chunk; 0 = one pass; "
                                     "null: 32 on the CPU (cache-sized), one pass on a GPU")
    bf16: bool = Field(default=False, description="autocast convolutions to bfloat16 in the DM loop")
    channels_last: bool = True
    compile: bool | Literal["auto"] = Field(
        default="auto", description=f"auto: on from {COMPILE_FROM_ITERATIONS} iterations, where the one-off "
        "compilation (tens of seconds) is paid back; a worker that cannot compile (no C++ compiler; on CUDA no "
        "Triton or a GPU older than compute capability 7.0) runs eager with a warning")
    cuda_graphs: bool = Field(default=False, description="on CUDA, compile the embedding with CUDA graphs "
                              "(torch.compile mode reduce-overhead); off until a GPU check shows the gain")
    loss_every: int | None = Field(default=None, gt=0, description="read the loss back every N iterations; "
                                   "null: every iteration on the CPU, every 20 on a GPU (a read waits for the device)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return check_network_name(name)

    @field_validator("dsa_strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        parse_strategy(strategy)  # an unknown op would fail inside every shard task
        return strategy

    @field_validator("pool_group")
    @classmethod
    def _group(cls, group: tuple[float, float] | None) -> tuple[float, float] | None:
        if group is not None and not 0 <= group[0] < group[1] <= 100:
            raise ValueError(f"an accuracy group is [lo, hi] in percent with 0 <= lo < hi <= 100, got {list(group)}")
        return group

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        """A recipe fills in its pieces; any piece set beside it stays as set."""
        if isinstance(data, dict) and data.get("recipe") is not None:
            recipe = RECIPES.get(data["recipe"])
            if recipe is not None:
                return {**recipe, **data}
        return data

    @model_validator(mode="before")
    @classmethod
    def _rded_defaults(cls, data: Any) -> Any:
        """Method rded always states its selection, so that a config with RDED's defaults written out
        and one without have the same identity."""
        if isinstance(data, dict) and data.get("method") == "rded" and data.get("rded") is None:
            return {**data, "rded": {}}
        return data

    @model_validator(mode="after")
    def _pieces_fit(self) -> "CondenseConfig":
        if self.method == "mmd_pixel" and (self.networks != "random" or self.loss != "mean" or self.factor != 1):
            raise ValueError("condense.method mmd_pixel matches pixels with condense.kernel: leave condense.networks, "
                             "loss and factor at their defaults")
        if self.ce_weight > 0 and self.networks == "random":
            raise ValueError("condense.ce_weight needs trained networks: condense.networks pool, blend or queue")
        if self.ce_weight > 0 and self.networks == "queue" and self.ce_network != "matching":
            raise ValueError("the queue's networks have no final state: condense.ce_network matching")
        if self.cfd_sampler and self.loss != "cfd":
            raise ValueError("condense.cfd_sampler learns the frequencies of condense.loss cfd: set loss cfd or "
                             "drop cfd_sampler")
        if self.method != "rded" and (self.rded is not None or self.teacher is not None):
            raise ValueError("condense.rded and condense.teacher belong to condense.method rded: remove them, or set "
                             "condense.method: rded")
        if self.method == "rded" and (self.networks != "random" or self.factor != 1 or self.ce_weight > 0
                                      or self.keep_checkpoints):
            raise ValueError("condense.method rded selects real crops with condense.teacher: leave condense.networks, "
                             "factor, ce_weight and keep_checkpoints at their defaults (its stitched images are "
                             "trained on whole: condense.rded.stitch)")
        if self.rded is not None and self.rded.candidates < self.ipc * self.rded.stitch**2:
            raise ValueError(f"condense.rded keeps one crop per drawn image: candidates {self.rded.candidates} cannot "
                             f"give ipc x stitch^2 = {self.ipc * self.rded.stitch**2} crops per class; raise "
                             "condense.rded.candidates")
        return self

    @property
    def effective_rded(self) -> RdedConfig:
        return self.rded or RdedConfig()

    @property
    def effective_compile(self) -> bool:
        """Whether to compile, where the worker can (workers.devices.compile_problem decides there)."""
        if self.compile == "auto":
            return self.iterations >= COMPILE_FROM_ITERATIONS
        return self.compile

    @property
    def effective_lr_img(self) -> float:
        if self.lr_img is not None:
            return self.lr_img
        return 10.0 if self.ipc > 50 else 1.0


class PrecisionConfig(_Strict):
    """One rule for condensation and evaluation alike (workers.devices.Precision)."""

    tf32: bool = Field(default=True, description="on CUDA, TF32 tensor cores for fp32 matmuls and convolutions")
    deterministic: bool = Field(
        default=False, description="on CUDA, deterministic algorithms only: a resumed shard gives the bytes of an "
        "uninterrupted one there too, at a cost (docs/benchmarks.md); the CPU is deterministic anyway")


class PoolConfig(_Strict):
    """Networks trained on the real training set, shared by every shard (paper 3.4; the forgetting
    baseline). Named by a hash of what shapes it, under ``uri``: runs on the same data reuse it."""

    uri: str | None = Field(default=None, description="where pools live (one folder per pool); null: RUN/pool")
    networks: int = Field(default=8, gt=0, description="networks in the pool, each from its own seed")
    model: str | None = Field(default=None, description="null: condense.model")
    epochs: int = Field(default=1, gt=0)
    batch: int = Field(default=256, gt=0)
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    augment: bool = Field(default=False, description="train with an augmentation (pool.dsa_strategy)")
    dsa_strategy: str | None = Field(default=None, description="the augmentation when pool.augment is true; "
                                     "null: condense.dsa_strategy (a teacher trains best on crop_flip)")
    states_every: int = Field(default=50, gt=0, description="keep a state every N steps (and the first and "
                              "last), from the random initialisation to the final state")
    early_states: bool = Field(default=True, description="also keep the states at steps 1, 2, 4, ... below "
                               "states_every, where accuracy rises fastest")
    validation_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of each class held out of "
                                       "training, with a fixed seed, to score every kept state")
    seed: int = 0

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        return None if name is None else check_network_name(name)

    @field_validator("dsa_strategy")
    @classmethod
    def _known_strategy(cls, strategy: str | None) -> str | None:
        if strategy is not None:
            parse_strategy(strategy)  # names the unknown ops and the valid ones
        return strategy


class ContinualConfig(_Strict):
    """Class-incremental learning (paper 3.5, GDumb + DM): the classes arrive in steps; each step
    condenses its new classes as new shards of one growing run, then networks train from scratch
    on the memory (condense.ipc images per class seen) with the evaluate: settings and are
    scored on the test images of the classes seen."""

    steps: int = Field(default=5, gt=0, description="the classes split into this many steps, by a seeded permutation")
    methods: list[Literal["dm", "random", "herding"]] = Field(
        default_factory=lambda: ["dm", "random", "herding"], description="how each memory is built")
    seed: int = Field(default=0, description="the permutation of the classes into steps")

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        return once_each(methods, empty="name at least one of dm, random, herding")


class NasSpace(_Strict):
    """A search space of ConvNets (default: the paper's 720), each value a word of the network
    registry's name grammar (workers.networks.CONVNET_WORDS)."""

    depths: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])
    activations: list[Literal[tuple(CONVNET_WORDS["act"].values())]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["sigmoid", "relu", "leakyrelu"])
    norms: list[Literal[tuple(CONVNET_WORDS["norm"].values())]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["none", "batchnorm", "layernorm", "instancenorm", "groupnorm"])
    pools: list[Literal[tuple(CONVNET_WORDS["pool"].values())]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["none", "maxpooling", "avgpooling"])

    @field_validator("depths", "widths", "activations", "norms", "pools")
    @classmethod
    def _choices(cls, values: list) -> list:
        if any(isinstance(v, int) and v < 1 for v in values):
            raise ValueError("depths and widths are positive integers")
        return once_each(values, empty="a search space needs at least one value of each")


class NasConfig(_Strict):
    """A proxy set for neural architecture search (paper 3.6): every sampled architecture trained
    on each proxy and on the whole training set, scored on a validation split of train."""

    space: NasSpace = Field(default_factory=NasSpace)
    sample: int | None = Field(default=None, gt=0, description="architectures drawn from the space by a seeded "
                               "sample (null: all of it)")
    proxies: list[Literal["synthetic", "random", "early_stopping"]] = Field(
        default_factory=lambda: ["synthetic", "random", "early_stopping"],
        description="synthetic: the run's set; random: the run's random selection, as many real images; "
        "early_stopping: the whole training set for as many steps as proxy training takes")
    epochs: int = Field(default=200, gt=0, description="proxy training epochs")
    whole_epochs: int = Field(default=100, gt=0, description="training epochs on the whole training set")
    batch: int = Field(default=256, gt=0)
    lr: float = Field(default=0.01, gt=0)
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    top_fraction: float = Field(default=0.05, gt=0, le=1, description="the correlation over this share of "
                                "architectures by proxy accuracy (the paper: the top 5%)")
    seed: int = 0

    @field_validator("proxies")
    @classmethod
    def _proxies(cls, proxies: list[str]) -> list[str]:
        return once_each(proxies, empty="name at least one of synthetic, random, early_stopping")


class PlanConfig(_Strict):
    classes_per_shard: int = Field(default=10, gt=0)
    classes: list[int] | None = Field(default=None, description="null: every class of the dataset")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[int] | None) -> list[int] | None:
        return once_each(v, empty="null plans every class of the dataset")


class ResourcesConfig(_Strict):
    gpus_per_shard: float = Field(default=1.0, ge=0)
    cpus_per_shard: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=3, ge=0, description="retries of a task after its worker or node dies "
                             "(and after an exception, with retry_exceptions); an evaluation actor that dies is "
                             "restarted as often, and its job run again")
    retry_exceptions: bool = Field(default=True, description="retry a task that raised (within max_retries)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where shard tasks and evaluation actors compute: auto = CUDA when the task "
        "reserved a GPU (an error if CUDA is unusable there), else the CPU; cpu = the CPU whatever was reserved "
        "(fake GPU resources in tests)")
    max_concurrent_shards: int | None = Field(default=None, gt=0, description="null: as many as the cluster fits")
    reuse_memory: bool = Field(
        default=True,
        description="run shard tasks and evaluation actors with glibc malloc settings (worker_env.ALLOCATOR_ENV) that keep "
        "freed memory for reuse: CPU training steps up to 1.5x faster, for more resident memory (the heap keeps "
        "its high-water mark)",
    )
    worker_env: dict[str, str] = Field(
        default_factory=dict, description="extra environment variables of the shard tasks and evaluation actors"
    )

    @field_validator("worker_env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"not environment variable names: {bad} (letters, digits and _, not starting with a digit)")
        return env


class TeacherConfig(_Strict):
    """The network that relabels every augmented batch under soft labels (evaluate.labels: soft)."""

    source: Literal["pool", "torchvision"] = Field(
        default="pool", description="pool: the final state of the run's pool network with the best validation "
        "accuracy (pool: section); torchvision: arch with weights from a file or URI")
    arch: str | None = Field(default=None, description="torchvision: a torchvision.models classification "
                             "architecture, e.g. resnet18")
    weights: str | None = Field(default=None, description="torchvision: a path or URI of its state dict")
    pool: str | None = Field(
        default=None, description="pool: the directory of a pool made elsewhere (as `dmcondense pool` printed it) "
        "whose best network teaches, e.g. a strong teacher (configs/cifar10-teacher.yaml) for a run whose pool: "
        "section holds short-trained experts (NCFM, DANCE); null: the run's own pool")

    @model_validator(mode="after")
    def _complete(self) -> "TeacherConfig":
        if self.source == "torchvision" and not (self.arch and self.weights):
            raise ValueError("a teacher of source torchvision needs its arch and weights (a path or URI of its "
                             "state dict)")
        if self.pool is not None and self.source != "pool":
            raise ValueError("a teacher's pool (a pool directory) goes with source: pool; a torchvision teacher "
                             "takes arch and weights")
        return self


class EvaluateConfig(_Strict):
    models: list[str] = Field(default_factory=lambda: ["ConvNet"])
    protocol: Literal[tuple(PROTOCOLS)] = Field(  # type: ignore[valid-type]
        default="paper", description="how every set is scored (workers.training.protocols, each citing its source): "
        "paper (DM's: SGD, hard labels, DSA, lr/10 at half, 1,000 epochs); rded (RDED's: soft labels at T 20, "
        "AdamW lr 0.001, cosine, crops, patch shuffling and CutMix, 300 epochs); ddranking (DD-Ranking's soft "
        "track: T 1, AdamW lr 0.001, cosine, CutMix, 300 epochs). evaluate.labels, temperature, lr and epochs "
        "left null take the protocol's values; a value set wins (e.g. a shorter evaluation)")
    labels: Literal["hard", "soft"] | None = Field(
        default=None, description="null: the protocol's (paper: hard; rded, ddranking: soft). soft under the paper "
        "protocol: a teacher (evaluate.teacher) relabels every augmented batch and the networks learn its "
        "distribution at evaluate.temperature; rded and ddranking train on soft labels only")
    temperature: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                      description="soft labels: the temperature of teacher and student; null: the "
                                      "protocol's (paper 1.2, rded 20, ddranking 1)")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    augment: bool = Field(
        default=True, description="train the networks with condense.dsa_strategy; false: without augmentation "
        "(with both scored, the results add DD-Ranking's augmentation-robust score ARS)")

    @field_validator("models")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        return once_each([check_network_name(name) for name in names])

    num_models: int = Field(default=20, ge=0)
    epochs: int | None = Field(default=None, gt=0, description="null: the protocol's (paper 1,000; rded, "
                               "ddranking 300)")
    batch: int = Field(default=256, gt=0)
    lr: float | None = Field(default=None, gt=0, description="null: the protocol's (paper 0.01; rded, ddranking "
                             "0.001); herding's trained features take it too, else the paper's")
    baselines: list[Literal["random", "herding", "k_center", "forgetting"]] = Field(
        default_factory=lambda: ["random", "herding"], description="coreset baselines of the same size; "
        "forgetting ranks the real images by their forgetting events in the pool (pool: section)")
    actors_per_gpu: int = Field(default=4, gt=0)
    gpus: bool = Field(default=True, description="use GPUs for evaluation when the cluster has them")
    num_actors: int | None = Field(default=None, gt=0, description="null: one per free CPU, at most 4")
    vectorized: bool | None = Field(default=None, description="train models together with vmap; null: auto")
    coreset_feature_epochs: int = Field(
        default=0, ge=0, description="herding/k-center features: 0 = a random network, N = trained N epochs on the shard"
    )

    @model_validator(mode="after")
    def _labels_of_the_protocol(self) -> "EvaluateConfig":
        """Only the paper protocol trains on either kind of labels; the others on a teacher's."""
        if self.labels is not None and self.labels != self.rule.labels and not self.rule.other_labels:
            raise ValueError(f"evaluate.protocol {self.protocol} trains on {self.rule.labels} labels only, not "
                             f"evaluate.labels {self.labels}: set evaluate.labels to null (the protocol's) or "
                             "evaluate.protocol to paper")
        return self

    @property
    def rule(self) -> ProtocolRule:
        return PROTOCOLS[self.protocol]

    # What the evaluation trains with: each key as set, else the protocol's own value (null).
    @property
    def protocol_labels(self) -> Literal["hard", "soft"]:
        return self.labels if self.labels is not None else self.rule.labels

    @property
    def protocol_temperature(self) -> float:
        return self.temperature if self.temperature is not None else self.rule.temperature

    @property
    def protocol_lr(self) -> float:
        return self.lr if self.lr is not None else self.rule.lr

    @property
    def protocol_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.rule.epochs

    @property
    def feature_lr(self) -> float:
        """herding's and k-center's trained features: evaluate.lr, else the paper protocol's (SGD)."""
        return self.lr if self.lr is not None else PROTOCOLS["paper"].lr

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, baselines: list[str]) -> list[str]:
        return once_each(baselines)


class RunConfig(_Strict):
    name: str = "digits-ipc10"
    seed: int = 0
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    condense: CondenseConfig = Field(default_factory=CondenseConfig)
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    continual: ContinualConfig = Field(default_factory=ContinualConfig)
    nas: NasConfig = Field(default_factory=NasConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    output: str = "runs/digits-ipc10"



def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; the shipped ones are in configs/")
        try:
            with p.open() as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}{_yaml_where(exc)}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return from_dict(apply_overrides(data, overrides or []))


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b=c`` assignments, each value read as YAML (``[A,B]`` is a list)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set condense.ipc=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "unreadable"  # exc itself quotes the value
            raise ConfigError(f"--set {_quoted(item)}: value is not valid YAML{_yaml_where(exc)}: {problem}") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_quoted(item)}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _quoted(item: str) -> str:
    """An override as an error quotes it: a value it may give resources.worker_env is not shown."""
    from orchestrator.secrets import shown_item  # imported here: that module builds on this one

    return shown_item(item)


def from_dict(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key{_nearest_hint(err['loc'])}")
        else:
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
            secret = "worker_env" in loc or "worker_env" in repr(err.get("input"))
            got = "" if secret else f" (got {err.get('input')!r})"
            lines.append(f"  {loc or '(top level)'}: {msg}{got}")
    return "\n".join(lines)


def _nearest_hint(loc: tuple) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    valid = list(model.model_fields)
    near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; valid keys here: {', '.join(valid)}"
