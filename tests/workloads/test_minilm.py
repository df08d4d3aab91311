"""The minilm workload: shipped data, retrieval metric, head pruning, real offline weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.workloads import get_workload, minilm


def test_shipped_text_sets():
    pairs = minilm.paraphrase_pairs()
    sentences = minilm.eval_sentences()
    calibration = minilm.calibration_sentences()
    assert len(pairs) == 120 and len(sentences) >= 200
    assert len(set(sentences)) == len(sentences)
    assert len(calibration) == 40 and not set(calibration) & set(sentences)


def test_retrieval_metrics_known_answer():
    anchors = torch.eye(4)
    assert minilm.retrieval_metrics(anchors, anchors) == {"retrieval_mrr": 1.0,
                                                           "retrieval_top1": 1.0}
    swapped = anchors[[1, 0, 2, 3]]  # anchors 0 and 1 find each other's paraphrase first
    result = minilm.retrieval_metrics(anchors, swapped)
    assert result["retrieval_top1"] == 0.5
    assert result["retrieval_mrr"] == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64)
    return minilm.SentenceEmbedder(BertModel(config, add_pooling_layer=False)).eval()


def test_head_pruning_removes_the_weakest_heads_without_changing_the_rest():
    model = tiny_bert()
    ids = torch.randint(0, 100, (3, 7))
    mask = torch.ones_like(ids)
    size = 8
    with torch.no_grad():  # silence heads 1 and 3 of every layer completely
        for layer in model.encoder.encoder.layer:
            att = layer.attention
            for head in (1, 3):
                rows = slice(head * size, (head + 1) * size)
                for lin in (att.self.query, att.self.key, att.self.value):
                    lin.weight[rows] = 0
                    lin.bias[rows] = 0
                att.output.dense.weight[:, rows] = 0
        expected = model(ids, mask)
    params_before = sum(p.numel() for p in model.parameters())
    note = minilm.prune_attention_heads(model, 0.5)
    assert "removed: 4 of 8" in note
    for layer in model.encoder.encoder.layer:
        assert layer.attention.self.num_attention_heads == 2
        assert layer.attention.self.query.out_features == 16
        assert layer.attention.output.dense.in_features == 16
    assert sum(p.numel() for p in model.parameters()) < params_before
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), expected, atol=1e-5, rtol=1e-5)


def test_real_pretrained_model_loads_offline_and_finds_paraphrases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, encoder = minilm.load_pretrained()
    assert encoder.config.num_hidden_layers == 6 and encoder.config.hidden_size == 384
    model = minilm.SentenceEmbedder(encoder)
    pairs = minilm.paraphrase_pairs()[::10]  # one pair per topic
    texts = [a for a, _ in pairs] + [p for _, p in pairs]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        emb = model(enc["input_ids"], enc["attention_mask"])
    n = len(pairs)
    assert minilm.retrieval_metrics(emb[:n], emb[n:])["retrieval_top1"] >= 0.9


@pytest.mark.slow
def test_minilm_on_onnxruntime_through_the_user_model_phase():
    """The re-implemented workload on the backend whose prepared inputs are not tensors
    (ONNX Runtime feeds): token counts come from the timed batches themselves."""
    from bench.spec.model import Budget, CaseSpec
    from bench.variants.precision import get_precision
    from bench.workloads.base import RunContext

    workload = get_workload("minilm")
    axes = {"device": "cpu", "precision": "fp32", "batch_size": 2, "threads": 0,
            "seq_len": 16, "backend": "onnxruntime", "quantization": "int8_dynamic",
            "pruning": "none"}
    case = CaseSpec("minilm", "infer", axes, {}, Budget())
    phase = workload.prepare(case, RunContext("cpu", get_precision("fp32")))
    with phase.session():
        phase.step()
    outcome = phase.finish()
    assert set(workload.metrics("infer")) <= set(outcome.metrics)
    assert outcome.metrics["fidelity_mean_cos"] > 0.9 and outcome.task_metric == (
        "retrieval_mrr", True)
    assert 2 <= outcome.details["non_pad_tokens_per_step"] <= 32
    assert outcome.details["padded_tokens_per_step"] == 32
    assert outcome.model.export_check["passed"]
