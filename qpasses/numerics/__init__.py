"""Numerics: the quantization algorithms on plain arrays, no graph library (torch tensors in
fake_quant, gptq, piso, smoothing and srr; numpy in hadamard, rotation and torq). The package
itself imports nothing, so the numpy modules load without torch."""
