using Cluster.ParameterServer.Aggregation;
using Cluster.ParameterServer.Services;
using Cluster.Protos;
using Cluster.Shared.Wire;
using Grpc.Core;

namespace Cluster.ParameterServer.DataPort;

/// <summary>
/// One authenticated data-port connection: serves its exchanges one at a time
/// (parameter_server.proto, "The data port", step 2) through <see cref="ParameterTraffic"/>,
/// the same code the gRPC service runs. The connection has a thread of its own and its stream
/// makes blocking calls (<see cref="BlockingSocketStream"/>), so a push's frames wake that thread
/// directly, and a push is read, applied and answered on it; a pull, which waits for the update,
/// is written from the thread pool while the connection's thread waits for the next exchange. A
/// failed call is answered with an error frame carrying the gRPC status; a frame against the
/// rules ends the connection (InvalidDataException).
/// A worker on the same host may first ask for a shared region (<see cref="SharedRegion"/>),
/// made in <paramref name="regionDirectory"/> (null: none offered) and at most <paramref name="regionBytesMax"/>.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001",
    Justification = "The buffered views own nothing but their buffers: the data port disposes the stream; disposing them would flush into a broken one")]
internal sealed class DataPortConnection(Stream stream, ParameterTraffic traffic, Telemetry.TrafficObserver observer, string? regionDirectory,
    int regionBytesMax)
{
    private readonly FrameBuffers _buffers = new();
    // Separate buffered views for the two directions: a pull reads (the probe) while it writes.
    private readonly BufferedStream _reader = new(stream, ParameterDataProtocol.StreamBufferBytes);
    private readonly BufferedStream _writer = new(stream, ParameterDataProtocol.StreamBufferBytes);

    public async Task ServeAsync(CancellationToken stopping)
    {
        try
        {
            await ServeExchangesAsync(stopping);
        }
        finally
        {
            // Every exchange has ended (each is awaited in turn): nothing reads or writes the region any more.
            _buffers.Region?.Release();
        }
    }

    private async Task ServeExchangesAsync(CancellationToken stopping)
    {
        bool? nextLengths = null;
        bool first = true;
        while (true)
        {
            bool more = nextLengths ?? await DataFrames.ReadLengthsAsync(_reader, _buffers.Lengths, stopping);
            nextLengths = null;
            if (!more) return;
            var (frame, _) = await ParameterDataProtocol.ReadHeaderAsync(_reader, _buffers, stopping);
            if (frame.BodyCase == DataFrame.BodyOneofCase.RegionRequest && !first)
                throw new InvalidDataException("data port frame: RegionRequest after the first exchange; expected it first or not at all");
            first = false;
            switch (frame.BodyCase)
            {
                case DataFrame.BodyOneofCase.RegionRequest:
                    await ServeRegionRequestAsync(frame.RegionRequest, stopping);
                    break;
                case DataFrame.BodyOneofCase.PushHeader:
                    await ServePushAsync(frame.PushHeader, stopping);
                    break;
                case DataFrame.BodyOneofCase.PullRequest:
                    nextLengths = await ServePullAsync(frame.PullRequest, stopping);
                    break;
                default:
                    throw new InvalidDataException($"data port frame: {frame.BodyCase} to start an exchange; expected PushHeader, PullRequest or RegionRequest");
            }
        }
    }

    /// <summary>
    /// Creates and offers a shared region (or says why not), waits for the worker's answer, and
    /// removes the region's name whatever it was: a mapped region stays for the connection's life.
    /// </summary>
    private async Task ServeRegionRequestAsync(SharedRegionRequest request, CancellationToken stopping)
    {
        SharedRegion? region = null;
        string name = "", detail = "";
        if (regionDirectory is null) detail = "this server makes no shared regions (no /dev/shm here)";
        else if (OperatingSystem.IsWindows()) detail = "this server makes no shared regions on Windows";
        else if (request.Bytes <= 0 || request.Bytes > regionBytesMax) detail = $"region_request.bytes {request.Bytes}; expected 1 to {regionBytesMax}";
        else
        {
            try { (region, name) = SharedRegion.Create(regionDirectory, request.Bytes); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { detail = $"could not make a {request.Bytes}-byte region: {e.Message}"; }
        }
        try
        {
            await ParameterDataProtocol.WriteAsync(_writer, new DataFrame { RegionOffer = new SharedRegionOffer { Name = name, Bytes = request.Bytes, Detail = detail } }, stopping);
            await _writer.FlushAsync(stopping);
            if (region is null) return;
            var answer = await ParameterDataProtocol.ReadExpectedAsync(_reader, _buffers, "a region offer's answer", stopping, DataFrame.BodyOneofCase.RegionAnswer);
            if (answer.RegionAnswer.Mapped) (_buffers.Region, region) = (region, null);
        }
        finally
        {
            if (name.Length > 0) SharedRegion.Unlink(regionDirectory!, name);
            region?.Release();
        }
    }

    private async Task ServePushAsync(PushHeader header, CancellationToken stopping)
    {
        var chunks = new PushChunks(this);
        var push = observer.PushStarted(header);
        try
        {
            DataFrame answer;
            try
            {
                answer = new DataFrame { PushReply = await traffic.PushAsync(header, chunks, stopping, callerApplies: true) };
                push.Completed(chunks.Bytes);
            }
            catch (Exception e) when (ErrorFrame(e) is { } error)
            {
                if (e is RpcException) observer.Refused(push);
                answer = error;
            }
            // The worker writes its whole push before it reads the answer: read what the handler left.
            await chunks.SkipRestAsync(header, stopping);
            await ParameterDataProtocol.WriteAsync(_writer, answer, stopping);
            await _writer.FlushAsync(stopping);
        }
        finally
        {
            // Awake, with the step just completed and answered: wake the appliers and start applying it too.
            traffic.ApplyQueued(header.JobId);
        }
    }

    /// <summary>
    /// Serves a pull on the thread pool (it waits for the version asked for) while this thread
    /// reads the next exchange's lengths, which come only once the pull has ended, or end when a
    /// worker goes away: that cancels a pull still waiting for its version. Returns whether a next
    /// exchange came.
    /// </summary>
    private async Task<bool> ServePullAsync(PullRequest request, CancellationToken stopping)
    {
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        var pull = Task.Run(() => PullAsync(request, cancel.Token, stopping), CancellationToken.None);
        bool more;
        try
        {
            more = await DataFrames.ReadLengthsAsync(_reader, _buffers.Lengths, stopping);
        }
        catch
        {
            CancelQuietly(cancel);
            // The connection is broken: the pull's own failure is not the one that counts.
            try { await pull; }
            catch (Exception) { }
            throw;
        }
        if (!more) CancelQuietly(cancel);
        // Blocks this thread, which serves the next exchange: a worker sends it only after the pull's end.
        pull.GetAwaiter().GetResult();
        return more;
    }

    private async Task PullAsync(PullRequest request, CancellationToken cancel, CancellationToken stopping)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            var sink = new FrameSink(_writer, _buffers.Region?.StartExchange());
            await traffic.PullAsync(request, sink, cancel);
            await ParameterDataProtocol.WriteAsync(_writer, new DataFrame { End = new DataEnd() }, cancel);
            observer.Pulled(request, start, sink.FirstChunkTimestamp, sink.Bytes);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            throw new IOException("data port: the worker closed its connection during a pull");
        }
        catch (Exception e) when (ErrorFrame(e) is { } error)
        {
            await ParameterDataProtocol.WriteAsync(_writer, error, stopping);
        }
        await _writer.FlushAsync(stopping);
    }

    private static void CancelQuietly(CancellationTokenSource source)
    {
        try { source.Cancel(); }
        catch (ObjectDisposedException) { }
    }

    /// <summary>
    /// The error frame for a call that failed, as the gRPC handler's status would be; null for
    /// failures of the connection itself (broken, closed, or a frame against the rules).
    /// </summary>
    private static DataFrame? ErrorFrame(Exception e) => e switch
    {
        IOException or InvalidDataException or OperationCanceledException or ObjectDisposedException => null,
        RpcException rpc => new DataFrame { Error = new DataError { StatusCode = (int)rpc.StatusCode, Detail = rpc.Status.Detail } },
        _ => new DataFrame { Error = new DataError { StatusCode = (int)StatusCode.Unknown, Detail = e.Message } },
    };

    /// <summary>A push's chunk frames up to its end frame; float32 data is read straight into the push's buffer.</summary>
    private sealed class PushChunks(DataPortConnection connection) : IPushSource
    {
        private bool _ended;

        /// <summary>Chunk data and indices received (telemetry).</summary>
        public long Bytes { get; private set; }

        public async ValueTask<long?> ReadNextAsync(PushHeader header, Memory<float> destination, long received, CancellationToken cancellationToken)
        {
            if (_ended) return null;
            var (reader, buffers) = (connection._reader, connection._buffers);
            var (frame, dataBytes) = await ParameterDataProtocol.ReadExpectedHeaderAsync(reader, buffers, "a push", cancellationToken,
                DataFrame.BodyOneofCase.Chunk, DataFrame.BodyOneofCase.End);
            if (frame.BodyCase == DataFrame.BodyOneofCase.End)
            {
                _ended = true;
                return null;
            }
            Bytes += dataBytes + frame.Chunk.Indices.Length;
            if (!header.Sparse && await ParameterDataProtocol.ReadDenseDataAsync(reader, buffers, frame.Chunk, dataBytes, header.Dtype,
                destination, received, cancellationToken, keepEncoded: StepAggregator.StoredAs(header.Dtype, header.Sparse) != DType.Float32) is { } total)
                return total;
            if (header.Sparse) await ParameterDataProtocol.ReadDataAsync(reader, buffers, frame.Chunk, dataBytes, cancellationToken);
            return CallErrors.Decode(header, frame.Chunk, destination.Span, received);
        }

        /// <summary>Reads (and drops) what a failed push still sends: the worker reads the answer only after its end frame.</summary>
        public async Task SkipRestAsync(PushHeader header, CancellationToken cancellationToken)
        {
            while (!_ended)
            {
                var (frame, dataBytes) = await ParameterDataProtocol.ReadExpectedHeaderAsync(connection._reader, connection._buffers, "a push",
                    cancellationToken, DataFrame.BodyOneofCase.Chunk, DataFrame.BodyOneofCase.End);
                if (frame.BodyCase == DataFrame.BodyOneofCase.End) _ended = true;
                else await ParameterDataProtocol.ReadDataAsync(connection._reader, connection._buffers, frame.Chunk, dataBytes, cancellationToken);
            }
        }
    }

    /// <summary>
    /// A pull over the data port: chunks of up to one MiB written straight from the partition's
    /// memory, or copied into the connection's shared region when it has one.
    /// </summary>
    private sealed class FrameSink(Stream writer, SharedRegion.Writer? region) : IPullSink
    {
        public long FirstChunkTimestamp { get; private set; }
        public long Bytes { get; private set; }

        public ValueTask WriteHeaderAsync(PullHeader header, CancellationToken cancellationToken) =>
            ParameterDataProtocol.WriteAsync(writer, new DataFrame { PullHeader = header }, cancellationToken);

        public ValueTask WritePartitionAsync(long firstElement, ReadOnlyMemory<byte> elements, int elementBytes, CancellationToken cancellationToken)
        {
            if (FirstChunkTimestamp == 0) FirstChunkTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
            Bytes += elements.Length;
            return ParameterDataProtocol.WriteDenseAsync(writer, firstElement, elements, elementBytes, cancellationToken, region);
        }

        public async ValueTask WriteAppliedAsync(AppliedSteps applied, CancellationToken cancellationToken)
        {
            await ParameterDataProtocol.WriteAsync(writer, new DataFrame { Applied = applied }, cancellationToken);
            await writer.FlushAsync(cancellationToken);
        }
    }
}
