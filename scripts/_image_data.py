"""Real images for benchmarks, with no download: scikit-learn's digits, scaled up and augmented.

scikit-learn bundles 1,797 handwritten digits of 8 x 8 pixels (``load_digits``,
ten classes, values 0-16).  :func:`augmented_digits` makes an MNIST-sized set
from them: each image is scaled up to 28 x 28 (784 features) by cubic spline
interpolation, then copies are drawn with a small random rotation, shift and
noise, as a data-augmentation pipeline would.  The source images are split
first, so held-out rows are variations of images the model never saw in
training (copies of one source image in both sets would flatter accuracy).

Scripts run as ``python scripts/x.py``, which puts this folder on
``sys.path``: ``from _image_data import augmented_digits``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SIDE", "augmented_digits", "scaled_digits"]

#: Pixels per side of a generated image (784 features, as MNIST).
SIDE = 28


def scaled_digits(side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digit images scaled up to ``side`` x ``side``, values in [0, 1]. Pure.

    Returns
    -------
    images : ndarray of shape (1797, side, side)
        Cubic-spline upsampling of the 8 x 8 images (``scipy.ndimage.zoom``,
        order 3), divided by 16 and clipped to [0, 1] (the spline overshoots
        a little at strokes' edges).
    labels : ndarray of shape (1797,)
        The digit, 0-9.
    """
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = digits.images.astype(np.float64) / 16.0
    factor = side / small.shape[1]
    images = ndimage.zoom(
        small, (1.0, factor, factor), order=3, grid_mode=True, mode="grid-constant"
    )
    return np.clip(images, 0.0, 1.0), digits.target.astype(np.int64)


def _augment(
    images: np.ndarray,
    count: int,
    rng: np.random.Generator,
    max_shift: float,
    max_degrees: float,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random variations of ``images``, each source used as evenly as possible. Pure.

    Returns the rows (``count`` x side²) and the source index of each row.
    """
    from scipy import ndimage

    n, side, _ = images.shape
    # Every source image ceil(count / n) or floor(count / n) times, in random order:
    # no image is over-represented by chance.
    sources = np.concatenate([rng.permutation(n) for _ in range(-(-count // n))])[
        :count
    ]
    rng.shuffle(sources)
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, count))
    shifts = rng.uniform(-max_shift, max_shift, (count, 2))
    rows = np.empty((count, side * side))
    centre = (side - 1) / 2.0
    for i, (source, angle, shift) in enumerate(zip(sources, angles, shifts)):
        # One resampling for rotation about the centre and shift together
        # (output pixel o reads input pixel M @ (o - c - shift) + c).
        cos, sin = np.cos(angle), np.sin(angle)
        matrix = np.array([[cos, -sin], [sin, cos]])
        offset = centre - matrix @ (centre + shift)
        moved = ndimage.affine_transform(
            images[source], matrix, offset=offset, order=1, mode="constant"
        )
        rows[i] = moved.ravel()
    if noise > 0:
        rows += rng.normal(0.0, noise, rows.shape)
    np.clip(rows, 0.0, 1.0, out=rows)
    return rows, sources


def augmented_digits(
    train_rows: int,
    test_rows: int,
    *,
    seed: int = 0,
    test_share: float = 0.3,
    max_shift: float = 2.0,
    max_degrees: float = 10.0,
    noise: float = 0.05,
    side: int = SIDE,
) -> dict[str, np.ndarray]:
    """Training and held-out rows drawn from disjoint sets of digit images. Pure.

    Parameters
    ----------
    train_rows, test_rows : int
        Rows of each set.
    seed : int, default=0
        Seed of the split and of every random variation: the same arguments
        give the same arrays.
    test_share : float, default=0.3
        Share of the 1,797 source images kept for the held-out rows, chosen
        per class so both sets hold every digit in its proportion.
    max_shift : float, default=2.0
        Largest shift, in pixels of the scaled image, along each axis
        (uniform, sub-pixel, bilinear resampling).
    max_degrees : float, default=10.0
        Largest rotation about the image's centre, either way (uniform).
    noise : float, default=0.05
        Standard deviation of Gaussian noise added to every pixel before
        clipping to [0, 1].
    side : int, default=28
        Pixels per side of the scaled images.

    Returns
    -------
    dict
        ``X_train`` (train_rows x side²), ``y_train``, ``X_test``, ``y_test``
        (float64 in [0, 1], int64 labels) and ``train_sources``,
        ``test_sources``: the index into ``load_digits()`` of each row's
        source image (disjoint between the two sets).
    """
    images, labels = scaled_digits(side)
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out[members[: round(test_share * len(members))]] = True
    train_ids, test_ids = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    options = {"max_shift": max_shift, "max_degrees": max_degrees, "noise": noise}
    X_train, train_pick = _augment(images[train_ids], train_rows, rng, **options)
    X_test, test_pick = _augment(images[test_ids], test_rows, rng, **options)
    return {
        "X_train": X_train,
        "y_train": labels[train_ids][train_pick],
        "X_test": X_test,
        "y_test": labels[test_ids][test_pick],
        "train_sources": train_ids[train_pick],
        "test_sources": test_ids[test_pick],
    }
