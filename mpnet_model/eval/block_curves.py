"""Per-class block-level instance precision / recall during training (the curves of the paper's Fig. 5).

Each validation block is clustered on its own (mean shift on the embeddings, as at inference, without BlockMerging)
and scored with the S3DIS instance metrics; the trainer logs the result as `val/ins_prec/<class>`,
`val/ins_rec/<class>`, `val/ins_mprec` and `val/ins_mrec` every validation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mpnet_model.eval.metrics import InstanceEvaluator
from mpnet_model.infer.meanshift import mean_shift_blocks


class ClassInstanceCurves:
    """Per-class block-level instance precision / recall of one validation pass (paper Fig. 5).

    Each validation block is clustered on its own (mean shift on the embeddings, as at inference, without
    BlockMerging) and scored with the S3DIS instance metrics, so one epoch costs one mean shift per block.
    Usage (per epoch): `add_batch(...)` for every validation batch (or `add_dataset`), then `log(writer, epoch)`.
    """

    def __init__(self, class_names, bandwidth: float = 0.6, iou_threshold: float = 0.5):
        self.class_names = tuple(class_names)
        self.bandwidth = float(bandwidth)
        self.evaluator = InstanceEvaluator(len(self.class_names), iou_threshold)
        self.num_blocks = 0

    def add_batch(self, sem_logits, embeddings, sem, ins) -> None:
        """sem_logits (B,N,C), embeddings (B,N,E), sem (B,N), ins (B,N): tensors or arrays of one batch."""
        as_numpy = [t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
                    for t in (sem_logits, embeddings, sem, ins)]
        logits, embed, gt_sem, gt_ins = as_numpy
        if logits.ndim != 3 or embed.shape[:2] != logits.shape[:2] or gt_sem.shape != logits.shape[:2] \
                or gt_ins.shape != logits.shape[:2]:
            raise ValueError(f'ClassInstanceCurves.add_batch: shapes sem_logits {logits.shape}, embeddings '
                             f'{embed.shape}, sem {gt_sem.shape}, ins {gt_ins.shape} do not describe one batch')
        pred_ins = mean_shift_blocks(np.ascontiguousarray(embed, dtype=np.float32), self.bandwidth)   # (B,N)
        pred_sem = logits.argmax(-1)                                                                   # (B,N)
        for b in range(logits.shape[0]):        # one "room" per block: instances are block-local
            self.evaluator.add(pred_sem[b], pred_ins[b], gt_sem[b], gt_ins[b], room_id=f'block{self.num_blocks}')
            self.num_blocks += 1

    @torch.no_grad()
    def add_dataset(self, model: torch.nn.Module, dataset: Dataset, max_blocks: int, batch_size: int,
                    device: torch.device | str = 'cpu') -> None:
        """Run `model` (eval mode, restored afterwards) on the first `max_blocks` blocks of `dataset`."""
        was_training = model.training
        model.eval()
        try:
            subset = Subset(dataset, range(min(int(max_blocks), len(dataset))))
            for points, sem, ins in DataLoader(subset, batch_size=batch_size, shuffle=False):
                outputs = model(points.to(device))
                self.add_batch(outputs['sem_logits'], outputs['ins_embed'], sem, ins)
        finally:
            model.train(was_training)

    def scalars(self) -> dict[str, float]:
        """{'ins_prec/<class>', 'ins_rec/<class>', 'ins_mprec', 'ins_mrec'}: classes without a value are left out."""
        if self.num_blocks == 0:
            raise ValueError('ClassInstanceCurves: no block was added')
        metrics = self.evaluator.compute()
        out = {'ins_mprec': metrics['mPrec'], 'ins_mrec': metrics['mRec']}
        for name, precision, recall in zip(self.class_names, metrics['precision'], metrics['recall']):
            out[f'ins_prec/{name}'] = float(precision)
            out[f'ins_rec/{name}'] = float(recall)
        return {k: float(v) for k, v in out.items() if not np.isnan(v)}

    def log(self, writer, epoch: int, prefix: str = 'val/') -> dict[str, float]:
        """Write the scalars to a TensorBoard SummaryWriter at step `epoch` (as the trainer logs val/*)."""
        values = self.scalars()
        for key, value in values.items():
            writer.add_scalar(f'{prefix}{key}', value, epoch)
        writer.flush()
        return values
