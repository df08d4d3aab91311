"""What runs inside a worker process: the worker (``python -m bench.runners.worker``, the
entry every checkout's parent starts, older ones included) and the rank entry under
``torchrun``. How workers are started is bench.launch; what runs many cases,
bench.orchestrate."""
