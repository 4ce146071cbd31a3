using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.Worker.Models;

/// <summary>
/// Character language model: embedding (32) → one LSTM layer (128 hidden) → linear head over the
/// vocabulary. Tokens [N, T] int64 → next-token logits [N, T, V]; each window starts from a zero state.
/// </summary>
public sealed class CharLstm : nn.Module<Tensor, Tensor>
{
    private const int EmbeddingSize = 32;
    private const int HiddenSize = 128;

    private readonly Embedding embedding;
    private readonly LSTM lstm;
    private readonly Linear head;

    public CharLstm(int vocabulary) : base(nameof(CharLstm))
    {
        embedding = nn.Embedding(vocabulary, EmbeddingSize);
        lstm = nn.LSTM(EmbeddingSize, HiddenSize, batchFirst: true);
        head = nn.Linear(HiddenSize, vocabulary);
        RegisterComponents();
    }

    public override Tensor forward(Tensor tokens)
    {
        var (output, _, _) = lstm.call(embedding.call(tokens));
        return head.call(output);
    }
}
