namespace Cluster.ParameterServer.Training;

/// <summary>
/// Sync modes SSP and ASP: each rank's push is applied on its own as soon as it is complete (no
/// barrier), so the version counts applied pushes and each rank has its own clock (the pushes of
/// it applied: the step it trains next). A pull for min_version t comes from a rank about to train
/// its step t: under ASP it streams the newest parameters at once; under SSP with staleness s it
/// first waits until the slowest rank's clock is at least t - s, so that no rank ever trains a
/// step more than s ahead of the slowest. The pipeline per partition is BSP's alone: here a push
/// is applied whole, under the lock, and a pull may see partitions of successive versions (as in
/// Hogwild), which asynchronous training tolerates by design.
/// </summary>
public sealed partial class JobParameters
{
    public const string Bsp = "bsp", Ssp = "ssp", Asp = "asp";

    private long[]? _clocks;

    /// <summary>"bsp" (default), "ssp" or "asp".</summary>
    public string SyncMode { get; init; } = Bsp;

    /// <summary>Sync "ssp": steps a rank may train ahead of the slowest rank.</summary>
    public int Staleness { get; init; }

    /// <summary>
    /// Server-side record of the bound: the most steps any rank's push was ahead of the slowest
    /// rank's clock when it began (never more than the staleness under SSP).
    /// </summary>
    public long MaxLeadSteps { get; private set; }

    private bool IsAsync => SyncMode != Bsp;

    private long[] Clocks => _clocks ??= new long[WorldSize];

    /// <summary>Under the lock: the step rank must push next (BSP: the version; SSP, ASP: the rank's clock).</summary>
    private long ExpectedStep(int rank) => IsAsync ? Clocks[rank] : Version;

    /// <summary>Under the lock: the clock of the slowest rank.</summary>
    public long SlowestClock
    {
        get
        {
            lock (_gate) return IsAsync ? Clocks.Min() : Version;
        }
    }

    /// <summary>Under the lock: a push of <paramref name="step"/> begins; records how far ahead of the slowest rank it is.</summary>
    private void RecordLead(long step)
    {
        if (IsAsync) MaxLeadSteps = Math.Max(MaxLeadSteps, step - Clocks.Min());
    }

    /// <summary>Under the lock: whether a rank about to train step <paramref name="step"/> may have the parameters now.</summary>
    private bool MayPull(long step) => SyncMode == Asp || Clocks.Min() >= step - Staleness;

    /// <summary>
    /// Under the lock: applies rank's complete push as one update of its own (its gradient is the
    /// mean over its batch), leaving out the partitions refused for NaN or Inf, and wakes the pulls.
    /// </summary>
    private void ApplyOnArrival(int rank)
    {
        long update = Version + 1;
        for (int p = 0; p < PartitionCount; p++)
        {
            if (_excluded[p][rank])
            {
                _excluded[p][rank] = false;
                continue;
            }
            int start = PartitionStart(p), length = PartitionLength(p);
            for (int offset = start; offset < start + length; offset += _block.Length)
            {
                var gradient = _block.AsSpan(0, Math.Min(_block.Length, start + length - offset));
                _aggregator.CopyGradient(rank, offset, gradient);
                _optimizer.StepRange(offset, _weights.AsSpan(offset, gradient.Length), gradient, update);
            }
        }
        Version = update;
        Array.Fill(_partitionVersions, update);
        Clocks[rank]++;
        SignalProgress();
    }
}
