"""Every setting of every command, declared once: type, default, bounds and help.

A run's config (:class:`RunConfig`, written as ``config.json`` into the run folder and every
checkpoint; sampling rebuilds the network from it alone) nests ``model``, ``diffusion`` and
``train``. ``sample``, ``evaluate`` and ``judge`` are a study's tables (a sweep file's
``[sample]``, ``[evaluate]``, ``[judge]``) and the settings of ``diffscape sample``,
``evaluate`` and ``judge``; ``cnn`` and ``svc`` are how judges are trained; ``demo`` is the
demo's. Command-line flags, ``--help`` and docs/settings.md are generated from these classes.
"""

from __future__ import annotations

import json
import typing
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, model_validator

from diffscape.settings.engine import FieldError, Settings

Activation = Literal["silu", "relu", "gelu", "mish"]
Schedule = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["epsilon", "v_prediction"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# ddpm: ancestral, all T steps; ddim; dpm: DPM-Solver++ (2M). model/diffusion.py builds them.
Sampler = Literal["ddpm", "ddim", "dpm", "dpm3", "dpm-karras", "unipc", "heun"]
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
JudgeKind = Literal["cnn", "svc"]

MANY = 10**9  # upper bound of step counts and cadences: far beyond any run, far below overflow
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
DEFAULT_SAMPLE_STEPS = 50  # DDIM / DPM-Solver++ steps when none are asked for (at most T)
# share of each class a judge holds out for validation without a val split
JUDGE_VAL_FRACTION = 0.15
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Positive = Annotated[float, Field(gt=0)]
NoiseLevel = Annotated[float, Field(ge=0, le=1e6)]
Gamma = Positive | Literal["scale"]  # RBF width, or "scale": 1 / (n_features * X.var())


# ---- a run's config (config.json) -----------------------------------------------------------------


class ModelConfig(Settings):
    section: ClassVar[str] = "model"
    image_size: int = Field(
        32, ge=8, le=512, description="pixels per side; a multiple of 8 and of 2**(levels-1)"
    )
    channels: tuple[Annotated[int, Field(ge=1, le=2048)], ...] = Field(
        (32, 64, 64), min_length=1, max_length=6, description="UNet width per resolution level"
    )
    layers_per_block: int = Field(
        1, ge=1, le=16, description="ResNet blocks per level (the up path has one more)"
    )
    attention_resolutions: tuple[Annotated[int, Field(ge=1, le=512)], ...] = Field(
        (8,), min_length=0, max_length=6, description="pixel sizes whose blocks get self-attention"
    )
    attention_head_dim: int = Field(32, ge=1, le=2048, description="channels per attention head")
    activation: Activation = Field(
        "silu", description="every nonlinearity, time MLP and output head included"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside ResNet blocks")
    norm_groups: int = Field(
        8, ge=1, le=2048, description="GroupNorm groups; must divide every width"
    )
    conditional: bool = Field(
        False, description="class-conditional (classifier-free guidance) or not"
    )
    num_classes: int = Field(
        0, ge=0, le=10_000,
        description="set from the dataset when conditional; the 'no class' token is extra",
    )  # fmt: skip

    @model_validator(mode="after")
    def _fits(self) -> Self:
        levels = len(self.channels)
        if self.image_size % 8:
            raise FieldError("image_size", f"{self.image_size} must be a multiple of 8")
        if self.image_size % (2 ** (levels - 1)):
            raise FieldError(
                "image_size", f"{self.image_size} cannot be halved {levels - 1} times for "
                f"{levels} levels in model.channels",
            )  # fmt: skip
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise FieldError("norm_groups", f"{self.norm_groups} does not divide widths {bad}")
        sizes = {self.image_size // 2**i for i in range(levels)}
        stray = [r for r in self.attention_resolutions if r not in sizes]
        if stray:
            raise FieldError(
                "attention_resolutions",
                f"{stray} are not resolutions of this UNet ({sorted(sizes, reverse=True)})",
            )
        if self.num_classes and not self.conditional:
            raise FieldError("num_classes", "only set (>= 1) for conditional models")
        return self


class DiffusionConfig(Settings):
    section: ClassVar[str] = "diffusion"
    schedule: Schedule = Field("linear", description="beta schedule")
    timesteps: int = Field(1000, ge=2, le=10_000, description="T, number of noise levels")
    rescale_linear: bool = Field(
        True, description="linear betas 1e-4..0.02 scaled by 1000/T (same end noise)"
    )
    beta_start: float = Field(
        1e-4, gt=0, lt=1, description="linear schedule's first beta, at T=1000"
    )
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear schedule's last beta, at T=1000")
    prediction: Prediction = Field("epsilon", description="what the network predicts: noise or v")
    loss_weighting: Literal["none", "min_snr"] = Field(
        "none", description="per-timestep loss weight"
    )
    min_snr_gamma: float = Field(
        5.0, gt=0, le=1000, description="min-SNR-gamma clamp (Hang et al. 2023), when used"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.beta_start < self.beta_end:
            raise FieldError("beta_start", "must be below diffusion.beta_end (0 < start < end < 1)")
        return self


class TrainConfig(Settings):
    section: ClassVar[str] = "train"
    steps: int = Field(2000, ge=1, le=MANY, description="optimizer steps in total")
    minutes: float = Field(
        0.0, ge=0,
        description="wall-clock budget of the run in minutes (every call together: a resumed "
        "run trains what is left), 0 = none: at the deadline the step in progress finishes, a "
        "checkpoint is saved and training ends; train.steps still caps it",
    )  # fmt: skip
    batch_size: int = Field(
        32, ge=1, le=65_536, description="images per step, summed over processes"
    )
    lr: float = Field(2e-4, gt=0, le=1, description="peak AdamW learning rate")
    warmup_steps: int = Field(100, ge=0, le=MANY, description="linear LR warm-up from 0, in steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant",
        description="LR after warm-up: constant, or a cosine or linear decay to 0 at the end "
        "of training (train.steps, or the train.minutes deadline when that comes first)",
    )
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW decoupled weight decay")
    grad_clip: float = Field(
        1.0, ge=0, description="clip the gradient at this global norm, 0 = off"
    )
    ema_decay: float = Field(
        0.999, ge=0, lt=1, description="EMA of weights per step; 0 = no EMA (EMA = model)"
    )
    ema_warmup: bool = Field(
        True, description="EMA decay min(ema_decay, (1+step)/(10+step)) early on"
    )
    label_dropout: float = Field(
        0.1, ge=0, lt=1, description="per-sample chance to drop the class (conditional only)"
    )
    hflip: bool = Field(True, description="random horizontal flips, on the fly")
    # fp16 only on GPU (with loss scaling); auto: bf16 on a CPU with native bf16
    # (AMX/AVX512-BF16; 1.6-2.1x here), else fp32 (incl. CUDA: faster at 32 px on an H100)
    precision: Precision = Field(
        "fp32", description="autocast dtype; auto: bf16 on CPUs with native bf16, else fp32"
    )
    channels_last: bool = Field(False, description="NHWC memory format for convolutions")
    threads: int = Field(
        0, ge=0, le=4096,
        description="CPU threads of the training step; 0 = auto: every core while other "
        "processes leave them idle, one while another keeps a core busy (read every 5 s)",
    )  # fmt: skip
    # One thread per process, the batch split (DDP over gloo): tiny on 2 AMX cores, 77 img/s
    # against one two-thread process's 66 on a noisy hour, 113 against 110 on a quiet one
    # (bench/cpu_speed.py "ddp2", docs/benchmarks.md; diffscape.train.processes). Like threads,
    # a speed option: what is computed is the same up to float rounding.
    processes: int = Field(
        0, ge=0, le=4096,
        description="CPU training processes of one thread each, the batch split between them "
        "(torch's elastic launcher, DDP); 0 = auto: one per core (at least 8 images each) "
        "while other processes leave the cores idle, else 1 (also when train.threads or "
        "OMP_NUM_THREADS fixes the threads). Not under accelerate launch/torchrun or on a GPU",
    )  # fmt: skip
    # tcmalloc: 1.07-1.16x for the two processes of tiny (diffscape.core.allocator)
    allocator: Literal["auto", "system"] = Field(
        "auto",
        description="memory allocator of the processes train.processes starts: auto = tcmalloc "
        "where the system has it (e.g. Debian's libtcmalloc-minimal4), system = the C library's "
        "(the command's own process: DIFFSCAPE_ALLOCATOR=system)",
    )
    compile: bool = Field(False, description="torch.compile the UNet")
    # The whole uint8 split on the training device, gathered there each step with the step's
    # draws on a device generator: no host work or copies per step (issue 17).
    data_on_device: Literal["auto", "on", "off"] = Field(
        "auto",
        description="hold the split on the device; auto: on CUDA when <= 25% of free GPU memory",
    )
    seed: Seed = Field(0, description="seeds weights, data order, noise and dropout")
    # Through Accelerate's trackers (diffscape.train.logger.trackers); metrics.jsonl always.
    log_with: Literal["tensorboard", "wandb", "mlflow", "off"] = Field(
        "tensorboard",
        description="also log to this tracker: tensorboard (when installed; RUN/tensorboard/), "
        "wandb (WANDB_MODE=offline: files in RUN/wandb/), mlflow (MLFLOW_TRACKING_URI), off",
    )
    log_every_steps: int = Field(
        25, ge=1, le=MANY, description="metrics.jsonl cadence: a line per this many steps"
    )
    checkpoint_every_steps: int = Field(
        500, ge=0, le=MANY, description="checkpoint cadence; 0 = only at the end"
    )
    keep_last: int = Field(
        2, ge=1, le=10_000, description="complete checkpoints kept, older ones deleted"
    )
    milestone_every_steps: int = Field(
        0, ge=0, le=MANY, description="also keep every checkpoint at multiples of this, 0 = none"
    )
    sample_every_steps: int = Field(
        500, ge=0, le=MANY, description="EMA sample grid of every class, 0 = never"
    )
    sample_steps: int = Field(25, ge=1, le=10_000, description="DDIM steps for those grids")
    max_bad_steps: int = Field(
        5, ge=1, le=MANY, description="stop after this many non-finite steps in a row"
    )


class RunConfig(Settings):
    """One run's resolved config: ``defaults <- preset TOML <- overrides``
    (:func:`diffscape.settings.presets.resolve`)."""

    # factories: a default built at import would build its validator there (CLI start-up)
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    diffusion: DiffusionConfig = Field(
        default_factory=DiffusionConfig, description="the noise process"
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training")
    preset: str = Field("tiny", description="the preset this was resolved from (for the record)")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


# ---- sampling, evaluation, judging ---------------------------------------------------------------


class SampleSettings(Settings):
    section: ClassVar[str] = "sample"
    # 50: what a study needs for FID/KID and judge accuracy per class (the CLI's former 16 was
    # a 4x4 grid to look at); a sweep's recorded settings keep matching their runs with it.
    n: int = Field(
        50, ge=1, le=1_000_000,
        description="images per class when sampling per class (a study: conditional models; "
        "sample --per-class), else in total",
    )  # fmt: skip
    sampler: Sampler = Field(
        "ddim",
        description="ddpm: ancestral, all T steps; ddim; dpm: DPM-Solver++ 2M; dpm3: 3M; "
        "dpm-karras: 2M on Karras sigmas; unipc: UniPC (bh2); heun: Heun, 2 network calls per step",
    )
    # none rather than 50: a model with fewer than 50 noise levels samples with T steps
    steps: int | None = Field(
        None, ge=1, le=10_000,
        description=f"sampler steps; none: {DEFAULT_SAMPLE_STEPS}, or T when the model has fewer; "
        "ddpm takes all T",
    )  # fmt: skip
    guidance: float = Field(
        1.0, ge=0, le=100,
        description="classifier-free guidance w: 0 uncond, 1 cond, >1 guided (conditional models)",
    )  # fmt: skip
    # Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
    # Distribution Quality in Diffusion Models": at high noise, guidance pulls every sample of a
    # class towards one prototype (recall falls); at low noise it does little. EDM2: (0.28, 2.9].
    guidance_interval: tuple[NoiseLevel, NoiseLevel] | None = Field(
        None,
        description="noise levels sigma (lo, hi] where w applies, plain conditional (w=1) "
        "elsewhere; sigma = sqrt((1 - alpha_bar) / alpha_bar), about 0.01 to 160 for T=1000; "
        "none: every step",
    )
    eta: float = Field(0.0, ge=0, le=1, description="DDIM noise (0 = deterministic)")
    seed: Seed = Field(0, description="image i of class c depends only on (seed, c, i)")
    batch: int | None = Field(
        None, ge=1, le=4096,
        description="images denoised together (memory only: the images do not change); "
        "none: 64 on a CPU, 256 on a GPU",
    )  # fmt: skip

    @model_validator(mode="after")
    def _interval(self) -> Self:
        if self.guidance_interval is not None and not (
            self.guidance_interval[0] < self.guidance_interval[1]
        ):
            raise FieldError("guidance_interval", "needs lo < hi, e.g. 0.3,3")
        return self


class EvaluateSettings(Settings):
    section: ClassVar[str] = "evaluate"
    enabled: bool = Field(
        True, description="a study: FID/KID of every sampling (Inception: a few images/s on a CPU)"
    )
    n: int | None = Field(
        None, ge=2, le=10_000_000,
        description="generated images scored (FID/KID need 2); none: all a study sampled, or "
        "for diffscape evaluate 10,000 with a GPU, 1,000 without",
    )  # fmt: skip
    n_real: int | None = Field(
        None, ge=2, le=10_000_000,
        description="real images; none: the whole split (a study: as many as n when n is set)",
    )  # fmt: skip
    split: str = Field(
        "train", description="a study: the real split generated images are compared with"
    )
    floor: bool = Field(
        True, description="a study: also the test split against it once, the real-vs-real floor"
    )
    resize: Literal["tf1", "torch"] = Field(
        "tf1",
        description="Inception's resize to 299 px: tf1 (torch-fidelity, published FIDs) or torch "
        "(torchmetrics >= 1.8)",
    )
    bootstrap: int = Field(
        0, ge=0, le=10_000, description="FID bootstrap resamples for a 95% interval, 0 = none"
    )
    # on for the evaluate command too (it was off there): 150 of the 64-d features every
    # evaluation computes anyway, so it costs one small FID
    fid64: bool = Field(
        True,
        description="FID on 64-d features (fid64) of fid64_n vs fid64_n images, the seed "
        "report's yardstick; off: of every scored image",
    )
    memorisation: bool = Field(
        True, description="nearest training image of every generated one; near-copies"
    )
    # Bounded on a CPU: the whole 4,589-image train split of the real-photo path cost 13 more
    # minutes of Inception than the estimate announced (issue 26); pixels are cheap: all of them.
    memorisation_n: int | None = Field(
        None, ge=2, le=10_000_000,
        description="training images searched in Inception space for each generated image's "
        "nearest (a seeded subset; pixels: all of them); none: all on a GPU, 500 on a CPU",
    )  # fmt: skip
    near_copy: float = Field(
        0.5, gt=0, le=10,
        description="flag a near-copy below this ratio to the train-to-train distance",
    )  # fmt: skip
    per_class: bool = Field(True, description="FID/KID per class folder named like a dataset class")
    precision_recall: bool = Field(
        True, description="precision and recall (Kynkäänniemi et al. 2019, k=3)"
    )
    fid64_n: int = Field(150, ge=2, le=10_000_000, description="images per side of fid64")
    seed: Seed = Field(0, description="seeds subsets, KID subsets and the bootstrap")
    batch: int = Field(32, ge=1, le=4096, description="images per Inception call")
    cache: bool = Field(True, description="read and write cached real-split features")
    inception_weights: str | None = Field(
        None, description="FID Inception weights file (.pth); none: found offline first"
    )
    device: str | None = Field(None, description="cpu, cuda, ...; none: cuda if available")


class JudgeSettings(Settings):
    section: ClassVar[str] = "judge"
    enabled: bool = Field(True, description="a study: per-class accuracy of conditional samples")
    kind: JudgeKind = Field(
        "cnn", description="cnn (small CNN) or svc (RBF SVC on pixels); a study trains it once"
    )
    path: str | None = Field(
        None, description="a study: an already trained judge folder instead (relative to the file)"
    )
    also: tuple[JudgeKind, ...] = Field(
        (), min_length=0, max_length=2,
        description="a study: more judges, trained once, a column each (svc: the seed's)",
    )  # fmt: skip


class CNNSettings(Settings):
    """How a CNN judge is built and trained (its architecture less what the data decides)."""

    section: ClassVar[str] = "cnn"
    widths: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (32, 64, 128), min_length=1, max_length=8,  # 8 blocks already need 256 px
        description="channels per conv block; each block halves the size",
    )  # fmt: skip
    convs_per_block: int = Field(2, ge=1, le=8, description="3x3 conv-BN-ReLU layers per block")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the linear head")
    max_epochs: int = Field(
        40, ge=1, le=10_000, description="epochs at most; early stopping usually ends sooner"
    )
    patience_epochs: int = Field(
        6, ge=1, le=10_000, description="stop after this many epochs without a better val score"
    )
    batch: int = Field(64, ge=2, le=65_536, description="images per optimizer step")
    lr: float = Field(
        2e-3, gt=0, le=10, description="AdamW peak learning rate, cosine-decayed to 0"
    )
    weight_decay: float = Field(0.05, ge=0, description="AdamW decoupled weight decay")
    flip: bool = Field(True, description="random horizontal flips (never vertical: skies are up)")
    shift: float = Field(
        0.125, ge=0, lt=0.5, description="random translation up to this fraction of the size"
    )
    jitter: float = Field(
        0.1, ge=0, lt=1,
        description="brightness, contrast and saturation scaled by U(1 - j, 1 + j)",
    )  # fmt: skip


class SVCSettings(Settings):
    """The RBF SVC judge on pixels / 255; the defaults and the grid are the report's."""

    section: ClassVar[str] = "svc"
    C: Positive = Field(100.0, description="RBF SVC regularisation (without the grid)")
    gamma: Gamma = Field(0.01, description="RBF width (without the grid), or scale")
    standardize: bool = Field(False, description="z-score each pixel first")
    grid_C: tuple[Positive, ...] = Field(
        (1.0, 10.0, 100.0), min_length=1, max_length=64, description="the grid's C values"
    )
    grid_gamma: tuple[Gamma, ...] = Field(
        ("scale", 0.001, 0.01, 0.1), min_length=1, max_length=64,
        description="the grid's gamma values",
    )  # fmt: skip


# ---- the demo ------------------------------------------------------------------------------------


class DemoSettings(Settings):
    """``diffscape demo``: the whole demo's wall-clock budget; training gets what the other
    stages (data, judge, floor before it; sampling, FID/KID, judging, the report after it)
    leave, as its train.minutes deadline (``diffscape.study.demo.training_minutes``)."""

    section: ClassVar[str] = "demo"
    minutes: float = Field(
        9.0, gt=0, description="wall-clock budget of the whole demo, evaluation included"
    )
    max_steps: int = Field(
        100_000, ge=1, le=MANY, description="training steps at most (beyond what budgets allow)"
    )
    preset: str = Field("tiny", description="model preset (32 px)")
    synth_images: int = Field(
        5000, ge=5, le=10_000_000,
        description="procedural landscapes to make (80% train, 20% test)",
    )  # fmt: skip
    # DPM-Solver++ at 20 steps: on the demo model FID 269 / KID 0.204 vs DDIM-50's 279 / 0.220
    # and DDPM-1000's 300 / 0.239 (bench/bench_samplers.py), same judge accuracy (98.5%), 2.5x
    # faster. Guidance 3 over sigma in (0.28, 2.9]: on one demo model KID 0.113 against w=1's
    # 0.129, w=2's 0.124, w=2 over the interval 0.120; judge 100% against 99% (docs/benchmarks.md)
    sample: SampleSettings = Field(
        default_factory=lambda: SampleSettings(
            n=40, sampler="dpm", steps=20, guidance=3.0, guidance_interval=(0.28, 2.9)
        ),
        description="the sampling (n per class)",
    )
    # 200 generated vs 200 real test images: about 2 minutes of Inception on 2 CPU cores with
    # the floor (the test split's features are cached between the two). Memorisation: 200
    # training images in Inception space (500 took 45 s of a 9-minute demo), all in pixels.
    evaluate: EvaluateSettings = Field(
        default_factory=lambda: EvaluateSettings(
            split="test", n=200, n_real=200, memorisation_n=200
        ),
        description="FID/KID",
    )
    judge_epochs: int = Field(
        6, ge=1, le=10_000, description="CNN judge epochs at most (synth is learnt in 2-3)"
    )
    judge_patience: int = Field(
        2, ge=1, le=10_000, description="stop after this many epochs without a better val score"
    )
    seed: Seed = Field(
        0, description="seeds data, judge and weights (diffscape demo --seed: the images too)"
    )


class SlurmSettings(Settings):
    """A study on a Slurm cluster (``diffscape sweep --launcher slurm``, a sweep file's
    ``[slurm]``): one job per training, each asking for these."""

    section: ClassVar[str] = "slurm"
    partition: str | None = Field(
        None, description="partition (sbatch --partition); none: the cluster's default"
    )
    account: str | None = Field(
        None, description="account charged (sbatch --account); none: your default"
    )
    gpus: int = Field(0, ge=0, le=64, description="GPUs per job (sbatch --gpus-per-node)")
    cpus: int = Field(
        1, ge=1, le=4096, description="CPU cores per job, its threads (sbatch --cpus-per-task)"
    )
    minutes: int | None = Field(
        None, ge=1, le=MANY,
        description="time limit per job (sbatch --time); none: the partition's default",
    )  # fmt: skip


RUN_SECTIONS: dict[str, type[Settings]] = {
    "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
}  # fmt: skip
ALL_SECTIONS: dict[str, type[Settings]] = {
    **RUN_SECTIONS,
    **{c.section: c for c in (SampleSettings, EvaluateSettings, JudgeSettings)},
    **{c.section: c for c in (CNNSettings, SVCSettings, DemoSettings, SlurmSettings)},
}
