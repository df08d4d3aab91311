"""minilm_finetune: the real pretrained all-MiniLM-L6-v2 fine-tuned as a topic classifier.

Data: the 240 sentences this project ships (bench/workloads/data/minilm_pairs.tsv: 12
topics x 10 paraphrase pairs, both sentences of a pair in its topic); per topic, pairs 0-6
train (168 sentences) and pairs 7-9 validate (72), so no validation sentence has its
paraphrase in training. The classifier is a linear head on the mean-pooled encoder (as
sentence-transformers pools this model), with dropout before the head.

``finetune`` (what trains):
- ``frozen_embeddings``: the encoder runs once, before timing, and each step trains the head
  on the cached embeddings (the floor: the cheapest thing that works);
- ``head_only``: the encoder frozen but run every step (as a training loop with frozen
  layers runs it);
- ``last_k``: the top ``unfreeze_layers`` transformer layers and the head;
- ``full``: every weight;
- ``gradual_unfreeze``: the head first, then one more layer from the top every epoch
  (ULMFiT's schedule), down to the embeddings.
Layer-wise LR decay (``layer_decay`` < 1): layer i of 6 (counting from the top) trains at
``lr x layer_decay^i``, the embeddings at ``lr x layer_decay^6``; the head at ``head_lr``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from bench.measurement.classes import class_report, summary_metrics
from bench.results.schema import ClassReport
from bench.spec.axes import Setting
from bench.units import MAX_BATCH_SIZE, MAX_EPOCHS
from bench.workloads import register
from bench.workloads._recipes import (
    Schedule,
    batch_loss,
    build_optimizer,
    per_sample_loss,
    recipe_axes,
)
from bench.workloads._training import (
    BatchStream,
    Trainer,
    activation_bytes,
    memory_split,
    predict,
    train_epochs,
)
from bench.workloads.base import EvaluatedTraining, Outcome, Phase, RunContext, Workload
from bench.workloads.hf import MeanPooled, read_lines, tokenize

TOPICS = ("cooking", "sport", "weather", "computers", "travel", "health", "finance",
          "animals", "education", "arts", "gardening", "civic")
PAIRS_PER_TOPIC = 10
TRAIN_PAIRS = 7  # of each topic's 10: the rest validate
MODES = ("frozen_embeddings", "head_only", "last_k", "full", "gradual_unfreeze")
EVAL_BATCH = 72


@functools.cache
def topic_split() -> tuple[list[str], list[int], list[str], list[int]]:
    """(train sentences, labels, validation sentences, labels): whole pairs per side."""
    lines = read_lines("minilm_pairs.tsv")
    train, train_y, val, val_y = [], [], [], []
    for index, line in enumerate(lines):
        topic, pair = divmod(index, PAIRS_PER_TOPIC)
        sentences = line.split("\t")
        side, labels = (train, train_y) if pair < TRAIN_PAIRS else (val, val_y)
        side.extend(sentences)
        labels.extend([topic] * len(sentences))
    return train, train_y, val, val_y


class TopicClassifier(nn.Module):
    """Mean-pooled encoder, dropout, linear head. Its input is one tensor (N, 2, L): token
    ids and attention mask stacked, so batches stream like any (x, y) pair."""

    def __init__(self, encoder: nn.Module, classes: int, dropout: float) -> None:
        super().__init__()
        self.pooled = MeanPooled(encoder)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(x[:, 0], x[:, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


class HeadOnFeatures(nn.Module):
    """The classifier's dropout and head over cached embeddings (frozen_embeddings)."""

    def __init__(self, classifier: TopicClassifier) -> None:
        super().__init__()
        self.dropout, self.head = classifier.dropout, classifier.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))


def layer_groups(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters top-down: each transformer layer from the last, then the
    embeddings (the order gradual unfreezing and layer-wise decay follow)."""
    layers = list(encoder.encoder.layer)
    return [list(layer.parameters()) for layer in reversed(layers)] + \
        [list(encoder.embeddings.parameters())]


class FinetuneTrain(EvaluatedTraining):
    step_description = "one optimizer step over a batch of tokenized sentences (forward " \
                       "through the unfrozen encoder layers and the head, cross-entropy, " \
                       "backward, optimizer, LR schedule); frozen_embeddings: the head " \
                       "over cached embeddings"
    sample_unit = "sentences"

    def __init__(self, case, ctx: RunContext) -> None:
        from bench.workloads.minilm import load_pretrained  # transformers: in the worker

        self.case, self.ctx = case, ctx
        a, p = case.axes, case.params
        self.mode = a["finetune"]
        self.tokenizer, self.pretrained_encoder = load_pretrained()
        train, train_y, val, val_y = topic_split()
        self.x_train = torch.stack(tokenize(self.tokenizer, train, p["seq_len"]), 1)
        self.x_val = torch.stack(tokenize(self.tokenizer, val, p["seq_len"]), 1)
        self.y_train, self.y_val = torch.tensor(train_y), torch.tensor(val_y)
        self.trainer = self._trainer(ctx.seed + 1, keep_losses=case.training is not None)
        self.samples_per_step = self.trainer.samples_per_step
        self.steps_per_epoch = max(1, self.trainer.stream.batches_per_epoch
                                   // a["accum_steps"])
        self.last_train_loss = math.nan

    def _trainer(self, seed: int, keep_losses: bool = False) -> Trainer:
        a, p = self.case.axes, self.case.params
        torch.manual_seed(seed)
        encoder = self.pretrained_encoder
        encoder.load_state_dict(self._pristine_state)  # every trainer starts from the checkpoint
        self.classifier = TopicClassifier(encoder, len(TOPICS), a["dropout"])
        self.groups = layer_groups(encoder)
        for param in encoder.parameters():
            param.requires_grad_(False)
        self.unfrozen = {"last_k": a["unfreeze_layers"], "full": len(self.groups)}.get(
            self.mode, 0)
        self._unfreeze(self.unfrozen)
        x_train, model = self.x_train, self.classifier
        self.val_inputs, self.scorer = self.x_val, self.classifier
        if self.mode == "frozen_embeddings":  # the encoder runs once, here, untimed
            x_train, self.val_inputs = self._embeddings(self.x_train), \
                self._embeddings(self.x_val)
            model = self.scorer = HeadOnFeatures(self.classifier)
        optimizer = build_optimizer(a["optimizer"], self._param_groups(), a["lr"],
                                    a["weight_decay"])
        stream = BatchStream(x_train, self.y_train, a["batch_size"], seed)
        per_epoch = max(1, stream.batches_per_epoch // a["accum_steps"])
        schedule = Schedule(a["lr_schedule"], optimizer, p["epochs"] * per_epoch, per_epoch,
                            a["lr"])
        self.model = model
        return Trainer(model, optimizer, batch_loss(per_sample_loss("ce", None), "uniform"),
                       stream, a["accum_steps"], self.ctx.precision, self.ctx.device, schedule,
                       a["grad_clip"], keep_losses)

    @functools.cached_property
    def _pristine_state(self) -> dict[str, torch.Tensor]:
        """The checkpoint's weights, kept before any training step changes them."""
        return {k: v.clone() for k, v in self.pretrained_encoder.state_dict().items()}

    def _param_groups(self) -> list[dict[str, object]]:
        """The head at head_lr; encoder layer i from the top at lr x layer_decay^i. Frozen
        groups are in the optimizer too (no gradient, so no step and no state) so gradual
        unfreezing only flips requires_grad."""
        a = self.case.axes
        groups = [{"params": list(self.classifier.head.parameters()), "lr": a["head_lr"]}]
        if self.mode != "frozen_embeddings":
            groups += [{"params": params, "lr": a["lr"] * a["layer_decay"] ** depth}
                       for depth, params in enumerate(self.groups)]
        return groups

    def _unfreeze(self, count: int) -> None:
        for params in self.groups[:count]:
            for param in params:
                param.requires_grad_(True)

    def _embeddings(self, x: torch.Tensor) -> torch.Tensor:
        self.classifier.eval()
        with torch.inference_mode():
            return torch.cat([self.classifier.embed(x[i:i + EVAL_BATCH])
                              for i in range(0, len(x), EVAL_BATCH)]).clone()

    def step(self) -> object:
        loss = self.trainer.step()
        if self.mode == "gradual_unfreeze":
            epoch = self.trainer.steps // self.steps_per_epoch
            if epoch > self.unfrozen and self.unfrozen < len(self.groups):
                self.unfrozen += 1  # one more layer from the top, after each epoch
                self._unfreeze(self.unfrozen)
        return loss

    def _validate(self) -> tuple[dict[str, float], ClassReport]:
        """Validation metrics of the model being trained (frozen_embeddings: its head over
        the cached validation embeddings)."""
        logits = predict(self.scorer, self.val_inputs, EVAL_BATCH, self.ctx.precision,
                         self.ctx.device).float()
        predicted = logits.argmax(1)
        report = class_report(self.y_val.numpy(), predicted.numpy(), TOPICS)
        return ({"val_accuracy": float((predicted == self.y_val).float().mean()),
                 "val_loss": float(nn.functional.cross_entropy(logits, self.y_val)),
                 **summary_metrics(report)}, report)

    def evaluate(self) -> dict[str, float]:
        metrics, _ = self._validate()
        self.trainer.scheduler.after_eval(metrics["val_accuracy"])
        return metrics

    def mean_train_loss(self) -> float:
        self.last_train_loss = self.trainer.mean_loss()
        return self.last_train_loss

    def _details(self) -> dict[str, object]:
        params = list(self.classifier.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        micro = self.trainer.stream.x[:self.case.batch_size], \
            self.y_train[:self.case.batch_size]
        saved = activation_bytes(
            self.model, lambda: nn.functional.cross_entropy(self.model(micro[0]), micro[1]),
            self.ctx.precision, self.ctx.device)
        return {"finetune": self.mode, "unfrozen_layer_groups": self.unfrozen,
                "trainable_parameters": trainable,
                "total_parameters": sum(p.numel() for p in params),
                "memory_split": memory_split(self.classifier, self.trainer.optimizer, saved),
                "n_train": len(self.y_train), "n_val": len(self.y_val),
                "topics": list(TOPICS), "lr_schedule": self.trainer.scheduler.describe()}

    def run_outcome(self, final: dict[str, float]) -> Outcome:
        _, report = self._validate()
        return Outcome(metrics={**final, "final_train_loss": self.last_train_loss},
                       details=self._details(), classes=report)

    def finish(self) -> Outcome:
        trainer = self._trainer(self.ctx.seed + 2)
        self.trainer = trainer
        curve = train_epochs(trainer, self.case.params["epochs"])
        metrics, report = self._validate()
        return Outcome(metrics={**metrics, "final_train_loss": curve[-1]},
                       details={**self._details(), "train_loss_per_epoch": curve},
                       classes=report)


@register
class MinilmFinetune(Workload):
    name = "minilm_finetune"
    extras = ("hf",)
    description = "all-MiniLM-L6-v2 + linear head fine-tuned on 12 shipped topics " \
                  "(168 train / 72 val sentences)"
    phases = ("train",)
    smoke_params = {"epochs": 1, "seq_len": 16}

    @classmethod
    def axes(cls) -> dict[str, Setting]:
        axes = {**super().axes(), **recipe_axes("adamw", 1e-4)}
        axes["batch_size"] = Setting("batch_size", int, 16, minimum=1, maximum=MAX_BATCH_SIZE,
                                     help="sentences per micro-batch")
        axes["dropout"] = Setting("dropout", float, 0.1, minimum=0, maximum=0.95,
                                  help="dropout before the head")
        axes["finetune"] = Setting("finetune", str, "full", choices=MODES,
                                   help="what trains: " + ", ".join(MODES))
        axes["unfreeze_layers"] = Setting("unfreeze_layers", int, 2, minimum=0, maximum=7,
                                          help="last_k: transformer layers unfrozen from "
                                               "the top")
        axes["layer_decay"] = Setting("layer_decay", float, 1.0, minimum=0,
                                      above_minimum=True, maximum=1.0,
                                      help="layer-wise LR decay per layer from the top")
        axes["head_lr"] = Setting("head_lr", float, 1e-2, minimum=0, above_minimum=True,
                                  help="the classification head's LR")
        return axes

    @classmethod
    def params(cls) -> dict[str, Setting]:
        return {"epochs": Setting("epochs", int, 6, minimum=1, maximum=MAX_EPOCHS,
                                  help="planned epochs (the LR schedule's horizon)"),
                "seq_len": Setting("seq_len", int, 32, minimum=4, maximum=512)}

    @classmethod
    def metrics(cls, phase: str) -> tuple[str, ...]:
        return ("val_accuracy", "final_train_loss", *cls.eval_metrics(phase))

    @classmethod
    def eval_metrics(cls, phase: str) -> dict[str, bool]:
        return {"val_accuracy": True, "balanced_accuracy": True, "macro_f1": True,
                "val_loss": False}

    @classmethod
    def task_metric(cls, phase: str) -> tuple[str, bool] | None:
        return ("val_accuracy", True)

    @classmethod
    def prepare(cls, case, ctx: RunContext) -> Phase:
        return FinetuneTrain(case, ctx)
