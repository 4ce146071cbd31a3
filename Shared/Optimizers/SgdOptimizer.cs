using System.Runtime.Intrinsics;

namespace Cluster.Shared.Optimizers;

/// <summary>
/// SGD with optional momentum, dampening, Nesterov and L2 weight decay, with the semantics of
/// TorchSharp's <c>torch.optim.SGD</c> (the first step seeds the momentum buffer with the
/// gradient itself). One fused SIMD pass; a momentum that decays toward zero is flushed before it
/// turns subnormal (<see cref="TinyState"/>).
/// </summary>
public sealed class SgdOptimizer : FlatOptimizer
{
    private readonly float[]? _momentumBuffer;
    private readonly float _learningRate, _momentum, _dampening, _weightDecay;
    private readonly bool _nesterov;

    public SgdOptimizer(int elementCount, double learningRate, double momentum, double dampening, double weightDecay, bool nesterov)
        : base(elementCount)
    {
        (_learningRate, _momentum, _dampening, _weightDecay, _nesterov) = ((float)learningRate, (float)momentum, (float)(1 - dampening), (float)weightDecay, nesterov);
        _momentumBuffer = momentum != 0 ? new float[elementCount] : null;
    }

    public override IReadOnlyList<(string Name, float[] Values)> StateBuffers => _momentumBuffer is null ? [] : [("momentum_buffer", _momentumBuffer)];

    public override void StepRange(int offset, Span<float> parameters, Span<float> gradient, long step)
    {
        CheckRange(offset, parameters.Length, gradient.Length);
        var buffer = _momentumBuffer is null ? Span<float>.Empty : _momentumBuffer.AsSpan(offset, parameters.Length);
        bool first = step == 1;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i <= parameters.Length - Vector256<float>.Count; i += Vector256<float>.Count)
                UpdateVector(parameters[i..], gradient[i..], buffer.IsEmpty ? buffer : buffer[i..], first);
        for (; i < parameters.Length; i++)
        {
            float g = gradient[i];
            if (_weightDecay != 0) g = MathF.FusedMultiplyAdd(parameters[i], _weightDecay, g);
            if (!buffer.IsEmpty)
            {
                float b = TinyState.Flush(first ? g : MathF.FusedMultiplyAdd(g, _dampening, buffer[i] * _momentum));
                buffer[i] = b;
                g = _nesterov ? MathF.FusedMultiplyAdd(b, _momentum, g) : b;
            }
            parameters[i] = MathF.FusedMultiplyAdd(g, -_learningRate, parameters[i]);
        }
    }

    private void UpdateVector(Span<float> p, Span<float> g, Span<float> buffer, bool first)
    {
        var parameter = Vector256.Create((ReadOnlySpan<float>)p);
        var gradient = Vector256.Create((ReadOnlySpan<float>)g);
        if (_weightDecay != 0) gradient = Vector256.FusedMultiplyAdd(parameter, Vector256.Create(_weightDecay), gradient);
        if (!buffer.IsEmpty)
        {
            var momentum = TinyState.Flush(first
                ? gradient
                : Vector256.FusedMultiplyAdd(gradient, Vector256.Create(_dampening), Vector256.Create((ReadOnlySpan<float>)buffer) * _momentum));
            momentum.CopyTo(buffer);
            gradient = _nesterov ? Vector256.FusedMultiplyAdd(momentum, Vector256.Create(_momentum), gradient) : momentum;
        }
        Vector256.FusedMultiplyAdd(gradient, Vector256.Create(-_learningRate), parameter).CopyTo(p);
    }
}
