"""Plain-words text of the About tab."""

ABOUT_MARKDOWN = """
## What GAP-Diff does
Anyone can take a handful of photos of your face, fine-tune Stable Diffusion on them (DreamBooth / LoRA) and
generate fake pictures of you. GAP-Diff (NDSS 2025) adds a small perturbation to each photo, computed in one
pass of a trained generator network, so that a model fine-tuned on the protected photos learns your face badly.
The perturbation is trained to survive the JPEG compression that social networks apply.

**Budget**: no pixel changes by more than the budget, in grey levels on the 0-255 scale (8 is the paper's
setting). Higher budgets protect more and are easier to see. The *Perturbation, amplified* view shows the change
scaled up: mid-grey means unchanged.

## What it does not do
- It does not hide your face from people, face recognition or search engines, and it does not remove a photo
  that is already online.
- It is not a guarantee: it was designed against specific fine-tuning methods and models; other models,
  heavy editing, resizing, screenshots, strong compression or purification can weaken it. The *Robustness* tab
  measures, per transform (JPEG, platform uploads, blur, purification), how much of it survives.
- Protect **every** photo you share: unprotected photos of you can still be used.
- **Demo generators** (trained against a toy model) protect nothing real; they are labelled DEMO wherever they
  appear here, in file names and in the gallery.

## Your files
Photos are processed on this machine. Protected photos are saved as lossless PNG with metadata (EXIF, GPS,
XMP) removed; lossy re-compression before you upload them would weaken the protection. The app listens on
127.0.0.1 unless it was started with another address, and makes no public link unless started with `--share`.
"""
