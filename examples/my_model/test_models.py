"""Your performance tests: pytest runs the model through bench's isolated worker."""

BUDGET = {"min_trials": 5, "max_time_s": 1.0}


def test_int8_keeps_accuracy_and_latency(bench_model):
    result = bench_model("models:build", backend="onnxruntime", quantization="int8_dynamic",
                         batch_size=1, budget=BUDGET)
    assert result.accuracy.metrics["accuracy"] > 0.85
    assert result.timing.latency_s["p99"] < 0.050  # 50 ms: a generous service level
    assert result.throughput.value > 100  # images/s
