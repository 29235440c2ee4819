"""ONNX operators TensorRT 10 can import, and a checker for an exported graph.

Source: onnx-tensorrt `docs/operators.md` (the parser's support matrix shipped with TensorRT; TensorRT 10.x
imports opsets 9..20). Written down here from that table (rows marked "Y"), so that an export that introduces an
op the TensorRT parser rejects fails a CPU-only test instead of an engine build on the robot. Restrictions that
matter for this model are checked too (TopK's K and Slice/Squeeze/Unsqueeze axes must be constants).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

TRT10_MIN_OPSET = 9
TRT10_MAX_OPSET = 20

TRT10_SUPPORTED_OPS = frozenset({
    'Abs', 'Acos', 'Acosh', 'Add', 'And', 'ArgMax', 'ArgMin', 'Asin', 'Asinh', 'Atan', 'Atanh', 'AveragePool',
    'BatchNormalization', 'Cast', 'CastLike', 'Ceil', 'Celu', 'Clip', 'Concat', 'Constant', 'ConstantOfShape',
    'Conv', 'ConvTranspose', 'Cos', 'Cosh', 'CumSum', 'DepthToSpace', 'DequantizeLinear', 'Div', 'Dropout',
    'Einsum', 'Elu', 'Equal', 'Erf', 'Exp', 'Expand', 'EyeLike', 'Flatten', 'Floor', 'Gather', 'GatherElements',
    'GatherND', 'Gelu', 'Gemm', 'GlobalAveragePool', 'GlobalLpPool', 'GlobalMaxPool', 'Greater', 'GreaterOrEqual',
    'GridSample', 'GroupNormalization', 'GRU', 'HardSigmoid', 'HardSwish', 'Identity', 'If', 'ImageScaler',
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

# Ops the TensorRT parser rejects outright (rows marked "N"), listed so a report can say "unsupported" not "unknown".
TRT10_UNSUPPORTED_OPS = frozenset({
    'Bernoulli', 'BitShift', 'BlackmanWindow', 'Compress', 'ConcatFromSequence', 'ConvInteger', 'DFT', 'Det',
    'DynamicQuantizeLinear', 'HammingWindow', 'HannWindow', 'Hardmax', 'MatMulInteger', 'MaxRoiPool', 'MaxUnpool',
    'MelWeightMatrix', 'Multinomial', 'NegativeLogLikelihoodLoss', 'Optional', 'OptionalGetElement',
    'OptionalHasElement', 'QLinearConv', 'QLinearMatMul', 'STFT', 'SequenceAt', 'SequenceConstruct',
    'SequenceEmpty', 'SequenceErase', 'SequenceInsert', 'SequenceLength', 'SequenceMap', 'SoftmaxCrossEntropyLoss',
    'SplitToSequence', 'StringNormalizer', 'TfIdfVectorizer', 'Unique',
})

# Inputs that TensorRT needs as build-time constants: op -> input positions.
_CONSTANT_INPUTS = {'TopK': (1,), 'Slice': (3,), 'Squeeze': (1,), 'Unsqueeze': (1,)}


@dataclass
class TrtCompatibilityReport:
    opset: int
    op_counts: Counter = field(default_factory=Counter)
    unsupported: list[str] = field(default_factory=list)
    non_constant_inputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (TRT10_MIN_OPSET <= self.opset <= TRT10_MAX_OPSET and not self.unsupported
                and not self.non_constant_inputs)

    def summary(self) -> str:
        lines = [f'opset {self.opset} (TensorRT 10 imports {TRT10_MIN_OPSET}..{TRT10_MAX_OPSET})',
                 'ops: ' + ', '.join(f'{op} x{count}' for op, count in sorted(self.op_counts.items()))]
        if self.unsupported:
            lines.append(f'NOT supported by TensorRT 10: {self.unsupported}')
        if self.non_constant_inputs:
            lines.append(f'inputs that must be constants: {self.non_constant_inputs}')
        return '\n'.join(lines)


def check_trt_compatibility(model) -> TrtCompatibilityReport:
    """Check an onnx.ModelProto (or a path) against the TensorRT 10 parser's operator list (incl. subgraphs)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    opset = max((entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx')), default=0)
    report = TrtCompatibilityReport(opset=opset)
    constants = {init.name for init in model.graph.initializer}
    nodes = list(model.graph.node)
    constants |= {out for node in nodes if node.op_type == 'Constant' for out in node.output}
    while nodes:
        node = nodes.pop()
        report.op_counts[node.op_type] += 1
        if node.domain not in ('', 'ai.onnx') or node.op_type not in TRT10_SUPPORTED_OPS:
            report.unsupported.append(f'{node.domain or "ai.onnx"}::{node.op_type}')
        for position in _CONSTANT_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] and node.input[position] not in constants:
                report.non_constant_inputs.append(f'{node.op_type} {node.name or "?"} input {position}')
        for attribute in node.attribute:   # Loop / If / Scan bodies
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes.extend(attribute.g.node)
    report.unsupported = sorted(set(report.unsupported))
    return report
