"""Your model, benchmarked by bench: a small MLP classifier of 8x8 handwritten digits.

bench calls build() inside each case's worker process and measures what it returns.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

from bench import UserModel


def build() -> UserModel:
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    train, test = slice(0, 1400), slice(1400, None)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # a few seconds: your factory would load a checkpoint instead
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[train]), labels[train]).backward()
        optimizer.step()

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
