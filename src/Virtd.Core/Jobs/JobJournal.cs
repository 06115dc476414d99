using System.Buffers;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Virtd.Core.Persistence;

namespace Virtd.Core.Jobs;

public enum JournalRecordType { Accepted, Started, Finished, Key }

/// <summary>
/// One line of the job journal. <c>accepted</c>: a job and its typed command, before the client hears 202;
/// <c>started</c> and <c>finished</c>: its progress and outcome; <c>key</c>: an Idempotency-Key and the answer it stands for.
/// </summary>
public sealed record JournalRecord
{
    public JournalRecordType T { get; init; }
    public DateTimeOffset At { get; init; }
    public Guid? Job { get; init; }
    public string? Domain { get; init; }
    public Guid? DomainUuid { get; init; }
    public JobCommand? Command { get; init; }
    public JobState? State { get; init; }
    public JobResult? Result { get; init; }
    public JobError? Error { get; init; }
    public string? Identity { get; init; }
    public string? Key { get; init; }
    public string? Fingerprint { get; init; }
    public int? Status { get; init; }
    public string? Resource { get; init; }
    /// <summary>On a finished record: when the job started (its started record may have been left out).</summary>
    public DateTimeOffset? StartedAt { get; init; }

    public static JournalRecord Accepted(Job job) => new()
    {
        T = JournalRecordType.Accepted, At = job.CreatedAt, Job = job.Id, Domain = job.Domain.Name, DomainUuid = job.Domain.Uuid, Command = job.Command,
    };

    public static JournalRecord Started(Job job) => new() { T = JournalRecordType.Started, At = job.StartedAt ?? job.CreatedAt, Job = job.Id };

    public static JournalRecord Finished(Job job)
    {
        var s = job.Status;
        return new()
        {
            T = JournalRecordType.Finished, At = s.FinishedAt ?? job.CreatedAt, Job = job.Id, State = s.State, Result = s.Result, Error = s.Error,
            StartedAt = s.StartedAt,
        };
    }
}

/// <summary>What a journal held when it was read: its records in order, and how many lines could not be used.</summary>
public sealed record JournalContents(IReadOnlyList<JournalRecord> Records, int Torn, int Unreadable);

/// <summary>
/// The journal as <see cref="JobJournal.Read"/> found it: <see cref="Length"/> bytes (-1: no file), of which the
/// first <see cref="Good"/> hold whole records; the offsets of unreadable lines skipped.
/// </summary>
public sealed record JournalRead(string Path, long Length, long Good, IReadOnlyList<JournalRecord> Records, int Torn, IReadOnlyList<long> Unreadable)
{
    public JournalContents Contents => new(Records, Torn, Unreadable.Count);
}

/// <summary>
/// <c>&lt;StateDirectory&gt;/jobs/journal</c>: an append-only file of JSON lines. One writer loop owns the file: it
/// takes every record waiting, writes them, and makes them durable with one fsync (group commit), so many jobs
/// share one. A record counts only with its newline: a torn last line (the daemon died mid-write) is cut off at
/// load, never fatal. When the file has grown well past what is still retained, the writer rewrites it from a
/// snapshot (temporary file, fsync, rename, fsync of the directory).
/// </summary>
public sealed class JobJournal(string directory, ILogger<JobJournal> log) : IAsyncDisposable
{
    public const string FileName = "journal";

    /// <summary>Records appended since the last rewrite before the file is rewritten, at least.</summary>
    public const int CompactAfter = 20_000;

    private readonly Channel<Pending> _pending = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
    // Acceptances on disk whose job the store does not show yet (the submitter has not gone on): a rewrite keeps them.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<Guid, JournalRecord[]> _unregistered = new();
    private Func<IReadOnlyList<JournalRecord>>? _snapshot;
    private FileStream? _file;
    private Thread? _writer;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    // Counts the wake-ups owed to the writer: one per append, and one when the journal closes.
    private readonly SemaphoreSlim _wake = new(0);
    private long _fsyncs;
    private long _records;
    private int _sinceCompaction;
    private int _lastSnapshot;

    public string Path { get; } = System.IO.Path.Combine(directory, FileName);

    /// <summary>fsync calls made so far (for the benchmark's figures).</summary>
    public long Fsyncs => Interlocked.Read(ref _fsyncs);

    /// <summary>Records written so far.</summary>
    public long Records => Interlocked.Read(ref _records);

    /// <summary>
    /// Reads the journal. A torn or unreadable last line is cut off the file, so the next record starts on a line of
    /// its own; an unreadable line elsewhere is skipped and logged. <paramref name="read"/> is what
    /// <see cref="Read"/> found earlier (start-up reads the file while the host is built): used when the file is still
    /// as long as it was then, else the file is read again.
    /// </summary>
    public JournalContents Load(JournalRead? read = null)
    {
        Directory.CreateDirectory(directory);
        var file = new FileInfo(Path);
        if (read is null || read.Path != Path || read.Length != (file.Exists ? file.Length : -1)) read = Read(directory);
        foreach (var offset in read.Unreadable)
            log.LogWarning("job journal {File}: an unreadable record at byte {Offset} skipped", Path, offset);
        if (read.Good < read.Length)
        {
            using var f = new FileStream(Path, FileMode.Open, FileAccess.Write);
            f.SetLength(read.Good);
            f.Flush(flushToDisk: true);
            log.LogWarning("job journal {File}: a torn last record ({Bytes} bytes) cut off", Path, read.Length - read.Good);
        }
        return read.Contents;
    }

    /// <summary>
    /// Reads and parses the journal in <paramref name="directory"/> and changes nothing (<see cref="Load"/> does what
    /// the reading calls for). Lines are parsed in parallel (a restart after a long run reads a large file), then
    /// taken in order.
    /// </summary>
    public static JournalRead Read(string directory)
    {
        var path = System.IO.Path.Combine(directory, FileName);
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException) { return new JournalRead(path, -1, -1, [], 0, []); }
        var lines = new List<(int Start, int Length)>(Math.Max(16, bytes.Length / 120));
        var start = 0;
        var torn = 0;
        while (start < bytes.Length)
        {
            var end = bytes.AsSpan(start).IndexOf((byte)'\n');
            if (end < 0)
            {
                torn = 1; // no newline: the write that made it never finished
                break;
            }
            lines.Add((start, end));
            start += end + 1;
        }
        var parsed = new JournalRecord?[lines.Count];
        Parallel.For(0, lines.Count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, () => 0, (i, _, n) =>
        {
            parsed[i] = Parse(bytes.AsSpan(lines[i].Start, lines[i].Length));
            return n;
        }, _ => { });
        var records = new List<JournalRecord>(lines.Count);
        var unreadable = new List<long>();
        var good = 0;
        for (var i = 0; i < lines.Count; i++)
        {
            var end = lines[i].Start + lines[i].Length + 1;
            if (parsed[i] is { } record)
            {
                records.Add(record);
                good = end;
            }
            else if (i == lines.Count - 1 && torn == 0)
            {
                torn = 1; // a last line that does not parse: torn as well
            }
            else
            {
                unreadable.Add(lines[i].Start);
                good = end;
            }
        }
        return new JournalRead(path, bytes.Length, good, records, torn, unreadable);
    }

    private static JournalRecord? Parse(ReadOnlySpan<byte> line)
    {
        if (line.IsEmpty) return null;
        try { return JsonSerializer.Deserialize(line, JournalJson.Default.JournalRecord); }
        catch (JsonException) { return null; }
        catch (NotSupportedException) { return null; }
    }

    /// <summary>
    /// Starts the writer, after the journal was loaded and the jobs it held are in the store. The writer first
    /// rewrites the file from <paramref name="snapshot"/>, so it starts with what is retained, and then writes what
    /// was appended meanwhile: the rewrite is off the daemon's path to ready (after a busy spell it serialises
    /// thousands of jobs). A record appended before the snapshot was taken can follow it in the file with an older
    /// state of its job; recovery keeps a job's first finished record, so a job never goes back.
    /// </summary>
    public void Start(Func<IReadOnlyList<JournalRecord>> snapshot)
    {
        _snapshot = snapshot;
        _writer = new Thread(() =>
        {
            try
            {
                Rewrite();
                WriteLoop();
            }
            catch (Exception e) { log.LogCritical(e, "job journal {File}: the writer failed; jobs are no longer journalled", Path); }
            finally
            {
                // Whatever is left can no longer be written: its waiters hear so rather than hang, and so does
                // whoever appends from now on (the channel refuses).
                _pending.Writer.TryComplete();
                while (_pending.Reader.TryRead(out var p)) p.Done?.TrySetException(new IOException("the job journal is closed"));
                _stopped.TrySetResult();
            }
        })
        { IsBackground = true, Name = "virtd job journal" };
        _writer.Start();
    }

    /// <summary>Appends records; the task completes once they are on disk (fsync), or fails with the I/O error.</summary>
    public Task AppendAsync(params JournalRecord[] records)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (_pending.Writer.TryWrite(new Pending(records, done))) _wake.Release();
        else done.TrySetException(new IOException("the job journal is closed"));
        return done.Task;
    }

    /// <summary>Appends a record that nobody waits for (a job started or finished); it is on disk with the next group.</summary>
    public void Append(JournalRecord record)
    {
        if (_pending.Writer.TryWrite(new Pending([record], null))) _wake.Release();
    }

    /// <summary>
    /// The writer: on a thread of its own, because it spends its time blocked in fsync, which would hold a pool
    /// thread (and make the pool add threads) for every group. Each round takes every record waiting; started
    /// records of jobs whose end is in the same round are left out (the finished record carries the start time).
    /// </summary>
    private void WriteLoop()
    {
        var batch = new List<Pending>();
        var buffer = new ArrayBufferWriter<byte>(64 * 1024);
        using var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { SkipValidation = true });
        var finishedInBatch = new HashSet<Guid>();
        while (true)
        {
            _wake.Wait();
            batch.Clear();
            buffer.ResetWrittenCount();
            finishedInBatch.Clear();
            while (_pending.Reader.TryRead(out var p))
            {
                batch.Add(p);
                foreach (var r in p.Records)
                    if (r is { T: JournalRecordType.Finished, Job: { } id }) finishedInBatch.Add(id);
            }
            if (batch.Count == 0)
            {
                if (_pending.Reader.Completion.IsCompleted) return;
                continue;
            }
            var count = 0;
            foreach (var p in batch)
            {
                foreach (var r in p.Records)
                {
                    if (r is { T: JournalRecordType.Started, Job: { } id } && finishedInBatch.Contains(id)) continue;
                    json.Reset();
                    JsonSerializer.Serialize(json, r, JournalJson.Default.JournalRecord);
                    json.Flush();
                    buffer.Write("\n"u8);
                    count++;
                }
            }
            try
            {
                _file!.Write(buffer.WrittenSpan);
                _file.Flush(flushToDisk: true);
                Interlocked.Increment(ref _fsyncs);
                Interlocked.Add(ref _records, count);
                foreach (var p in batch)
                {
                    if (p.Done is not null && p.Records is [{ T: JournalRecordType.Accepted, Job: { } id }, ..]) _unregistered[id] = p.Records;
                    p.Done?.TrySetResult();
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                log.LogError("job journal {File}: cannot write {Count} record(s): {Error}", Path, count, e.Message);
                foreach (var p in batch) p.Done?.TrySetException(e);
                ReopenAfterFailure();
                continue;
            }
            _sinceCompaction += count;
            if (_sinceCompaction >= Math.Max(CompactAfter, 2 * _lastSnapshot)) Rewrite();
        }
    }

    /// <summary>The job of an acceptance on disk is in the store now (or was turned away): a rewrite finds it there.</summary>
    public void Registered(Guid jobId) => _unregistered.TryRemove(jobId, out _);

    /// <summary>Replaces the file with the snapshot's records and reopens it for appending. A failure keeps the old file.</summary>
    private void Rewrite()
    {
        var records = _snapshot!().Concat(_unregistered.Values.SelectMany(r => r)).ToList();
        var bytes = new MemoryStream();
        foreach (var r in records)
        {
            JsonSerializer.Serialize(bytes, r, JournalJson.Default.JournalRecord);
            bytes.WriteByte((byte)'\n');
        }
        try
        {
            _file?.Dispose();
            _file = null;
            try { AtomicFile.Write(Path, bytes.GetBuffer().AsSpan(0, (int)bytes.Length), durable: true, AtomicFile.OwnerOnly); }
            catch (DirectorySyncException e) { log.LogError("job journal {File} rewritten, but: {Error}", Path, e.Message); }
            _lastSnapshot = records.Count;
            _sinceCompaction = 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogError("job journal {File}: cannot rewrite it ({Error}); appending to the old one", Path, e.Message);
        }
        _file = OpenForAppend();
    }

    private void ReopenAfterFailure()
    {
        try
        {
            _file?.Dispose();
            _file = OpenForAppend();
            // What a failed write left half-written must not glue itself to the next record.
            _file.WriteByte((byte)'\n');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log.LogError("job journal {File}: cannot reopen it: {Error}", Path, e.Message);
        }
    }

    private FileStream OpenForAppend()
    {
        var f = new FileStream(Path, new FileStreamOptions
        {
            Mode = FileMode.OpenOrCreate, Access = FileAccess.Write, Share = FileShare.Read, UnixCreateMode = AtomicFile.OwnerOnly, BufferSize = 0,
        });
        f.Seek(0, SeekOrigin.End);
        return f;
    }

    /// <summary>Writes what is waiting and closes the file (daemon stop).</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_pending.Writer.TryComplete()) _wake.Release();
        if (_writer is not null) await _stopped.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        _file?.Dispose();
        _file = null;
    }

    public async ValueTask DisposeAsync()
    {
        try { await StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { log.LogWarning("job journal {File}: the writer did not stop within 5 s", Path); }
    }

    private sealed record Pending(JournalRecord[] Records, TaskCompletionSource? Done);
}

/// <summary>Source-generated JSON of the journal: camelCase, enums as strings, nulls left out.</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, UseStringEnumConverter = true)]
[JsonSerializable(typeof(JournalRecord))]
internal sealed partial class JournalJson : JsonSerializerContext;
