"""Protection metrics of the Anti-DreamBooth protocol (FDFR, ISM, BRISQUE, SER-FIQ) and PSNR/SSIM.

Every result names its backend. Default face backends run offline from registry-package weights:
YuNet detector and SFace embedder (ArcFace-family stand-in for the paper's ArcFace).
"""
from .brisque_iqa import BRISQUEResult, brisque, brisque_score
from .evaluate import evaluate_images, fidelity
from .faces import (DETECTORS, EMBEDDERS, BackendUnavailable, Face, align_face, available_backends,
                    get_detector, get_embedder, register_detector, register_embedder)
from .fidelity import psnr, ssim
from .identity import Analyses, FaceAnalysis, FDFRResult, ISMResult, analyze_faces, fdfr, ism, reference_embedding
from .serfiq import SERFIQResult, serfiq, serfiq_from_embeddings

__all__ = [
    "BRISQUEResult", "brisque", "brisque_score", "evaluate_images", "fidelity", "DETECTORS", "EMBEDDERS",
    "BackendUnavailable", "Face", "align_face", "available_backends", "get_detector", "get_embedder",
    "register_detector", "register_embedder", "psnr", "ssim", "Analyses", "FaceAnalysis", "FDFRResult",
    "ISMResult", "analyze_faces", "fdfr", "ism", "reference_embedding", "SERFIQResult", "serfiq",
    "serfiq_from_embeddings",
]
