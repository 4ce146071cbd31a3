using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Cluster.Protos;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Training;

/// <summary>
/// A model's parameters and gradients as one flat float32 byte buffer, in named_parameters()
/// order. On CPU, copies go straight between the buffer and each tensor's memory through
/// <c>Tensor.bytes</c> (no managed per-element loop); on CUDA they go through one CPU staging
/// tensor per parameter. A CPU model can also keep its parameters in the buffer itself
/// (<see cref="ShareParameters"/>), so that writing the buffer is writing the model.
/// </summary>
public sealed class ParameterVector : IDisposable
{
    private readonly (string Name, Tensor Parameter, long Offset, long Bytes)[] _entries;
    private readonly Tensor[]? _staging;

    public ParameterVector(nn.Module module)
    {
        long offset = 0;
        var entries = new List<(string, Tensor, long, long)>();
        foreach (var (name, parameter) in module.named_parameters())
        {
            long bytes = parameter.numel() * sizeof(float);
            if (parameter.dtype != ScalarType.Float32)
                throw new NotSupportedException($"parameter {name}: dtype {parameter.dtype}; only float32 parameters are supported");
            entries.Add((name, parameter, offset, bytes));
            offset += bytes;
        }
        if (offset > int.MaxValue)
            throw new NotSupportedException($"model: {offset} bytes of parameters exceed the {int.MaxValue}-byte flat buffer");
        _entries = entries.ToArray();
        ByteCount = (int)offset;
        if (_entries.Length > 0 && _entries[0].Parameter.device_type != DeviceType.CPU)
            _staging = _entries.Select(e => torch.empty(e.Parameter.shape, ScalarType.Float32)).ToArray();
    }

    public int ByteCount { get; }
    public int ElementCount => ByteCount / sizeof(float);

    /// <summary>Names and shapes, as the parameter server's Initialize expects them.</summary>
    public TensorLayout Layout()
    {
        var layout = new TensorLayout();
        foreach (var (name, parameter, _, _) in _entries)
        {
            var spec = new TensorSpec { Name = name, Dtype = DType.Float32 };
            spec.Shape.AddRange(parameter.shape);
            layout.Tensors.Add(spec);
        }
        return layout;
    }

    /// <summary>Copies the parameters into <paramref name="destination"/>.</summary>
    public void ReadParameters(Span<byte> destination) => Read(destination, gradients: false);

    /// <summary>Copies the gradients into <paramref name="destination"/>; a parameter without a gradient reads as zeros.</summary>
    public void ReadGradients(Span<byte> destination) => Read(destination, gradients: true);

    /// <summary>
    /// The gradients as the push reads them: on CPU, the gradient tensors' own memory, read in
    /// place (a parameter without a gradient gives zeros); elsewhere, copied into
    /// <paramref name="buffer"/> through the staging tensors. Dispose it before the next backward pass.
    /// </summary>
    public StepGradient Gradients(float[] buffer)
    {
        if (_staging is not null)
        {
            ReadGradients(MemoryMarshal.AsBytes(buffer.AsSpan()));
            return StepGradient.Of(buffer);
        }
        var pieces = new List<Tensor>(_entries.Length);
        try
        {
            foreach (var (_, parameter, _, _) in _entries)
            {
                var gradient = parameter.grad;
                if (gradient is null) pieces.Add(torch.zeros(parameter.numel(), ScalarType.Float32));
                else if (gradient.is_contiguous()) pieces.Add(gradient);
                else
                {
                    pieces.Add(gradient.contiguous());
                    gradient.Dispose();
                }
            }
            return StepGradient.Of(pieces);
        }
        catch
        {
            foreach (var piece in pieces) piece.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Makes <paramref name="buffer"/> the parameters' memory (CPU only): their values are copied
    /// into it, then each parameter becomes a view of its slice, so that whatever writes the
    /// buffer (a pull) writes the model, and <see cref="WriteParameters"/> from it copies nothing.
    /// Returns false, leaving the model as it was, when the parameters are on another device.
    /// </summary>
    public bool ShareParameters(float[] buffer)
    {
        CheckLength(buffer.Length * sizeof(float));
        if (_staging is not null) return false;
        ReadParameters(MemoryMarshal.AsBytes(buffer.AsSpan()));
        // frombuffer pins the array for as long as a view of it lives.
        using var flat = torch.frombuffer(buffer, ScalarType.Float32, buffer.Length, 0, requires_grad: false);
        using var noGrad = torch.no_grad();
        foreach (var (_, parameter, offset, bytes) in _entries)
        {
            using var part = flat.narrow(0, offset / sizeof(float), bytes / sizeof(float));
            using var slice = part.view(parameter.shape);
            parameter.set_(slice);
        }
        return true;
    }

    /// <summary>Overwrites the parameters with <paramref name="source"/> (a parameter that already lives there is left as it is).</summary>
    public void WriteParameters(ReadOnlySpan<byte> source)
    {
        CheckLength(source.Length);
        using var noGrad = torch.no_grad();
        for (int i = 0; i < _entries.Length; i++)
        {
            var (_, parameter, offset, bytes) = _entries[i];
            var slice = source.Slice((int)offset, (int)bytes);
            if (_staging is null)
            {
                var target = parameter.bytes;
                if (!Unsafe.AreSame(ref MemoryMarshal.GetReference(target), ref MemoryMarshal.GetReference(slice)))
                    slice.CopyTo(target);
            }
            else
            {
                slice.CopyTo(_staging[i].bytes);
                parameter.copy_(_staging[i]);
            }
        }
    }

    private void Read(Span<byte> destination, bool gradients)
    {
        CheckLength(destination.Length);
        for (int i = 0; i < _entries.Length; i++)
        {
            var (_, parameter, offset, bytes) = _entries[i];
            var slice = destination.Slice((int)offset, (int)bytes);
            // .grad hands out a new handle each time: disposed here, not left to the finalizer thread, which would
            // otherwise run beside the next step's compute.
            using var gradient = gradients ? parameter.grad : null;
            var source = gradients ? gradient : parameter;
            if (source is null)
            {
                slice.Clear();
            }
            else if (_staging is null)
            {
                source.bytes.CopyTo(slice);
            }
            else
            {
                _staging[i].copy_(source);
                _staging[i].bytes.CopyTo(slice);
            }
        }
    }

    private void CheckLength(int length)
    {
        if (length != ByteCount)
            throw new ArgumentException($"buffer: {length} bytes; the model's parameters take {ByteCount}");
    }

    public void Dispose()
    {
        if (_staging is null) return;
        foreach (var tensor in _staging) tensor.Dispose();
    }
}
