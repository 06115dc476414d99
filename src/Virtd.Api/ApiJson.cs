using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Api.Host;
using Virtd.Api.Jobs;
using Virtd.Api.Storage;
using Virtd.Core;
using Virtd.Core.Storage;

namespace Virtd.Api;

/// <summary>
/// The API's JSON: every request body and response of <c>/api/v1</c>, described by the source generator. The HTTP
/// options (<see cref="Configure"/>) and <see cref="Options"/> put it in front of Core's context and nothing else:
/// a type missing here fails in the tests exactly as it would in the Native AOT build.
/// </summary>
public static class ApiJson
{
    /// <summary>The project's settings with the API's types first.</summary>
    public static JsonSerializerOptions Configure(JsonSerializerOptions o) => VirtdJson.Configure(o, [ApiJsonContext.Default], [VirtdJson.Enum<Hosting.DaemonState>()]);

    public static readonly JsonSerializerOptions Options = VirtdJson.Freeze(Configure(new JsonSerializerOptions()));
}

[JsonSerializable(typeof(DomainDto))]
[JsonSerializable(typeof(DomainListDto))]
[JsonSerializable(typeof(DomainStatsDto))]
[JsonSerializable(typeof(GateDto))]
[JsonSerializable(typeof(JobDto))]
[JsonSerializable(typeof(JobListDto))]
[JsonSerializable(typeof(HostDto))]
[JsonSerializable(typeof(HealthDto))]
[JsonSerializable(typeof(PoolInfo))]
[JsonSerializable(typeof(PoolListDto))]
[JsonSerializable(typeof(VolumeInfo))]
[JsonSerializable(typeof(VolumeListDto))]
[JsonSerializable(typeof(CreateVolumeRequest))]
[JsonSerializable(typeof(ResizeVolumeRequest))]
[JsonSerializable(typeof(TokenDto))]
[JsonSerializable(typeof(TokenListDto))]
[JsonSerializable(typeof(CreatedTokenDto))]
[JsonSerializable(typeof(CreateTokenRequest))]
[JsonSerializable(typeof(SessionDto))]
[JsonSerializable(typeof(SessionRequest))]
// Problem responses: ProblemDetails and the values its extensions carry.
[JsonSerializable(typeof(ProblemDetails))]
[JsonSerializable(typeof(HttpValidationProblemDetails))]
[JsonSerializable(typeof(string))]
[JsonSerializable(typeof(int))]
[JsonSerializable(typeof(IReadOnlyDictionary<string, string[]>))]
[JsonSerializable(typeof(Dictionary<string, string[]>))]
[JsonSerializable(typeof(System.IO.Stream))]
internal sealed partial class ApiJsonContext : JsonSerializerContext;
