"""Files in and out: image decoding (EXIF, modes, bombs) and encoding (metadata stripped, the fast PNG writer),
batches of image paths, and atomic writes. The names below are the package's API."""
from .decode import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, NAME_MAX, SAVE_FORMATS, ImageError, LoadedImage,
                     decode_formats, image_extensions, load_image)
from .encode import batch_to_uint8, encode_image, prepare_output_folder, save_image, to_uint8
from .paths import ExpandedInputs, InputGuard, iter_image_paths, output_path_for, output_root, safe_name

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "NAME_MAX", "SAVE_FORMATS", "ExpandedInputs", "ImageError",
           "InputGuard", "LoadedImage", "batch_to_uint8", "decode_formats", "encode_image", "image_extensions",
           "iter_image_paths", "load_image", "output_path_for", "output_root", "prepare_output_folder", "safe_name",
           "save_image", "to_uint8"]
