namespace Virtd.Api.Hosting;

public enum DaemonState { Starting, Ready, Stopping }

/// <summary>Where the daemon is in its life; read by /readyz, /host and the shutdown gate.</summary>
public sealed class DaemonStatus(TimeProvider time)
{
    private volatile int _state = (int)DaemonState.Starting;

    public DaemonState State => (DaemonState)_state;
    public DateTimeOffset StartedAt { get; } = time.GetUtcNow();
    public DateTimeOffset? ReadyAt { get; private set; }

    /// <summary>
    /// Raised once on becoming Ready and once on becoming Stopping, on the thread that made the change
    /// (for the service manager's notification). Handlers must be quick and must not throw.
    /// </summary>
    public event Action<DaemonState>? Changed;

    public void SetReady()
    {
        if (Interlocked.CompareExchange(ref _state, (int)DaemonState.Ready, (int)DaemonState.Starting) != (int)DaemonState.Starting) return;
        ReadyAt = time.GetUtcNow();
        Changed?.Invoke(DaemonState.Ready);
    }

    /// <summary>How long a long-lived response (an event stream) may go on once the daemon stops.</summary>
    public static readonly TimeSpan StreamGrace = TimeSpan.FromSeconds(2);

    private readonly CancellationTokenSource _requestsEnding = new();
    private readonly CancellationTokenSource _streamsEnd = new();

    /// <summary>Cancelled once shutdown has ended the jobs (or given them a second): long polls end then, with what they waited for.</summary>
    public CancellationToken RequestsEnding => _requestsEnding.Token;

    /// <summary>
    /// Cancelled <see cref="StreamGrace"/> after phase 1. Event streams end before that, when the bus closes after
    /// the last events of phase 1; this bounds a client that does not read them.
    /// </summary>
    public CancellationToken StreamsEnd => _streamsEnd.Token;

    public void SetStopping()
    {
        if (Interlocked.Exchange(ref _state, (int)DaemonState.Stopping) != (int)DaemonState.Stopping) Changed?.Invoke(DaemonState.Stopping);
    }

    /// <summary>Shutdown has ended the jobs: long-lived requests end now.</summary>
    public void SetRequestsEnding()
    {
        SetStopping();
        _requestsEnding.Cancel();
        _streamsEnd.CancelAfter(StreamGrace);
    }
}
