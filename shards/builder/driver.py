"""The builder: import -> plan -> build every shard (local pool, Ray, or array parts) -> merge.

Three steps, one function each, the same under every executor: ``shards.builder.plan.plan`` (written
to the output first), ``shards.builder.shard_task.build_shard`` (one shard, idempotent: a committed
shard is skipped) and ``shards.builder.merge.merge`` (manifest last). Resume is therefore just
"run the same command again": the plan is reused when its fingerprint matches, committed
shards are kept untouched, the rest are built, and the merge rewrites the manifest.
``--force`` re-plans and rebuilds everything. One driver at a time per output
(``shards.builder.lock``); array parts hold one lease each and coexist.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace

from shards.base.progress import progress
from shards.builder.build_files import PARTS, PLAN, committed, create_plan, read_plan, write_plan
from shards.builder.config import BuildConfig
from shards.builder.executors import run_local
from shards.builder.lock import Lease, hold_lease
from shards.builder.merge import merge, missing_shards
from shards.builder.output import BuildOutput
from shards.builder.plan import BuildPlan, ShardPlan, fingerprint, order_records, plan
from shards.builder.workers import DecodePool
from shards.format.manifest import MANIFEST, REJECTS, Manifest, read_manifest
from shards.importers import get_importer
from shards.importers.records import Dataset

OLD_STATE = ".build-state.json"
"""Resume bookkeeping of builds before the plan (removed when a plan is written)."""


def import_dataset(cfg: BuildConfig) -> Dataset:
    """Run the registered importer named by ``cfg.source``."""
    return get_importer(cfg.source).load(cfg)


@dataclass(kw_only=True)
class PartReport:
    """What one array part did, and how much of the whole plan is still unbuilt."""

    part: tuple[int, int]
    shards: int
    built: int
    missing: int
    planned: int


def build(cfg: BuildConfig, *, progress: bool = True, dataset: Dataset | None = None) -> Manifest:
    """Build (or resume, or confirm up to date) the shard folder ``cfg.out``; returns its manifest.
    ``dataset``: records to write instead of running ``cfg.source``'s importer (eval.predict)."""
    if cfg.part is not None:
        raise ValueError("part: build one part with build_part (python -m shards build --part I/N)")
    out = BuildOutput(cfg.out)
    out.check()
    ds = dataset if dataset is not None else import_dataset(cfg)
    with hold_lease(out, "driver") as lease, worker_pool(cfg) as pool:
        the_plan = ensure_plan(cfg, ds, out, show=progress, pool=pool, lease=lease)
        done = _up_to_date(out, the_plan, cfg.force)
        if done is not None:
            return done
        for stale in (MANIFEST, REJECTS):
            out.remove(stale)
        pending = _pending(out, the_plan, the_plan.shards)
        run_shards(cfg, the_plan, pending, out, show=progress, pool=pool, lease=lease)
        return merge(out, the_plan, confirm=lambda: lease.confirm(out))


def build_part(cfg: BuildConfig, *, progress: bool = True) -> PartReport:
    """Build slice I of N of the plan (array jobs: SLURM, Kubernetes indexed jobs); shard k
    belongs to part ``k % N``. Uses the plan in the output (made first when there is none)."""
    i, n = cfg.part_slice
    out = BuildOutput(cfg.out)
    out.check()
    ds = import_dataset(cfg)
    with hold_lease(out, f"part-{i}-of-{n}", alongside=("part-",)) as lease, worker_pool(cfg) as pool:
        the_plan = ensure_plan(cfg, ds, out, show=progress, replace=False, pool=pool, lease=lease)
        mine = [s for k, s in enumerate(the_plan.shards) if k % n == i]
        pending = _pending(out, the_plan, mine)
        run_shards(cfg, the_plan, pending, out, show=progress, pool=pool, lease=lease)
        left = len(missing_shards(out, the_plan))
    return PartReport(
        part=(i, n), shards=len(mine), built=len(pending), missing=left, planned=len(the_plan.shards)
    )


def plan_build(cfg: BuildConfig, *, progress: bool = True) -> BuildPlan:
    """Only step 1 (``python -m shards plan``): write the plan that array parts then share."""
    out = BuildOutput(cfg.out)
    out.check()
    ds = import_dataset(cfg)
    with hold_lease(out, "plan") as lease, worker_pool(cfg) as pool:
        return ensure_plan(cfg, ds, out, show=progress, pool=pool, lease=lease)


def merge_build(where: str) -> Manifest:
    """Only step 3 (``python -m shards merge OUT``), once every part has run."""
    out = BuildOutput(where)
    out.check()
    if out.read_text(PLAN) is None:  # before taking a lease, which would create the folder
        raise FileNotFoundError(f"{out.url(PLAN)}: no build plan here (run `python -m shards build` first)")
    with hold_lease(out, "merge") as lease:
        return merge(out, confirm=lambda: lease.confirm(out))


def ensure_plan(
    cfg: BuildConfig,
    ds: Dataset,
    out: BuildOutput,
    *,
    show: bool,
    replace: bool = True,
    pool: DecodePool | None = None,
    lease: Lease | None = None,
) -> BuildPlan:
    """The plan in ``out`` when it was made from the same inputs and options (same fingerprint),
    else a new one written there first (``replace=False``, array parts: refuse instead, since
    other parts may be building from the plan that is there). Where there is no plan yet it is
    created only if still absent: a part that planned at the same time as another uses the
    plan that got there first (their cuts may differ: a header read that timed out)."""
    ordered = order_records(ds, cfg.seed)
    fp = fingerprint(cfg, ds, ordered)
    damaged = False
    try:
        existing = read_plan(out)
    except ValueError:  # another version's or a damaged plan: plan again (and replace it)
        existing, damaged = None, True
    if existing is not None and existing.fingerprint == fp and not cfg.force:
        return existing
    if existing is not None and not replace:
        raise ValueError(
            f"{out}: the plan there was made from other inputs or options than this part's; "
            "run `python -m shards plan` with the same options (add --force to start over) before the parts"
        )
    for stale in (MANIFEST, REJECTS, OLD_STATE):  # the old manifest no longer describes what is being written
        out.remove(stale)
    if existing is not None or cfg.force:  # (no plan yet: the parts there may be other parts' of this one)
        out.remove_tree(PARTS)
    new = plan(cfg, ds, ordered=ordered, show=show, pool=pool)
    if lease is not None:
        lease.confirm(out)
    if existing is not None or damaged:
        write_plan(out, new)  # replacing it: only the holder of the driver or plan lease gets here
        return new
    if create_plan(out, new):
        return new
    first = read_plan(out)  # another driver or part planned meanwhile
    if first is None or first.fingerprint != fp:
        raise ValueError(
            f"{out}: another build wrote a plan from other inputs or options while this one planned; "
            "run the same command again (add --force to start over)"
        )
    return first


def _up_to_date(out: BuildOutput, the_plan: BuildPlan, force: bool) -> Manifest | None:
    """The existing manifest when an identical build completed (nothing to do)."""
    if force:
        return None
    text = out.read_text(MANIFEST)
    if text is None:
        return None
    try:
        m = read_manifest(out.local) if out.local is not None else Manifest(**json.loads(text))
    except (OSError, ValueError, TypeError):
        return None
    if m.build.get("fingerprint") != the_plan.fingerprint or missing_shards(out, the_plan):
        return None  # (the fingerprint covers the shard format version: an older format rebuilds)
    return m


def _pending(out: BuildOutput, the_plan: BuildPlan, shards: list[ShardPlan]) -> list[ShardPlan]:
    done = committed(out, shards, the_plan.context)
    return [s for s in shards if s.name not in done]


@contextlib.contextmanager
def worker_pool(cfg: BuildConfig) -> Iterator[DecodePool | None]:
    """This build's worker processes (header reads, then decoding), started on first use and
    stopped at the end; None with ``--workers 1`` (everything in this process)."""
    pool = None if cfg.workers == 1 else DecodePool(cfg.num_workers)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.kill()


def run_shards(
    cfg: BuildConfig,
    the_plan: BuildPlan,
    shards: list[ShardPlan],
    out: BuildOutput,
    *,
    show: bool,
    pool: DecodePool | None = None,
    lease: Lease | None = None,
) -> None:
    """Step 2 for ``shards``, by the configured executor, with one progress bar here; the
    lease is checked at every tick (the build stops once it could not be refreshed)."""
    if not shards:  # every shard committed: no pool, no Ray to start
        return
    ctx = replace(the_plan.context, max_seconds=cfg.max_seconds)  # a limit of this run, as the timeout
    bar = progress(
        total=sum(len(s.records) for s in shards), desc=f"shards {ctx.source}", unit="track", enabled=show
    )

    def tick(n: int) -> None:
        bar.update(n)
        if lease is not None:
            lease.check(out)

    with closing(bar):
        if cfg.executor == "ray":
            from shards.builder.ray_executor import run_ray

            run_ray(
                ctx,
                shards,
                out,
                address=cfg.ray_address,
                workers=cfg.num_workers,
                timeout=cfg.decode_timeout,
                tick=tick,
            )
        else:
            run_local(ctx, shards, out, pool=pool, timeout=cfg.decode_timeout, tick=tick)
