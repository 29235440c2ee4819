"""The paper's pictures as PNG: memory slots and the points addressing them (Fig. 3), t-SNE of instance
embeddings with and without memory (Fig. 4), per-class training curves of instance precision (Fig. 5).

Plotting itself is `mpnet_model.viz`; this module computes what is plotted: per-point memory addressing weights
of whole scenes, instance embeddings of the same blocks under two models, and per-epoch per-class instance
metrics (logged by the trainer through `mpnet_model.eval.block_curves.ClassInstanceCurves`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mpnet_model.analysis import AnalysisConfig
from mpnet_model.analysis.ablation import RunSpec, ensure_run, evaluation_rooms
from mpnet_model.data.blocks import Blocks, room_to_blocks
from mpnet_model.data.room import Room, load_room_npz
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.model.checkpoint import load_checkpoint
from mpnet_model.train.config import TrainConfig

log = logging.getLogger(__name__)

LOGGED_TAGS = ('val/miou', 'val/oacc', 'val/loss')     # what the trainer itself logs per epoch


# ------------------------------------------------------------------------------------------- model outputs
def scene_blocks(room: Room, num_points: int, block_size: float, stride: float, seed: int = 0,
                 min_points: int = 20) -> Blocks:
    """The blocks inference cuts from a room (same sampling as SceneSegmenter with the same seed)."""
    return room_to_blocks(room.xyz, room.rgb, room.sem, room.ins, block_size=block_size, stride=stride,
                          num_points=num_points, min_points=min_points, rng=np.random.default_rng(seed))


@torch.no_grad()
def block_outputs(model: torch.nn.Module, blocks: Blocks, keys: tuple[str, ...], batch_size: int = 8,
                  block_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Model outputs `keys` (e.g. 'ins_embed' (K,P,E)) for the chosen blocks, in eval mode, as float32 arrays."""
    model.eval()
    block_ids = np.arange(len(blocks)) if block_ids is None else np.asarray(block_ids)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for start in range(0, len(block_ids), batch_size):
        outputs = model(torch.from_numpy(blocks.points[block_ids[start:start + batch_size]]))
        for key in keys:
            if outputs.get(key) is None:
                raise ValueError(f'the model gives no {key!r} (its config has use_ins_memory='
                                 f'{model.cfg.use_ins_memory}); pick a row with instance memory')
            parts[key].append(outputs[key].float().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


@torch.no_grad()
def point_slot_weights(model: torch.nn.Module, blocks: Blocks, num_room_points: int, batch_size: int = 8
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Memory addressing weights per room point, averaged over the blocks that sampled it.

    -> (point ids (S,) of the sampled points, weights (S,M) float32). Accumulated batch by batch (index_add), so
    only (N,M) is held, never (K,P,M).
    """
    model.eval()
    sums, counts = None, torch.zeros(num_room_points)
    for start in range(0, len(blocks), batch_size):
        weights = model(torch.from_numpy(blocks.points[start:start + batch_size]))['ins_weights']      # (b,P,M)
        if weights is None:
            raise ValueError('the model has no instance memory (use_ins_memory=false): no slot weights to show')
        index = torch.from_numpy(blocks.indices[start:start + batch_size].reshape(-1))                  # (b*P,)
        if sums is None:
            sums = torch.zeros(num_room_points, weights.shape[-1])
        sums.index_add_(0, index, weights.reshape(-1, weights.shape[-1]).float())
        counts.index_add_(0, index, torch.ones(index.shape[0]))
    sampled = torch.nonzero(counts > 0).squeeze(1)
    return sampled.numpy(), (sums[sampled] / counts[sampled, None]).numpy()


def blocks_with_most_instances(blocks: Blocks, count: int) -> np.ndarray:
    """Indices of the `count` blocks holding the most distinct gt instances (most to separate)."""
    ins = blocks.ins                                                                     # (K,P)
    ordered = np.sort(ins, axis=1)
    distinct = ((np.diff(ordered, axis=1) != 0).sum(axis=1) + 1) - (ordered[:, 0] < 0)    # (K,)
    return np.argsort(-distinct, kind='stable')[:count]


# ------------------------------------------------------------------------------------------- figures
def memory_slot_figure(checkpoint: Path, rooms: list[Room], path: Path, num_slots: int, block_size: float,
                       stride: float, batch_size: int = 8) -> Path:
    """Fig. 3: the `num_slots` most used memory slots (over the shown scenes), each point coloured by its weight."""
    from mpnet_model.viz.memory_slots import render_memory_slots, top_slots

    model, cfg, _ = load_checkpoint(checkpoint)
    xyz_list, weights_list = [], []
    for room in rooms:
        blocks = scene_blocks(room, cfg.num_points, block_size, stride)
        sampled, weights = point_slot_weights(model, blocks, room.num_points, batch_size)
        xyz_list.append(room.xyz[sampled])
        weights_list.append(weights)
    slots = top_slots(np.concatenate(weights_list), min(num_slots, weights_list[0].shape[1]), by='argmax')
    return render_memory_slots(xyz_list, weights_list, slots, path, scene_names=[r.name for r in rooms],
                               title=f'Top memory slots (M={weights_list[0].shape[1]})')


def tsne_figure(checkpoints: dict[str, Path], room: Room, path: Path, num_blocks: int, block_size: float,
                stride: float, max_points: int, max_iter: int, batch_size: int = 8) -> Path:
    """Fig. 4: 2-D t-SNE of the instance embeddings of the same blocks under each model, coloured by gt instance.

    Embeddings are block-local (each block is clustered on its own), so the blocks with the most instances are
    projected; every model sees exactly the same blocks and points.
    """
    from mpnet_model.viz.tsne import render_tsne_comparison

    models = {name: load_checkpoint(p) for name, p in checkpoints.items()}
    num_points = {cfg.num_points for _, cfg, _ in models.values()}
    if len(num_points) != 1:
        raise ValueError(f'the compared models take different block sizes {num_points}: cannot share blocks')
    blocks = scene_blocks(room, num_points.pop(), block_size, stride)
    chosen = blocks_with_most_instances(blocks, num_blocks)
    # Points of different blocks that share an instance id are the same room instance: colour = room gt id.
    ins = blocks.ins[chosen].reshape(-1)
    panels = {}
    for name, (model, _, _) in models.items():
        embed = block_outputs(model, blocks, ('ins_embed',), batch_size, chosen)['ins_embed']     # (k,P,E)
        panels[name] = (embed.reshape(-1, embed.shape[-1]), ins)
    return render_tsne_comparison(panels, path, title=f'Instance embeddings, {room.name} ({len(chosen)} blocks)',
                                  max_points=max_points, max_iter=max_iter)


def training_curves_figure(tb_dirs: dict[str, Path], classes: list[str], path: Path) -> tuple[Path, str]:
    """Fig. 5: per-class instance precision per epoch for each run, from TensorBoard.

    Uses `val/ins_prec/<class>` (logged by the trainer's validation); runs without them
    fall back to what the trainer logs (val/miou, val/oacc, val/loss). -> (png, note on what was plotted).
    """
    from mpnet_model.viz.curves import read_scalars, render_curves

    runs = {name: read_scalars(tb, 'val/') for name, tb in tb_dirs.items()}
    available = {tag for series in runs.values() for tag in series}
    wanted = [f'val/ins_prec/{c}' for c in classes] + ['val/ins_mprec']
    tags = [t for t in wanted if t in available]
    if tags:
        note = (f'per-class block-level instance precision per epoch ({", ".join(t.rsplit("/", 1)[-1] for t in tags)});'
                f' missing: {[t for t in wanted if t not in available] or "none"}')
        ylabel = 'instance precision'
    else:
        tags = [t for t in LOGGED_TAGS if t in available]
        if not tags:
            raise ValueError(f'no validation curves in {list(tb_dirs.values())}: train with a validation split')
        note = ('no per-class instance precision was logged (train through mpnet-analyse, or add the trainer hook '
                'ClassInstanceCurves); plotted the logged ' + ', '.join(tags))
        ylabel = ''
    png = render_curves(runs, tags, path, title='Training curves (paper Fig. 5)', ylabel=ylabel)
    return png, note


# ------------------------------------------------------------------------------------------- command
def run_visualise(base: TrainConfig, acfg: AnalysisConfig, out_dir: str | Path, progress: bool = True
                  ) -> dict[str, Path]:
    """All pictures into `<out>/figures/` (+ figures.md listing them), training the needed runs if missing."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / 'figures'
    seed = acfg.seeds[0]
    mc = base.model.mem_per_class
    memory_run = ensure_run(base, acfg, RunSpec(acfg.vis_row, mc, seed), out_dir, progress)
    plain_run = ensure_run(base, acfg, RunSpec(acfg.vis_compare_row, mc, seed), out_dir, progress)
    rooms = [load_room_npz(p) for p in evaluation_rooms(base, acfg, progress=False)[:acfg.vis_scenes]]
    block_size, stride, batch = base.data.block_size, base.data.stride, acfg.eval_batch_size

    paths = {'memory_slots': memory_slot_figure(memory_run.checkpoint, rooms, fig_dir / 'memory_slots.png',
                                                acfg.vis_slots, block_size, stride, batch)}
    for room in rooms:
        paths[f'tsne_{room.name}'] = tsne_figure(
            {f'{acfg.vis_compare_row} (no memory)' if not plain_run_uses_memory(acfg) else acfg.vis_compare_row:
             plain_run.checkpoint, acfg.vis_row: memory_run.checkpoint},
            room, fig_dir / f'tsne_{room.name}.png', acfg.tsne_blocks, block_size, stride, acfg.tsne_points,
            acfg.tsne_iter, batch)
    paths['curves'], note = training_curves_figure(
        {acfg.vis_compare_row: plain_run.folder / 'tb', acfg.vis_row: memory_run.folder / 'tb'},
        acfg.curve_classes, fig_dir / 'training_curves.png')
    lines = ['# Figures', '', f'Models: {memory_run.spec.name} (memory), {plain_run.spec.name} (comparison).', '']
    lines += [f'- {key}: `{p.relative_to(out_dir)}`' for key, p in paths.items()]
    lines += ['', f'Training curves: {note}.', '']
    paths['index'] = atomic_write_text(out_dir / 'figures.md', '\n'.join(lines))
    return paths


def plain_run_uses_memory(acfg: AnalysisConfig) -> bool:
    from mpnet_model.config import ABLATIONS

    return bool(ABLATIONS[acfg.vis_compare_row]['use_ins_memory'])
