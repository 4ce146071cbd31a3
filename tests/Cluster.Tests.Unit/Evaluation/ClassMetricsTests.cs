using Cluster.Shared.Evaluation;

namespace Cluster.Tests.Unit.Evaluation;

[Trait("Tier", "unit")]
public sealed class ClassMetricsTests
{
    [Fact]
    public void Per_class_figures_follow_the_confusion_matrix_and_average_to_the_macro_figures()
    {
        // true 0: 3 right, 1 called 1; true 1: 2 right; true 2: 1 called 0, never predicted right.
        long[] confusion = [3, 1, 0, 0, 2, 0, 1, 0, 0];
        var classes = ClassMetrics.FromConfusion(confusion, 3);
        var macro = ClassificationMetrics.FromConfusion(confusion, 3, lossSum: 0);

        Assert.Equal(new ClassMetrics(0, 0.75, 0.75, 0.75, 4), classes[0]);
        Assert.Equal(1, classes[1].Class);
        Assert.Equal(2.0 / 3, classes[1].Precision, 12);
        Assert.Equal(1, classes[1].Recall);
        Assert.Equal(0.8, classes[1].F1, 12);
        Assert.Equal(new ClassMetrics(2, 0, 0, 0, 1), classes[2]);
        Assert.Equal(macro.Precision, classes.Average(c => c.Precision), 12);
        Assert.Equal(macro.Recall, classes.Average(c => c.Recall), 12);
        Assert.Equal(macro.F1, classes.Average(c => c.F1), 12);
    }
}
