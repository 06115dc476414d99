using Virtd.Core.Domains;
using Virtd.Core.Jobs;

namespace Virtd.Core.Events;

/// <summary>Payload of <c>domain.*</c> events.</summary>
public sealed record DomainEventData(
    string Name,
    Guid Uuid,
    string? Event = null,
    DomainState? State = null,
    string? Reason = null);

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
