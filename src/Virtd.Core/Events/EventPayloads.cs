using Virtd.Core.Domains;
using Virtd.Core.Jobs;

namespace Virtd.Core.Events;

/// <summary>Payload of <c>domain.*</c> events: the domain, what happened, and its state after it.</summary>
public sealed record DomainEventData(
    string Domain,
    Guid DomainUuid,
    string? Event = null,
    DomainState? State = null,
    string? Reason = null,
    Guid? JobId = null);

/// <summary>Payload of <c>job.*</c> events.</summary>
public sealed record JobEventData(
    Guid JobId,
    JobKind Kind,
    JobState State,
    string Domain,
    Guid DomainUuid,
    string? ErrorCode = null);

/// <summary>Payload of <c>daemon.state</c> events.</summary>
public sealed record DaemonEventData(string State);

/// <summary>Payload of a <c>resync</c>: why the client must re-list.</summary>
public sealed record ResyncEventData(string Reason, string Detail)
{
    /// <summary>The subscriber's queue overflowed: it read too slowly.</summary>
    public const string Overflow = "overflow";
    /// <summary>The Last-Event-ID is older than the replay buffer, or from another run of the daemon.</summary>
    public const string ReplayUnavailable = "replay-unavailable";
}
