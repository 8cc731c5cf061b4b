"""Configs of the stage-4 scripts (``4_lora_interventions/``): the run options they share and one
dataclass per script, with their checks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from rank1.config import option
from rank1.interventions.attribution import TARGETS
from rank1.interventions.steering import RESIDUAL_WRITERS
from rank1.runs import RunOptions

PROBLEM_SOURCES = ("heldout", "math500", "aime24")


def check_problems(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"--problems must be one of {list(allowed)}, got {value!r}")


@dataclass
class StageOptions(RunOptions):
    """Run options plus where a stage-4 script writes and whether it redoes finished work."""

    out: str | None = option("output folder (default: results/<profile>/<stage>/<run>)")
    overwrite: bool = option("recompute even if the artifacts exist", False)


def layer_list(text: str) -> list[int]:
    """The layer numbers of a comma-separated ``--layers`` value; a clear error when one is not a layer number."""
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        layers = [-1]
    if any(layer < 0 for layer in layers):
        raise ValueError(f"--layers must be comma-separated layer numbers (0, 1, ...), got {text!r}")
    return layers


def floats(text: str, flag: str) -> list[float]:
    """The numbers of a comma-separated ``--flag`` value; a clear error when one is not a number or
    none is given."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{flag} is empty")
    return values


@dataclass
class SteeringConfig(StageOptions):
    """4.0: the steering sweep (layers, adapters, magnitudes) and its generation budgets."""

    n_problems: int = option("held-out problems per setting", 8)
    offset: int = option("first held-out problem", 0)
    problems: str = option("problem source: heldout (the generated split), math500 or aime24 (graded with their "
                           "graders; the paper profile: s1K-1.1 has no held-out split)", "heldout")
    layers: str = option("layers to steer, comma-separated (empty: --n_layers evenly spaced)", "")
    n_layers: int = option("evenly spaced layers when --layers is empty", 3)
    scalar_projections: str = option("adapters whose scalar is steered (all, mlp, attn or a list)", "down_proj")
    vector_projections: str = option("adapters whose unit B is added (o_proj and/or down_proj; '' for none)",
                                     "down_proj")
    scalar_mode: str = option("offset (a + m std) or scale (m a)", "offset")
    scalar_magnitudes: str = option("m for the scalar, in natural std (offset) or as a factor (scale)",
                                    "-30,-3,1,3,10,30,100")
    vector_magnitudes: str = option("m for the vector, in units of the layer's mean residual norm",
                                    "0.03,0.1,0.3,1,3")
    think_tokens: int = option("thinking budget of each generation", 64)
    answer_tokens: int = option("answer budget", 8)
    batch_size: int = option("generation batch size", 8)
    kl_threshold: float = option("mean KL (nats) above which a setting counts as changing the output", 0.1)
    n_examples: int = option("generations saved per setting", 2)
    topk: str | None = option("top-k folder of 2.1 with the activation moments (default: results/<profile>/"
                              "lora_topk/<run>)")
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        check_problems(self.problems, PROBLEM_SOURCES)
        if self.scalar_mode not in ("offset", "scale"):
            raise ValueError(f"--scalar_mode must be offset or scale, got {self.scalar_mode!r}")
        floats(self.scalar_magnitudes, "scalar_magnitudes")
        floats(self.vector_magnitudes, "vector_magnitudes")
        layer_list(self.layers)
        bad = [p for p in self.vector_projections.split(",") if p.strip() and p.strip() not in RESIDUAL_WRITERS]
        if bad:
            raise ValueError(f"--vector_projections {bad}: only {RESIDUAL_WRITERS} write to the residual stream")
        if min(self.n_problems, self.n_layers, self.think_tokens, self.batch_size) < 1:
            raise ValueError("--n_problems, --n_layers, --think_tokens and --batch_size must be >= 1")


@dataclass
class AttributionConfig(StageOptions):
    """4.1: the held-out problems attributed, the target, and how many zeroings check it."""

    n_problems: int = option("held-out problems to attribute", 8)
    offset: int = option("first held-out problem", 0)
    problems: str = option("problems with gold traces: heldout (the generated split) or dataset (the profile's "
                           "dataset, trained on: the paper profile, whose s1K-1.1 has no held-out split)", "heldout")
    dataset: str = option("the profile's dataset, read by --problems dataset ('synthetic': data/<profile>/train.jsonl)",
                          "synthetic")
    target: str = option(f"what is attributed: one of {TARGETS}", "logit_diff")
    freeze: bool = option("freeze RMSNorm scales and attention patterns (the authors' linearisation)", True)
    n_check: int = option("per problem: top and random (adapter, position) pairs and top adapters zeroed", 8)
    n_rows: int = option("adapters shown per problem in the dashboard", 40)
    top: int = option("top adapters reported per problem", 10)
    seed: int = option("seed of the random pairs checked", 0)
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        check_problems(self.problems, ("heldout", "dataset"))
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {TARGETS}, got {self.target!r}")
        if min(self.n_problems, self.n_check, self.n_rows, self.top) < 1:
            raise ValueError("--n_problems, --n_check, --n_rows and --top must be >= 1")


@dataclass
class RolloutConfig(StageOptions):
    """4.2: rollouts per held-out problem, their sampling and budgets, and the paired tests."""

    n_problems: int = option("held-out problems", 10)
    offset: int = option("first held-out problem", 0)
    problems: str = option("problem source: heldout (the generated split), math500 or aime24 (graded with their "
                           "graders; the paper profile: s1K-1.1 has no held-out split)", "heldout")
    n_samples: int = option("rollouts per problem", 4)
    temperature: float = option("sampling temperature (the authors: 0.7)", 0.7)
    seed: int = option("sampling seed (rollout i of the run uses seed (seed, i))", 0)
    think_tokens: int = option("thinking budget", 160)
    answer_tokens: int = option("answer budget", 16)
    batch_size: int = option("generation and extraction batch size", 16)
    last_tokens: int = option("activations are also averaged over the last N thinking tokens", 16)
    require_complete: bool = option("only rollouts whose thinking ended before its budget count", True)
    mlp_baseline: bool = option("also read the matched base-model MLP neurons of stage 2.4", True)
    n_resamples: int = option("sign flips of the permutation test", 10000)
    alpha: float = option("false discovery rate of the Benjamini-Hochberg correction", 0.05)
    backend: str = option("hf | vllm (GPU; needs the vllm package)", "hf")
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        check_problems(self.problems, PROBLEM_SOURCES)
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend must be hf or vllm, got {self.backend!r}")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("--backend vllm asked for, but vllm is not installed (it needs a CUDA torch): "
                             "pip install vllm on a GPU machine, or use --backend hf")
        if self.n_samples < 2:
            raise ValueError(f"--n_samples must be >= 2 to compare attempts of one problem, got {self.n_samples}")
        if min(self.n_problems, self.last_tokens, self.batch_size) < 1 or self.temperature <= 0:
            raise ValueError("--n_problems, --last_tokens, --batch_size must be >= 1 and --temperature > 0")


@dataclass
class ProbeConfig(StageOptions):
    """4.3: 4.2's rollouts and the grouped cross-validation of the correctness probes."""

    rollouts: str | None = option("4.2's folder (default: results/<profile>/rollouts/<run>)")
    n_splits: int = option("outer folds, grouped by problem", 5)
    inner_splits: int = option("inner folds that choose the regularisation", 3)
    n_resamples: int = option("bootstrap resamples of problems for the AUC CIs", 2000)
    cs: str = option("inverse L2 strengths C the inner folds choose from", "0.01,0.1,1,10")
    one_class: str = option("when every rollout has the same grade: error (stop with an error) | record (write "
                            "probes.json saying so, no AUCs; for models that answer nothing right)", "error")

    def __post_init__(self):
        if self.one_class not in ("error", "record"):
            raise ValueError(f"--one_class must be error or record, got {self.one_class!r}")
        if self.n_splits < 2 or self.inner_splits < 2 or self.n_resamples < 1:
            raise ValueError("--n_splits and --inner_splits must be >= 2, --n_resamples >= 1")
        try:
            if not all(float(c) > 0 for c in self.cs.split(",")):
                raise ValueError
        except ValueError:
            raise ValueError(f"--cs must be comma-separated positive numbers, got {self.cs!r}") from None


@dataclass
class GeometryConfig(StageOptions):
    """4.4: how the cosines of the saved rank-1 factors are shown."""

    absolute: bool = option("show |cos| (the sign of a rank-1 factor is arbitrary); else trained signs", True)
