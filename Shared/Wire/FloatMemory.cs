using System.Buffers;
using System.Runtime.InteropServices;

namespace Cluster.Shared.Wire;

/// <summary>Views float memory as bytes without copying, so float32 tensors go to the wire as they are.</summary>
public static class FloatMemory
{
    public static ReadOnlyMemory<byte> AsBytes(ReadOnlyMemory<float> floats)
    {
        if (!MemoryMarshal.TryGetArray(floats, out var segment))
            throw new ArgumentException("floats: expected memory over an array");
        return new ByteView(segment.Array!, segment.Offset, segment.Count).Memory;
    }

    /// <summary>A writable byte view of a whole float array.</summary>
    public static Memory<byte> AsWritableBytes(float[] floats) => new ByteView(floats, 0, floats.Length).Memory;

    /// <summary>A writable byte view of float memory over an array; false when it is not over one.</summary>
    public static bool TryAsWritableBytes(Memory<float> floats, out Memory<byte> bytes)
    {
        bytes = default;
        if (!MemoryMarshal.TryGetArray<float>(floats, out var segment)) return false;
        bytes = new ByteView(segment.Array!, segment.Offset, segment.Count).Memory;
        return true;
    }

    /// <summary>Bytes over a float array; pins may overlap (several readers of one buffer), so they are counted.</summary>
    private sealed class ByteView(float[] array, int offset, int length) : MemoryManager<byte>
    {
        private readonly Lock _gate = new();
        private GCHandle _pin;
        private int _pins;

        public override Span<byte> GetSpan() => MemoryMarshal.AsBytes(array.AsSpan(offset, length));

        public override unsafe MemoryHandle Pin(int elementIndex = 0)
        {
            lock (_gate)
                if (_pins++ == 0) _pin = GCHandle.Alloc(array, GCHandleType.Pinned);
            byte* start = (byte*)_pin.AddrOfPinnedObject() + (long)offset * sizeof(float) + elementIndex;
            return new MemoryHandle(start, default, this);
        }

        public override void Unpin()
        {
            lock (_gate)
                if (_pins > 0 && --_pins == 0) _pin.Free();
        }

        protected override void Dispose(bool disposing)
        {
            lock (_gate)
            {
                if (_pin.IsAllocated) _pin.Free();
                _pins = 0;
            }
        }
    }
}
