#!/usr/bin/env bash
# One node of ddp-multinode.sbatch (srun runs it once per node; SLURM_NNODES and
# SLURM_NODEID say which). Also runs by hand: two shells on one machine with
# SLURM_NNODES=2 SLURM_NODEID=0|1 RDZV_HOST=localhost are two simulated nodes.
set -euo pipefail

SUITE=${SUITE:-suites/parallel.toml}
CASE=${CASE:?the case id to run (bench list $SUITE)}
OUT=${OUT:-results/ddp-multinode.json}
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" \
    --nproc-per-node "${NPROC_PER_NODE:-1}" \
    --rdzv-backend c10d --rdzv-endpoint "$RDZV_HOST:${RDZV_PORT:-29500}" \
    --rdzv-id "${RDZV_ID:-bench}" --max-restarts 0 \
    -m bench.runners.ranks --suite "$SUITE" --case "$CASE" --out "$OUT"
