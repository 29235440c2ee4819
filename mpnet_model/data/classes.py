"""Class lists of the supported datasets: the one place that defines names, order and colours."""

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


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct RGB colour per class: the S3DIS palette first, then evenly spaced hues."""
    import colorsys

    colours = list(S3DIS_PALETTE[:num_classes])
    for i in range(len(colours), num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours
