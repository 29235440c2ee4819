"""Pictures of written camera sequences (`mpnet-synth --sensor kinect --preview`): per frame the colour image, the
class image and the instance image as stored on disk (holes white in the label images), with the view's height
and pitch above the table for manipulation views."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES


def _frame_images(seq_dir: Path, meta: dict, entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (H,W,3) uint8, class colours, instance colours, class ids (H,W), -1 = hole) of one stored frame."""
    from mpnet_model.viz.render import class_colours, instance_colours

    height, width = meta['sensor']['height'], meta['sensor']['width']
    with np.load(seq_dir / entry['file'], allow_pickle=False) as data:
        rgb, pixel, sem, ins = data['rgb'], data['pixel'], data['sem'].astype(np.int64), data['ins'].astype(np.int64)
    classes = np.full(height * width, -1, np.int64)
    classes[pixel] = sem
    instances = np.full(height * width, -1, np.int64)
    instances[pixel] = ins
    hole = classes < 0
    by_class = class_colours(classes, len(S3DIS_CLASSES))
    by_instance = instance_colours(instances)
    by_class[hole] = 255                     # holes white (clutter is dark grey)
    by_instance[hole] = 255
    shape = (height, width, 3)
    return rgb, by_class.reshape(shape), by_instance.reshape(shape), classes.reshape(height, width)


def camera_preview(seq_dir: str | os.PathLike, path: str | os.PathLike, max_frames: int = 4, dpi: int = 100,
                   palette_colours: int = 0) -> Path:
    """PNG of the first `max_frames` frames of a camera sequence: colour | class | instance per row;
    `palette_colours` > 0 stores it with that many palette colours (PIL median cut: a third of the size, for docs)."""
    from matplotlib.patches import Patch

    from mpnet_model.data.synthetic.frames import read_sequence
    from mpnet_model.data.synthetic.tabletop import view_geometry
    from mpnet_model.viz.render import class_colours, new_figure, save_figure

    seq_dir = Path(seq_dir)
    meta = read_sequence(seq_dir)
    if meta['sensor'].get('kind') != 'rgbd':
        raise ValueError(f'{seq_dir}: camera_preview draws camera sequences, this one is {meta["sensor"].get("kind")}')
    entries = meta['frames'][:max_frames]
    table = (meta['scene']['rooms'] or [{}])[0].get('table')
    fig = new_figure(12.0, 3.2 * len(entries) + 0.6, dpi=dpi)
    present: set[int] = set()
    for row, entry in enumerate(entries):
        rgb, by_class, by_instance, classes = _frame_images(seq_dir, meta, entry)
        present |= set(np.unique(classes[classes >= 0]).tolist())
        valid = classes >= 0
        label = f"{entry['file']}\n{valid.mean():.0%} valid"
        if table:
            h, pitch, _ = view_geometry(np.asarray(entry['world_from_sensor']), table['top_z'])
            share = float(np.mean(classes[valid] == S3DIS_CLASSES.index('table'))) if valid.any() else 0.0
            label += f', table {share:.0%} of them\n{h:.2f} m above the table, {pitch:.0f} deg down'
        for col, (image, name) in enumerate(((rgb, 'colour'), (by_class, 'class'), (by_instance, 'instance'))):
            ax = fig.add_subplot(len(entries), 3, row * 3 + col + 1)
            ax.imshow(image, interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(name, fontsize=9)
    colours = class_colours(np.array(sorted(present), np.int64), len(S3DIS_CLASSES)) / 255.0
    fig.legend(handles=[Patch(color=c, label=S3DIS_CLASSES[i]) for i, c in zip(sorted(present), colours)],
               loc='lower center', ncol=min(len(present), 8), fontsize=8, frameon=False)
    fig.suptitle(f"{seq_dir.name} ({meta['sensor']['preset']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    if not palette_colours:
        return save_figure(fig, path)
    import io

    from PIL import Image

    from mpnet_model.io.atomic import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    image = Image.open(buffer).convert('RGB').quantize(palette_colours, method=Image.Quantize.MEDIANCUT)
    with atomic_write(Path(path), suffix='.tmp.png') as stream:
        image.save(stream, format='png', optimize=True)
    return Path(path)
