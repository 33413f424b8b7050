"""What each protocol metric says about protection, in one place for every report, the app, the nodes and the CLI:
its label, its direction (↑: a higher value means stronger protection; ↓: a lower one), and how a value prints."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_stronger: bool
    meaning: str

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_stronger else "↓"

    @property
    def heading(self) -> str:
        """The label with its arrow, as in the paper's tables: "FDFR↑"."""
        return self.label + self.arrow

    @property
    def direction(self) -> str:
        return ("higher" if self.higher_is_stronger else "lower") + " = stronger protection"


METRICS = {m.key: m for m in (
    Metric("fdfr", "FDFR", True, "face detection failure rate of the generated images"),
    Metric("ism", "ISM", False, "identity similarity of the generated faces to the clean photos"),
    Metric("brisque", "BRISQUE", True, "no-reference image quality (higher = worse images)"),
    Metric("serfiq", "SER-FIQ", False, "face image quality of the generated faces"),
    Metric("qualityface", "QualityFace", False, "learned quality of the detected faces (a diagnostic)"),
    Metric("face_brisque", "face-box BRISQUE", True, "BRISQUE of the detected face boxes (a diagnostic)"),
    Metric("identity_gain", "identity gain", False, "the attacked model's identity gain on the clean reference "
           "photos (class-prompt minus instance-prompt denoising error) over the clean-photo attack's at the same "
           "transform (1 = the identity learnt as well as from clean photos)"),
)}
PROTOCOL_METRICS = ("fdfr", "ism", "brisque", "serfiq")  # the four of the paper's tables, in their order


def format_value(value, digits: int = 3) -> str:
    """A metric value for people: `digits` decimals; n/a for a missing or NaN value; ∞ / -∞."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}f}"


def format_signed(value, significant: int = 3) -> str:
    """A difference for people, signed, to `significant` digits (for a size that varies by orders of magnitude,
    as the identity gap's): "+0.0123"; missing, NaN and infinite values as :func:`format_value` prints them."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return format_value(value)
    return f"{value:+.{significant}g}"
