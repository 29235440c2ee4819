"""Class lists of the supported datasets: the one place that defines names, order and colours."""
import colorsys

import numpy as np

# S3DIS, standard order (ASIS / SGPN); raw `stairs` annotations map to clutter.
S3DIS_CLASSES = (
    'ceiling', 'floor', 'wall', 'beam', 'column', 'window', 'door',
    'table', 'chair', 'sofa', 'bookcase', 'board', 'clutter',
)

# ScanNetV2 benchmark classes (nyu40 ids in VALID_CLASS_IDS order of the official scripts).
SCANNET_CLASSES = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'desk', 'curtain', 'refrigerator', 'shower curtain', 'toilet', 'sink',
    'bathtub', 'otherfurniture',
)
SCANNET_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)

# Label used for points that carry no annotation; losses and metrics ignore it.
IGNORE_LABEL = -1

# S3DIS palette (RGB 0-255), as commonly used for visualising the 13 classes.
S3DIS_PALETTE = (
    (0, 255, 0), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 255), (100, 100, 255),
    (200, 200, 100), (170, 120, 200), (255, 0, 0), (200, 100, 100), (10, 200, 100),
    (200, 200, 200), (50, 50, 50),
)


# Colour of unlabelled points / no instance in every picture, cloud and marker.
UNLABELLED_GREY = (128, 128, 128)

# Low-discrepancy sequences: consecutive instance ids (as mean shift produces) get far-apart hues; saturation and
# value follow two other sequences to separate ids whose hues happen to be close.
_GOLDEN = 0.6180339887498949
_PLASTIC = 0.7548776662466927
_SQRT2M1 = 0.4142135623730951


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct RGB colour per class: the S3DIS palette first, then evenly spaced hues."""
    colours = list(S3DIS_PALETTE[:num_classes])
    for i in range(len(colours), num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def class_colour_table(num_classes: int) -> np.ndarray:
    """(C + 1, 3) uint8: the class palette, with grey at index C for unlabelled / unknown points."""
    return np.array([*palette(num_classes), UNLABELLED_GREY], dtype=np.uint8)


def instance_colour_table(instance_ids) -> np.ndarray:
    """(K,) instance ids -> (K, 3) uint8, the same colour for an id everywhere (PNGs, RViz markers); -1 -> grey."""
    def colour(i: float) -> tuple[int, ...]:
        hsv = ((i * _GOLDEN) % 1.0, 0.55 + 0.40 * ((i * _PLASTIC) % 1.0), 0.70 + 0.28 * ((i * _SQRT2M1) % 1.0))
        return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(*hsv))

    ids = np.asarray(instance_ids, dtype=np.float64).reshape(-1)
    colours = [UNLABELLED_GREY if i < 0 else colour(i) for i in ids.tolist()]
    return np.array(colours, dtype=np.uint8).reshape(-1, 3)
