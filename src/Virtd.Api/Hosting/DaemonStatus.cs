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

    public void SetStopping()
    {
        if (Interlocked.Exchange(ref _state, (int)DaemonState.Stopping) != (int)DaemonState.Stopping) Changed?.Invoke(DaemonState.Stopping);
    }
}
