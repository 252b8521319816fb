"""The problem every learner of a run solves: which images, how many classes.

``Problem`` is what learners, generators, sources and the engine need to know about a dataset to be *built* —
the image shape and the number of classes, which used to travel as a pair through every signature. It holds no
tensors, so it is small, hashable and cheap to pickle into worker processes. The splits stay beside it: a
:class:`tgbench.data.Dataset` has both (``dataset.problem``), and what trains on or scores a split takes that
split explicitly (the tuning stage, for one, scores the validation split in the test split's place).

This module imports nothing from tgbench, so every layer (``nn``, ``source``, ``data``, ``engine``) can use it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """Classify ``(C, H, W)`` images (``image_shape``, in the dataset's normalised space) into ``num_classes``
    classes. Sizes are stored as plain ints (a shape read off a tensor or a JSON list becomes a tuple)."""

    image_shape: tuple[int, int, int]
    num_classes: int

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__, so that equal problems compare and hash equal
        object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))
        object.__setattr__(self, "num_classes", int(self.num_classes))
