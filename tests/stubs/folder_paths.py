"""Stand-in for ComfyUI's `folder_paths` (behaviour as in ComfyUI 0.3.x, not its code).

Model folders are (paths, extensions) pairs; a new key gets an empty extension set, and an empty set lists every
file. `reset(base)` points everything at a fresh ComfyUI-like tree for a test.
"""
from __future__ import annotations

import os
import tempfile

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = models_dir = input_directory = output_directory = temp_directory = ""


def reset(base: str) -> None:
    """Lay out ComfyUI's default folders under `base` (as main.py would) and forget registrations."""
    global base_path, models_dir, input_directory, output_directory, temp_directory
    base_path = base
    models_dir = os.path.join(base, "models")
    input_directory = os.path.join(base, "input")
    output_directory = os.path.join(base, "output")
    temp_directory = os.path.join(base, "temp")
    folder_names_and_paths.clear()
    for key in ("checkpoints", "loras", "vae", "embeddings"):
        folder_names_and_paths[key] = ([os.path.join(models_dir, key)], set(supported_pt_extensions))
    folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], {"folder"})
    for d in (input_directory, output_directory, temp_directory, *(p[0][0] for p in folder_names_and_paths.values())):
        os.makedirs(d, exist_ok=True)  # a ComfyUI checkout ships these folders


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def _recursive_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    out = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        out += [os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames]
    return out


def get_filename_list(folder_name: str) -> list[str]:
    paths, extensions = folder_names_and_paths[folder_name]
    names = set()
    for p in paths:
        names.update(filter_files_extensions(_recursive_files(p), extensions))
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for p in folder_names_and_paths[folder_name][0]:
        full = os.path.join(p, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_input_directory() -> str:
    return input_directory


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """'photo.png [input]' / '[output]' / '[temp]' annotations pick the folder; the default is input/."""
    folders = {"[input]": input_directory, "[output]": output_directory, "[temp]": temp_directory}
    for tag, folder in folders.items():
        if name.endswith(" " + tag):
            return os.path.join(folder, name[:-len(tag) - 1])
    return os.path.join(default_dir or input_directory, name)


_base = tempfile.TemporaryDirectory(prefix="comfy_stub_")  # removed when the process exits
reset(_base.name)
