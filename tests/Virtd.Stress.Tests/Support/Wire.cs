using System.Text.Json;

namespace Virtd.Stress.Tests.Support;

/// <summary>
/// What the test reads off the wire: only the fields it checks, enums kept as the strings the
/// API sends (kebab-case), unknown fields ignored. Deliberately independent of the daemon's own types.
/// </summary>
public static class Wire
{
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public static readonly HashSet<string> FinalJobStates = ["succeeded", "failed", "cancelled", "superseded"];

    /// <summary>Domain states in which a VM process exists (and so a pid is shown).</summary>
    public static readonly HashSet<string> ActiveStates = ["running", "paused", "shutting-down"];
}

public sealed record JobView(
    Guid Id,
    string Kind,
    string Domain,
    Guid DomainUuid,
    string State,
    DateTimeOffset CreatedAt,
    DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt,
    JobResultView? Result,
    JobErrorView? Error)
{
    public bool IsFinal => Wire.FinalJobStates.Contains(State);

    public override string ToString() =>
        $"{Kind} {Id} {State} created {CreatedAt:HH:mm:ss.fffffff} started {StartedAt:HH:mm:ss.fffffff} finished {FinishedAt:HH:mm:ss.fffffff}" +
        (Result is null ? "" : $" result(state={Result.State}, noop={Result.Noop}, stoppedBy={Result.StoppedBy})") +
        (Error is null ? "" : $" error({Error.Code}: {Error.Detail})");
}

public sealed record JobResultView(bool? Noop, string? StoppedBy, string? State);

public sealed record JobErrorView(string Code, int Status, string Detail);

public sealed record JobListView(int Count, List<JobView> Items);

public sealed record GateJobView(Guid Id, string Kind, string State, DateTimeOffset Since, double AgeSeconds);

public sealed record GateView(string Domain, GateJobView? Holder, List<GateJobView> Queued);

public sealed record DomainView(
    string Name,
    Guid Uuid,
    string State,
    string Reason,
    DateTimeOffset StateChangedAt,
    DateTimeOffset? StartedAt,
    int? Pid,
    GateJobView? CurrentJob)
{
    public override string ToString() => $"{Name}: {State} ({Reason}) since {StateChangedAt:HH:mm:ss.fffffff}, pid {Pid?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"}";
}

public sealed record DomainListView(int Count, List<DomainView> Items);
