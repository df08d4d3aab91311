"""Your model, benchmarked by bench: a small MLP classifier of 8x8 handwritten digits.

bench calls build() inside each case's worker process and measures what it returns.
"""

import os
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from bench import UserModel

# Your factory would load your checkpoint. This one is made by the first worker that
# needs it (100 Adam steps, 2 s with the optimizer's imports) and read by every other.
CHECKPOINT = Path(__file__).with_name("digits-mlp.pt")


def _trained(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.state_dict()


def _checkpoint(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    if not CHECKPOINT.exists():  # written whole, then renamed: workers may race here
        fd, tmp = tempfile.mkstemp(dir=CHECKPOINT.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            torch.save(_trained(images, labels), out)
        os.replace(tmp, CHECKPOINT)
    return torch.load(CHECKPOINT, weights_only=True)


def build() -> UserModel:
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    train, test = slice(0, 1400), slice(1400, None)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    model.load_state_dict(_checkpoint(images[train], labels[train]))

    def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor]:
        rows = torch.randint(0, 1400, (batch_size,), generator=torch.Generator().manual_seed(seed))
        return (images[rows],)

    def evaluate(predict) -> dict[str, float]:
        predicted = predict((images[test],)).argmax(1)
        return {"accuracy": float((predicted == labels[test]).float().mean())}

    def train_batch(batch_size: int, seed: int) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        rows = torch.randint(0, 1400, (batch_size,), generator=torch.Generator().manual_seed(seed))
        return (images[rows],), labels[rows]

    return UserModel(model.eval(), make_inputs, input_names=("images",), output_name="logits",
                     evaluate=evaluate, task_metric=("accuracy", True), sample_unit="images",
                     train_batch=train_batch, loss=nn.functional.cross_entropy)
