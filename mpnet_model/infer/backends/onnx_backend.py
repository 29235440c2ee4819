"""ONNX Runtime backend for models written by `mpnet-export` (metadata read from the file's metadata_props)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mpnet_model.infer.backends.base import (
    INPUT_POINTS,
    OUTPUT_NAMES,
    Backend,
    BackendError,
    ModelMetadata,
    fps_input_name,
    nested_sample_indices,
)
from mpnet_model.infer.precision import PrecisionError, cached_fp16


def graph_feeds(blocks: np.ndarray, metadata: ModelMetadata) -> dict[str, np.ndarray]:
    """Input dict of an exported graph: the blocks plus, when FPS is outside the graph, its nested indices."""
    feeds = {INPUT_POINTS: blocks}
    if not metadata.fps_in_graph:
        for level, index in enumerate(nested_sample_indices(blocks[..., :3], metadata.sa_npoints)):
            feeds[fps_input_name(level)] = index
    return feeds


class OnnxRuntimeBackend(Backend):
    """onnxruntime InferenceSession with full graph optimisation.

    precision='fp16' runs the fp16 conversion of the graph (`mpnet_model.infer.precision.cached_fp16`: the marked
    fp32 nodes stay float32; cached next to the model, or in the user cache folder when that is read-only).

    device='cpu': CPU execution provider only. device='cuda' (or 'cuda:N'): the CUDA EP first, CPU as fallback for
    unsupported nodes; an error when this onnxruntime build has no CUDA EP. intra_op_threads: None = all cores.
    """

    name = 'onnxruntime'
    dynamic_points_supported = True      # graphs exported with a dynamic point axis say so in their metadata

    def __init__(self, model_path: str | Path, device: str = 'cpu', precision: str = 'fp32',
                 intra_op_threads: int | None = None):
        import onnxruntime as ort

        path = Path(model_path)
        if precision not in ('fp32', 'fp16'):
            raise BackendError(f"onnxruntime backend: precision={precision!r} unsupported; use 'fp32' or 'fp16'")
        if not path.is_file():
            raise BackendError(f'{path}: ONNX model file not found')
        self.precision = precision
        self.fp32_path = path
        if precision == 'fp16':
            # The fp16 graph keeps the model's fp32 nodes (metadata fp32_nodes) in float32; converted once, cached.
            try:
                path = cached_fp16(path)
            except PrecisionError as error:
                raise BackendError(f'onnxruntime backend: {error}') from error
            except Exception as error:  # onnx / converter failures on a bad graph
                raise BackendError(f'{path}: cannot convert the ONNX model to fp16: {error}') from error
        providers = ['CPUExecutionProvider']
        if device.startswith('cuda'):
            if 'CUDAExecutionProvider' not in ort.get_available_providers():
                raise BackendError(f'onnxruntime backend: device={device!r} but this onnxruntime has no '
                                   f'CUDAExecutionProvider (available: {ort.get_available_providers()}); '
                                   'install onnxruntime-gpu or use device=cpu')
            device_id = int(device.split(':')[1]) if ':' in device else 0
            providers = [('CUDAExecutionProvider', {'device_id': device_id}), 'CPUExecutionProvider']
        elif device != 'cpu':
            raise BackendError(f"onnxruntime backend: device={device!r}: use 'cpu' or 'cuda[:N]'")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
        # Idle pool threads must not spin: the frame path's torch stages run right after each call on the same
        # cores, and spinning ORT workers slowed them ~50x on 2 cores (mean shift of a dense office scan).
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.log_severity_level = 3   # warnings about unused initialisers etc. are noise at runtime
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise BackendError(f'{path}: cannot load ONNX model (corrupt, truncated or not ONNX): {error}') from error
        self._device_fps = None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        super().__init__(ModelMetadata.from_props(props, str(path)), device, str(path))
        inputs = {item.name for item in self.session.get_inputs()}
        outputs = [item.name for item in self.session.get_outputs()]
        expected = {INPUT_POINTS}
        if not self.metadata.fps_in_graph:
            expected |= {fps_input_name(level) for level in range(len(self.metadata.sa_npoints))}
        if inputs != expected or list(outputs[:2]) != list(OUTPUT_NAMES):
            raise BackendError(f'{path}: graph inputs {sorted(inputs)} / outputs {outputs} do not match the '
                               f'metadata (expected inputs {sorted(expected)}, outputs {list(OUTPUT_NAMES)})')

    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sem_logits, embeddings = self.session.run(list(OUTPUT_NAMES), graph_feeds(blocks, self.metadata))
        return sem_logits, embeddings

    def run_tensor(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU tensors: the numpy path (zero-copy). CUDA tensors: FPS on the GPU (`NestedFps`) and ONNX Runtime
        I/O binding to the tensors' device memory, so the chunk never visits the host."""
        if blocks.device.type != 'cuda':
            return super().run_tensor(blocks)
        if self._device_fps is None:
            from mpnet_model.infer.fps import NestedFps
            self._device_fps = NestedFps(self.metadata.sa_npoints)
        points = blocks.to(torch.float32).contiguous()
        feeds = {INPUT_POINTS: points}
        if not self.metadata.fps_in_graph:
            for level, index in enumerate(self._device_fps(points[..., :3])):
                feeds[fps_input_name(level)] = index.contiguous()
        batch, num_points = points.shape[:2]
        outputs = {OUTPUT_NAMES[0]: points.new_empty(batch, num_points, self.metadata.num_classes),
                   OUTPUT_NAMES[1]: points.new_empty(batch, num_points, self.embed_dim)}
        device_id = points.device.index or 0
        binding = self.session.io_binding()
        for name, tensor in list(feeds.items()) + list(outputs.items()):
            bind = binding.bind_input if name in feeds else binding.bind_output
            bind(name, 'cuda', device_id, np.float32 if tensor.is_floating_point() else np.int64,
                 tuple(tensor.shape), tensor.data_ptr())
        torch.cuda.current_stream(points.device).synchronize()   # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return outputs[OUTPUT_NAMES[0]], outputs[OUTPUT_NAMES[1]]
