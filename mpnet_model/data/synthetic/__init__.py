"""Synthetic labelled indoor scenes: S3DIS-like static scans and virtual robot sensors.

Why: the real S3DIS cannot be downloaded here, so training, evaluation and the rare-case study run on rooms
that look like S3DIS to every consumer (same 13 classes, same files, similar class imbalance and scanner
artefacts). Each room is a set of oriented boxes ("parts") grouped into instances.

- `layout`: rooms (and doorways) as labelled boxes; `floors`: rooms joined by a corridor.
- `shading`: class-typical colours and point shading.
- `sampling`: static multi-station scans (the S3DIS look), `generate_room`.
- `io`: the S3DIS on-disk layout (`write_room`, `generate_dataset`, previews).
- `cli`: `mpnet-synth`.
"""
from mpnet_model.data.synthetic.io import META_FILENAME, generate_dataset, render_preview, room_rng, write_room
from mpnet_model.data.synthetic.layout import CLASS_INDEX, RARE_KINDS, ROOM_TYPE_WEIGHTS, ROOM_TYPES
from mpnet_model.data.synthetic.sampling import DEFAULT_DENSITY, DEFAULT_NOISE, DEFAULT_RARE_PROB, generate_room

__all__ = ['CLASS_INDEX', 'DEFAULT_DENSITY', 'DEFAULT_NOISE', 'DEFAULT_RARE_PROB', 'META_FILENAME', 'RARE_KINDS',
           'ROOM_TYPES', 'ROOM_TYPE_WEIGHTS', 'generate_dataset', 'generate_room', 'main', 'render_preview',
           'room_rng', 'write_room']


def main(argv: list[str] | None = None) -> int:
    """Console entry `mpnet-synth` (see `mpnet_model.data.synthetic.cli`)."""
    from mpnet_model.data.synthetic.cli import main as cli_main

    return cli_main(argv)
