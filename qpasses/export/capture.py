"""Capture a Hugging Face model as torch.export programs: stage A of the compiler.

Two programs are captured from one model; they share their parameters:

- `logits`: (input_ids int64 [batch, seq], attention_mask int64 [batch, seq]) -> logits float32
  [batch, seq, vocab], batch and seq dynamic. Positions are the model's default (0..seq-1 per
  row); Llama-style rotary attention depends only on position differences, so left padding
  changes nothing but rounding. A non-causal model (a BERT encoder) gets the same signature and
  returns its main output (the first field of its output, e.g. `last_hidden_state`).
- `decoder` (causal LMs only): one KV-cache step with the input and output names of Hugging Face
  optimum's decoder-with-past: input_ids [batch, seq], attention_mask [batch, past + seq],
  position_ids [batch, seq], past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
  -> logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, past + seq, head_dim].
  Prefill is the same graph with past = 0 (empty [batch, kv_heads, 0, head_dim] tensors) and
  the whole prompt as input_ids; decode feeds present back as past with one new token. The
  attention_mask covers past and new tokens (1 = real, 0 = padding); position_ids are the
  caller's (for left padding: cumsum(mask) - 1). The program asserts
  mask length == past + seq. It is traced with eager attention, so its logits match the
  logits program to float rounding (1e-6 on the tiny model), not bit for bit.

Logits at padding positions are undefined: a padding query attends to nothing, which torch's
sdpa turns into 0 and the exported ONNX (its mask uses finfo.min, not -inf) into the mean of V.

The programs hold the model's own parameter tensors until `set_parameter` replaces one; it
never writes into the model.

Every linear weight keeps its Hugging Face state-dict name: the export wrapper registers the
model's children under their own names, so no wrapper prefix exists. A tied group (SmolLM2's
embedding and lm_head) is one tensor with one canonical name, the first in
`named_parameters()` order (the one Hugging Face saves, "model.embed_tokens.weight"); the
other names are aliases (`Programs.tied`).

Every linear layer is an `aten.linear(x, W[N, K], bias)` node: `canonical_linears` rewrites the
other ways a model writes one (GPT-2's Conv1D `addmm`, Falcon's `x @ W.T`) right after capture. A
Conv1D weight keeps its name but the programs hold its transpose, [out, in] like any linear.

OPSET = 21 is the one ONNX opset every export uses: blocked DequantizeLinear exists from 21.

Pitfalls handled here (docs/evaluation.md#export):
- packed-sequence check: transformers runs it only when attention_mask is None and there is no
  cache; both programs always take an attention_mask input, so it never runs.
- sdpa's `is_causal = q_len > 1` SymBool with a dynamic query length: it only bites when no
  mask tensor reaches attention (transformers materializes the mask whenever it is traced),
  but the decoder program is traced with eager attention anyway, which has no branch on the
  query length (the model's setting is restored afterwards). GQA is eager's repeat_kv; head
  count, head size and cache shapes come from a real forward pass, never from names.
- torch.export bounds every dynamic dim by 2 while tracing, so the derived mask length
  past + seq gets a lower bound of 4; it is recomputed from the declared bounds (1), so a
  one-token prompt runs in `ep.module()` too.

- sliding-window attention (Mistral, Gemma 2 / 3's local layers): Hugging Face's sliding cache
  layers crop the past to the window, a present length of min(past + seq, window) that
  torch.export cannot keep symbolic. The decoder program's cache is a plain DynamicCache (no
  config: every layer keeps all its past), and the window stays in the attention mask, which
  Hugging Face builds from positions (key > query - window): attending over the whole past with
  that band is attending over the cropped past. Present is past + seq on every layer.

A model torch.export cannot trace is an InputError of one line: which program, torch's first
line, and where the supported families are listed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch.export import Dim, ExportedProgram
from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

from qpasses.errors import InputError
from qpasses.export.canonical_linears import canonicalize_linears
from qpasses.offload import released_by_module

OPSET = 21
LOGITS_INPUTS = ("input_ids", "attention_mask")
DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
EXAMPLE = dict(batch=2, seq=8, step=3, past=5)  # distinct sizes: torch.export unifies equal ones


def decoder_io_names(layers: int) -> tuple[list[str], list[str]]:
    """ONNX input and output names of the decoder program (optimum's decoder-with-past)."""
    kv = [f"{i}.{part}" for i in range(layers) for part in ("key", "value")]
    return [*DECODER_INPUTS, *(f"past_key_values.{n}" for n in kv)], ["logits", *(f"present.{n}" for n in kv)]


@dataclass
class Programs:
    """The captured programs and the name map that joins them to the model and to ONNX."""

    logits: ExportedProgram
    decoder: ExportedProgram | None
    io_names: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # program -> (inputs, outputs)
    tied: dict[str, str] = field(default_factory=dict)  # alias name -> canonical name

    def programs(self) -> dict[str, ExportedProgram]:
        """The programs that exist, by name ("logits", "decoder")."""
        return {n: ep for n, ep in (("logits", self.logits), ("decoder", self.decoder)) if ep is not None}

    def tied_names(self) -> set[str]:
        """Every name of a parameter shared under several names (aliases and canonical ones)."""
        return set(self.tied) | set(self.tied.values())

    def fqn(self, key: str) -> str:
        """The canonical Hugging Face name of a program state-dict key (tied aliases resolved)."""
        return self.tied.get(key, key)

    def _keys(self, fqn: str) -> list[tuple[ExportedProgram, str]]:
        canonical = self.fqn(fqn)
        found = [(ep, k) for ep in self.programs().values() for k in ep.graph_signature.parameters
                 if self.fqn(k) == canonical]
        if not found:
            raise KeyError(f"no parameter named {fqn!r} in the captured programs")
        return found

    def parameter(self, fqn: str) -> torch.Tensor:
        """The tensor behind a Hugging Face state-dict name, e.g. "lm_head.weight"."""
        ep, key = self._keys(fqn)[0]
        return ep.state_dict[key]

    def set_parameter(self, fqn: str, value: torch.Tensor) -> None:
        """Replace a parameter (and every tied alias) in both programs with a copy of `value`, kept
        in a mapped file (qpasses.offload: resident only while read, so a pass that rewrites every
        weight does not hold them all in memory).

        The model the programs came from is left untouched: the programs get a new tensor."""
        from qpasses.offload import to_file

        old = self.parameter(fqn)
        if value.shape != old.shape or value.dtype != old.dtype:
            raise ValueError(f"{fqn}: expected {old.dtype} {tuple(old.shape)}, got {value.dtype} {tuple(value.shape)}")
        new = torch.nn.Parameter(to_file(value), requires_grad=False)
        for ep, key in self._keys(fqn):
            ep.state_dict[key] = new

    def linear_nodes(self) -> dict[str, list[tuple[str, torch.fx.Node]]]:
        """Module name -> [(program name, aten.linear node)] for every linear whose weight is a
        parameter placeholder. The module name comes from the node's module stack."""
        found: dict[str, list[tuple[str, torch.fx.Node]]] = {}
        for prog, ep in self.programs().items():
            params = ep.graph_signature.inputs_to_parameters
            for node in ep.graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default):
                weight = node.args[1]
                if isinstance(weight, torch.fx.Node) and weight.op == "placeholder" and weight.name in params:
                    stack = node.meta.get("nn_module_stack") or {}
                    path = next(reversed(stack.values()))[0] if stack else ""
                    name = path or self.fqn(params[weight.name]).removesuffix(".weight")
                    found.setdefault(name, []).append((prog, node))
        return found


class _Transparent(torch.nn.Module):
    """Holds the model's children under their own names, so exported names carry no prefix."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b)
        object.__setattr__(self, "hf", model)  # not a submodule: its children are ours


class _Logits(_Transparent):
    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, input_ids, attention_mask):
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, **self.extra)[0]


class _DecoderStep(_Transparent):
    def forward(self, input_ids, attention_mask, position_ids, past_key_values):
        from transformers import DynamicCache

        torch._check(attention_mask.shape[1] == past_key_values[0][0].shape[2] + input_ids.shape[1])
        cache = DynamicCache(past_key_values)  # no config: full layers, never cropped to a sliding window
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        return out.logits, [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def _tie_map(model: torch.nn.Module) -> dict[str, str]:
    """alias -> canonical for parameters that are one tensor under several names."""
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical = first.setdefault(id(p), name)
        if canonical != name:
            tied[name] = canonical
    return tied


def _widen_derived_bounds(ep: ExportedProgram) -> None:
    """Recompute the lower bound of every compound dim (e.g. past + seq) from its symbols' bounds."""
    plain = {s: r for s, r in ep.range_constraints.items() if s.is_symbol}
    for expr, r in list(ep.range_constraints.items()):
        if not expr.is_symbol and expr.free_symbols <= plain.keys():
            low = bound_sympy(expr, plain).lower
            ep.range_constraints[expr] = ValueRanges(min(r.lower, low), r.upper)


def _example_ids(model, batch: int, seq: int) -> torch.Tensor:
    vocab = model.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def _seq_dim(model) -> Dim:
    """The sequence dim, bounded by the model's position table when it has one (BERT: 512)."""
    return Dim("sequence_length", min=1, max=getattr(model.config, "max_position_embeddings", None))


def _capture_logits(model) -> ExportedProgram:
    ids = _example_ids(model, EXAMPLE["batch"], EXAMPLE["seq"])
    batch, seq = Dim("batch_size", min=1), _seq_dim(model)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    return _export(model, "logits", _Logits(model), (ids, torch.ones_like(ids)), shapes)


def _capture_decoder(model) -> tuple[ExportedProgram, int]:
    b, t, p = EXAMPLE["batch"], EXAMPLE["step"], EXAMPLE["past"]
    ids = _example_ids(model, b, p + t)
    with torch.no_grad(), released_by_module(model):
        cache = model(input_ids=ids[:, :p], use_cache=True).past_key_values
    past = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    args = (ids[:, p:].clone(), torch.ones(b, p + t, dtype=torch.long), torch.arange(p, p + t).repeat(b, 1), past)
    batch, seq, plen = Dim("batch_size", min=1), _seq_dim(model), Dim("past_sequence_length", min=0)
    shapes = {
        "input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: Dim.DYNAMIC},
        "position_ids": {0: batch, 1: seq}, "past_key_values": [({0: batch, 2: plen},) * 2] * len(past),
    }
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        ep = _export(model, "KV-cache step", _DecoderStep(model), args, shapes)
    finally:
        model.set_attn_implementation(impl)
    _widen_derived_bounds(ep)
    return ep, len(past)


def _export(model, what: str, module: torch.nn.Module, args: tuple, shapes: dict) -> ExportedProgram:
    try:
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
    except Exception as e:  # torch's tracing errors have no common base; each becomes one line
        raise InputError(_cannot_capture(model.config, what, e)) from e


def _cannot_capture(config, what: str, error: Exception) -> str:
    kind = getattr(config, "model_type", "this")
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return (f"torch.export cannot capture the {what} program of this {kind} model; torch says: {first} "
            "(docs/families.md lists the families that compile)")


def capture(model, decoder: bool = True) -> Programs:
    """Capture `model` (a transformers PreTrainedModel in eval mode) as torch.export programs.

    Causal LMs (those that can generate) get both programs unless decoder=False; any other
    model gets the logits-like program of its main output and decoder=None. A two-token
    forward pass names the main output; the decoder's example cache comes from another."""
    with torch.no_grad(), released_by_module(model):
        probe = model(input_ids=_example_ids(model, 1, 2), attention_mask=torch.ones(1, 2, dtype=torch.long))
    main_output = next(iter(probe.keys()))
    programs = Programs(_capture_logits(model), None, tied=_tie_map(model))
    programs.io_names["logits"] = (list(LOGITS_INPUTS), [main_output])
    if decoder and model.can_generate():
        programs.decoder, layers = _capture_decoder(model)
        programs.io_names["decoder"] = decoder_io_names(layers)
    canonicalize_linears(programs)
    return programs
