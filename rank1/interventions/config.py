"""Configs of the stage-4 scripts (``4_lora_interventions/``): the run options they share and one
dataclass per script, with their checks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from rank1.config import option
from rank1.interventions.attribution import TARGETS
from rank1.interventions.steering import RESIDUAL_WRITERS
from rank1.lora import parse_projections
from rank1.runs import RunOptions
from rank1.serving import VLLM_MISSING, ServingOptions

PROBLEM_SOURCES = ("heldout", "math500", "aime24")
PROBE = "adapters (trace + last)"  # the probe every baseline is compared with


def check_problems(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"--problems must be one of {list(allowed)}, got {value!r}")


@dataclass
class StageOptions(RunOptions):
    """Run options plus where a stage-4 script writes and whether it redoes finished work."""

    out: str | None = option("output folder (default: results/<profile>/<stage>/<run>)")
    overwrite: bool = option("recompute even if the artifacts exist", False)


@dataclass
class SteeringConfig(StageOptions):
    """4.0: the steering sweep (layers, adapters, magnitudes) and its generation budgets."""

    n_problems: int = option("held-out problems per setting", 8)
    offset: int = option("first held-out problem", 0)
    problems: str = option("problem source: heldout (the generated split), math500 or aime24 (graded with their "
                           "graders; the paper profile: s1K-1.1 has no held-out split)", "heldout")
    layers: list[int] = option("layers to steer (empty: --n_layers evenly spaced)", [])
    n_layers: int = option("evenly spaced layers when --layers is empty", 3)
    scalar_projections: list[str] = option("adapters whose scalar is steered (all, mlp, attn or a list); saved as "
                                           "the full names", ["down_proj"])
    vector_projections: list[str] = option("adapters whose unit B is added (o_proj and/or down_proj; '' for none)",
                                           ["down_proj"])
    scalar_mode: str = option("offset (a + m std) or scale (m a)", "offset")
    scalar_magnitudes: list[float] = option("m for the scalar, in natural std (offset) or as a factor (scale)",
                                            [-30.0, -3.0, 1.0, 3.0, 10.0, 30.0, 100.0])
    vector_magnitudes: list[float] = option("m for the vector, in units of the layer's mean residual norm",
                                            [0.03, 0.1, 0.3, 1.0, 3.0])
    think_tokens: int = option("thinking budget of each generation", 64)
    answer_tokens: int = option("answer budget", 8)
    batch_size: int = option("generation batch size", 8)
    kl_threshold: float = option("mean KL (nats) above which a setting counts as changing the output", 0.1)
    random_control: bool = option("also sweep, at every steered site, a random vector of B's norm through the same "
                                  "magnitudes (the control of the onset; doubles the steered passes)", True)
    random_seed: int = option("seed of the random control's vectors (one per site: seed, layer, projection)", 0)
    n_resamples: int = option("bootstrap resamples of problems for the onset CIs", 2000)
    n_examples: int = option("generations saved per setting", 2)
    topk: str | None = option("top-k folder of 2.1 with the activation moments (default: results/<profile>/"
                              "lora_topk/<run>)")
    precision: str = option("auto | bf16 | fp32", "fp32")

    def __post_init__(self):
        check_problems(self.problems, PROBLEM_SOURCES)
        if self.scalar_mode not in ("offset", "scale"):
            raise ValueError(f"--scalar_mode must be offset or scale, got {self.scalar_mode!r}")
        if not self.scalar_magnitudes or not self.vector_magnitudes:
            raise ValueError("--scalar_magnitudes and --vector_magnitudes must not be empty")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"--layers must be layer numbers (0, 1, ...), got {self.layers}")
        self.scalar_projections = list(parse_projections(self.scalar_projections, "scalar_projections"))
        if self.vector_projections:
            self.vector_projections = list(parse_projections(self.vector_projections, "vector_projections"))
        bad = [p for p in self.vector_projections if p not in RESIDUAL_WRITERS]
        if bad:
            raise ValueError(f"--vector_projections {bad}: only {RESIDUAL_WRITERS} write to the residual stream")
        if min(self.n_problems, self.n_layers, self.think_tokens, self.batch_size, self.n_resamples) < 1:
            raise ValueError("--n_problems, --n_layers, --think_tokens, --batch_size and --n_resamples must be >= 1")


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
class RolloutConfig(ServingOptions, StageOptions):  # the run options first, then the vLLM fields, then these
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
    read_batch: int = option("rollouts whose activations one forward pass of the PEFT model reads (whole rollouts "
                             "of up to think_tokens + answer_tokens tokens; 0: batch_size)", 0)
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
            raise ValueError(f"--backend vllm asked for, but {VLLM_MISSING}; or use --backend hf")
        self.check_serving()
        if self.n_samples < 2:
            raise ValueError(f"--n_samples must be >= 2 to compare attempts of one problem, got {self.n_samples}")
        if min(self.n_problems, self.last_tokens, self.batch_size) < 1 or self.temperature <= 0:
            raise ValueError("--n_problems, --last_tokens, --batch_size must be >= 1 and --temperature > 0")
        if self.read_batch < 0:
            raise ValueError(f"--read_batch must be >= 0 (0: --batch_size), got {self.read_batch}")


@dataclass
class ProbeConfig(StageOptions):
    """4.3: 4.2's rollouts and the grouped cross-validation of the correctness probes."""

    rollouts: str | None = option("4.2's folder (default: results/<profile>/rollouts/<run>)")
    n_splits: int = option("outer folds, grouped by problem", 5)
    inner_splits: int = option("inner folds that choose the regularisation", 3)
    n_resamples: int = option("bootstrap resamples of problems for the AUC CIs", 2000)
    cs: list[float] = option("inverse L2 strengths C the inner folds choose from", [0.01, 0.1, 1.0, 10.0])
    n_permutations: int = option("label permutations (by problem) of the probe's permutation test; each refits the "
                                 "whole cross-validation (0: no test)", 200)
    one_class: str = option("when every rollout has the same grade: error (stop with an error) | record (write "
                            "probes.json saying so, no AUCs; for models that answer nothing right)", "error")

    def __post_init__(self):
        if self.one_class not in ("error", "record"):
            raise ValueError(f"--one_class must be error or record, got {self.one_class!r}")
        if self.n_splits < 2 or self.inner_splits < 2 or self.n_resamples < 1 or self.n_permutations < 0:
            raise ValueError("--n_splits and --inner_splits must be >= 2, --n_resamples >= 1, --n_permutations >= 0")
        if not self.cs or min(self.cs) <= 0:
            raise ValueError(f"--cs must be positive numbers (at least one), got {self.cs}")


@dataclass
class GeometryConfig(StageOptions):
    """4.4: how the cosines of the saved rank-1 factors are shown."""

    absolute: bool = option("show |cos| (the sign of a rank-1 factor is arbitrary); else trained signs", True)
