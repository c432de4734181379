"""The passes, by name: an explicit registry (no import-time magic)."""

from qpasses.passes.fuse_attention import FuseAttention
from qpasses.passes.fuse_linears import FuseLinears
from qpasses.passes.fuse_norms import FuseNorms
from qpasses.passes.lower_linears import LowerLinears
from qpasses.passes.quantize_embeddings import QuantizeEmbeddings
from qpasses.passes.quantize_activations import QuantizeActivations
from qpasses.passes.quantize_weights import QuantizeWeights

PASSES = {p.name: p for p in (QuantizeWeights, QuantizeEmbeddings, QuantizeActivations, LowerLinears, FuseLinears,
                                     FuseNorms, FuseAttention)}
