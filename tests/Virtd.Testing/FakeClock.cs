using Microsoft.Extensions.Time.Testing;

namespace Virtd.Testing;

/// <summary>
/// <see cref="FakeTimeProvider"/> (time moves only when told; timers fire inside <see cref="FakeTimeProvider.Advance"/>),
/// starting on 2026-01-01, that also counts its armed timers: a test can wait until the code under test has armed the
/// timer an advance is meant to fire, instead of sleeping.
/// </summary>
public sealed class FakeClock(DateTimeOffset? start = null) : FakeTimeProvider(start ?? new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero))
{
    private int _armed;

    /// <summary>Timers that will fire on some advance (armed, not yet fired if one-shot, not disposed).</summary>
    public int ArmedTimers => Volatile.Read(ref _armed);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new CountedTimer(this);
        timer.Inner = base.CreateTimer(static s =>
        {
            var (t, cb, st) = ((CountedTimer, TimerCallback, object?))s!;
            t.Fired();
            cb(st);
        }, (timer, callback, state), Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        timer.Change(dueTime, period);
        return timer;
    }

    private sealed class CountedTimer(FakeClock clock) : ITimer
    {
        private readonly Lock _lock = new();
        private bool _armed;
        private bool _periodic;
        public ITimer Inner = null!;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            lock (_lock)
            {
                Set(dueTime != Timeout.InfiniteTimeSpan);
                _periodic = period != Timeout.InfiniteTimeSpan && period != TimeSpan.Zero;
            }
            return Inner.Change(dueTime, period);
        }

        public void Fired()
        {
            lock (_lock)
                if (!_periodic) Set(false);
        }

        private void Set(bool armed)
        {
            if (armed == _armed) return;
            _armed = armed;
            Interlocked.Add(ref clock._armed, armed ? 1 : -1);
        }

        public void Dispose()
        {
            lock (_lock) Set(false);
            Inner.Dispose();
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
