using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.Worker.Models;

/// <summary>
/// GPT-style character language model (Radford et al. 2018, at toy size): token embedding plus a
/// fixed sinusoidal positional encoding (Vaswani et al. 2017), pre-norm decoder blocks of
/// multi-head causal self-attention and a GELU MLP, a final layer norm and a linear head.
/// Tokens [N, T] (T ≤ context) → next-token logits [N, T, V].
/// </summary>
public sealed class CharTransformer : nn.Module<Tensor, Tensor>
{
    private const int ModelSize = 64;
    private const int HeadCount = 4;
    private const int LayerCount = 2;

    private readonly Embedding embedding;
    private readonly ModuleList<DecoderBlock> blocks;
    private readonly LayerNorm norm;
    private readonly Linear head;

    public CharTransformer(int vocabulary, int context) : base(nameof(CharTransformer))
    {
        if (context <= 0) throw new ArgumentException($"context: {context}; expected a positive window length");
        embedding = nn.Embedding(vocabulary, ModelSize);
        blocks = nn.ModuleList([.. Enumerable.Range(0, LayerCount).Select(_ => new DecoderBlock(ModelSize, HeadCount))]);
        norm = nn.LayerNorm(ModelSize);
        head = nn.Linear(ModelSize, vocabulary);
        // Fixed, not learned, recomputed from the shape: a buffer (it follows .to(device)) that checkpoints leave out.
        register_buffer("positions", SinusoidalEncoding(context, ModelSize), persistent: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor tokens)
    {
        long length = tokens.shape[1];
        var x = embedding.call(tokens).add_(get_buffer("positions")!.narrow(0, 0, length));
        foreach (var block in blocks) x = block.call(x);
        return head.call(norm.call(x));
    }

    /// <summary>PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)).</summary>
    public static Tensor SinusoidalEncoding(int length, int size)
    {
        using var scope = torch.NewDisposeScope();
        var position = torch.arange(length, dtype: ScalarType.Float32).unsqueeze(1);
        var frequency = torch.exp(torch.arange(0, size, 2, dtype: ScalarType.Float32).mul(-Math.Log(10000.0) / size));
        var angles = position.mul(frequency);
        return torch.stack([angles.sin(), angles.cos()], dim: 2).reshape(length, size).MoveToOuterDisposeScope();
    }
}

/// <summary>x + attention(norm(x)), then x + mlp(norm(x)).</summary>
public sealed class DecoderBlock : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly CausalSelfAttention attention;
    private readonly LayerNorm norm2;
    private readonly Linear mlp_in;
    private readonly Linear mlp_out;

    public DecoderBlock(int modelSize, int headCount) : base(nameof(DecoderBlock))
    {
        norm1 = nn.LayerNorm(modelSize);
        attention = new CausalSelfAttention(modelSize, headCount);
        norm2 = nn.LayerNorm(modelSize);
        mlp_in = nn.Linear(modelSize, 4 * modelSize);
        mlp_out = nn.Linear(4 * modelSize, modelSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var x = input.add(attention.call(norm1.call(input)));
        return x.add(mlp_out.call(nn.functional.gelu(mlp_in.call(norm2.call(x)))));
    }
}

/// <summary>Multi-head self-attention where position t attends to positions ≤ t only.</summary>
public sealed class CausalSelfAttention : nn.Module<Tensor, Tensor>
{
    private readonly int _headCount;
    private readonly Linear qkv;
    private readonly Linear projection;

    public CausalSelfAttention(int modelSize, int headCount) : base(nameof(CausalSelfAttention))
    {
        if (modelSize % headCount != 0) throw new ArgumentException($"heads: {headCount} do not divide model size {modelSize}");
        _headCount = headCount;
        qkv = nn.Linear(modelSize, 3 * modelSize);
        projection = nn.Linear(modelSize, modelSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        long batch = input.shape[0], length = input.shape[1], size = input.shape[2];
        // [N, T, 3, heads, d] → three [N, heads, T, d]
        var parts = qkv.call(input).view(batch, length, 3, _headCount, size / _headCount).permute(2, 0, 3, 1, 4);
        var attended = nn.functional.scaled_dot_product_attention(parts[0], parts[1], parts[2], is_casual: true);
        return projection.call(attended.transpose(1, 2).reshape(batch, length, size));
    }
}
