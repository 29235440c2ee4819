"""Which rooms a run trains, validates and tests on, for each dataset the loaders read.

S3DIS and the synthetic benchmark (written in S3DIS's layout): train on the areas other than the test area (or
the 6-fold fold's), hold out `val_fraction` of the training rooms for validation and best-model selection, test on
the test area. ScanNetV2: the official train / val scene lists (val is the usual test set). Simulated sensor frames
(`mpnet-synth --sensor ...`): the same area split over frame files; validation takes whole sequences.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mpnet_model.data import s3dis, scannet
from mpnet_model.data.dataset import RoomLoader


@dataclass
class RoomSplit:
    train: list[Path]
    val: list[Path]
    test: list[Path]
    loader: RoomLoader


def split_rooms(dataset: str, root: str | Path, test_area: int = 5, fold: int = 0, val_fraction: float = 0.1,
                label_map: str = '', train_split: str = '', val_split: str = '', max_rooms: int = 0,
                lidar_colour: str = 'intensity') -> RoomSplit:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'data.root={str(root)!r}: dataset folder not found')
    if dataset == 'frames':
        return _split_frames(root, test_area, fold, val_fraction, max_rooms, lidar_colour)
    if dataset in ('s3dis', 'synthetic'):
        split = s3dis.six_fold(fold) if fold else s3dis.area_split(test_area)
        available = [a for a in split.train if (root / f'Area_{a}').is_dir()]
        if not available:
            raise FileNotFoundError(f'no training area of {split.train} under {root}')
        train = s3dis.list_rooms(root, available)
        test = s3dis.list_rooms(root, split.test) if (root / f'Area_{split.test[0]}').is_dir() else []
        n_val = int(round(len(train) * val_fraction)) if len(train) > 1 else 0
        # Every k-th room goes to validation: spread over areas, deterministic.
        val = train[::max(len(train) // n_val, 1)][:n_val] if n_val else []
        train = [r for r in train if r not in val]
        loader: RoomLoader = s3dis.load_room
    elif dataset == 'scannet':
        label_map_path = Path(label_map) if label_map else root / scannet.LABEL_MAP_NAME
        labels = scannet.read_label_map(label_map_path)
        loader = functools.partial(scannet.load_room, label_map_tsv=labels)
        scans = root / 'scans' if (root / 'scans').is_dir() else root
        train = scannet.list_scenes(scans, train_split or None)
        test = scannet.list_scenes(scans, val_split) if val_split else []
        val = test[: max(1, len(test) // 10)] if test else []
    else:
        raise ValueError(f"dataset={dataset!r}: choose 's3dis', 'synthetic', 'scannet' or 'frames'")
    if max_rooms:
        train, val, test = train[:max_rooms], val[:max_rooms], test[:max_rooms]
    return RoomSplit(train=train, val=val, test=test, loader=loader)


def _split_frames(root: Path, test_area: int, fold: int, val_fraction: float, max_rooms: int,
                  lidar_colour: str) -> RoomSplit:
    from mpnet_model.data.synthetic.frames import list_frames, load_frame

    split = s3dis.six_fold(fold) if fold else s3dis.area_split(test_area)
    train = list_frames(root, split.train)
    if not train:
        raise FileNotFoundError(f'no sensor frames in areas {split.train} under {root} (mpnet-synth --sensor ...)')
    sequences = sorted({p.parent for p in train})
    n_val = int(round(len(sequences) * val_fraction)) if len(sequences) > 1 else 0
    val_sequences = set(sequences[::max(len(sequences) // n_val, 1)][:n_val]) if n_val else set()
    val = [p for p in train if p.parent in val_sequences]
    train = [p for p in train if p.parent not in val_sequences]
    test = list_frames(root, split.test)
    if max_rooms:
        train, val, test = train[:max_rooms], val[:max_rooms], test[:max_rooms]
    return RoomSplit(train, val, test, functools.partial(load_frame, lidar_colour=lidar_colour))


class _SourceLoader:
    """Loads each path with the loader of the source whose root holds it (mixed training sets)."""

    def __init__(self, sources: list[tuple[Path, RoomLoader]]):
        self.sources = [(Path(root).resolve(), loader) for root, loader in sources]

    def __call__(self, path: Path):
        resolved = Path(path).resolve()
        for root, loader in self.sources:
            if resolved.is_relative_to(root):
                return loader(path)
        raise ValueError(f'{path} lies under none of the data sources {[str(r) for r, _ in self.sources]}')


def mixed_split(splits: list[tuple[str | Path, RoomSplit, int]]) -> RoomSplit:
    """One split over several (root, split, repeat) sources: training rooms listed `repeat` times each, validation
    rooms once, the test split of the first (main) source."""
    return RoomSplit(train=[p for _, s, k in splits for p in s.train * k], val=[p for _, s, _ in splits for p in s.val],
                     test=list(splits[0][1].test), loader=_SourceLoader([(root, s.loader) for root, s, _ in splits]))
