"""One trainer for every MPNet variant (Table-1 rows are config switches): loop, schedule, resume, AMP, DDP, logs.

AMP: run.amp (CUDA) / run.amp_cpu (CPU) with run.amp_dtype fp16 (GradScaler) or bf16; see docs/precision.md.

Checkpoints (the one format of `mpnet_model.model.checkpoint`) are written atomically at the end of every epoch:
`last.pt` carries the optimiser, grad scaler, progress (which drives the LR / BN-momentum schedule) and every RNG
state (torch, CUDA, numpy, python `random`), so a run killed at any moment (kill -9 included) resumes from the last
finished epoch and reaches the same weights as an uninterrupted run (the loader and dataset generators are
re-derived from (seed, epoch), see `_loader` and `BlockDataset`); `best.pt` holds the weights with the best
validation mIoU.
What happens at the end of an epoch is a plain list of callables `(trainer, summary) -> None` (`epoch_end`,
default `default_epoch_end()`: validation, history + TensorBoard, checkpoints); add or drop entries to change it.
Distributed: launch with `torchrun --nproc_per_node K mpnet-train ...`; NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from mpnet_model.eval.block_curves import ClassInstanceCurves
from mpnet_model.eval.metrics import SemanticEvaluator
from mpnet_model.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from mpnet_model.model.losses import MPNetLoss
from mpnet_model.model.mpnet import MPNet
from mpnet_model.train.config import TrainConfig

log = logging.getLogger(__name__)


def learning_rate(cfg: TrainConfig, samples_seen: int) -> float:
    """ASIS staircase decay: lr * rate^floor(samples / decay_samples), floored at lr_min."""
    o = cfg.optim
    return max(o.lr * o.lr_decay_rate ** (samples_seen // o.lr_decay_samples), o.lr_min)


def bn_momentum(cfg: TrainConfig, samples_seen: int) -> float:
    """ASIS BN decay schedule in torch terms: momentum = 1 - TF decay = init * 0.5^k, at least bn_momentum_min."""
    o = cfg.optim
    return max(o.bn_momentum_init * 0.5 ** (samples_seen // o.lr_decay_samples), o.bn_momentum_min)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def resolve_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f'run.device={name!r} but CUDA is not available on this machine')
    return device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun describes through RANK / WORLD_SIZE / LOCAL_RANK (no-op when absent)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ['RANK']), world_size, int(os.environ.get('LOCAL_RANK', '0')))
    use_cuda = device_name != 'cpu' and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return info


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state the training loop may draw from, in checkpoint-safe types (tensors, lists, ints)."""
    numpy_state = np.random.get_state(legacy=False)
    version, python_state, gauss = random.getstate()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': {'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                      'pos': int(numpy_state['state']['pos']), 'has_gauss': int(numpy_state['has_gauss']),
                      'gauss': float(numpy_state['gauss'])},
            'python': {'version': version, 'state': list(python_state), 'gauss': gauss}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state['torch'].cpu())
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])
    numpy_state = state['numpy']
    np.random.set_state({'bit_generator': 'MT19937',
                         'state': {'key': numpy_state['key'].numpy().astype(np.uint32), 'pos': numpy_state['pos']},
                         'has_gauss': numpy_state['has_gauss'], 'gauss': numpy_state['gauss']})
    python_state = state['python']
    random.setstate((python_state['version'], tuple(python_state['state']), python_state['gauss']))


EpochEnd = Callable[['Trainer', dict[str, float]], None]


def validate_epoch(trainer: Trainer, summary: dict[str, float]) -> None:
    """Validation metrics into the summary, every `run.val_every` epochs and after the last one (main rank)."""
    cfg = trainer.cfg
    if trainer.dist.is_main and (trainer.epoch % cfg.run.val_every == 0 or trainer.epoch == cfg.optim.epochs):
        summary.update(trainer.validate())


def record_epoch(trainer: Trainer, summary: dict[str, float]) -> None:
    """Epoch number and wall time into the summary, the summary into the history, TensorBoard + log (main rank)."""
    summary['epoch'] = trainer.epoch
    summary['wall_s'] = time.monotonic() - trainer.fit_start
    trainer.history.append(summary)
    if trainer.dist.is_main:
        trainer._log_epoch(summary)


def save_checkpoints(trainer: Trainer, summary: dict[str, float]) -> None:
    """best.pt when validation mIoU improved, then last.pt (main rank)."""
    if not trainer.dist.is_main:
        return
    if summary.get('val_miou', -math.inf) > trainer.best_miou:
        trainer.best_miou = summary['val_miou']
        trainer.save(trainer.best_path, with_optimizer=False)
    trainer.save(trainer.last_path)      # after best: a crash in between keeps the epoch re-runnable


def default_epoch_end() -> list[EpochEnd]:
    return [validate_epoch, record_epoch, save_checkpoints]



def align_dropout_heads(model: nn.Module, state: dict) -> dict:
    """`state` with the layer indices of its Sequential heads moved to `model`'s where the two differ only by
    dropout layers (no weights): e.g. weights trained with `embed_dropout: 0` (the embedding head's output conv at
    index 3) start a model with the dropout (the same conv at index 4). Anything else is left as it is, so a real
    architecture mismatch still fails in `load_state_dict`."""
    state = dict(state)
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or not any(isinstance(m, nn.Dropout) for m in module):
            continue
        wanted = [i for i, m in enumerate(module) if any(True for _ in m.parameters(recurse=False)) or
                  any(True for _ in m.buffers(recurse=False))]
        head = f'{prefix}.'
        stored = sorted({int(k[len(head):].split('.', 1)[0]) for k in state
                         if k.startswith(head) and k[len(head):].split('.', 1)[0].isdigit()})
        if stored == wanted or len(stored) != len(wanted):
            continue
        moved = {}
        for key in [k for k in state if k.startswith(head) and k[len(head):].split('.', 1)[0].isdigit()]:
            index, rest = key[len(head):].split('.', 1)
            moved[f'{head}{wanted[stored.index(int(index))]}.{rest}'] = state.pop(key)
        state.update(moved)
    return state

class Trainer:
    """Trains `MPNet(cfg.model)` on a Dataset of (points (P,9), sem (P,), ins (P,)) blocks."""

    def __init__(self, cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None = None,
                 dataset_stats: dict[str, list[float]] | None = None, epoch_end: list[EpochEnd] | None = None):
        self.cfg = cfg
        self.epoch_end: list[EpochEnd] = default_epoch_end() if epoch_end is None else list(epoch_end)
        self.dist = init_distributed(cfg.run.device)
        self.device = resolve_device(cfg.run.device if not self.dist.enabled or cfg.run.device == 'cpu'
                                     else f'cuda:{self.dist.local_rank}' if torch.cuda.is_available() else 'cpu')
        seed_everything(cfg.run.seed + self.dist.rank)
        self.out_dir = Path(cfg.run.out_dir)
        self.model = MPNet(cfg.model).to(self.device)
        self.loss = MPNetLoss(cfg.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr,
                                          weight_decay=cfg.optim.weight_decay)
        # Mixed precision: autocast in run.amp_dtype (run.amp on CUDA, run.amp_cpu on CPU). The model keeps its
        # geometry and memory normalisation in float32 itself and the losses run in float32 (docs/precision.md);
        # fp16 needs loss scaling (GradScaler), bf16 has fp32's exponent range and does not.
        self.use_amp = cfg.run.amp if self.device.type == 'cuda' else cfg.run.amp_cpu
        self.amp_dtype = torch.bfloat16 if cfg.run.amp_dtype == 'bf16' else torch.float16
        if self.use_amp and self.amp_dtype == torch.bfloat16 and self.device.type == 'cuda' \
                and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f'run.amp_dtype=bf16: {torch.cuda.get_device_name(self.device)} has no bf16 support '
                               '(Ampere or newer needed); use run.amp_dtype=fp16')
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.train_set, self.val_set = train_set, val_set
        self.dataset_stats = dict(dataset_stats or {})     # stored in every checkpoint's extra
        self.epoch = 0                # epochs finished
        self.samples_seen = 0
        self.step = 0
        self.best_miou = -1.0
        self.history: list[dict[str, float]] = []
        self.fit_start = time.monotonic()
        self.writer = None
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter  # lazy: only the main rank writes logs
            self.writer = SummaryWriter(str(self.out_dir / 'tb'))
        resumed = cfg.run.resume and self.try_resume()
        if not resumed and cfg.run.init_from:
            self.init_weights(cfg.run.init_from)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            # Memory heads unused by a given ablation row leave parameters without gradients.
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=True)

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_path(self) -> Path:
        return self.out_dir / 'last.pt'

    @property
    def best_path(self) -> Path:
        return self.out_dir / 'best.pt'

    def progress_state(self) -> dict[str, Any]:
        # block_size / stride: the runtimes read the training geometry from here (metadata_from_checkpoint).
        return {'epoch': self.epoch, 'samples_seen': self.samples_seen, 'step': self.step,
                'block_size': self.cfg.data.block_size, 'stride': self.cfg.data.stride,
                'best_miou': self.best_miou, 'history': self.history, 'train_config': self.cfg.to_dict(),
                'optimizer': self.optimizer.state_dict(), 'scaler': self.scaler.state_dict(),
                'rng': rng_state()}

    def save(self, path: Path, with_optimizer: bool = True) -> None:
        extra = self.progress_state()
        if not with_optimizer:
            extra = {k: v for k, v in extra.items() if k not in ('optimizer', 'scaler', 'rng')}
        extra.update(self.dataset_stats)
        save_checkpoint(path, self.model, self.cfg.model, extra=extra)

    def try_resume(self) -> bool:
        if not self.last_path.is_file():
            return False
        try:
            payload = read_checkpoint(self.last_path, map_location=self.device)
            self.model.load_state_dict(payload['state_dict'])
        except (CheckpointError, RuntimeError) as error:
            raise CheckpointError(f'cannot resume from {self.last_path}: {error}. Delete it or set '
                                  'run.resume=false to start afresh.') from error
        extra = payload['extra']
        self.optimizer.load_state_dict(extra['optimizer'])
        self.scaler.load_state_dict(extra['scaler'])
        if 'rng' in extra:
            set_rng_state(extra['rng'])
        else:                                           # checkpoints written before all RNG states were kept
            torch.set_rng_state(extra['torch_rng'].cpu())
        self.epoch, self.samples_seen, self.step = int(extra['epoch']), int(extra['samples_seen']), int(extra['step'])
        self.best_miou = float(extra['best_miou'])
        self.history = list(extra['history'])
        log.info('resumed from %s after epoch %d (%d samples)', self.last_path, self.epoch, self.samples_seen)
        return True

    def init_weights(self, path: str | Path) -> None:
        """Fine-tuning: the model weights of another checkpoint (same architecture, up to dropout layers in the
        heads: `align_dropout_heads`), a fresh optimiser."""
        try:
            state = read_checkpoint(path, map_location=self.device)['state_dict']
            self.model.load_state_dict(align_dropout_heads(self.model, state))
        except (CheckpointError, RuntimeError) as error:
            raise CheckpointError(f'run.init_from={str(path)!r}: cannot start from it: {error}') from error
        log.info('starting from the weights of %s', path)

    # ------------------------------------------------------------------ loop
    def _loader(self, dataset: Dataset, shuffle: bool, epoch: int) -> DataLoader:
        sampler = None
        if self.dist.enabled:
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=self.cfg.run.seed, drop_last=shuffle)
            sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.cfg.run.seed * 1000 + epoch)
        # Full batches only in training (BatchNorm), unless this process' share is smaller than one batch.
        share = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(dataset, batch_size=self.cfg.optim.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, drop_last=shuffle and share >= self.cfg.optim.batch_size,
                          num_workers=self.cfg.run.num_workers, generator=generator,
                          pin_memory=self.device.type == 'cuda', persistent_workers=False)

    def _apply_schedule(self) -> float:
        lr = learning_rate(self.cfg, self.samples_seen)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        set_bn_momentum(self.model, bn_momentum(self.cfg, self.samples_seen))
        return lr

    def train_step(self, points: torch.Tensor, sem: torch.Tensor, ins: torch.Tensor) -> dict[str, float]:
        self.ddp_model.train()
        lr = self._apply_schedule()
        points, sem, ins = (t.to(self.device, non_blocking=True) for t in (points, sem, ins))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs = self.ddp_model(points)
        # Losses in fp32 (outside autocast): the discriminative and hinge terms are sensitive to half precision.
        outputs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in outputs.items()}
        total, terms = self.loss(outputs, points, sem, ins, self.model.semantic_memory())
        values = {k: float(v) for k, v in terms.items()}          # 'total' included
        if not math.isfinite(values['total']):
            raise FloatingPointError(f'non-finite loss at step {self.step}: {values}')
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.samples_seen += points.shape[0] * self.dist.world_size
        values['lr'] = lr
        return values

    def train_epoch(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        if hasattr(self.train_set, 'set_epoch'):
            self.train_set.set_epoch(self.epoch)       # fresh point subsample per block each epoch
        loader = self._loader(self.train_set, shuffle=True, epoch=self.epoch)
        bar = tqdm(loader, desc=f'epoch {self.epoch + 1}/{self.cfg.optim.epochs}', leave=False,
                   disable=not self.dist.is_main, dynamic_ncols=True)
        for points, sem, ins in bar:
            values = self.train_step(points, sem, ins)
            count += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{values['lr']:.1e}")
            if self.writer is not None and self.step % self.cfg.run.log_every == 0:
                for k, v in values.items():
                    self.writer.add_scalar(f'train/{k}', v, self.step)
            if self.reached_max_steps:
                break
        return {k: v / max(count, 1) for k, v in sums.items()}

    @property
    def reached_max_steps(self) -> bool:
        return 0 < self.cfg.optim.max_steps <= self.step

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Block-level semantic metrics and loss on the validation set (whole-room metrics: `mpnet-eval`)."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        self.model.eval()
        evaluator = SemanticEvaluator(self.cfg.model.num_classes)
        curves = ClassInstanceCurves(self.cfg.model.class_names) if self.cfg.run.curve_blocks else None
        loss_sum, batches, blocks = 0.0, 0, 0
        limit = self.cfg.run.val_blocks or len(self.val_set)
        for points, sem, ins in self._loader(self.val_set, shuffle=False, epoch=0):
            points, sem, ins = (t.to(self.device) for t in (points, sem, ins))
            outputs = self.model(points)
            total, _ = self.loss(outputs, points, sem, ins, self.model.semantic_memory())
            loss_sum += float(total)
            batches += 1
            evaluator.add(outputs['sem_logits'].argmax(-1).flatten().cpu().numpy(), sem.flatten().cpu().numpy())
            if curves is not None and blocks < self.cfg.run.curve_blocks:
                curves.add_batch(outputs['sem_logits'], outputs['ins_embed'], sem, ins)
            blocks += points.shape[0]
            if blocks >= limit:
                break
        metrics = evaluator.compute()
        summary = {'val_loss': loss_sum / max(batches, 1), 'val_oacc': float(metrics['oAcc']),
                   'val_miou': float(metrics['mIoU'])}
        if curves is not None and curves.num_blocks:
            # Per-class instance precision / recall per epoch (paper Fig. 5), block-level.
            summary.update({f'val_{k}': v for k, v in curves.scalars().items()})
        return summary

    def fit(self) -> dict[str, float]:
        """Train until `optim.epochs` (or `optim.max_steps`); returns the last epoch's summary (as completed by
        the `epoch_end` callables)."""
        summary: dict[str, float] = {}
        self.fit_start = time.monotonic()
        epochs = range(self.epoch, self.cfg.optim.epochs)
        for _ in tqdm(epochs, desc='training', disable=not self.dist.is_main, dynamic_ncols=True):
            if self.reached_max_steps:
                break
            summary = {f'train_{k}': v for k, v in self.train_epoch().items()}
            self.epoch += 1
            for callback in self.epoch_end:
                callback(self, summary)
            if self.dist.enabled:
                dist.barrier()
        if self.dist.is_main and not self.best_path.exists() and self.last_path.exists():
            self.save(self.best_path, with_optimizer=False)   # no validation set: the last weights are the best
        if self.writer is not None:
            self.writer.flush()
        return summary

    def _log_epoch(self, summary: dict[str, float]) -> None:
        for k, v in summary.items():
            if k.startswith('val_'):
                self.writer.add_scalar(f'val/{k[4:]}', v, self.epoch)
        log.info('epoch %d: %s', self.epoch, ', '.join(f'{k}={v:.4g}' for k, v in summary.items()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()
