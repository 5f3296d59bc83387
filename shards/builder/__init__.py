"""The build engine: a raw dataset in, a build (``shards.format``) out, the same bytes under every
executor. The steps, each naming its module, its input and its output:

1. **Import** (``shards.importers``): the raw dataset's own files -> ``Dataset`` of records and
   rejects. ``config.BuildConfig`` is the stage's one config (``[shards]`` + CLI).
2. **Plan** (``plan``, with ``estimate``'s header-read sizes): records -> ``.build/plan.json``:
   which record goes into which shard under which key and id, fingerprinted (``build_files``).
3. **Shard task** (``shard_task.build_shard``): one planned shard -> its tar + index, its part
   file and its commit marker (``stats.ShardPart``), idempotent. Records are decoded and encoded
   in worker processes (``workers``: ``audio`` with ``ogg_pages``, or ``images``), run by any
   executor: this machine's pool (``executors``), Ray (``ray_executor``) or array parts.
4. **Merge** (``merge``): the parts -> ``manifest.json`` + ``rejects.jsonl``, after checking that
   every input is accounted for.

``driver`` runs the four in order (``python -m shards build``); ``output`` is the build folder
as the builder writes it (local or object store) and ``lock`` its lease: one driver at a time.
This room imports only ``shards.base``, ``shards.format`` and ``shards.importers``.
"""
