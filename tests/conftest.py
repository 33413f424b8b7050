"""Fixtures shared by several test modules."""
import pytest
import torch

from gapdiff_core import Generator, GeneratorInfo, save_generator


@pytest.fixture(scope="module")
def saturated_generator_file(tmp_path_factory):
    """A demo-labelled ngf=8 generator file whose tanh output saturates, so protection reaches the budget."""
    torch.manual_seed(0)
    g = Generator(ngf=8)
    with torch.no_grad():
        g.dconv8.weight.mul_(40)
    path = tmp_path_factory.mktemp("models") / "g.safetensors"
    save_generator(g.eval(), path, GeneratorInfo(ngf=8, budget=8, demo=True, provenance="test"))
    return path
