"""Peak memory of optimize_weights' solve (PiSO + GPTQ, INT4 g64) on an lm_head-sized weight (49152 x 576),
whole or in row chunks; the codes must be identical.

    .venv/bin/python bench/lm_head_memory.py            # two child processes, a few minutes each at 1 thread

Each variant runs in its own process, so its peak RSS (ru_maxrss) is its own.
"""

import resource
import subprocess
import sys
import time

import numpy as np
import torch

ROWS, K = 49152, 576


def child(chunk: int, out: str) -> None:
    from qpasses.passes.optimize_weights import solve_weight

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((ROWS, K)) * 0.02).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((4096, K)))
    h = x.T @ x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    q = solve_weight(w, h, row_chunk=chunk, format="int4", block_size=64, scales="piso", gptq=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    np.save(out, q.codes)
    print(f"row chunk {chunk}: peak RSS {peak:.2f} GiB (inputs ready: {before:.2f} GiB), "
          f"{time.perf_counter() - t:.0f} s")


def main() -> None:
    outs = []
    for chunk in (ROWS, 8192):
        out = f"/tmp/lm_head_codes_{chunk}.npy"
        subprocess.run([sys.executable, __file__, "--child", str(chunk), out], check=True)
        outs.append(np.load(out))
    print("codes identical:", bool(np.array_equal(*outs)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3])
    else:
        main()
