using Virtd.Core.Configuration;
using Virtd.Core.Jobs;

namespace Virtd.Api.Hosting;

/// <summary>
/// Reads the job journal while the host is built. Building the host (configuration binding, dependency injection,
/// the endpoints) takes one CPU for about 20 ms from Main; after a busy spell the journal holds thousands of jobs whose
/// parse took as long, on the path to ready. So as soon as the configuration sources are known, the journal named by
/// them is read and parsed on another thread, changing nothing (<see cref="JobJournal.Read"/>); start-up's journal
/// stage takes that reading when it is of the same file, still as long (<see cref="JobJournal.Load"/>), and reads the
/// file itself otherwise. A singleton made by a factory, so the container disposes it: a daemon that fails before its
/// journal stage still waits for the read.
/// </summary>
public sealed class JournalPreload : IAsyncDisposable
{
    private Task<(JournalRead Read, JobRecovery Recovery)>? _reading;

    /// <summary>The early read: complete once it has ended (or when there is none).</summary>
    public Task Reading => (Task?)Volatile.Read(ref _reading) ?? Task.CompletedTask;

    /// <summary>Starts reading the journal the configuration names (none when it turns the journal off).</summary>
    public static JournalPreload Begin(IConfiguration configuration)
    {
        var preload = new JournalPreload();
        var state = configuration["StateDirectory"] ?? DefaultPaths.StateDirectory();
        var off = bool.TryParse(configuration["Jobs:Journal"], out var on) && !on;
        if (!off && Path.IsPathRooted(state))
        {
            var directory = Path.Combine(state, "jobs");
            preload._reading = Task.Run(() =>
            {
                var read = JobJournal.Read(directory);
                return (read, JobRecovery.Read(read.Contents));
            });
        }
        return preload;
    }

    /// <summary>
    /// The journal's jobs: from the reading made while the host was built when <paramref name="journal"/> still
    /// matches it, else read now. Cuts a torn tail and logs what was skipped, as <see cref="JobJournal.Load"/> does.
    /// </summary>
    public async Task<JobRecovery> RecoverAsync(JobJournal journal)
    {
        var reading = Interlocked.Exchange(ref _reading, null);
        (JournalRead Read, JobRecovery Recovery)? early = null;
        if (reading is not null)
        {
            try { early = await reading.ConfigureAwait(false); }
            catch (Exception x) when (x is IOException or UnauthorizedAccessException) { } // read again below, where it fails as it would have
        }
        var contents = journal.Load(early?.Read);
        // Load hands back the early reading's records when it used them, and a new reading's otherwise.
        return early is { } e && ReferenceEquals(contents.Records, e.Read.Records) ? e.Recovery : JobRecovery.Read(contents);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _reading, null) is { } reading)
            await reading.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default)
                .ConfigureAwait(false);
    }
}
