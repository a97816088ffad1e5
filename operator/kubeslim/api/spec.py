"""The ModelOptimization spec: what to optimize and how.

Every field carries a description, a default and bounds; the CRD's schema is
generated from these models, so the text here is what `kubectl explain` shows.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from kubeslim.api.base import ApiModel

Uri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        description="A local path, a file:// URI or an s3://bucket/key URI.",
    ),
]
ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BYTE_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
CacheBudget = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    Field(
        max_length=32,
        pattern=BYTE_QUANTITY,
        description="A size in bytes as a Kubernetes quantity: 2Gi, 500M or 1000000.",
    ),
]


class Architecture(StrEnum):
    """torchvision classification CNNs kubeslim builds by name (a test checks each exists)."""

    alexnet = "alexnet"
    convnext_base = "convnext_base"
    convnext_large = "convnext_large"
    convnext_small = "convnext_small"
    convnext_tiny = "convnext_tiny"
    densenet121 = "densenet121"
    densenet161 = "densenet161"
    densenet169 = "densenet169"
    densenet201 = "densenet201"
    efficientnet_b0 = "efficientnet_b0"
    efficientnet_b1 = "efficientnet_b1"
    efficientnet_b2 = "efficientnet_b2"
    efficientnet_b3 = "efficientnet_b3"
    efficientnet_b4 = "efficientnet_b4"
    efficientnet_b5 = "efficientnet_b5"
    efficientnet_b6 = "efficientnet_b6"
    efficientnet_b7 = "efficientnet_b7"
    efficientnet_v2_l = "efficientnet_v2_l"
    efficientnet_v2_m = "efficientnet_v2_m"
    efficientnet_v2_s = "efficientnet_v2_s"
    googlenet = "googlenet"
    mnasnet0_5 = "mnasnet0_5"
    mnasnet0_75 = "mnasnet0_75"
    mnasnet1_0 = "mnasnet1_0"
    mnasnet1_3 = "mnasnet1_3"
    mobilenet_v2 = "mobilenet_v2"
    mobilenet_v3_large = "mobilenet_v3_large"
    mobilenet_v3_small = "mobilenet_v3_small"
    regnet_x_16gf = "regnet_x_16gf"
    regnet_x_1_6gf = "regnet_x_1_6gf"
    regnet_x_32gf = "regnet_x_32gf"
    regnet_x_3_2gf = "regnet_x_3_2gf"
    regnet_x_400mf = "regnet_x_400mf"
    regnet_x_800mf = "regnet_x_800mf"
    regnet_x_8gf = "regnet_x_8gf"
    regnet_y_16gf = "regnet_y_16gf"
    regnet_y_1_6gf = "regnet_y_1_6gf"
    regnet_y_32gf = "regnet_y_32gf"
    regnet_y_3_2gf = "regnet_y_3_2gf"
    regnet_y_400mf = "regnet_y_400mf"
    regnet_y_800mf = "regnet_y_800mf"
    regnet_y_8gf = "regnet_y_8gf"
    resnet101 = "resnet101"
    resnet152 = "resnet152"
    resnet18 = "resnet18"
    resnet34 = "resnet34"
    resnet50 = "resnet50"
    resnext101_32x8d = "resnext101_32x8d"
    resnext101_64x4d = "resnext101_64x4d"
    resnext50_32x4d = "resnext50_32x4d"
    shufflenet_v2_x0_5 = "shufflenet_v2_x0_5"
    shufflenet_v2_x1_0 = "shufflenet_v2_x1_0"
    shufflenet_v2_x1_5 = "shufflenet_v2_x1_5"
    shufflenet_v2_x2_0 = "shufflenet_v2_x2_0"
    squeezenet1_0 = "squeezenet1_0"
    squeezenet1_1 = "squeezenet1_1"
    vgg11 = "vgg11"
    vgg11_bn = "vgg11_bn"
    vgg13 = "vgg13"
    vgg13_bn = "vgg13_bn"
    vgg16 = "vgg16"
    vgg16_bn = "vgg16_bn"
    vgg19 = "vgg19"
    vgg19_bn = "vgg19_bn"
    wide_resnet101_2 = "wide_resnet101_2"
    wide_resnet50_2 = "wide_resnet50_2"


class Stem(StrEnum):
    """How the first layers treat the input resolution."""

    default = "default"
    small = "small"


class ModelSpec(ApiModel):
    """The trained model to optimize: a torchvision architecture or a Python entry point."""

    architecture: Architecture | None = Field(
        default=None,
        description="architecture is a torchvision model built by name. Exactly one of "
        "architecture and entryPoint is set.",
    )
    entry_point: str | None = Field(
        default=None,
        max_length=256,
        description="entryPoint is 'module:function'; the function takes numClasses and "
        "returns a torch.nn.Module. For models baked into a custom image.",
    )
    num_classes: int = Field(
        default=1000, ge=2, le=100000, description="numClasses is the classifier's output size."
    )
    checkpoint: Uri | None = Field(
        default=None,
        description="checkpoint is a state_dict saved with torch.save, loaded with "
        "weights_only=True (pickles that run code are refused). Empty means the "
        "architecture's random initialisation, useful only for speed measurements.",
    )
    input_shape: list[int] = Field(
        default=[3, 224, 224],
        min_length=3,
        max_length=3,
        description="inputShape is [channels, height, width] of one input image. A channel "
        "count other than 3 replaces the first convolution's input channels.",
    )
    stem: Stem = Field(
        default=Stem.default,
        description="stem 'small' adapts the first layers to small images (resnet: 3x3 stride-1 "
        "conv1 and no max-pool; mobilenet_v2: stride-1 first conv), as in CIFAR-style models.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.architecture is None) == (self.entry_point is None):
            raise ValueError("exactly one of architecture and entryPoint must be set")
        if self.entry_point is not None and not ENTRY_POINT.match(self.entry_point):
            raise ValueError("entryPoint must look like 'package.module:function'")
        if any(d < 1 or d > 4096 for d in self.input_shape):
            raise ValueError("inputShape entries must be between 1 and 4096")
        return self


class BuiltinDataset(StrEnum):
    """Real datasets that install offline (see the README)."""

    fashion_mnist = "fashion-mnist"
    mnist = "mnist"
    digits = "digits"


class Augmentation(StrEnum):
    """Training-time augmentation (kubeslim.data.augment has the rule).

    auto: none for one-channel images (digits), random-resized crop and flip for colour
    images of 64 px or more (or resize >= 64, ImageNet style), pad-and-crop and flip for
    smaller colour images (CIFAR style); crop-flip: the crop and flip for the image size
    even for one channel; none: off.
    """

    auto = "auto"
    none = "none"
    crop_flip = "crop-flip"


class DatasetSpec(ApiModel):
    """The data used to fine-tune, calibrate and measure accuracy."""

    name: BuiltinDataset | None = Field(
        default=None,
        description="name selects a built-in dataset. Exactly one of name and uri is set.",
    )
    uri: Uri | None = Field(
        default=None,
        description="uri is an ImageFolder tree (one folder per class) or WebDataset tar "
        "shards (a brace pattern such as train-{000000..000099}.tar, one .tar, or a folder of "
        ".tar files; see testUri), on a path, a volume or s3://. An ImageFolder with train/ "
        "and val/ sub-folders has val/ as the test split; otherwise validationFraction of it "
        "is held out as the test split.",
    )
    resize: int | None = Field(
        default=None,
        ge=4,
        le=1024,
        description="resize scales images to resize x resize, then takes the centre crop of "
        "inputShape's size (ImageNet style); empty scales straight to inputShape's size.",
    )
    mean: list[float] = Field(
        default=[0.5],
        min_length=1,
        max_length=3,
        description="mean per channel for normalization (one value is used for every channel).",
    )
    std: list[float] = Field(
        default=[0.5],
        min_length=1,
        max_length=3,
        description="std per channel for normalization (one value is used for every channel).",
    )
    validation_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="validationFraction is held out as the test split (used only for "
        "reported accuracy) when the data has no test split of its own.",
    )
    tuning_fraction: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description="tuningFraction of the training images (after trainLimit) is held out "
        "as the tuning split: accuracy-controlled quantization and any selection use it, "
        "fine-tuning never sees it, and the reported accuracy comes from the test split.",
    )
    train_limit: int | None = Field(
        default=None,
        ge=2,
        description="trainLimit caps the training images (a seeded subset) before the "
        "tuning split is held out of them; empty uses all.",
    )
    validation_limit: int | None = Field(
        default=None,
        ge=1,
        description="validationLimit caps the test split (a seeded subset); empty uses all.",
    )
    calibration_size: int = Field(
        default=300,
        ge=1,
        le=100000,
        description="calibrationSize is how many training images calibrate quantization.",
    )
    seed: int = Field(default=0, ge=0, description="seed for the splits and subsets.")
    test_uri: Uri | None = Field(
        default=None,
        description="testUri is the test split of a sharded (WebDataset) uri: its shards, as a "
        "brace pattern, one .tar or a folder of .tar files. Empty: validationFraction of the "
        "samples of uri is held out. Only for sharded datasets.",
    )
    loader_workers: int = Field(
        default=2,
        ge=0,
        le=64,
        description="loaderWorkers is the number of data-loader processes per training worker "
        "that read, decode and augment images while the model trains (0: in the training "
        "process). Built-in in-memory datasets without augmentation always load in-process.",
    )
    augmentation: Augmentation = Field(
        default=Augmentation.auto,
        description="augmentation of fine-tuning images: auto, none or crop-flip (auto: none "
        "for one-channel images, random-resized crop + flip for images of 64 px or more or "
        "resize >= 64, 1/8-side pad-and-crop + flip for smaller colour images).",
    )
    cache_budget: CacheBudget | None = Field(
        default=None,
        description="cacheBudget bounds the local disk an s3:// dataset may use ('2Gi'): "
        "images and shards are fetched on demand and the least recently used are evicted "
        "beyond it. Empty: 1Gi.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.name is None) == (self.uri is None):
            raise ValueError("exactly one of name and uri must be set")
        if self.test_uri is not None and self.uri is None:
            raise ValueError("testUri needs uri (the training shards)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class Criterion(StrEnum):
    """How filters are ranked: the least important go first.

    geometric_median is FPGM (He et al., CVPR 2019) on signed weights; l1 and l2
    are the per-filter norms (Li et al., ICLR 2017). Each is taken over the
    layers that produce a group's channels, normalised per layer.
    group_geometric_median is torch-pruning 1.6.1's FPGMImportance: distances
    between squared weights over every coupled slice (BN and the next layers'
    inputs included), normalised per group; not the paper's, but it measured
    ahead of it in benchmarks/RESULTS.md section 5.
    """

    group_geometric_median = "group_geometric_median"
    geometric_median = "geometric_median"
    l1 = "l1"
    l2 = "l2"


class ScheduleKind(StrEnum):
    """How the pruning rate grows from 0 to the target over the steps."""

    exponential = "exponential"
    linear = "linear"


class Masking(StrEnum):
    """How chosen filters are held at zero during fine-tuning."""

    soft = "soft"
    hard = "hard"


class Device(StrEnum):
    """Where fine-tuning runs; auto picks CUDA when a GPU is visible."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PruningTarget(ApiModel):
    """What the pruning aims at: a filter rate or a FLOPs reduction (exactly one)."""

    filter_rate: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="filterRate is the fraction of filters removed from every prunable layer "
        "(rounded to the nearest multiple of roundTo); the steps before the last are planned "
        "in FLOPs.",
    )
    flops_reduction: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="flopsReduction is the fraction of FLOPs to remove; widths are searched "
        "that reach it at the roundTo rounding.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> PruningTarget:
        if (self.filter_rate is None) == (self.flops_reduction is None):
            raise ValueError("exactly one of filterRate and flopsReduction must be set")
        return self


class Schedule(ApiModel):
    """A progressive pruning rate: each step masks more filters, then fine-tunes."""

    kind: ScheduleKind = Field(
        default=ScheduleKind.exponential,
        description="kind 'exponential' removes more FLOPs early, when the network has slack; "
        "'linear' removes the same FLOPs each step.",
    )
    steps: int = Field(default=3, ge=1, le=100, description="steps to reach the target rate.")


class FineTune(ApiModel):
    """Fine-tuning that recovers accuracy: SGD with Nesterov momentum and step decay."""

    epochs: int = Field(
        default=3, ge=0, le=1000, description="epochs of fine-tuning, spread over the steps."
    )
    batch_size: int = Field(default=128, ge=1, le=65536, description="batchSize for training.")
    learning_rate: float = Field(
        default=0.01, gt=0.0, le=10.0, description="learningRate at the start."
    )
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="momentum for SGD.")
    nesterov: bool = Field(default=True, description="nesterov momentum on or off.")
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0, description="weightDecay (L2).")
    step_size: int = Field(
        default=1, ge=1, le=1000, description="stepSize in epochs between decays."
    )
    gamma: float = Field(default=0.5, gt=0.0, le=1.0, description="gamma multiplies the rate.")
    distillation: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="distillation weight of the original model's soft labels in the loss "
        "(0 turns distillation off).",
    )
    max_steps_per_epoch: int | None = Field(
        default=None,
        ge=1,
        description="maxStepsPerEpoch caps the batches of one epoch; empty uses all.",
    )
    batch_norm_recalibration: int = Field(
        default=40,
        ge=0,
        le=100_000,
        description="batchNormRecalibration: training batches (per process) whose forward "
        "passes re-estimate every BatchNorm's running statistics once fine-tuning ends "
        "(no gradients; weights unchanged); 0 keeps the statistics fine-tuning left.",
    )
    checkpoint_every_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="checkpointEverySteps writes a resumable checkpoint (model, optimizer, "
        "masks, schedule position, RNG states) to the artifact store every this many "
        "optimizer steps; empty writes one at the end of every epoch. A restarted stage "
        "resumes from it.",
    )


class DistributedBackend(StrEnum):
    """The torch.distributed backend; auto is nccl on CUDA, gloo otherwise."""

    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class DistributedSpec(ApiModel):
    """Data-parallel fine-tuning: DistributedDataParallel launched by torchrun."""

    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="workers is the number of Pods on a cluster (processes locally); the "
        "learning rate scales linearly with the global batch (fineTune.batchSize per process).",
    )
    gpus_per_worker: int = Field(
        default=1,
        ge=1,
        le=16,
        description="gpusPerWorker is the processes (one per GPU) per worker when pruning.gpu "
        "is true; on the CPU each worker is one process.",
    )
    backend: DistributedBackend = Field(
        default=DistributedBackend.auto,
        description="backend of torch.distributed: auto is nccl on CUDA, gloo otherwise.",
    )


class PruningSpec(ApiModel):
    """Structured filter pruning with soft masks, then physical removal."""

    enabled: bool = Field(default=True, description="enabled false skips pruning.")
    criterion: Criterion = Field(
        default=Criterion.group_geometric_median,
        description="criterion that ranks filters: geometric_median (FPGM on signed weights), "
        "l1, l2 (per-filter norms), each over the layers producing the channels; "
        "group_geometric_median is torch-pruning's FPGM over the whole coupled group (squared "
        "weights), which measured best.",
    )
    target: PruningTarget = Field(
        default_factory=lambda: PruningTarget(filter_rate=0.3),
        description="target rate or FLOPs reduction.",
    )
    schedule: Schedule = Field(default_factory=Schedule, description="schedule of the rate.")
    global_ranking: bool = Field(
        default=False,
        description="globalRanking cuts where the least importance is lost per FLOP saved, "
        "each layer at most 0.25 of its filters past the uniform rate; false removes the same "
        "fraction everywhere.",
    )
    ignored_layers: list[str] = Field(
        default=[],
        max_length=256,
        description="ignoredLayers are module names never pruned; the classifier always is.",
    )
    round_to: int = Field(
        default=16,
        ge=1,
        le=256,
        description="roundTo keeps channel counts a multiple of this (to the nearest); 16 ran "
        "fastest per FLOP on AVX-512 CPUs.",
    )
    masking: Masking = Field(
        default=Masking.hard,
        description="masking 'hard' keeps masked channels at zero (BN and next layers "
        "included) and masks only grow; 'soft' is Soft Filter Pruning: zeroed filters keep "
        "training and are re-selected every epoch until the last step.",
    )
    fine_tune: FineTune = Field(default_factory=FineTune, description="fineTune settings.")
    device: Device = Field(default=Device.auto, description="device for fine-tuning.")
    gpu: bool = Field(
        default=False,
        description="gpu asks the cluster for one nvidia.com/gpu for the prune Job.",
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec,
        description="distributed fine-tuning across workers (DDP through torchrun).",
    )


class Preset(StrEnum):
    """NNCF quantization presets."""

    performance = "performance"
    mixed = "mixed"


class IgnoredScope(ApiModel):
    """Layers kept in floating point."""

    names: list[str] = Field(default=[], max_length=256, description="names of IR nodes.")
    patterns: list[str] = Field(
        default=[], max_length=64, description="patterns: regular expressions over node names."
    )
    types: list[str] = Field(
        default=[], max_length=64, description="types: OpenVINO operation types."
    )


class QuantizationSpec(ApiModel):
    """INT8 post-training quantization with NNCF."""

    enabled: bool = Field(default=True, description="enabled false skips quantization.")
    preset: Preset = Field(default=Preset.performance, description="preset of NNCF.")
    subset_size: int = Field(
        default=300, ge=1, le=100000, description="subsetSize of calibration samples."
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="maxAccuracyDrop (absolute, 0.01 = 1 point) switches to "
        "quantize_with_accuracy_control, which reverts layers to float until the drop fits "
        "on the tuning split.",
    )
    ignored_scope: IgnoredScope = Field(
        default_factory=IgnoredScope, description="ignoredScope stays in floating point."
    )


class BenchmarkMode(StrEnum):
    """latency: batch 1, one request at a time; throughput: parallel requests."""

    latency = "latency"
    throughput = "throughput"


class Precision(StrEnum):
    """OpenVINO's inference precision for floating-point layers."""

    default = "default"
    f32 = "f32"


class BenchmarkSpec(ApiModel):
    """Side-by-side measurement of the original and the optimized models."""

    enabled: bool = Field(default=True, description="enabled false skips the benchmark.")
    modes: list[BenchmarkMode] = Field(
        default=[BenchmarkMode.latency, BenchmarkMode.throughput],
        min_length=1,
        max_length=2,
        description="modes to measure.",
    )
    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default=[1, 64],
        min_length=1,
        max_length=8,
        description="batchSizes for the throughput mode, each compiled with a static input "
        "shape and reported with its own speedup (latency always uses 1).",
    )
    duration_seconds: float = Field(
        default=1.0,
        gt=0.0,
        le=600.0,
        description="durationSeconds of one measurement (one model, mode and batch size) in "
        "one round.",
    )
    rounds: int = Field(
        default=5,
        ge=1,
        le=100,
        description="rounds of interleaved measurement: each round measures every model in "
        "turn; figures are medians over rounds and speedups medians of per-round ratios.",
    )
    precision: Precision = Field(
        default=Precision.default,
        description="precision 'default' lets OpenVINO pick (bf16 on CPUs with AMX/avx512_bf16); "
        "'f32' forces full precision.",
    )
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="threads for inference; empty uses all cores."
    )


class ArtifactsVolume(ApiModel):
    """A PersistentVolumeClaim every stage Pod mounts read-write at the path of artifacts.uri."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        description="claimName of a PVC that every stage Pod can mount (ReadWriteMany, or "
        "ReadWriteOnce on a single node).",
    )


class RetentionSpec(ApiModel):
    """How long stage outputs stay in the artifacts store."""

    keep_fingerprints: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="keepFingerprints is how many fingerprints (input versions) of each stage "
        "keep their outputs under the resource's artifacts root, newest first; older ones are "
        "deleted after the stage succeeds. The default 2 keeps the current outputs and the ones "
        "they replaced, so undoing the last spec edit reuses instead of recomputing and the model "
        "before the edit can still be compared. 0 keeps every fingerprint.",
    )
    keep_shared: int = Field(
        default=16,
        ge=0,
        le=100000,
        description="keepShared is how many entries of each stage the shared cache "
        "(<artifacts.uri>/cache, content-addressed, used by every resource with the same "
        "artifacts.uri) keeps, newest first, pruned after a stage of this resource succeeds. "
        "0 keeps every entry.",
    )
    delete_on_resource_deletion: bool = Field(
        default=False,
        description="deleteOnResourceDeletion true makes the operator delete the resource's own "
        "artifacts (<uri>/<namespace>/<name>/) when the resource is deleted, through a cleanup "
        "Job with the stage Pods' credentials and volume; a failure is reported as an Event and "
        "deletion goes on. The shared cache is never deleted with a resource (other resources "
        "may reuse it). Ignored by kubeslim run.",
    )


class ArtifactsSpec(ApiModel):
    """Where stage outputs go."""

    uri: Uri = Field(
        default="./artifacts",
        description="uri prefix; each stage writes under <uri>/<stage>/ (on a cluster, "
        "<uri>/<namespace>/<name>/<stage>/). s3:// reads credentials from the environment "
        "(AWS_ACCESS_KEY_ID, ...). On a cluster a local path needs volume (stage Pods share "
        "no disk otherwise). Immutable: a resource's outputs stay where they were written.",
    )
    volume: ArtifactsVolume | None = Field(
        default=None,
        description="volume mounts a PVC at uri's path in every stage Pod, so that a local "
        "path (which must then be absolute) is shared between stages. Ignored by kubeslim run.",
    )
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        description="credentialsSecret names a Secret whose keys become the stage Pods' "
        "environment (for S3 credentials). The operator never reads it.",
    )
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec,
        description="retention says which outputs are kept and whether they go with the resource.",
    )


def _quantity_text(value: object) -> object:
    """YAML turns `cpu: 2` into a number and `cpu: 0.5` into a float; Kubernetes takes both."""
    if isinstance(value, bool):
        raise ValueError("expected a quantity (2, '500m', '4Gi'), got a boolean")
    if isinstance(value, float):
        return format(value, "g")
    return value


Quantity = Annotated[
    int | str,
    BeforeValidator(_quantity_text),
    Field(description="A Kubernetes quantity: a number (2) or a string ('500m', '4Gi')."),
]


class Resources(ApiModel):
    """Compute resources of one stage's container (Kubernetes quantities)."""

    requests: dict[str, Quantity] = Field(
        default={}, max_length=16, description="requests, e.g. {cpu: 2, memory: 4Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default={}, max_length=16, description="limits, e.g. {memory: 8Gi}."
    )


class DatasetVolume(ApiModel):
    """A PersistentVolumeClaim mounted read-only into every stage Pod."""

    claim_name: str = Field(min_length=1, max_length=253, description="claimName of the PVC.")
    mount_path: str = Field(
        default="/data", min_length=1, max_length=1024, description="mountPath in the Pod."
    )


class ExecutionSpec(ApiModel):
    """How stage Jobs run on a cluster; ignored by `kubeslim run`."""

    service_account_name: str | None = Field(
        default=None, max_length=253, description="serviceAccountName of the stage Pods."
    )
    node_selector: dict[str, str] = Field(
        default={}, max_length=32, description="nodeSelector of the stage Pods."
    )
    tolerations: list[dict[str, str | int]] = Field(
        default=[], max_length=32, description="tolerations of the stage Pods (core/v1)."
    )
    affinity: dict[str, object] | None = Field(
        default=None, description="affinity of the stage Pods (core/v1 Affinity)."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="priorityClassName of the stage Pods."
    )
    image_pull_secrets: list[str] = Field(
        default=[],
        max_length=16,
        description="imagePullSecrets: names of Secrets, added to the operator's own "
        "(KUBESLIM_IMAGE_PULL_SECRETS).",
    )
    pod_labels: dict[str, str] = Field(
        default={},
        max_length=32,
        description="podLabels on every stage Pod (e.g. kueue.x-k8s.io/queue-name); the "
        "operator's own labels win.",
    )
    pod_annotations: dict[str, str] = Field(
        default={},
        max_length=32,
        description="podAnnotations on every stage Pod (e.g. sidecar.istio.io/inject: 'false').",
    )
    trainer_image: str | None = Field(
        default=None,
        max_length=512,
        description="trainerImage replaces the operator's trainer image for this resource's "
        "prune and convert stages: a model baked into a custom image (model.entryPoint). "
        "The operator may refuse it (KUBESLIM_ALLOW_IMAGE_OVERRIDE).",
    )
    runtime_image: str | None = Field(
        default=None,
        max_length=512,
        description="runtimeImage replaces the operator's runtime image for this resource's "
        "quantize and benchmark stages.",
    )
    dataset_volume: DatasetVolume | None = Field(
        default=None, description="datasetVolume mounts a PVC holding datasets or checkpoints."
    )
    backoff_limit: int = Field(
        default=2, ge=0, le=20, description="backoffLimit: retries of a failed stage Pod."
    )
    active_deadline_seconds: int = Field(
        default=6 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="activeDeadlineSeconds bounds one stage's run time.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=24 * 3600,
        ge=0,
        le=30 * 24 * 3600,
        description="ttlSecondsAfterFinished deletes a finished Job after this long.",
    )
    prune_resources: Resources = Field(
        default_factory=Resources, description="pruneResources for the prune Job."
    )
    cpu_resources: Resources = Field(
        default_factory=Resources,
        description="cpuResources for the convert, quantize and benchmark Jobs.",
    )
    scratch_size_limit: Quantity = Field(
        default="20Gi",
        description="scratchSizeLimit caps the emptyDir at /scratch (downloads, temporary "
        "files); a stage that writes more is evicted with a message saying so.",
    )


class SearchObjective(StrEnum):
    """What the search maximises among candidates within the accuracy budget."""

    throughput = "throughput"
    latency = "latency"
    size = "size"


class TargetKind(StrEnum):
    """Which pruning target the search varies."""

    flops_reduction = "flopsReduction"
    filter_rate = "filterRate"


class TargetRange(ApiModel):
    """An interval of pruning targets; the search starts with an even grid over it."""

    min: float = Field(gt=0.0, lt=1.0, description="min is the shallowest target tried.")
    max: float = Field(gt=0.0, lt=1.0, description="max is the deepest target tried.")

    @model_validator(mode="after")
    def _ordered(self) -> TargetRange:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class SearchSpec(ApiModel):
    """A search over pruning targets: every candidate is pruned, converted and quantized,
    measured side by side, and the best one within the accuracy budget is selected."""

    target: TargetKind = Field(
        default=TargetKind.flops_reduction,
        description="target names the pruning target the candidates vary (pruning.target "
        "is then ignored).",
    )
    targets: list[float] = Field(
        default=[],
        max_length=16,
        description="targets are the first round's candidates (each in (0, 1)). Exactly one "
        "of targets and range is set.",
    )
    range: TargetRange | None = Field(
        default=None,
        description="range: the first round is an even grid of candidatesPerRound targets "
        "from min to max.",
    )
    candidates_per_round: int = Field(
        default=3,
        ge=1,
        le=8,
        description="candidatesPerRound: the grid size over range and the number of targets "
        "each refinement round tries.",
    )
    rounds: int = Field(
        default=0,
        ge=0,
        le=5,
        description="rounds of refinement after the first: each tries targets between the "
        "deepest one within budget and the shallowest one outside it, and the search stops "
        "early when a round does not improve the objective.",
    )
    resolution: float = Field(
        default=0.02,
        gt=0.0,
        lt=0.5,
        description="resolution: refinement never tries targets closer than this to one "
        "already tried.",
    )
    max_accuracy_drop: float = Field(
        gt=0.0,
        le=1.0,
        description="maxAccuracyDrop is the budget: the most a candidate's INT8 model may "
        "lose against the original, absolute (0.01 = 1 point), on the tuning split.",
    )
    objective: SearchObjective = Field(
        default=SearchObjective.throughput,
        description="objective: highest throughput, lowest latency, or smallest IR.",
    )
    batch_size: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="batchSize at which throughput and latency are measured.",
    )
    parallelism: int = Field(
        default=2,
        ge=1,
        le=32,
        description="parallelism: candidates running at once (Jobs on a cluster, processes "
        "locally, where the number of cores also limits it).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SearchSpec:
        if bool(self.targets) == (self.range is not None):
            raise ValueError("exactly one of targets and range must be set")
        if any(not 0.0 < t < 1.0 for t in self.targets):
            raise ValueError("targets must lie strictly between 0 and 1")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets must be distinct")
        return self


class ModelOptimizationSpec(ApiModel):
    """What to optimize and how: the pipeline prune -> convert -> quantize -> benchmark."""

    model: ModelSpec = Field(description="model to optimize.")
    dataset: DatasetSpec = Field(description="dataset for fine-tuning, calibration, accuracy.")
    pruning: PruningSpec = Field(default_factory=PruningSpec, description="pruning settings.")
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="quantization settings."
    )
    benchmark: BenchmarkSpec = Field(
        default_factory=BenchmarkSpec, description="benchmark settings."
    )
    artifacts: ArtifactsSpec = Field(
        default_factory=ArtifactsSpec, description="artifacts location."
    )
    execution: ExecutionSpec = Field(
        default_factory=ExecutionSpec, description="execution settings for stage Jobs."
    )
    suspend: bool = Field(
        default=False,
        description="suspend true stops the pipeline as a Job's suspend does: running stage "
        "Jobs are deleted (their Pods stop), none is created, and the concurrency slot is "
        "freed; false again resumes from the first unfinished stage. Finished stages stay "
        "done.",
    )
    search: SearchSpec | None = Field(
        default=None,
        description="search over pruning targets for the best model within an accuracy "
        "budget; empty runs the single pipeline.",
    )

    @model_validator(mode="after")
    def _search_needs_pruning_and_int8(self) -> ModelOptimizationSpec:
        if self.search is not None and not (self.pruning.enabled and self.quantization.enabled):
            raise ValueError("search needs pruning.enabled and quantization.enabled")
        return self


StageName = Literal["prune", "convert", "quantize", "benchmark"]
