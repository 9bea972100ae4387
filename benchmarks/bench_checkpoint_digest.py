"""What a training checkpoint's content digest costs: the SHA-256 over a trainer's state
(``composer.training.checkpoint.state_digest``) next to writing the file (``save_state_file``:
``torch.save``, fsync, rename) and next to reading it (``torch.load``).

Two states: composer_tiny's (the whole model trained: weights plus AdamW's two moments per
parameter; ~51 MB) and, unless ``--no-vit-b``, a SAM ViT-B fine-tune's of the same kind (random
weights; ~1.1 GB). The moments are filled in place of a training step (their
values do not change the cost). The state's per-step history (``--history-steps``, 1000 by
default) is hashed as one JSON encoding: its cost grows with the steps trained. The digest hashes every tensor where it lies (no copy), so its
cost is the hash's speed over the state's bytes; the file goes through the page cache, so a
slow disk makes the write and read, not the digest, dearer.

    python benchmarks/bench_checkpoint_digest.py --repeats 3
    python benchmarks/bench_checkpoint_digest.py --no-vit-b
    python benchmarks/bench_checkpoint_digest.py --no-vit-b --history-steps 30000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, run_main  # noqa: E402


def _state(model: torch.nn.Module, history_steps: int) -> dict[str, Any]:
    """A training state of ``model`` with every parameter trained (AdamW's moments filled)
    and ``history_steps`` steps of history."""
    from composer.training.checkpoint import STATE_KEYS

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        optimizer.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p),
                              "exp_avg_sq": torch.rand_like(p)}
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {},
        "step": 1000, "elapsed": 3600.0, "rng": {"bit_generator": "PCG64"},
        "torch_rng": torch.get_rng_state(),
        "history": [{"loss": 0.5, "mask_loss": 0.4, "iou_loss": 0.1, "first_iou": 0.7,
                     "lr": 1e-4, "seconds": 0.3}] * history_steps,
    }
    assert set(state) == set(STATE_KEYS)
    return state


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(name: str, state: dict[str, Any], repeats: int, folder: Path) -> None:
    from composer.hub.checkpoint import save_state_file
    from composer.training.checkpoint import state_digest

    nbytes = sum(
        t.numel() * t.element_size()
        for t in [*state["model"].values(),
                  *(v for s in state["optimizer"]["state"].values() for v in s.values())]
    )
    file = folder / f"{name}.pt"
    digest = _median_s(lambda: state_digest(state), repeats)
    write = _median_s(lambda: save_state_file(state, file), repeats)
    read = _median_s(lambda: torch.load(file, map_location="cpu", weights_only=True), repeats)
    mb = nbytes / 1e6
    print(f"{name}: {mb:.0f} MB of tensors, file {file.stat().st_size / 1e6:.0f} MB")
    print(f"  digest {digest * 1e3:8.1f} ms ({mb / digest:.0f} MB/s)")
    print(f"  write  {write * 1e3:8.1f} ms  -> save with digest {1 + digest / write:.2f}x")
    print(f"  read   {read * 1e3:8.1f} ms  -> read with check  {1 + digest / read:.2f}x")
    file.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-vit-b", action="store_true", help="skip the ViT-B state (~1 GB)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--history-steps", type=int, default=1000,
                        help="steps of per-step history in the state")
    args = parser.parse_args(argv)
    check_at_least(parser, [("--repeats", args.repeats, 1), ("--threads", args.threads, 1),
                            ("--history-steps", args.history_steps, 0)])
    torch.set_num_threads(args.threads)

    from composer.sam.build import build_sam
    from composer.sam.composer_tiny import build_composer_tiny

    with tempfile.TemporaryDirectory() as tmp:
        _measure("composer_tiny", _state(build_composer_tiny(), args.history_steps), args.repeats, Path(tmp))
        if not args.no_vit_b:
            torch.manual_seed(0)
            _measure("vit_b", _state(build_sam("vit_b", checkpoint=None), args.history_steps), args.repeats, Path(tmp))
    return 0


if __name__ == "__main__":
    run_main(main)
