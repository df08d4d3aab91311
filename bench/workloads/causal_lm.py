"""causal_lm: text generation by a causal language model the user names, offline.

``model = { gguf = "FILE.gguf" }`` or ``model = { hf = "FOLDER", task = "text-generation" }``
in a ``[[benchmark]]`` (paths relative to the suite file; ``package:NAME/SUB`` for a file
or folder inside an installed package) becomes this workload's ``generate`` phase with
``params.source``: the same phase, figures and variants as ``smollm2``
(bench.workloads._generate), on the user's model (bench.workloads._llm loads it: a GGUF
file dequantized to fp32 and cached, or a Hugging Face folder as stored).
"""

from __future__ import annotations

from pathlib import Path

from bench.files import PACKAGE_PREFIX, package_folder
from bench.spec.axes import Setting
from bench.workloads import register
from bench.workloads._generate import PHASE, GeneratePhase
from bench.workloads._llm import SMOLLM2_FILE, SMOLLM2_PACKAGE, ModelLoadError, load_causal_lm
from bench.workloads.base import Phase, RunContext
from bench.workloads.smollm2 import SmolLM2


def model_source(source: str) -> Path:
    """``package:NAME/SUB`` -> that path inside the installed package; else the path."""
    if source.startswith(PACKAGE_PREFIX):
        path = package_folder(source)
        if path is None:
            raise ModelLoadError(f"{source}: no installed package "
                                 f"{source[len(PACKAGE_PREFIX):].partition('/')[0]!r}")
        return path
    return Path(source)


@register
class CausalLM(SmolLM2):
    name = "causal_lm"
    description = "your causal LM (a GGUF file or a Hugging Face folder, offline) " \
                  "generating text: the smollm2 figures on your model"
    smoke_params = {**SmolLM2.smoke_params,
                    "source": f"{PACKAGE_PREFIX}{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}"}

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {**super().params(), "source": Setting("source", str, "", phases=(PHASE,),
                                  help="a .gguf file or a Hugging Face folder with a causal "
                                       "LM (model = { gguf = ... } or { hf = ..., task = "
                                       "\"text-generation\" } in a suite)")}

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        source = model_source(str(case.params["source"]))
        return GeneratePhase(case, ctx, load_causal_lm(source), source.name)
