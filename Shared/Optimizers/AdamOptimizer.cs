using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Cluster.Shared.Wire;

namespace Cluster.Shared.Optimizers;

/// <summary>
/// Adam and AdamW with the semantics of TorchSharp's <c>torch.optim.Adam</c> / <c>AdamW</c>:
/// Adam adds L2 weight decay to the gradient, AdamW shrinks the weights by <c>1 - lr * wd</c>
/// first; then bias-corrected moments, <c>denom = sqrt(v) / sqrt(1 - beta2^t) + eps</c>,
/// <c>p += (-lr / (1 - beta1^t)) * m / denom</c>. One fused SIMD pass over the four arrays;
/// the order of operations (which multiply-adds are fused) follows libtorch's CPU kernels, and a
/// moment that decays toward zero is flushed before it turns subnormal (<see cref="TinyState"/>).
/// </summary>
public sealed class AdamOptimizer : FlatOptimizer
{
    private readonly float[] _firstMoment;
    private readonly float[] _secondMoment;
    private readonly double _learningRate, _beta1, _beta2, _epsilon, _weightDecay;
    private readonly bool _decoupledWeightDecay;

    public AdamOptimizer(int elementCount, double learningRate, double beta1, double beta2, double epsilon, double weightDecay, bool decoupledWeightDecay = false)
        : base(elementCount)
    {
        _firstMoment = new float[elementCount];
        _secondMoment = new float[elementCount];
        (_learningRate, _beta1, _beta2, _epsilon, _weightDecay, _decoupledWeightDecay) = (learningRate, beta1, beta2, epsilon, weightDecay, decoupledWeightDecay);
    }

    /// <summary>First moment (exp_avg), for checkpoints and tests.</summary>
    public ReadOnlySpan<float> FirstMoment => _firstMoment;

    /// <summary>Second moment (exp_avg_sq), for checkpoints and tests.</summary>
    public ReadOnlySpan<float> SecondMoment => _secondMoment;

    public override IReadOnlyList<(string Name, float[] Values)> StateBuffers => [("exp_avg", _firstMoment), ("exp_avg_sq", _secondMoment)];

    public override void StepRange(int offset, Span<float> parameters, Span<float> gradient, long step)
    {
        CheckRange(offset, parameters.Length, gradient.Length);
        var c = CoefficientsFor(step);
        var m = _firstMoment.AsSpan(offset, parameters.Length);
        var v = _secondMoment.AsSpan(offset, parameters.Length);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            i = UpdateVectors<Float32Lanes, NoCopy>(parameters, ref Unsafe.As<float, byte>(ref MemoryMarshal.GetReference(gradient)), m, v, [], c);
        for (; i < parameters.Length; i++)
            (parameters[i], m[i], v[i]) = UpdateScalar(parameters[i], gradient[i], m[i], v[i], c);
    }

    /// <summary>One pass: each gradient vector is widened from bfloat16 in registers, and the new weights narrowed into the copy there too.</summary>
    public override void StepRange(int offset, Span<float> parameters, ReadOnlySpan<ushort> gradientBFloat16, Span<ushort> weightsBFloat16, long step)
    {
        CheckRange(offset, parameters.Length, gradientBFloat16.Length);
        CheckCopy(parameters.Length, weightsBFloat16.Length);
        var c = CoefficientsFor(step);
        var m = _firstMoment.AsSpan(offset, parameters.Length);
        var v = _secondMoment.AsSpan(offset, parameters.Length);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref byte g0 = ref Unsafe.As<ushort, byte>(ref MemoryMarshal.GetReference(gradientBFloat16));
            i = weightsBFloat16.IsEmpty
                ? UpdateVectors<BFloat16Lanes, NoCopy>(parameters, ref g0, m, v, weightsBFloat16, c)
                : UpdateVectors<BFloat16Lanes, BFloat16Copy>(parameters, ref g0, m, v, weightsBFloat16, c);
        }
        for (; i < parameters.Length; i++)
        {
            (parameters[i], m[i], v[i]) = UpdateScalar(parameters[i], ElementCodec.FromBFloat16(gradientBFloat16[i]), m[i], v[i], c);
            if (!weightsBFloat16.IsEmpty) weightsBFloat16[i] = ElementCodec.ToBFloat16(parameters[i]);
        }
    }

    private Coefficients CoefficientsFor(long step) => new(
        L2: _decoupledWeightDecay ? 0f : (float)_weightDecay,
        Decay: _decoupledWeightDecay ? (float)(1 - _learningRate * _weightDecay) : 1f,
        Beta1: (float)_beta1, OneMinusBeta1: (float)(1 - _beta1),
        Beta2: (float)_beta2, OneMinusBeta2: (float)(1 - _beta2),
        BiasCorrection2Sqrt: (float)Math.Sqrt(1 - Math.Pow(_beta2, step)),
        Epsilon: (float)_epsilon,
        StepSize: (float)(-_learningRate / (1 - Math.Pow(_beta1, step))));

    private readonly record struct Coefficients(
        float L2, float Decay, float Beta1, float OneMinusBeta1, float Beta2, float OneMinusBeta2,
        float BiasCorrection2Sqrt, float Epsilon, float StepSize);

    /// <summary>How the update loop reads 8 gradient elements as float32 (the loop is compiled once per kind).</summary>
    private interface IGradientLanes
    {
        static abstract Vector256<float> Load(ref byte gradient, nuint index);
    }

    private readonly struct Float32Lanes : IGradientLanes
    {
        public static Vector256<float> Load(ref byte gradient, nuint index) => Vector256.LoadUnsafe(ref Unsafe.As<byte, float>(ref gradient), index);
    }

    private readonly struct BFloat16Lanes : IGradientLanes
    {
        public static Vector256<float> Load(ref byte gradient, nuint index) => ElementCodec.FromBFloat16(Vector128.LoadUnsafe(ref Unsafe.As<byte, ushort>(ref gradient), index));
    }

    /// <summary>What the update loop does with 8 new weights besides storing them (compiled once per kind).</summary>
    private interface IWeightsCopy
    {
        static abstract void Store(Vector256<float> weights, ref ushort copy, nuint index);
    }

    private readonly struct NoCopy : IWeightsCopy
    {
        public static void Store(Vector256<float> weights, ref ushort copy, nuint index) { }
    }

    private readonly struct BFloat16Copy : IWeightsCopy
    {
        public static void Store(Vector256<float> weights, ref ushort copy, nuint index) => ElementCodec.ToBFloat16(weights).StoreUnsafe(ref copy, index);
    }

    /// <summary>
    /// The update of every whole vector of 8 elements in one loop (the gradient, the moments and a
    /// non-empty <paramref name="copy"/> are as long as <paramref name="p"/>, which the caller
    /// checked); <typeparamref name="TCopy"/> may write the new weights into the copy. Returns how
    /// many elements it did.
    /// </summary>
    private static int UpdateVectors<TGradient, TCopy>(Span<float> p, ref byte g0, Span<float> m, Span<float> v, Span<ushort> copy, in Coefficients c)
        where TGradient : struct, IGradientLanes where TCopy : struct, IWeightsCopy
    {
        ref float p0 = ref MemoryMarshal.GetReference(p);
        ref float m0 = ref MemoryMarshal.GetReference(m);
        ref float v0 = ref MemoryMarshal.GetReference(v);
        ref ushort w0 = ref MemoryMarshal.GetReference(copy);
        var (l2, decay) = (Vector256.Create(c.L2), Vector256.Create(c.Decay));
        var (beta1, oneMinusBeta1, beta2, oneMinusBeta2) = (Vector256.Create(c.Beta1), Vector256.Create(c.OneMinusBeta1), Vector256.Create(c.Beta2), Vector256.Create(c.OneMinusBeta2));
        var (biasCorrection2Sqrt, epsilon, stepSize) = (Vector256.Create(c.BiasCorrection2Sqrt), Vector256.Create(c.Epsilon), Vector256.Create(c.StepSize));
        nuint i = 0, end = (nuint)(p.Length - p.Length % Vector256<float>.Count);
        for (; i < end; i += (nuint)Vector256<float>.Count)
        {
            var parameter = Vector256.LoadUnsafe(ref p0, i);
            var gradient = TGradient.Load(ref g0, i);
            if (c.L2 != 0) gradient = Vector256.FusedMultiplyAdd(parameter, l2, gradient);
            if (c.Decay != 1f) parameter *= decay;
            var first = TinyState.Flush(Vector256.FusedMultiplyAdd(gradient, oneMinusBeta1, Vector256.LoadUnsafe(ref m0, i) * beta1));
            var second = TinyState.Flush(Vector256.FusedMultiplyAdd(gradient * oneMinusBeta2, gradient, Vector256.LoadUnsafe(ref v0, i) * beta2));
            var denominator = Vector256.Sqrt(second) / biasCorrection2Sqrt + epsilon;
            parameter += first * stepSize / denominator;
            parameter.StoreUnsafe(ref p0, i);
            first.StoreUnsafe(ref m0, i);
            second.StoreUnsafe(ref v0, i);
            TCopy.Store(parameter, ref w0, i);
        }
        return (int)end;
    }

    private static (float P, float M, float V) UpdateScalar(float p, float g, float m, float v, in Coefficients c)
    {
        if (c.L2 != 0) g = MathF.FusedMultiplyAdd(p, c.L2, g);
        if (c.Decay != 1f) p *= c.Decay;
        m = TinyState.Flush(MathF.FusedMultiplyAdd(g, c.OneMinusBeta1, m * c.Beta1));
        v = TinyState.Flush(MathF.FusedMultiplyAdd(g * c.OneMinusBeta2, g, v * c.Beta2));
        float denominator = MathF.Sqrt(v) / c.BiasCorrection2Sqrt + c.Epsilon;
        return (p + m * c.StepSize / denominator, m, v);
    }
}
