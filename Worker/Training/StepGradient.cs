using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;

namespace Cluster.Worker.Training;

/// <summary>
/// One step's flat float32 gradient as a push reads it: pieces of memory (the bytes of their
/// float32 elements) that, in order, make up the flat vector in named_parameters() order. Either
/// one managed buffer, or the gradient tensors' own memory (<see cref="ParameterVector.Gradients"/>),
/// so that a push copies each gradient once, straight from libtorch's memory onto the wire or into
/// a shared region. Disposing it lets go of the tensors; their memory must not be read afterwards.
/// </summary>
public sealed class StepGradient : IDisposable
{
    private readonly Memory<byte>[] _pieces;
    private readonly long[] _starts;        // flat offset of each piece
    private readonly IDisposable[] _owners;

    private StepGradient(Memory<byte>[] pieces, IDisposable[] owners)
    {
        (_pieces, _owners) = (pieces, owners);
        _starts = new long[pieces.Length];
        long start = 0;
        for (int i = 0; i < pieces.Length; i++)
        {
            _starts[i] = start;
            start += Elements(pieces[i]);
        }
        ElementCount = start;
    }

    /// <summary>A gradient held in one managed buffer.</summary>
    public static StepGradient Of(float[] values) => new([Shared.Wire.FloatMemory.AsWritableBytes(values)], []);

    /// <summary>
    /// A gradient made of <paramref name="pieces"/>, in flat order: contiguous float32 CPU tensors
    /// whose memory is read in place; this object owns them and disposes them with itself. Any
    /// other tensor is refused (ArgumentException), and the caller keeps them all.
    /// </summary>
    public static StepGradient Of(IReadOnlyList<torch.Tensor> pieces)
    {
        for (int i = 0; i < pieces.Count; i++)
        {
            var tensor = pieces[i];
            if (tensor.device_type != DeviceType.CPU || tensor.dtype != torch.ScalarType.Float32 || !tensor.is_contiguous())
                throw new ArgumentException(
                    $"pieces[{i}]: a {tensor.dtype} tensor on {tensor.device_type}{(tensor.is_contiguous() ? "" : ", not contiguous")}; expected a contiguous Float32 tensor on CPU",
                    nameof(pieces));
        }
        var memories = pieces.Select(tensor => new TensorMemory(tensor)).ToArray();
        return new StepGradient([.. memories.Select(m => m.Memory)], memories);
    }

    public long ElementCount { get; }

    /// <summary>The pieces covering elements [<paramref name="start"/>, start + <paramref name="length"/>), cut to it, in order.</summary>
    public IEnumerable<Memory<byte>> Range(long start, int length)
    {
        if (start < 0 || length < 0 || start + length > ElementCount)
            throw new ArgumentOutOfRangeException(nameof(length), $"range [{start}, {start + length}) outside the gradient's {ElementCount} elements");
        long end = start + length;
        int first = Array.BinarySearch(_starts, start);
        if (first < 0) first = ~first - 1;
        for (int i = Math.Max(first, 0); i < _pieces.Length && _starts[i] < end; i++)
        {
            long from = Math.Max(start, _starts[i]), to = Math.Min(end, _starts[i] + Elements(_pieces[i]));
            if (to > from) yield return _pieces[i].Slice((int)(from - _starts[i]) * sizeof(float), (int)(to - from) * sizeof(float));
        }
    }

    /// <summary>Copies the whole gradient into <paramref name="destination"/>.</summary>
    public void CopyTo(Span<float> destination)
    {
        var bytes = MemoryMarshal.AsBytes(destination);
        foreach (var piece in Range(0, checked((int)ElementCount)))
        {
            piece.Span.CopyTo(bytes);
            bytes = bytes[piece.Length..];
        }
    }

    /// <summary>The float32 elements of a piece of bytes.</summary>
    public static int Elements(Memory<byte> piece) => piece.Length / sizeof(float);

    public void Dispose()
    {
        foreach (var owner in _owners) owner.Dispose();
    }

    /// <summary>A CPU tensor's memory as <see cref="Memory{T}"/>; libtorch's memory does not move, so pinning is free.</summary>
    private sealed unsafe class TensorMemory : MemoryManager<byte>
    {
        private readonly torch.Tensor _tensor;
        private readonly byte* _start;
        private readonly int _length;

        public TensorMemory(torch.Tensor tensor)
        {
            var bytes = tensor.bytes;
            _tensor = tensor;
            _start = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(bytes));
            _length = bytes.Length;
        }

        public override Span<byte> GetSpan() => new(_start, _length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(_start + elementIndex, default, this);

        public override void Unpin() { }

        protected override void Dispose(bool disposing)
        {
            if (disposing) _tensor.Dispose();
        }
    }
}
