"""Knowledge distillation (Hinton et al. 2015): a smaller student trained on the teacher's
temperature-softened outputs plus the true labels.

The targets travel as one tensor per sample, ``[label, teacher logits...]``, so the
student trains through the same Trainer and batch stream as any model.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.spec.axes import Setting

AXIS = Setting("distillation", str, "none", choices=("none", "student"), phases=("infer",),
               help="none: the trained model itself; student: a smaller model distilled "
                    "from it", variant=True)

TEMPERATURE = 4.0
ALPHA = 0.7  # weight of the soft-target term


def soft_targets(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    return torch.cat([labels.unsqueeze(1).to(teacher_logits.dtype), teacher_logits], dim=1)


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = TEMPERATURE, alpha: float = ALPHA) -> torch.Tensor:
    labels = targets[:, 0].long()
    teacher = targets[:, 1:]
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, dim=1),
        nn.functional.softmax(teacher / temperature, dim=1),
        reduction="batchmean") * temperature ** 2
    hard = nn.functional.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def method() -> str:
    return f"student trained on alpha*T^2*KL(softmax(teacher/T) || softmax(student/T)) + " \
           f"(1-alpha)*cross_entropy, T={TEMPERATURE}, alpha={ALPHA}"
