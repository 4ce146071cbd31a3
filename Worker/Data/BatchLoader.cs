using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Data;

/// <summary>
/// Turns sample indices into model inputs. The dataset is held once as a uint8 tensor; a batch
/// is an index_select on it, converted to float32 and normalised with the training set's
/// mean and standard deviation, all inside libtorch.
/// </summary>
public sealed class BatchLoader : IDisposable
{
    private readonly Tensor _pixels;
    private readonly Tensor _labels;
    private readonly Device _device;
    private readonly double _pixelMean;
    private readonly double _pixelStd;

    public BatchLoader(ImageDataset dataset, Device device)
    {
        _pixels = torch.tensor(dataset.Pixels, dtype: ScalarType.Byte).reshape(dataset.Count, dataset.Channels, dataset.Height, dataset.Width);
        _labels = torch.tensor(dataset.Labels, dtype: ScalarType.Byte).to(ScalarType.Int64);
        _device = device;
        (_pixelMean, _pixelStd) = (dataset.PixelMean, dataset.PixelStd);
        Count = dataset.Count;
    }

    public int Count { get; }

    /// <summary>Inputs [n, C, H, W] float32 and labels [n] int64 on the training device.</summary>
    public (Tensor Inputs, Tensor Labels) Batch(ReadOnlySpan<int> indices)
    {
        var positions = new long[indices.Length];
        for (int i = 0; i < indices.Length; i++) positions[i] = indices[i];
        using var index = torch.tensor(positions);
        return Select(index);
    }

    /// <summary>The contiguous range [start, start + count).</summary>
    public (Tensor Inputs, Tensor Labels) Range(int start, int count)
    {
        using var index = torch.arange(start, start + count, dtype: ScalarType.Int64);
        return Select(index);
    }

    private (Tensor Inputs, Tensor Labels) Select(Tensor index)
    {
        var inputs = _pixels.index_select(0, index).to(ScalarType.Float32).div_(255.0).sub_(_pixelMean).div_(_pixelStd);
        var labels = _labels.index_select(0, index);
        return (inputs.to(_device), labels.to(_device));
    }

    public void Dispose()
    {
        _pixels.Dispose();
        _labels.Dispose();
    }
}
