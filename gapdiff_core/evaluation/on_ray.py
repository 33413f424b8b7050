"""`gapdiff evaluate --executor ray`: the protocol's stage graph as Ray tasks, through the stage cache.

Every stage is idempotent through `StageCache` (a finished stage is loaded, never recomputed), so the
grid is scheduled as tasks that run stages and leave their results in the cache, on a folder every worker sees:

  protect (one task per identity x method, shared by its transforms)
    -> transform, attack, identity, generate (one task per cell; and per identity and transform the clean-photo
       attack that the identity gain is relative to)
    -> metrics (one task per cell)

Model stages ask Ray for a GPU when the protocol runs on CUDA (else a CPU); metric stages ask for a CPU. When
every task is done the driver runs the serial `ProtocolRunner.run`, which now finds every stage in the cache and
assembles exactly the results (and reports) a serial run writes. An interrupted run resumes: finished stages are
loaded from the cache, unfinished ones are computed again.
"""
from __future__ import annotations

from .config import ProtocolConfig
from .inputs import Identity
from .methods import Method, resolve_method
from .runner import ProtocolRunner

_RUNNERS: dict = {}  # per worker process: one runner (and its loaded base model) for every task of a run


def _runner(job: tuple) -> ProtocolRunner:
    key = repr(job)  # the config is a dataclass: its repr names every setting
    if key not in _RUNNERS:
        data, out_dir, config, cache_dir = job
        _RUNNERS.clear()
        _RUNNERS[key] = ProtocolRunner(data, out_dir, config, cache_dir=cache_dir, progress=False,
                                       log=lambda message: None)
    return _RUNNERS[key]


def _protect(job: tuple, ident: Identity, method: Method) -> str:
    return _runner(job).stage_protect(ident, method)[0]["key"]


def _cell(job: tuple, ident: Identity, method: Method, transform: str, protected: str, generate: bool):
    """transform -> attack -> identity (-> generate) of one cell; the generate stage's (record, folder).
    `protected` (the protect stage's key) only makes Ray run the shared protect task first."""
    runner = _runner(job)
    attacked = runner.stage_attack(runner.stage_transform(runner.stage_protect(ident, method), transform))
    _, attacked = runner.stage_identity(ident, attacked)
    return runner.stage_generate(attacked) if generate else None


def _metrics(job: tuple, ident: Identity, generated) -> str:
    return _runner(job).stage_metrics(ident, generated)["key"]


def run_on_ray(runner: ProtocolRunner, *, address: str | None = None, progress: bool = True) -> dict:
    """Run (or resume) the runner's grid as Ray tasks, then assemble the results as `runner.run()` does."""
    import ray
    from tqdm import tqdm

    from ..common.ray_local import start_ray

    config: ProtocolConfig = runner.config
    start_ray(address)
    job = (runner.data, runner.out_dir, config, runner.cache.root)
    model_stage = {"num_gpus": 1} if str(config.device).startswith("cuda") else {"num_cpus": 1}
    protect = ray.remote(_protect).options(**model_stage, name="gapdiff-protect")
    cell = ray.remote(_cell).options(**model_stage, name="gapdiff-attack-generate")
    metrics = ray.remote(_metrics).options(num_cpus=1, name="gapdiff-metrics")

    rows = runner.rows()
    none = resolve_method("none", None)
    chains = {(i.name, m.spec, m.budget, t): (i, m, t, True) for i, m, t in rows}
    for ident in {i.name: i for i, _, _ in rows}.values():  # the clean attacks the identity gain is relative to
        for t in config.transforms:
            chains.setdefault((ident.name, none.spec, none.budget, t), (ident, none, t, False))
    protected = {}
    for ident, method, _, _ in chains.values():
        k = (ident.name, method.spec, method.budget)
        if k not in protected:
            protected[k] = protect.remote(job, ident, method)
    pending = {}
    for (name, spec, budget, transform), (ident, method, _, generate) in chains.items():
        generated = cell.remote(job, ident, method, transform, protected[(name, spec, budget)], generate)
        pending[metrics.remote(job, ident, generated) if generate else generated] = generate
    with tqdm(total=len(rows), desc="cells", unit="cell", disable=not progress) as bar:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            ray.get(done)  # raises the task's error, naming the stage that failed
            bar.update(sum(pending[ref] for ref in done))
    return runner.run()

