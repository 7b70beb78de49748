"""The one table of GAN architectures: the name a model card and a checkpoint record, the generator
class the registry rebuilds from a card, and the training recipe the runner uses.

A new architecture gets a folder beside :mod:`models.dcgan` and :mod:`models.stylegan3` (networks and
recipe) and one row here. Names never change once models carry them: cards and checkpoints store the
name, never a module path, so a module may move as long as its row follows it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    generator: str  # "module:Class", built with the card's init_kwargs (models.registry.build_generator)
    recipe: str = ""  # "module:Class" of its models.train.recipe.Recipe; empty: served, not trained here


ARCHITECTURES: dict[str, Architecture] = {
    "dcgan": Architecture("models.dcgan:Generator", "models.dcgan.recipe:DCGANRecipe"),
    "stylegan3-t": Architecture("models.stylegan3:Generator", "models.stylegan3.recipe:StyleGAN3TRecipe"),
    "stylegan3-r": Architecture("models.stylegan3:Generator", "models.stylegan3.recipe:StyleGAN3RRecipe"),
}


def trainable() -> list[str]:
    """The names of the architectures that have a training recipe, sorted."""
    return sorted(name for name, arch in ARCHITECTURES.items() if arch.recipe)
