"""What a pass is: a named, stateless step over one graph stage, with declared contracts.

A pass declares which stages it runs on, validates its settings up front, states what it
requires and ensures, and returns how many sites each of its rules rewrote. The manager
(manager.py) runs requires -> run -> ensures, times it and refuses a zero count where the
recipe expected rewrites.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from qpasses.errors import RecipeError
from qpasses.passes.notes import Notes

if TYPE_CHECKING:
    from qpasses.calibration.source import CalibrationSource


@dataclass
class PassResult:
    name: str
    rewrites: dict[str, int]
    seconds: float = 0.0
    not_applied: str | None = None  # why a pass that expects rewrites changed nothing, and was let go on

    @property
    def total(self) -> int:
        return sum(self.rewrites.values())

    def to_json(self) -> dict:
        out = {"name": self.name, "rewrites": self.rewrites, "seconds": round(self.seconds, 3)}
        return out | ({"not_applied": self.not_applied} if self.not_applied else {})


@dataclass(frozen=True)
class Positions:
    """The positions the deployed decoder must serve, from the model's config (read by the compiler
    before capture; the graphs do not carry them).

    model: the config's max_position_embeddings (None: not known, e.g. an ONNX input)
    cap: `--max-context N`, an upper bound on the rotary tables' rows (None: no cap)
    rope_types: the config's rotary kinds (rope_parameters / rope_scaling "rope_type": "default",
                "linear", "llama3", "yarn", "dynamic", "longrope", ...; one per layer type when they differ)
    """

    model: int | None = None
    cap: int | None = None
    rope_types: tuple[str, ...] = ("default",)


@dataclass
class Context:
    """What passes share besides the graph: the per-weight quantization plan written in stage A
    and read by lowering in stage B, the site filters of the recipe, calibration access and the seed.

    notes: what passes record for manifest.json (notes.Notes, written whole)
    quantized: weight parameter name -> formats.QuantizedWeight (the exact codes behind the float
               weight now in the graph)
    act_formats: weight parameter name -> formats.ActFormat of that linear's input
    checkpoint: a qpasses.checkpoint.Checkpoint where layer-sequential passes keep finished groups
               (None: no resuming); step: the running pass's index in the recipe (its folder there)
    positions: what the model's config says about positions, and the --max-context cap (Positions;
               fuse_attention sizes its rotary tables from it)
    """

    ignore: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()
    seed: int = 0
    quantized: dict[str, Any] = field(default_factory=dict)
    act_formats: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationSource | None = None
    notes: Notes = field(default_factory=Notes)
    checkpoint: Any = None
    step: int = 0
    positions: Positions = field(default_factory=Positions)


@dataclass(frozen=True)
class Override:
    """Per-site settings for one pass: `[[override]] match = "*.v_proj"  pass = "quantize_weights" ...`."""

    match: tuple[str, ...]
    pass_name: str
    settings: dict


class Pass(abc.ABC):
    """Subclasses set `name`, `stages`, a frozen `Settings` dataclass, and implement `run`."""

    name: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]  # ("fx",), ("onnx",) or ("fx", "onnx")
    changes_activations: ClassVar[bool] = False
    expects_rewrites: ClassVar[bool] = True  # zero rewrites is an error
    plans_linears: ClassVar[bool] = False  # quantizes linear weights: what it selects must end up lowered
    Settings: ClassVar[type]

    def __init__(self, ignore: Any = (), **settings: Any):
        """`ignore`: glob patterns on site names this pass leaves alone, on top of the recipe's
        top-level `ignore` (e.g. an lm_head that is quantized but not rotated)."""
        if isinstance(ignore, str):
            ignore = [ignore]
        if not isinstance(ignore, (list, tuple)) or not all(isinstance(g, str) for g in ignore):
            raise RecipeError(f"pass {self.name!r}: ignore must be a list of site-name patterns, got {ignore!r}")
        self.ignore = tuple(ignore)
        known = {f.name for f in dataclasses.fields(self.Settings)}
        unknown = set(settings) - known
        if unknown:
            raise RecipeError(
                f"pass {self.name!r} has no setting {', '.join(sorted(unknown))}; "
                f"it takes: {', '.join(sorted(known | {'ignore'}))}"
            )
        try:
            self.settings = self.Settings(**settings)
        except (TypeError, ValueError) as e:
            raise RecipeError(f"pass {self.name!r}: {e}") from None

    def settings_for(self, site, ctx: Context):
        """The pass settings with every matching [[override]] of this pass applied."""
        extra = {}
        for ov in ctx.overrides:
            if ov.pass_name == self.name and site.matches(ov.match):
                extra.update(ov.settings)
        if not extra:
            return self.settings
        try:
            return dataclasses.replace(self.settings, **extra)
        except (TypeError, ValueError) as e:
            raise RecipeError(f"override for {site.name} in pass {self.name!r}: {e}") from None

    def requires(self, graph, ctx: Context) -> None:
        """Raise PreconditionError when the graph cannot be processed."""

    @abc.abstractmethod
    def run(self, graph, ctx: Context) -> dict[str, int]:
        """Rewrite the graph in place; return {rule name: sites rewritten}."""

    def ensures(self, graph, ctx: Context) -> None:
        """Raise PostconditionError when the promised property does not hold."""

    def describe(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in dataclasses.asdict(self.settings).items())})"
