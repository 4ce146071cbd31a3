using System.Runtime.Intrinsics;

namespace Cluster.Shared.Optimizers;

/// <summary>
/// Optimizer state that decays toward zero (Adam's moments, SGD's momentum of a weight whose
/// gradient has stopped coming: a border pixel, an unused token) passes through the subnormal
/// floats on its way there, for hundreds of steps, and on x86 every multiply that reads or makes
/// a subnormal takes a microcode assist of about a hundred cycles: an Adam pass over 1 MiB of
/// such state took 6.4 ms instead of 0.21 ms here. So state smaller than
/// <see cref="FlushBelow"/> (2^-120, 64 times the smallest normal float) is stored as zero: the
/// next step's decay of what is left, by any beta of 1/64 or more, stays normal. What is dropped is
/// far below what a float32 weight registers: a first moment or a momentum under 2^-120 moves its
/// weight by at most about lr · 2^-120 / eps a step (SGD: lr · 2^-120), and a second moment under
/// 2^-120 adds less than 2^-60 / sqrt(1 - beta2^t) to a denominator that eps (1e-8 by default)
/// keeps above.
/// </summary>
public static class TinyState
{
    /// <summary>2^-120: magnitudes below it are flushed to zero.</summary>
    public const float FlushBelow = 7.52316384526264e-37f;

    /// <summary>Each lane of <paramref name="state"/> whose magnitude is below <see cref="FlushBelow"/> becomes zero.</summary>
    public static Vector256<float> Flush(Vector256<float> state) =>
        Vector256.AndNot(state, Vector256.LessThan(Vector256.Abs(state), Vector256.Create(FlushBelow)));

    /// <summary><paramref name="state"/>, or zero when its magnitude is below <see cref="FlushBelow"/>.</summary>
    public static float Flush(float state) => MathF.Abs(state) < FlushBelow ? 0f : state;
}
