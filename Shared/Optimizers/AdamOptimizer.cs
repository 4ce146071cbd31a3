using System.Numerics.Tensors;

namespace Cluster.Shared.Optimizers;

/// <summary>
/// Adam with the exact semantics of TorchSharp's <c>torch.optim.Adam</c>: L2 weight decay added
/// to the gradient, bias-corrected moments, <c>denom = sqrt(v) / sqrt(1 - beta2^t) + eps</c>,
/// <c>p -= lr / (1 - beta1^t) * m / denom</c>. All math is SIMD over flat spans.
/// </summary>
public sealed class AdamOptimizer : IOptimizer
{
    private readonly float[] _firstMoment;
    private readonly float[] _secondMoment;
    private readonly float[] _scratch;
    private readonly double _learningRate, _beta1, _beta2, _epsilon, _weightDecay;

    public AdamOptimizer(int elementCount, double learningRate, double beta1, double beta2, double epsilon, double weightDecay)
    {
        _firstMoment = new float[elementCount];
        _secondMoment = new float[elementCount];
        _scratch = new float[elementCount];
        (_learningRate, _beta1, _beta2, _epsilon, _weightDecay) = (learningRate, beta1, beta2, epsilon, weightDecay);
    }

    public long StepCount { get; private set; }

    /// <summary>First moment (exp_avg), for checkpoints and tests.</summary>
    public ReadOnlySpan<float> FirstMoment => _firstMoment;

    /// <summary>Second moment (exp_avg_sq), for checkpoints and tests.</summary>
    public ReadOnlySpan<float> SecondMoment => _secondMoment;

    public void Step(Span<float> parameters, Span<float> gradient)
    {
        if (parameters.Length != _firstMoment.Length || gradient.Length != _firstMoment.Length)
            throw new ArgumentException($"Adam holds {_firstMoment.Length} elements; got parameters {parameters.Length}, gradient {gradient.Length}");
        StepCount++;
        double biasCorrection1 = 1 - Math.Pow(_beta1, StepCount);
        double biasCorrection2 = 1 - Math.Pow(_beta2, StepCount);

        if (_weightDecay != 0)
            TensorPrimitives.FusedMultiplyAdd(parameters, (float)_weightDecay, gradient, gradient);

        // The order of every operation follows libtorch's CPU kernels (add_ with alpha is fused,
        // addcmul_ and addcdiv_ are not), so that results agree to the last bits.
        // m = beta1 * m + (1 - beta1) * g
        TensorPrimitives.Multiply(_firstMoment, (float)_beta1, _firstMoment);
        TensorPrimitives.FusedMultiplyAdd(gradient, (float)(1 - _beta1), _firstMoment, _firstMoment);
        // v = beta2 * v + ((1 - beta2) * g) * g
        TensorPrimitives.Multiply(_secondMoment, (float)_beta2, _secondMoment);
        TensorPrimitives.Multiply(gradient, (float)(1 - _beta2), _scratch);
        TensorPrimitives.FusedMultiplyAdd(_scratch, gradient, _secondMoment, _secondMoment);
        // denom = sqrt(v) / sqrt(bc2) + eps
        Span<float> denominator = _scratch;
        TensorPrimitives.Sqrt(_secondMoment, denominator);
        TensorPrimitives.Divide(denominator, (float)Math.Sqrt(biasCorrection2), denominator);
        TensorPrimitives.Add(denominator, (float)_epsilon, denominator);
        // p = p + ((-lr / bc1) * m) / denom; the gradient buffer is free scratch by now.
        Span<float> update = gradient;
        TensorPrimitives.Multiply(_firstMoment, (float)(-_learningRate / biasCorrection1), update);
        TensorPrimitives.Divide(update, denominator, update);
        TensorPrimitives.Add(parameters, update, parameters);
    }
}
