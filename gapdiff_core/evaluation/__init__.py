"""The Anti-DreamBooth protocol: protect -> transform -> attack -> identity -> generate -> metrics, every stage cached
on disk.

For each identity, protect its ``set_B`` photos, apply a platform transform (e.g. JPEG q 70), DreamBooth-attack a
surrogate with them, generate the four prompts' images and score them against the identity's clean ``set_C``
photos: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓ per prompt (↑/↓: the direction of stronger protection), plus PSNR / SSIM / L∞
of the protected photos against the clean ones. The ``identity`` stage measures the attacked model's identity gain
on ``set_C`` (class-prompt minus instance-prompt denoising error); over that of the model attacked with the clean
photos through the same transform it says how much of the identity the attacker learnt (lower = stronger
protection). :data:`PROTOCOLS` names complete settings (``paper``: what the paper fixes); :mod:`.components` the
models behind the numbers, each against the paper's.

Every stage writes its outputs into ``<cache>/<stage>/<key>/`` and a ``stage.json`` last; ``key`` hashes the stage's
own settings and its parent's key (which hashes the input photos), so a rerun skips finished stages, an interrupted
run resumes (the attack also resumes from its own checkpoint), and changing one setting recomputes only what it
affects.

Modules: :mod:`.config` (what to run, named protocols), :mod:`.components` (the protocol table's components),
:mod:`.inputs` (identities and their photos), :mod:`.methods` (``--method`` specs against
:data:`gapdiff_core.protections.PROTECTIONS`, and their budgets), :mod:`.cache` (the stage cache), :mod:`.stages`
(each stage, computed or loaded), :mod:`.runner` (the grid of runs and the results), :mod:`.summary` (metric
means, bootstrap intervals, paired differences), :mod:`.report` (JSON, Markdown and HTML reports), :mod:`.on_ray` (the stage graph as Ray tasks).
"""
from ..protections import PROTECTIONS, ProtectFn, register_protection
from .cache import CACHE_VERSION, StageCache, config_key, jsonable
from .config import PROTOCOL_ATTACK_FIELDS, PROTOCOLS, ProtocolConfig, protocol_config, protocol_settings
from .inputs import Identity, file_digest, find_identities, list_photos
from .methods import Method, resolve_method
from .runner import ProtocolRunner, environment, run_protocol
from .stages import STAGES, StageRunner
from .summary import (METRIC_KEYS, STATISTICS, SUMMARY_VERSION, combine_metrics, metric_intervals,
                      paired_differences, summarize_metrics)

__all__ = ["CACHE_VERSION", "METRIC_KEYS", "PROTECTIONS", "PROTOCOLS", "PROTOCOL_ATTACK_FIELDS", "STATISTICS",
           "STAGES", "SUMMARY_VERSION", "Identity", "Method", "ProtectFn", "ProtocolConfig", "ProtocolRunner",
           "StageCache", "StageRunner", "combine_metrics", "config_key", "environment", "file_digest",
           "find_identities", "jsonable", "list_photos", "metric_intervals", "paired_differences", "protocol_config",
           "protocol_settings", "register_protection", "resolve_method", "run_protocol", "summarize_metrics"]
