"""The passes, by name: an explicit registry (no import-time magic)."""

from qpasses.passes.fold_norms import FoldNorms
from qpasses.passes.fuse_attention import FuseAttention
from qpasses.passes.fuse_linears import FuseLinears
from qpasses.passes.fuse_norms import FuseNorms
from qpasses.passes.fuse_rotations import FuseRotations
from qpasses.passes.lower_linears import LowerLinears
from qpasses.passes.optimize_weights import OptimizeWeights
from qpasses.passes.quantize_activations import QuantizeActivations
from qpasses.passes.quantize_embeddings import QuantizeEmbeddings
from qpasses.passes.quantize_weights import QuantizeWeights
from qpasses.passes.rotate_heads import RotateHeads
from qpasses.passes.rotate_inputs import RotateInputs
from qpasses.passes.rotate_residual import RotateResidual
from qpasses.passes.smooth_inputs import SmoothInputs
from qpasses.passes.untie_embeddings import UntieEmbeddings

PASSES = {p.name: p for p in (UntieEmbeddings, FoldNorms, RotateResidual, RotateHeads, RotateInputs, SmoothInputs,
                              QuantizeWeights, OptimizeWeights,
                              QuantizeEmbeddings, QuantizeActivations, LowerLinears, FuseLinears, FuseRotations,
                              FuseNorms, FuseAttention)}
