"""CLI subcommand ``batch``: render every story of a JSONL file with the models loaded once.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) every rank renders its own shard on its own
GPU (``cuda:LOCAL_RANK``; CPU when there is no CUDA) and writes its own outputs and manifest shard;
``torch.distributed`` (gloo on CPU, ``cpu:gloo,cuda:nccl`` on CUDA) is used only to wait for each other
and to gather the manifest entries on rank 0, which writes ``manifest.jsonl``. No process pool here:
torchrun starts, watches and stops the processes (also across machines, through its rendezvous).
"""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from .common import add_decode_args, add_render_args

EXIT_FAILURES = 3      # the batch ran to its end, but some lines or stories failed (see manifest.jsonl)
EXIT_INTERRUPTED = 130


def add_parser(sub, add_model_args) -> None:
    b = sub.add_parser("batch", help="render many stories from a JSONL file (resumable; torchrun for many GPUs)")
    add_model_args(b)
    b.add_argument("--stories", required=True,
                   help="JSONL: one {\"id\", \"instruction\", \"duration\", [seed, steps, guidance, sampler, "
                        "noise, sample_rate, plan, ...]} per line")
    b.add_argument("--out-dir", required=True, help="OUT/<id>.wav, OUT/<id>.plan.json, OUT/manifest.jsonl")
    b.add_argument("--max-batch", type=int, default=1,
                   help="stories with the same steps/guidance/sampler sampled as one DiT batch (1 = each story "
                        "alone, bit-identical to generate; larger = faster, equal within float rounding)")
    add_render_args(b, seed_help="default for stories without 'seed'")
    add_decode_args(b)
    b.add_argument("--dist-timeout-min", type=float, default=24 * 60,
                   help="how long a finished rank waits for the others at the end (minutes)")


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_info(env=os.environ) -> RankInfo:
    """RANK/WORLD_SIZE/LOCAL_RANK as torchrun sets them; one process (rank 0 of 1) without torchrun."""
    from ..errors import InputError

    try:
        info = RankInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise InputError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (as torchrun sets them): {e}") from e
    if not (info.world_size >= 1 and 0 <= info.rank < info.world_size and info.local_rank >= 0):
        raise InputError(f"inconsistent torchrun environment: RANK={info.rank} WORLD_SIZE={info.world_size} "
                         f"LOCAL_RANK={info.local_rank}")
    return info


def rank_device(choice: str, info: RankInfo):
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is present, else CPU; a bare ``cuda`` also follows LOCAL_RANK."""
    import torch

    from ..errors import InputError

    if choice in (None, "auto"):
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(choice)
    if dev.type == "cuda" and dev.index is None:
        n = torch.cuda.device_count()
        if info.local_rank >= n:
            raise InputError(f"LOCAL_RANK {info.local_rank} has no GPU: this machine has {n}; "
                             f"use torchrun --nproc_per_node {n} (one GPU per rank)")
        dev = torch.device("cuda", info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def init_distributed(info: RankInfo, device, timeout_min: float) -> bool:
    """Join torchrun's process group (for barrier and gathering only); False without torchrun."""
    if not info.distributed:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return True


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) or SIGTERM (torchrun stopping its workers): finish the current step, then stop.

    A second Ctrl-C raises KeyboardInterrupt at once; files are still only ever renamed into place whole.
    """
    state = {"stop": False}

    def handler(signum, frame):
        if state["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state["stop"] = True
        print(f"\n{signal.Signals(signum).name}: stopping after the current step "
              "(Ctrl-C again to abort at once)", file=sys.stderr)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: state["stop"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _settings(args):
    from ..validation import check_settings
    from .common import settings

    return check_settings(settings(args))


def _load(args, info: RankInfo, dist_on: bool):
    """Load the models once; on each machine local rank 0 goes first (it writes the null-embedding cache)."""
    from .common import pipeline

    if not dist_on:
        return pipeline(args)
    import torch.distributed as dist

    pipe = pipeline(args) if info.local_rank == 0 else None
    dist.barrier()
    return pipe if pipe is not None else pipeline(args)


def cmd_batch(args) -> int:
    from tqdm import tqdm

    from ..errors import InputError
    from ..tasks.batch import BatchRunner, merge_manifest, read_stories, shard

    if args.max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {args.max_batch}")
    info = rank_info()
    parsed = read_stories(args.stories, _settings(args))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if info.rank == 0:
        for err in parsed.errors:
            print(f"error: {args.stories}: {err}", file=sys.stderr)
        print(f"{len(parsed.jobs)} stories to render, {len(parsed.errors)} lines rejected"
              + (f"; {info.world_size} ranks" if info.distributed else ""), file=sys.stderr)
    device = rank_device(args.device, info)
    args.device = str(device)
    dist_on = init_distributed(info, device, args.dist_timeout_min)
    try:
        with stop_on_signals() as stop:
            pipe = _load(args, info, dist_on)
            mine = len(shard(parsed.jobs, info.rank, info.world_size))
            desc = f"stories rank {info.rank}/{info.world_size}" if info.distributed else "stories"
            with tqdm(total=mine, desc=desc, position=info.local_rank, file=sys.stderr, disable=args.quiet,
                      dynamic_ncols=True) as bar:
                def on_story(done: int, total: int, sid: str) -> None:
                    bar.n = done
                    bar.set_postfix_str(sid, refresh=True)

                runner = BatchRunner(pipe, out, rank=info.rank, world_size=info.world_size,
                                     max_batch=args.max_batch, stop=stop, on_story=on_story)
                report = runner.run(parsed.jobs)
        print(f"rank {info.rank}: {len(report.rendered)} rendered, {len(report.skipped)} already complete, "
              f"{len(report.failed)} failed" + (", interrupted" if report.interrupted else ""), file=sys.stderr)
        mine_summary = {"entries": report.entries, "interrupted": report.interrupted}
        if dist_on:
            import torch.distributed as dist

            gathered = [None] * info.world_size if info.rank == 0 else None
            dist.gather_object(mine_summary, gathered, dst=0)
        else:
            gathered = [mine_summary]
        code = EXIT_INTERRUPTED if report.interrupted else 0
        if info.rank == 0:
            entries = [e for g in gathered for e in g["entries"]]
            rows = merge_manifest(out, parsed, entries)
            counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "pending")}
            print(f"manifest {out / 'manifest.jsonl'}: {counts['ok']} ok, {counts['failed']} failed, "
                  f"{counts['pending']} pending", file=sys.stderr)
            if any(g["interrupted"] for g in gathered):
                print("interrupted: every finished story is kept; run the same command again to resume",
                      file=sys.stderr)
                code = EXIT_INTERRUPTED
            elif counts["failed"] or counts["pending"]:
                code = EXIT_FAILURES
        if dist_on:
            dist.barrier()
        return code
    except KeyboardInterrupt:
        print("aborted: finished stories are kept (see the manifest shards); run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if dist_on:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


COMMANDS = {"batch": cmd_batch}
