namespace Virtd.Api.Hosting;

public enum DaemonState { Starting, Ready, Stopping }

/// <summary>Where the daemon is in its life; read by /readyz, /host and the shutdown gate.</summary>
public sealed class DaemonStatus(TimeProvider time)
{
    private volatile int _state = (int)DaemonState.Starting;

    public DaemonState State => (DaemonState)_state;
    public DateTimeOffset StartedAt { get; } = time.GetUtcNow();
    public DateTimeOffset? ReadyAt { get; private set; }

    public void SetReady()
    {
        if (Interlocked.CompareExchange(ref _state, (int)DaemonState.Ready, (int)DaemonState.Starting) == (int)DaemonState.Starting)
            ReadyAt = time.GetUtcNow();
    }

    public void SetStopping() => _state = (int)DaemonState.Stopping;
}
