using System.Numerics.Tensors;

namespace Cluster.Shared.Optimizers;

/// <summary>
/// SGD with optional momentum, dampening, Nesterov and L2 weight decay, with the exact
/// semantics of TorchSharp's <c>torch.optim.SGD</c> (the first step seeds the momentum
/// buffer with the gradient itself).
/// </summary>
public sealed class SgdOptimizer : IOptimizer
{
    private readonly float[]? _momentumBuffer;
    private readonly double _learningRate, _momentum, _dampening, _weightDecay;
    private readonly bool _nesterov;

    public SgdOptimizer(int elementCount, double learningRate, double momentum, double dampening, double weightDecay, bool nesterov)
    {
        (_learningRate, _momentum, _dampening, _weightDecay, _nesterov) = (learningRate, momentum, dampening, weightDecay, nesterov);
        _momentumBuffer = momentum != 0 ? new float[elementCount] : null;
    }

    public long StepCount { get; private set; }

    public void Step(Span<float> parameters, Span<float> gradient)
    {
        if (parameters.Length != gradient.Length || (_momentumBuffer is not null && _momentumBuffer.Length != parameters.Length))
            throw new ArgumentException($"SGD got parameters {parameters.Length}, gradient {gradient.Length} elements of different lengths");
        StepCount++;
        if (_weightDecay != 0)
            TensorPrimitives.FusedMultiplyAdd(parameters, (float)_weightDecay, gradient, gradient);

        Span<float> direction = gradient;
        if (_momentumBuffer is not null)
        {
            if (StepCount == 1)
            {
                gradient.CopyTo(_momentumBuffer);
            }
            else
            {
                TensorPrimitives.Multiply(_momentumBuffer, (float)_momentum, _momentumBuffer);
                TensorPrimitives.FusedMultiplyAdd(gradient, (float)(1 - _dampening), _momentumBuffer, _momentumBuffer);
            }
            if (_nesterov)
                TensorPrimitives.FusedMultiplyAdd(_momentumBuffer, (float)_momentum, gradient, gradient);
            else
                direction = _momentumBuffer;
        }
        TensorPrimitives.FusedMultiplyAdd(direction, (float)-_learningRate, parameters, parameters);
    }
}
