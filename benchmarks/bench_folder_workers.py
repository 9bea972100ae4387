"""`sam-composer instances` / `text` over a folder: one process against worker processes.

Runs the command line a user runs (``sam-composer instances DIR --out ...``) as a subprocess on
the first ``--images`` images of the COCO val2017 subset, once per setting, and times the whole
command, model loading and worker start-up included, which is what a user waits for:

- ``--workers 1`` with ``--threads-per-worker T`` for T in 1 .. ``--cores`` (this process);
- ``--workers W --threads-per-worker 1`` for W = ``--cores`` (local worker processes).

Each row also says whether its per-image jsons (boxes, scores, mask RLEs; not
``summary.json``, which holds timings) are identical to the first row's. Use an idle machine: the point is how the cores are shared. Command::

    .venv/bin/python benchmarks/bench_folder_workers.py --task instances --images 16 --cores 2
    .venv/bin/python benchmarks/bench_folder_workers.py --task text --prompt person --images 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def _digest(out: Path) -> str:
    """Hash of every per-image result file (not the timings), in name order."""
    h = hashlib.sha256()
    for f in sorted(out.rglob("*.json")):
        if f.name == "summary.json":
            continue
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["instances", "text"], default="instances")
    ap.add_argument("--prompt", default="person", help="text prompt for --task text")
    ap.add_argument("--model", default="composer_tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    check_at_least(ap, [("--images", args.images, 1), ("--cores", args.cores, 1)])
    check_json(ap, args.json)

    from composer.data.paths import dataset_dir

    src = dataset_dir("coco_val2017_tiny80") / "val2017"
    files = sorted(src.glob("*.jpg"))[: args.images]
    if not files:
        sys.exit(f"no images under {src}")
    repo = str(Path(__file__).resolve().parents[1])  # this checkout's CLI, not the installed one
    settings = [(f"1 worker x {t} thread(s)", 1, t) for t in range(1, args.cores + 1)]
    settings.append((f"{args.cores} workers x 1 thread", args.cores, 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
        ref = None
        for label, workers, threads in settings:
            out = Path(tmp) / f"out_{workers}_{threads}"
            cmd = [sys.executable, "-m", "composer", args.task, str(folder)]
            if args.task == "text":
                cmd.append(args.prompt)
            cmd += ["--model", args.model, "--out", str(out), "--workers", str(workers),
                    "--threads-per-worker", str(threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                       PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{label}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            digest = _digest(out)
            ref = ref or digest
            row = {"setting": label, "workers": workers, "threads": threads,
                   "wall_s": round(wall, 1), "s_per_image": round(wall / len(files), 2),
                   "identical_to_first": digest == ref}
            rows.append(row)
            print(f"{label:26s} {wall:7.1f} s  {wall / len(files):5.2f} s/image  "
                  f"same results: {digest == ref}", flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(base / r["wall_s"], 2)
    print(json.dumps({"task": args.task, "images": len(files), "rows": rows}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "images": len(files),
                                               "model": args.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
