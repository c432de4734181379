"""Graph stages. Stage A, named "fx" in code (`Pass.stages`, `fx_stage`), wraps torch.export
programs; stage B, "onnx" (`onnx_stage`), wraps onnx_ir models. Both expose the same `LinearSite` view
(`sites`), so a pass is written once."""
