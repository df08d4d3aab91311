"""The reference value of each variant axis: what accuracy parity compares against.

A case's reference is the case of the same workload, phase, label, device and shape
whose variant axes all hold these values (fp32 eager, unquantized, unpruned). Adding a
variant axis adds its reference value here.
"""

REFERENCE_VALUES: dict[str, str] = {
    "precision": "fp32",
    "backend": "eager",
    "quantization": "none",
    "pruning": "none",
    "distillation": "none",
    # gpt's torch.compile switch (a backend axis elsewhere): compiled cases compare with eager.
    "compile": "False",
}
