"""t-SNE of instance embeddings (paper Fig. 4): do points of one instance form one tight cluster?"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from mpnet_model.data.classes import IGNORE_LABEL
from mpnet_model.viz.render import instance_colours, new_figure, save_figure, subsample_indices


def embedding_tsne(embeddings, instance_ids, max_points: int = 3000, seed: int = 0,
                   drop_unlabelled: bool = True, perplexity: float = 30.0, max_iter: int = 1000,
                   num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """2-D Barnes-Hut t-SNE of (N,E) embeddings -> (coords (K,2) float32, instance_ids (K,) int64).

    Points without an instance (-1) are dropped first (unless `drop_unlabelled=False`), then at most
    `max_points` are kept by a subset fixed by `seed`; the same seed gives the same picture.
    Perplexity is lowered for tiny inputs (t-SNE needs perplexity < number of points). OpenMP / BLAS threads
    are capped at `num_threads`: on a busy machine sklearn's default all-cores OpenMP runs 10-20x slower.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    instance_ids = np.asarray(instance_ids).astype(np.int64)
    if embeddings.ndim != 2:
        raise ValueError(f'embeddings must have shape (N, E), got {embeddings.shape}')
    if instance_ids.shape != (len(embeddings),):
        raise ValueError(f'instance_ids must have shape ({len(embeddings)},), got {instance_ids.shape}')
    if not np.isfinite(embeddings).all():
        raise ValueError('embeddings contain NaN or inf values')
    candidates = np.flatnonzero(instance_ids != IGNORE_LABEL) if drop_unlabelled else np.arange(len(embeddings))
    if len(candidates) < 4:
        raise ValueError(f't-SNE needs at least 4 points, got {len(candidates)} (after dropping unlabelled)')
    chosen = candidates[subsample_indices(len(candidates), max_points, seed=seed)]
    tsne = TSNE(n_components=2, method='barnes_hut', init='pca', learning_rate='auto',
                perplexity=min(perplexity, (len(chosen) - 1) / 3.0), max_iter=max_iter, random_state=seed)
    with threadpool_limits(limits=num_threads):
        coords = tsne.fit_transform(embeddings[chosen]).astype(np.float32)
    return coords, instance_ids[chosen]


def render_tsne_comparison(named_embeddings: dict, path, title: str = '', max_points: int = 3000, seed: int = 0,
                           max_iter: int = 1000, dpi: int = 120) -> Path:
    """Side-by-side t-SNE panels, one per name -> (embeddings (N,E), instance_ids (N,)), coloured by instance.

    E.g. {'baseline': (emb_a, ins), 'MPNet': (emb_b, ins)}: the same subset seed is used for every panel.
    """
    if not named_embeddings:
        raise ValueError('named_embeddings is empty: nothing to compare')
    panels = []
    for name, pair in named_embeddings.items():
        if len(pair) != 2:
            raise ValueError(f'named_embeddings[{name!r}] must be (embeddings, instance_ids)')
        coords, ids = embedding_tsne(pair[0], pair[1], max_points=max_points, seed=seed, max_iter=max_iter)
        panels.append((name, coords, ids))

    fig = new_figure(4.2 * len(panels), 4.5 if title else 4.2, dpi=dpi)
    for i, (name, coords, ids) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        colours = instance_colours(ids).astype(np.float32) / 255.0
        ax.scatter(coords[:, 0], coords[:, 1], c=colours, s=4, linewidths=0, rasterized=True)
        ax.set_title(f'{name} ({len(np.unique(ids))} instances)', fontsize=10)
        ax.set_aspect('equal', adjustable='datalim')
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86 if title else 0.92, wspace=0.05)
    return save_figure(fig, path)
