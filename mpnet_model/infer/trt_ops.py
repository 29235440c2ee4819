"""ONNX operators TensorRT 10 / 11 can import, and a checker for an exported graph.

Source: onnx-tensorrt `docs/operators.md` (the parser's support matrix shipped with each TensorRT release), read for
the 10.x releases (9.2's table already has every op listed as supported here; 10.15's imports opsets 9..24, 10.0's
9..20). Written down from that table (rows marked "Y") so that an export that introduces an op the TensorRT parser
rejects fails a CPU-only test instead of an engine build on the robot. Ops whose support arrived within 10.x (the
window functions, STFT, Attention, RMSNormalization, ...) are left out, so a graph that passes imports on every 10.x.
The table's restrictions that can bite an exported graph are checked too:
  - TopK: `K` a build-time constant below 3840, `sorted` = 1;
  - Reduce*: the `axes` input (an input from opset 18 on; ReduceSum from 13) an initializer;
  - Slice / Squeeze / Unsqueeze: `axes` constants.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

TRT10_MIN_OPSET = 9
TRT10_MAX_OPSET = 20          # the lowest maximum across 10.x (10.0); later releases import newer opsets too
TOPK_MAX_K = 3840             # "K input must be less than 3840"

TRT10_SUPPORTED_OPS = frozenset({
    'Abs', 'Acos', 'Acosh', 'Add', 'And', 'ArgMax', 'ArgMin', 'Asin', 'Asinh', 'Atan', 'Atanh', 'AveragePool',
    'BatchNormalization', 'Cast', 'CastLike', 'Ceil', 'Celu', 'Clip', 'Concat', 'Constant', 'ConstantOfShape',
    'Conv', 'ConvTranspose', 'Cos', 'Cosh', 'CumSum', 'DepthToSpace', 'DequantizeLinear', 'Div', 'Dropout',
    'Einsum', 'Elu', 'Equal', 'Erf', 'Exp', 'Expand', 'EyeLike', 'Flatten', 'Floor', 'Gather', 'GatherElements',
    'GatherND', 'Gelu', 'Gemm', 'GlobalAveragePool', 'GlobalLpPool', 'GlobalMaxPool', 'Greater', 'GreaterOrEqual',
    'GridSample', 'GroupNormalization', 'GRU', 'Hardmax', 'HardSigmoid', 'HardSwish', 'Identity', 'If', 'ImageScaler',
    'InstanceNormalization', 'IsInf', 'IsNaN', 'LayerNormalization', 'LeakyRelu', 'Less', 'LessOrEqual', 'Log',
    'LogSoftmax', 'Loop', 'LRN', 'LSTM', 'LpNormalization', 'LpPool', 'MatMul', 'Max', 'MaxPool', 'Mean',
    'MeanVarianceNormalization', 'Min', 'Mod', 'Mul', 'Neg', 'NonMaxSuppression', 'NonZero', 'Not', 'OneHot',
    'Or', 'Pad', 'ParametricSoftplus', 'Pow', 'PRelu', 'QuantizeLinear', 'RandomNormal', 'RandomNormalLike',
    'RandomUniform', 'RandomUniformLike', 'Range', 'Reciprocal', 'ReduceL1', 'ReduceL2', 'ReduceLogSum',
    'ReduceLogSumExp', 'ReduceMax', 'ReduceMean', 'ReduceMin', 'ReduceProd', 'ReduceSum', 'ReduceSumSquare',
    'Relu', 'Reshape', 'Resize', 'ReverseSequence', 'RNN', 'RoiAlign', 'Round', 'ScaledTanh', 'Scan', 'Scatter',
    'ScatterElements', 'ScatterND', 'Selu', 'Shape', 'Shrink', 'Sigmoid', 'Sign', 'Sin', 'Sinh', 'Size', 'Slice',
    'Softmax', 'Softplus', 'Softsign', 'SpaceToDepth', 'Split', 'Sqrt', 'Squeeze', 'Sub', 'Sum', 'Tan', 'Tanh',
    'ThresholdedRelu', 'Tile', 'TopK', 'Transpose', 'Trilu', 'Unsqueeze', 'Upsample', 'Where', 'Xor',
})

# Ops the TensorRT parser rejects (rows marked "N" in some 10.x table), listed so a report can say "unsupported".
TRT10_UNSUPPORTED_OPS = frozenset({
    'Bernoulli', 'BitShift', 'BlackmanWindow', 'Compress', 'ConcatFromSequence', 'ConvInteger', 'DFT', 'Det',
    'DynamicQuantizeLinear', 'HammingWindow', 'HannWindow', 'MatMulInteger', 'MaxRoiPool', 'MaxUnpool',
    'MelWeightMatrix', 'Multinomial', 'NegativeLogLikelihoodLoss', 'Optional', 'OptionalGetElement',
    'OptionalHasElement', 'QLinearConv', 'QLinearMatMul', 'STFT', 'SequenceAt', 'SequenceConstruct',
    'SequenceEmpty', 'SequenceErase', 'SequenceInsert', 'SequenceLength', 'SequenceMap', 'SoftmaxCrossEntropyLoss',
    'SplitToSequence', 'StringNormalizer', 'TfIdfVectorizer', 'Unique',
})

# Inputs that TensorRT needs as build-time constants: op -> input positions (Reduce* handled by prefix below).
_CONSTANT_INPUTS = {'TopK': (1,), 'Slice': (3,), 'Squeeze': (1,), 'Unsqueeze': (1,)}


def _constant_positions(op_type: str) -> tuple[int, ...]:
    if op_type.startswith('Reduce'):
        return (1,)           # `axes`: an input for ReduceSum since opset 13 and for every Reduce* since opset 18
    return _CONSTANT_INPUTS.get(op_type, ())


@dataclass
class TrtCompatibilityReport:
    opset: int
    op_counts: Counter = field(default_factory=Counter)
    unsupported: list[str] = field(default_factory=list)
    non_constant_inputs: list[str] = field(default_factory=list)
    restrictions: list[str] = field(default_factory=list)     # supported op, attribute / value TensorRT rejects

    @property
    def ok(self) -> bool:
        return (TRT10_MIN_OPSET <= self.opset <= TRT10_MAX_OPSET and not self.unsupported
                and not self.non_constant_inputs and not self.restrictions)

    def summary(self) -> str:
        lines = [f'opset {self.opset} (TensorRT 10 imports {TRT10_MIN_OPSET}..{TRT10_MAX_OPSET})',
                 'ops: ' + ', '.join(f'{op} x{count}' for op, count in sorted(self.op_counts.items()))]
        if self.unsupported:
            lines.append(f'NOT supported by TensorRT 10: {self.unsupported}')
        if self.non_constant_inputs:
            lines.append(f'inputs that must be constants: {self.non_constant_inputs}')
        if self.restrictions:
            lines.append(f'restrictions violated: {self.restrictions}')
        return '\n'.join(lines)


def check_trt_compatibility(model) -> TrtCompatibilityReport:
    """Check an onnx.ModelProto (or a path) against the TensorRT 10 parser's operator list (incl. subgraphs)."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    opset = max((entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx')), default=0)
    report = TrtCompatibilityReport(opset=opset)
    values = {init.name: init for init in model.graph.initializer}     # name -> TensorProto of known constants
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type == 'Constant':
            for attribute in node.attribute:
                if attribute.name == 'value':
                    values[node.output[0]] = attribute.t
    while nodes:
        node = nodes.pop()
        report.op_counts[node.op_type] += 1
        label = f'{node.op_type} {node.name or "?"}'
        if node.domain not in ('', 'ai.onnx') or node.op_type not in TRT10_SUPPORTED_OPS:
            report.unsupported.append(f'{node.domain or "ai.onnx"}::{node.op_type}')
        for position in _constant_positions(node.op_type):
            if position < len(node.input) and node.input[position] and node.input[position] not in values:
                report.non_constant_inputs.append(f'{label} input {position}')
        if node.op_type == 'TopK':
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attributes.get('sorted', 1) != 1:
                report.restrictions.append(f'{label}: sorted=0 (TensorRT needs sorted=1)')
            if len(node.input) > 1 and node.input[1] in values:
                k = int(numpy_helper.to_array(values[node.input[1]]).reshape(-1)[0])
                if k >= TOPK_MAX_K:
                    report.restrictions.append(f'{label}: K={k} (TensorRT needs K < {TOPK_MAX_K})')
        for attribute in node.attribute:   # Loop / If / Scan bodies
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes.extend(attribute.g.node)
                values.update({init.name: init for init in attribute.g.initializer})
    report.unsupported = sorted(set(report.unsupported))
    return report
