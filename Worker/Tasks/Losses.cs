using Cluster.Shared.Jobs;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Tasks;

/// <summary>
/// A classifier's loss from logits [N, C] and labels [N], per sample: cross-entropy; MSE between
/// the softmax and the one-hot target; or binary cross-entropy of each logit against the
/// one-hot target. MSE and BCE are averaged over the C outputs, as torch's mean reduction does.
/// </summary>
public sealed class Losses
{
    private readonly string _kind;

    public Losses(string kind)
    {
        if (!JobSpecification.KnownLosses.Contains(kind))
            throw new ArgumentException($"loss: '{kind}' is not a known loss; expected one of {string.Join(", ", JobSpecification.KnownLosses)}");
        _kind = kind;
    }

    /// <summary>Mean over the batch (the loss to differentiate).</summary>
    public Tensor Mean(Tensor logits, Tensor labels) => Compute(logits, labels, nn.Reduction.Mean);

    /// <summary>Sum over the batch of the per-sample loss (for averaging across ranks).</summary>
    public Tensor Sum(Tensor logits, Tensor labels)
    {
        var sum = Compute(logits, labels, nn.Reduction.Sum);
        return _kind == "cross-entropy" ? sum : sum.div(logits.shape[1]);
    }

    private Tensor Compute(Tensor logits, Tensor labels, nn.Reduction reduction) => _kind switch
    {
        "mse" => nn.functional.mse_loss(nn.functional.softmax(logits, 1), OneHot(logits, labels), reduction),
        "bce" => nn.functional.binary_cross_entropy_with_logits(logits, OneHot(logits, labels), reduction: reduction),
        _ => nn.functional.cross_entropy(logits, labels, reduction: reduction),
    };

    private static Tensor OneHot(Tensor logits, Tensor labels) =>
        nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype);
}
