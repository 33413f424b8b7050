"""Platform presets: named chains approximating what a social platform does to an uploaded photo.

Each is an approximation built from public measurements or statements (cited below), not the platform's code;
platforms change their pipelines without notice, serve several sizes and may use their own encoders (mozjpeg,
WebP/AVIF to some clients). Nothing here claims to reproduce one exactly. Where no measurement was found the value
is marked "assumed". Sizes cap the long side and never enlarge.
"""
from __future__ import annotations

from .specs import Param, TransformType

PRESETS: dict[str, tuple[str, str]] = {
    # name: (chain, where its numbers come from)
    "instagram": ("resize:1080,filter=bicubic,side=long,enlarge=no|jpeg:75",
                  "1080 px: Instagram's documented feed width (photos wider are scaled to 1080 px); JPEG quality 75 "
                  "and the bicubic filter assumed (third-party guides report 70-85; no measurement found)"),
    "facebook": ("resize:2048,filter=lanczos,side=long,enlarge=no|jpeg:75",
                 "2048 px and Lanczos resampling: Facebook's photo product manager S. Odio (interview, "
                 "blog.patyuen.com, 2010); quality 75: estimated from DCT coefficients of re-uploaded photos in a "
                 "Facebook steganography study (quoted at ralfheinrich.de, 2017)"),
    "x": ("resize:4096,filter=bicubic,side=long,enlarge=no|jpeg:85",
          "4096 px and JPEG quality 85: Twitter engineer N. O'Brien's description of the upload pipeline "
          "(2018-2020), checked by C. Erdmann, compress-or-die.com (2022); the filter assumed"),
    "whatsapp": ("resize:1600,filter=bicubic,side=long,enlarge=no|jpeg:60",
                 "1600 px cap and quality 50-60: image-compress.com (2026); an older measurement found an 800 px cap "
                 "and iOS quality 0.5 (built.io blog); quality 60 and the filter assumed"),
}


def expand_platform(params: dict) -> str:
    """The chain of a platform preset (see ``PRESETS`` for each one's numbers and where they come from).

    Source: public measurements and statements about each platform, cited in ``platforms.PRESETS``."""
    return PRESETS[params["name"]][0]


ENTRIES = (
    TransformType("platform", None, (Param("name", "choice", None, "platform", choices=tuple(PRESETS),
                                           aliases={"twitter": "x", "fb": "facebook", "ig": "instagram"}),),
                  "approximate upload pipeline of a platform (" + ", ".join(PRESETS) + ")", expand=expand_platform),
)
