"""Your model, benchmarked by bench: a small MLP classifier of 8x8 handwritten digits.

bench calls build() inside each case's worker process and measures what it returns.
"""

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from bench import UserModel

# Your factory loads your checkpoint. This one ships beside it (76 KiB), made once by
# `python models.py` (100 Adam steps on the first 1400 digits): no worker trains, so every
# case measures the model alone.
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


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)


def build() -> UserModel:
    images, labels = _digits()
    test = slice(1400, None)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True))

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


if __name__ == "__main__":  # make the shipped checkpoint again
    images, labels = _digits()
    torch.save(_trained(images[:1400], labels[:1400]), CHECKPOINT)
    print(f"wrote {CHECKPOINT}")
