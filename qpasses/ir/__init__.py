"""Graph stages. Stage A (`fx_stage`) wraps torch.export programs; stage B (`onnx_stage`) wraps
onnx_ir models. Both expose the same `LinearSite` view (`sites`), so a pass is written once."""
