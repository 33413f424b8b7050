"""A1111's model root (`<webui>/models`)."""
import os
import tempfile

models_path = os.path.join(tempfile.gettempdir(), "a1111-stub-webui", "models")
