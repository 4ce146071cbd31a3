using System.Globalization;
using Cluster.Coordinator.Jobs;
using Cluster.Protos;
using Google.Protobuf;
using Microsoft.Data.Sqlite;

namespace Cluster.Coordinator.State;

/// <summary>
/// The coordinator's state in one SQLite file (<c>cluster coordinator --state FILE</c>):
/// <list type="bullet">
/// <item><c>board_events</c>: the job board's journal (coordinator_state.proto, one row per
/// input, in order). This is the state: a restarted coordinator replays it.</item>
/// <item><c>jobs</c>: one readable row per job (state, times, spec, epoch results as JSON),
/// rewritten when the job changes. For operators and tools (<c>sqlite3 FILE 'select * from
/// jobs'</c>); never read back.</item>
/// </list>
/// Write-ahead log, synchronous=NORMAL: an input is durable when the board replies, through a
/// coordinator killed at any point (the operating system keeps the log); a power cut may lose
/// the last moments. Not thread-safe: the board calls it under its lock.
/// Every lease is an input, so an append is on each step's path: <c>seq</c> is the table's rowid
/// (rows are never deleted, so it only grows) rather than an AUTOINCREMENT column, whose counter
/// page would be a second 4 KiB page written to the log per event (18–21 → 12.5–14 µs an
/// append; files made with the counter keep it and read the same).
/// </summary>
public sealed class CoordinatorStateFile : IBoardJournal, IDisposable
{
    /// <summary>Written in the file (PRAGMA user_version); a file of a newer layout is refused.</summary>
    public const int LayoutVersion = 1;

    private readonly SqliteConnection _connection;
    private readonly SqliteCommand _append, _upsertJob;

    private CoordinatorStateFile(string path, SqliteConnection connection)
    {
        Path = path;
        _connection = connection;
        _append = Command("INSERT INTO board_events (at, kind, job_id, body) VALUES ($at, $kind, $job, $body)", "$at", "$kind", "$job", "$body");
        _upsertJob = Command(
            """
            INSERT INTO jobs (id, state, error, submitted_at, started_at, finished_at, model, dataset, scheme, epochs, workers, ranks, epochs_done, results)
            VALUES ($id, $state, $error, $submitted, $started, $finished, $model, $dataset, $scheme, $epochs, $workers, $ranks, $done, $results)
            ON CONFLICT (id) DO UPDATE SET state = $state, error = $error, started_at = $started, finished_at = $finished,
                ranks = $ranks, epochs_done = $done, results = $results
            """,
            "$id", "$state", "$error", "$submitted", "$started", "$finished", "$model", "$dataset", "$scheme", "$epochs", "$workers", "$ranks", "$done", "$results");
    }

    public string Path { get; }

    /// <summary>Opens the state file, creating it (and its folder) when missing.</summary>
    public static CoordinatorStateFile Open(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new ArgumentException($"state: '{path}' is a directory; expected a file path (it is created when missing)");
        if (System.IO.Path.GetDirectoryName(full) is { } folder) Directory.CreateDirectory(folder);
        var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = full, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = false }.ToString());
        try
        {
            connection.Open();
            int version = Convert.ToInt32(Scalar(connection, "PRAGMA user_version"), CultureInfo.InvariantCulture);
            if (version > LayoutVersion)
                throw new InvalidDataException($"state: '{path}' has layout version {version}; this coordinator reads up to {LayoutVersion} (written by a newer version?)");
            Execute(connection, "PRAGMA journal_mode = WAL");
            Execute(connection, "PRAGMA synchronous = NORMAL");
            Execute(connection,
                """
                CREATE TABLE IF NOT EXISTS board_events (
                    seq INTEGER PRIMARY KEY,
                    at TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    job_id TEXT,
                    body BLOB NOT NULL);
                CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY,
                    state TEXT NOT NULL,
                    error TEXT,
                    submitted_at TEXT NOT NULL,
                    started_at TEXT,
                    finished_at TEXT,
                    model TEXT NOT NULL,
                    dataset TEXT NOT NULL,
                    scheme TEXT NOT NULL,
                    epochs INTEGER NOT NULL,
                    workers INTEGER NOT NULL,
                    ranks TEXT NOT NULL,
                    epochs_done INTEGER NOT NULL,
                    results TEXT NOT NULL);
                """);
            Execute(connection, $"PRAGMA user_version = {LayoutVersion}");
            return new CoordinatorStateFile(path, connection);
        }
        catch (SqliteException e)
        {
            connection.Dispose();
            throw new InvalidDataException($"state: '{path}' is not a usable SQLite file: {e.Message}", e);
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>The recorded events in order, for <see cref="JobBoard.Restore"/>; a row that does not parse stops the read, naming it.</summary>
    public IEnumerable<(long Sequence, BoardEvent Event)> ReadEvents()
    {
        using var command = _connection.CreateCommand();
        command.CommandText = "SELECT seq, kind, body FROM board_events ORDER BY seq";
        using var reader = command.ExecuteReader();
        while (reader.Read())
        {
            long sequence = reader.GetInt64(0);
            BoardEvent boardEvent;
            try { boardEvent = BoardEvent.Parser.ParseFrom((byte[])reader.GetValue(2)); }
            catch (Exception e) when (e is InvalidProtocolBufferException or InvalidCastException)
            {
                throw new InvalidDataException($"state: '{Path}', event {sequence} ({reader.GetString(1)}): body does not parse: {e.Message}", e);
            }
            yield return (sequence, boardEvent);
        }
    }

    public long EventCount => (long)Scalar(_connection, "SELECT count(*) FROM board_events")!;

    public void Append(BoardEvent boardEvent)
    {
        _append.Parameters["$at"].Value = new DateTimeOffset(boardEvent.AtUtcTicks, TimeSpan.Zero).ToString("O", CultureInfo.InvariantCulture);
        _append.Parameters["$kind"].Value = boardEvent.KindCase.ToString();
        _append.Parameters["$job"].Value = (object?)JobIdOf(boardEvent) ?? DBNull.Value;
        _append.Parameters["$body"].Value = boardEvent.ToByteArray();
        _append.ExecuteNonQuery();
    }

    public void JobChanged(JobRecord job)
    {
        var p = _upsertJob.Parameters;
        p["$id"].Value = job.Id;
        p["$state"].Value = job.State.ToString().ToLowerInvariant();
        p["$error"].Value = (object?)job.Error ?? DBNull.Value;
        p["$submitted"].Value = job.SubmittedAt.ToString("O", CultureInfo.InvariantCulture);
        p["$started"].Value = (object?)job.StartedAt?.ToString("O", CultureInfo.InvariantCulture) ?? DBNull.Value;
        p["$finished"].Value = (object?)job.FinishedAt?.ToString("O", CultureInfo.InvariantCulture) ?? DBNull.Value;
        p["$model"].Value = job.Spec.Model;
        p["$dataset"].Value = job.Spec.Dataset;
        p["$scheme"].Value = job.Spec.Scheme;
        p["$epochs"].Value = job.Spec.Epochs;
        p["$workers"].Value = job.Spec.Workers;
        p["$ranks"].Value = string.Join(",", job.Ranks);
        p["$done"].Value = job.Results.Count;
        p["$results"].Value = System.Text.Json.JsonSerializer.Serialize(job.Results.Select(r => new { r.Epoch, r.TrainLoss, r.TestLoss, r.Accuracy, r.F1, r.SamplesPerSecond }));
        _upsertJob.ExecuteNonQuery();
    }

    private static string? JobIdOf(BoardEvent e) => e.KindCase switch
    {
        BoardEvent.KindOneofCase.JobStarted => e.JobStarted.JobId,
        BoardEvent.KindOneofCase.RankJoined => e.RankJoined.JobId,
        BoardEvent.KindOneofCase.ShardPlanned => e.ShardPlanned.JobId,
        BoardEvent.KindOneofCase.Leased => e.Leased.JobId,
        BoardEvent.KindOneofCase.Progress => e.Progress.JobId,
        BoardEvent.KindOneofCase.Evaluation => e.Evaluation.JobId,
        BoardEvent.KindOneofCase.Failed => e.Failed.JobId,
        BoardEvent.KindOneofCase.Cancelled => e.Cancelled,
        BoardEvent.KindOneofCase.Left => e.Left.JobId,
        _ => null,
    };

    private SqliteCommand Command(string sql, params string[] parameters)
    {
        var command = _connection.CreateCommand();
        command.CommandText = sql;
        foreach (string name in parameters) command.Parameters.Add(new SqliteParameter { ParameterName = name });
        command.Prepare();
        return command;
    }

    private static object? Scalar(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        return command.ExecuteScalar();
    }

    private static void Execute(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }

    public void Dispose()
    {
        _append.Dispose();
        _upsertJob.Dispose();
        _connection.Dispose();
    }
}
