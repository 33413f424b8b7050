"""The prompts of the paper's protocol, in one place.

DreamBooth fine-tunes on the instance prompt with prior preservation on class images of the class prompt
(diffusers' ``train_dreambooth.py`` as the paper ran it); the attacked model is then sampled with the paper's four
prompts. CAAT trains against its own reference prompt (``train_CAAT.sh``), which differs by one word.
"""

INSTANCE_PROMPT = "a photo of sks person"
CLASS_PROMPT = "a photo of person"
PAPER_PROMPTS = (INSTANCE_PROMPT, "a dslr portrait of sks person",
                 "a photo of sks person looking at the mirror", "a photo of sks person in front of eiffel tower")
CAAT_PROMPT = "a photo of a person"
