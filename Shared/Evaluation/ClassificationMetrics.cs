namespace Cluster.Shared.Evaluation;

/// <summary>Accuracy and macro-averaged precision, recall and F1 from a confusion matrix.</summary>
public sealed record ClassificationMetrics(double Loss, double Accuracy, double Precision, double Recall, double F1, long SampleCount)
{
    /// <summary>
    /// <paramref name="confusion"/> is row-major <c>[trueClass * classCount + predictedClass]</c>.
    /// A class never predicted has precision 0, a class absent from the data recall 0 (scikit-learn's zero_division=0).
    /// </summary>
    public static ClassificationMetrics FromConfusion(ReadOnlySpan<long> confusion, int classCount, double lossSum)
    {
        if (classCount <= 0 || confusion.Length != classCount * classCount)
            throw new ArgumentException($"confusion: {confusion.Length} cells do not make a {classCount} x {classCount} matrix");
        long total = 0, correct = 0;
        double precisionSum = 0, recallSum = 0, f1Sum = 0;
        for (int c = 0; c < classCount; c++)
        {
            long truePositive = confusion[c * classCount + c];
            long actual = 0, predicted = 0;
            for (int k = 0; k < classCount; k++)
            {
                actual += confusion[c * classCount + k];
                predicted += confusion[k * classCount + c];
            }
            total += actual;
            correct += truePositive;
            double precision = predicted == 0 ? 0 : (double)truePositive / predicted;
            double recall = actual == 0 ? 0 : (double)truePositive / actual;
            precisionSum += precision;
            recallSum += recall;
            f1Sum += precision + recall == 0 ? 0 : 2 * precision * recall / (precision + recall);
        }
        return new ClassificationMetrics(
            Loss: total == 0 ? 0 : lossSum / total,
            Accuracy: total == 0 ? 0 : (double)correct / total,
            Precision: precisionSum / classCount,
            Recall: recallSum / classCount,
            F1: f1Sum / classCount,
            SampleCount: total);
    }
}
