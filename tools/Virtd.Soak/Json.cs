using System.Text.Json;
using System.Text.Json.Serialization;

namespace Virtd.Soak;

// The shapes of the API the soak sends and reads (openapi/virtd.v1.json), serialized by the source generator: no
// reflection, as everywhere in virtd. Enums are kept as the strings the API uses; a field the soak does not read is
// not declared, except in a definition, which goes back in a PUT whole (JsonExtensionData keeps the rest).

internal sealed record SimulationConfig(int BootDelayMs, int AcpiShutdownDelayMs, bool IgnoresAcpi, bool IgnoresSigterm);

internal sealed record BootConfig(string Kernel, string Initrd, string Cmdline);

internal sealed class DomainDefinition
{
    public string? Name { get; set; }
    public string? Driver { get; set; }
    public int? Vcpus { get; set; }
    public int? MemoryMiB { get; set; }
    public string? Description { get; set; }
    public BootConfig? Boot { get; set; }
    public SimulationConfig? Simulation { get; set; }

    /// <summary>Every other field of a definition read back (uuid, machine, disks, ...), sent back as it came.</summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? Rest { get; set; }
}

internal sealed record DomainDto(string Name, string Uuid, string State, DomainDefinition? Definition);

internal sealed record JobErrorDto(string? Code);

internal sealed record JobDto(string Id, string Kind, string Domain, string State, JobErrorDto? Error);

/// <summary>A page of a list (domains or jobs): only the count and the cursor are read.</summary>
internal sealed record PageDto(int Count, string? Next);

internal sealed record HypervisorInfo(string Driver, bool Available, string? Detail);

internal sealed record HostDto(List<HypervisorInfo> Hypervisors);

internal sealed record CreateTokenRequest(string Name, string Role, DateTimeOffset? ExpiresAt);

internal sealed record CreatedTokenDto(string Name, string Secret);

internal sealed record SessionRequest(string Token);

internal sealed record ShutdownCommand(int? Timeout, bool Force);

internal sealed record DestroyCommand(bool Graceful, int? Timeout);

/// <summary>The payload of a <c>job.finished</c> event.</summary>
internal sealed record JobFinishedEvent(string JobId, string State, string? ErrorCode);

/// <summary>A request body the daemon must refuse: a field the schema does not have.</summary>
internal sealed record DestroyWithSignal(string Signal);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(DomainDefinition))]
[JsonSerializable(typeof(DomainDto))]
[JsonSerializable(typeof(JobDto))]
[JsonSerializable(typeof(PageDto))]
[JsonSerializable(typeof(HostDto))]
[JsonSerializable(typeof(CreateTokenRequest))]
[JsonSerializable(typeof(CreatedTokenDto))]
[JsonSerializable(typeof(SessionRequest))]
[JsonSerializable(typeof(ShutdownCommand))]
[JsonSerializable(typeof(DestroyCommand))]
[JsonSerializable(typeof(DestroyWithSignal))]
[JsonSerializable(typeof(JobFinishedEvent))]
internal sealed partial class SoakJson : JsonSerializerContext;
