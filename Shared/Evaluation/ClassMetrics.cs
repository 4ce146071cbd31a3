namespace Cluster.Shared.Evaluation;

/// <summary>One class's precision, recall and F1 from a confusion matrix, and its support (true samples of the class).</summary>
public sealed record ClassMetrics(int Class, double Precision, double Recall, double F1, long Support)
{
    /// <summary>Row-major <c>[trueClass * classCount + predictedClass]</c>; zero_division=0 as in <see cref="ClassificationMetrics"/>.</summary>
    public static IReadOnlyList<ClassMetrics> FromConfusion(ReadOnlySpan<long> confusion, int classCount)
    {
        if (classCount <= 0 || confusion.Length != classCount * classCount)
            throw new ArgumentException($"confusion: {confusion.Length} cells do not make a {classCount} x {classCount} matrix");
        var classes = new ClassMetrics[classCount];
        for (int c = 0; c < classCount; c++)
        {
            long truePositive = confusion[c * classCount + c], actual = 0, predicted = 0;
            for (int k = 0; k < classCount; k++)
            {
                actual += confusion[c * classCount + k];
                predicted += confusion[k * classCount + c];
            }
            double precision = predicted == 0 ? 0 : (double)truePositive / predicted;
            double recall = actual == 0 ? 0 : (double)truePositive / actual;
            double f1 = precision + recall == 0 ? 0 : 2 * precision * recall / (precision + recall);
            classes[c] = new ClassMetrics(c, precision, recall, f1, actual);
        }
        return classes;
    }
}
