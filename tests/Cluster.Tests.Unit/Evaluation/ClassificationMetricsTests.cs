using Cluster.Shared.Evaluation;

namespace Cluster.Tests.Unit.Evaluation;

/// <summary>
/// <see cref="ClassificationMetrics.FromConfusion"/>: accuracy and macro-averaged precision,
/// recall and F1 from a row-major [true * classes + predicted] confusion matrix.
/// </summary>
[Trait("Tier", "unit")]
public sealed class ClassificationMetricsTests
{
    private const double Tolerance = 1e-12;

    [Fact]
    public void Three_class_matrix_gives_the_hand_computed_metrics()
    {
        //            predicted 0  1  2   | row (actual)
        // true 0:              5  1  0   |  6
        // true 1:              2  3  1   |  6
        // true 2:              0  2  4   |  6
        // column (predicted):  7  6  5   | 18 samples, 5 + 3 + 4 = 12 correct
        long[] confusion = [5, 1, 0, 2, 3, 1, 0, 2, 4];

        var metrics = ClassificationMetrics.FromConfusion(confusion, 3, lossSum: 9.0);

        // Accuracy 12 / 18 = 2/3. Loss 9 / 18 = 0.5.
        Assert.Equal(18, metrics.SampleCount);
        Assert.Equal(2.0 / 3, metrics.Accuracy, Tolerance);
        Assert.Equal(0.5, metrics.Loss, Tolerance);
        // Precision TP / column: 5/7, 3/6, 4/5; mean = (50 + 35 + 56) / 70 / 3 = 141/210 = 47/70.
        Assert.Equal(47.0 / 70, metrics.Precision, Tolerance);
        // Recall TP / row: 5/6, 3/6, 4/6; mean = 12/18 = 2/3.
        Assert.Equal(2.0 / 3, metrics.Recall, Tolerance);
        // F1 = 2TP / (2TP + FP + FN): 10/13, 6/12, 8/11; mean = (220 + 143 + 208) / 286 / 3 = 571/858.
        Assert.Equal(571.0 / 858, metrics.F1, Tolerance);
    }

    [Fact]
    public void A_class_never_predicted_has_precision_zero_and_no_nan()
    {
        //            predicted 0  1  2   | row
        // true 0:              3  0  1   |  4
        // true 1:              2  0  2   |  4   <- class 1 is never predicted
        // true 2:              0  0  4   |  4
        // column:              5  0  7   | 12 samples, 3 + 0 + 4 = 7 correct
        long[] confusion = [3, 0, 1, 2, 0, 2, 0, 0, 4];

        var metrics = ClassificationMetrics.FromConfusion(confusion, 3, lossSum: 0);

        Assert.Equal(7.0 / 12, metrics.Accuracy, Tolerance);
        // Precision 3/5, 0 (never predicted), 4/7; mean = (21 + 0 + 20) / 35 / 3 = 41/105.
        Assert.Equal(41.0 / 105, metrics.Precision, Tolerance);
        // Recall 3/4, 0/4, 4/4; mean = 1.75 / 3 = 7/12.
        Assert.Equal(7.0 / 12, metrics.Recall, Tolerance);
        // F1 6/9 (TP 3, FP 2, FN 1), 0, 8/11 (TP 4, FP 3, FN 0); mean = (22 + 24) / 33 / 3 = 46/99.
        Assert.Equal(46.0 / 99, metrics.F1, Tolerance);
        Assert.False(double.IsNaN(metrics.Precision) || double.IsNaN(metrics.F1));
    }

    [Fact]
    public void A_class_absent_from_the_data_has_recall_zero()
    {
        // Class 1 never occurs but is predicted once: precision 0 and recall 0 for it.
        //            predicted 0  1
        // true 0:              3  1
        // true 1:              0  0
        long[] confusion = [3, 1, 0, 0];

        var metrics = ClassificationMetrics.FromConfusion(confusion, 2, lossSum: 2);

        Assert.Equal(0.75, metrics.Accuracy, Tolerance);
        Assert.Equal((1.0 + 0) / 2, metrics.Precision, Tolerance); // 3/3 and 0/1
        Assert.Equal((0.75 + 0) / 2, metrics.Recall, Tolerance);   // 3/4 and 0 (no samples)
        Assert.Equal((6.0 / 7 + 0) / 2, metrics.F1, Tolerance);     // 2*3 / (6 + 0 + 1)
        Assert.Equal(0.5, metrics.Loss, Tolerance);
    }

    [Fact]
    public void A_perfect_diagonal_scores_one_everywhere()
    {
        long[] confusion = [4, 0, 0, 0, 9, 0, 0, 0, 1];

        var metrics = ClassificationMetrics.FromConfusion(confusion, 3, lossSum: 7);

        Assert.Equal(new ClassificationMetrics(Loss: 0.5, Accuracy: 1, Precision: 1, Recall: 1, F1: 1, SampleCount: 14), metrics);
    }

    [Fact]
    public void An_empty_matrix_gives_zeros_not_nan()
    {
        var metrics = ClassificationMetrics.FromConfusion(new long[4], 2, lossSum: 0);

        Assert.Equal(new ClassificationMetrics(0, 0, 0, 0, 0, 0), metrics);
    }

    [Theory]
    [InlineData(8, 3)]
    [InlineData(10, 3)]
    [InlineData(9, 2)]
    [InlineData(0, 0)]
    [InlineData(1, -1)]
    public void A_matrix_of_the_wrong_size_throws_naming_the_cells_and_the_class_count(int cells, int classCount)
    {
        var error = Assert.Throws<ArgumentException>(() => ClassificationMetrics.FromConfusion(new long[cells], classCount, 0));

        Assert.Equal($"confusion: {cells} cells do not make a {classCount} x {classCount} matrix", error.Message);
    }
}
