"""ComfyUI nodes of GAP-Diff (classic V1 API): thin adapters over gapdiff_core.

Node ids are stable: saved workflows refer to them. Add new inputs at the end or as optional.
"""
from .attack import DreamBoothTestAttack, Generate
from .evaluation import EvaluateProtection
from .host import register_generator_folder
from .iterative import IterativeProtect
from .photos import LoadPhotos, SaveImages
from .protection import LoadGenerator, ProtectImage
from .surrogate import LoadSurrogate
from .transforms import JPEGCompress, Preprocess, Transform

register_generator_folder()

NODE_CLASS_MAPPINGS = {
    "GAPDiffLoadGenerator": LoadGenerator,
    "GAPDiffProtectImage": ProtectImage,
    "GAPDiffJPEGCompress": JPEGCompress,
    "GAPDiffPreprocess": Preprocess,
    "GAPDiffLoadSurrogate": LoadSurrogate,
    "GAPDiffDreamBoothAttack": DreamBoothTestAttack,
    "GAPDiffGenerate": Generate,
    "GAPDiffEvaluateProtection": EvaluateProtection,
    "GAPDiffIterativeProtect": IterativeProtect,
    "GAPDiffTransform": Transform,
    "GAPDiffLoadPhotos": LoadPhotos,
    "GAPDiffSaveImages": SaveImages,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "GAPDiffLoadGenerator": "Load GAP-Diff Generator",
    "GAPDiffProtectImage": "Protect Image (GAP-Diff)",
    "GAPDiffJPEGCompress": "JPEG Compress (GAP-Diff)",
    "GAPDiffPreprocess": "Preprocess (GAP-Diff)",
    "GAPDiffLoadSurrogate": "Load Surrogate (GAP-Diff)",
    "GAPDiffDreamBoothAttack": "DreamBooth Test Attack (GAP-Diff)",
    "GAPDiffGenerate": "Generate (GAP-Diff)",
    "GAPDiffEvaluateProtection": "Evaluate Protection (GAP-Diff)",
    "GAPDiffIterativeProtect": "Iterative Protection (ASPL, Mist, ...)",
    "GAPDiffTransform": "Transform (robustness)",
    "GAPDiffLoadPhotos": "Photos of One Person (GAP-Diff)",
    "GAPDiffSaveImages": "Save Images (GAP-Diff)",
}
