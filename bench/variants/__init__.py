"""Variants a case can run under: devices, precisions, backends (eager, torch.compile, ONNX
Runtime), int8 quantization, pruning and distillation (bench.variants.pipeline applies them)."""
