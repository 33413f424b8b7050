"""`gapdiff evaluate --executor ray`: the tiny-model grid as Ray tasks on a local 2-CPU instance (loopback) gives
the serial run's results, and resumes from the stage cache after an interruption."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from gapdiff_core.evaluation import ProtocolConfig, ProtocolRunner  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, identity_folder, toy_generator_file):
    root, gen = identity_folder, toy_generator_file
    config = ProtocolConfig(methods=[str(gen)], transforms=["none", "jpeg:50"], budgets=[8.0], resolution=32,
                            prompts=("a photo of sks person",), images_per_prompt=1, generation_steps=1,
                            generation_batch_size=1, serfiq_T=4,
                            attack_overrides=dict(max_train_steps=2, num_class_images=1, class_steps=1,
                                                  checkpointing_steps=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers (one CPU per task): the same float rounding
    serial = ProtocolRunner(root, tmp_path_factory.mktemp("serial"), config, progress=False).run()
    torch.set_num_threads(threads)
    yield root, config, serial, tmp_path_factory


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    from gapdiff_core.common.ray_local import start_ray

    start_ray(num_cpus=2)  # two local workers
    yield ray
    ray.shutdown()


def comparable(results: dict) -> dict:
    """The results without what differs between any two runs (timings, the machine's state)."""
    out = {k: v for k, v in results.items() if k not in ("timing", "environment")}
    out["runs"] = [{k: v for k, v in r.items() if k != "stage_seconds"} for r in results["runs"]]
    return json.loads(json.dumps(out))


def differences(a, b, path="") -> list[str]:
    """Where two JSON values differ, as paths (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def run_ids(cache: Path) -> dict:
    return {str(f.parent.relative_to(cache)): json.loads(f.read_text())["run_id"] for f in cache.rglob("stage.json")}


def test_ray_grid_equals_the_serial_run_and_resumes_from_the_cache(setup, ray_instance):
    from gapdiff_core.evaluation.on_ray import run_on_ray

    data, config, serial, factory = setup
    out = factory.mktemp("ray")
    results = run_on_ray(ProtocolRunner(data, out, config, progress=False), progress=False)
    assert len(results["runs"]) == 2
    assert differences(comparable(results), comparable(serial)) == []
    assert (out / "results.json").is_file()

    # an interruption inside one cell: its identity, generate and metrics stages never finished
    cache = out / "cache"
    cell = results["runs"][1]["keys"]
    for stage in ("identity", "generate", "metrics"):
        shutil.rmtree(cache / stage / cell[stage])
    before = run_ids(cache)
    resumed = run_on_ray(ProtocolRunner(data, out, config, progress=False), progress=False)
    after = run_ids(cache)
    assert differences(comparable(resumed), comparable(serial)) == []
    assert {k: after[k] for k in before} == before  # nothing finished was computed again
    assert sorted(set(after) - set(before)) == sorted(f"{s}/{cell[s]}" for s in ("identity", "generate", "metrics"))
