"""What the Robustness tab's numbers mean, in words: every number it shows comes with one plain sentence. Only
display lives here, so the measures (``metrics.robustness``, ``evaluation.robustness_matrix``) can change their
definitions and this module alone says them differently."""
from __future__ import annotations

from typing import Sequence

from ..evaluation.report.markdown import table_cell
from ..evaluation.robustness_matrix import TOY, VERDICTS, RobustnessMatrix
from ..evaluation.robustness_report import banners, interval_text, number_text, percent_text
from ..metrics.directions import format_value
from ..metrics.robustness import JpegRobustness

NO_SURROGATE = ("Choose a surrogate model to measure how much of the protection survives each transform: the "
                "measure asks a diffusion model how hard the photos are to learn. The tiny built-in model shows how "
                "it works (its numbers mean nothing for real protection); a local Stable Diffusion model gives real "
                "numbers. The photos after JPEG below need no surrogate.")
# One sentence per column of the survival table, in its order
COLUMNS = (
    ("protection", "the verdict in words: survives, weakened or removed (on a toy model: n/a)."),
    ("effect kept", "how much harder the protected photo still is for the surrogate to learn than the clean one "
                    "after the transform, as its denoising error, protected minus clean (above 0: the protection "
                    "still works; 0: it is gone)."),
    ("share kept", "the effect kept as a share of the effect with no transform (100% = nothing lost; below 0% = "
                   "after the transform the protected photo is easier to learn than the clean one)."),
    ("random noise, same strength", "the effect kept by plain random noise of the protection's strength: a "
                                    "protection no better than this counts as removed."),
    ("PSNR (dB)", "how visible the change left in the photo is (higher = less visible; above about 40 dB most "
                  "people see none)."),
)
INTERVALS = "Brackets are 95% intervals over your photos: upload several photos for a verdict; one gives none."


def verdict_word(matrix: RobustnessMatrix, method: str, spec: str) -> str:
    """The verdict in one or two words ("survives", "weakened", "removed", "n/a (toy model)", ...)."""
    if matrix.toy:
        return TOY
    return VERDICTS[matrix.cell(method, spec).verdict].split(" (")[0]


def survival_markdown(matrix: RobustnessMatrix, method: str, skipped: Sequence[str] = ()) -> str:
    """Per transform: the verdict in words first, then the effect kept with its 95% interval and its share of the
    untransformed effect, the random-noise control's effect and the PSNR; under the table, one sentence per
    column."""
    lines = [f"⚠️ {b}" for b in banners(matrix)]
    lines += ["", "| transform | " + " | ".join(name for name, _ in COLUMNS) + " |", "|---|---|---|---|---|---|"]
    for spec in matrix.transforms:
        cell, control = matrix.cell(method, spec), matrix.cell("random-noise", spec)
        name = "no change (reference)" if spec == "none" else f"`{table_cell(spec)}`"
        lines.append(f"| {name} | **{verdict_word(matrix, method, spec)}** | {interval_text(cell.effect)} | "
                     f"{percent_text(cell.share)} | {interval_text(control.effect)} | {number_text(cell.psnr.mean)} |")
    lines += ["", "**What each number means**", ""] + [f"- *{name}*: {text}" for name, text in COLUMNS]
    words = sorted({matrix.cell(method, s).verdict for s in matrix.transforms}, key=list(VERDICTS).index)
    lines += ["", INTERVALS, "Verdicts: " + "; ".join(VERDICTS[w] for w in words) + "."]
    if matrix.toy:
        demo = ", ".join(f"`{s}`: {VERDICTS[matrix.cell(method, s).verdict].split(' (')[0]}"
                         for s in matrix.transforms)
        lines.append(f"On a toy model every verdict is {TOY}; the demo readings would be {demo}.")
    if skipped:
        lines.append("Not measured, they need a surrogate: " + ", ".join(f"`{s}`" for s in skipped) + ".")
    lines += [f"Photo {name} skipped: {reason}" for name, reason in matrix.skipped.items()]
    return "\n".join(lines)


def jpeg_markdown(r: JpegRobustness, quality: int, gain: float) -> str:
    """The clean and protected photo after the same JPEG: each number with what it means, one sentence each."""
    before, after = r.before, r.after
    return "\n".join([
        f"**After JPEG at quality {quality}** (both photos compressed the same way, as a platform would):", "",
        f"- **{100 * r.energy_kept:.0f}% as strong**: the perturbation's average size is {after.rms:.2f} grey levels "
        f"after JPEG against {before.rms:.2f} before.",
        f"- **Similarity {r.correlation:.2f}**: how closely what JPEG left follows the original pattern (1 = the same "
        "pattern, 0 = unrelated; JPEG keeps the coarse part and replaces the fine part with its own errors).",
        f"- **Largest change {after.max:.0f} grey levels** after JPEG ({before.max:.0f} before): the most any pixel "
        "differs between the two photos; JPEG spreads the change, so single pixels can move by more than the budget.",
        f"- **PSNR {format_value(before.psnr, 2)} dB before, {format_value(after.psnr, 2)} dB after JPEG**: how close "
        "the protected photo looks to the clean one (higher = harder to see; above about 40 dB most people see no "
        "difference).",
        "", f"Perturbation shown ×{gain:.0f} in the third image; mid-grey means no difference."])
