using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Virtd.Core.Domains;
using Virtd.Core.Drivers;
using Virtd.Core.Events;
using Virtd.Core.Jobs;

namespace Virtd.Core;

/// <summary>
/// The one JSON shape of the project: camelCase, kebab-case enum strings, nulls omitted. Every type is described by
/// System.Text.Json's source generator (<see cref="CoreJsonContext"/>, and the API's own context in front of it):
/// nothing is serialised through reflection, so the Native AOT build behaves as the JIT build does, and a type the
/// contexts do not know fails in every build alike.
/// </summary>
public static class VirtdJson
{
    /// <summary>
    /// Applies the project's settings to <paramref name="o"/> and puts <paramref name="resolvers"/> (then Core's types) in
    /// its resolver chain; <paramref name="enums"/> adds the string converters of enums outside Core.
    /// </summary>
    public static JsonSerializerOptions Configure(JsonSerializerOptions o, IEnumerable<IJsonTypeInfoResolver>? resolvers = null,
        IEnumerable<JsonConverter>? enums = null)
    {
        o.PropertyNamingPolicy = JsonNamingPolicy.CamelCase;
        o.DictionaryKeyPolicy = JsonNamingPolicy.CamelCase;
        o.DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull;
        foreach (var converter in CoreEnums()) o.Converters.Add(converter);
        foreach (var converter in enums ?? []) o.Converters.Add(converter);
        o.TypeInfoResolverChain.Clear();
        foreach (var resolver in resolvers ?? []) o.TypeInfoResolverChain.Add(resolver);
        o.TypeInfoResolverChain.Add(CoreJsonContext.Default);
        o.UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow;
        // A number is a JSON number: ASP.NET's web defaults also read "64" as 64, which made the OpenAPI document type
        // every integer as ["integer", "string"] with a pattern, and a generated client type them as strings.
        o.NumberHandling = JsonNumberHandling.Strict;
        o.RespectNullableAnnotations = false;
        o.AllowTrailingCommas = false;
        o.ReadCommentHandling = JsonCommentHandling.Disallow;
        o.MaxDepth = 32;
        return o;
    }

    public static readonly JsonSerializerOptions Options = Freeze(Configure(new JsonSerializerOptions()));

    public static readonly JsonSerializerOptions Indented = Freeze(Configure(new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>The metadata of <typeparamref name="T"/> under <paramref name="options"/> (default <see cref="Options"/>); cached by the options.</summary>
    public static JsonTypeInfo<T> Info<T>(JsonSerializerOptions? options = null) => (JsonTypeInfo<T>)(options ?? Options).GetTypeInfo(typeof(T));

    /// <summary>A definition as stored and hashed.</summary>
    public static readonly JsonTypeInfo<DomainDefinition> Definition = Info<DomainDefinition>();

    /// <summary>An enum as its kebab-case name (<c>shut-off</c>), never a number: one converter per enum, as AOT needs.</summary>
    public static JsonConverter Enum<T>() where T : struct, System.Enum =>
        new JsonStringEnumConverter<T>(JsonNamingPolicy.KebabCaseLower, allowIntegerValues: false);

    private static JsonConverter[] CoreEnums() =>
    [
        Enum<DriverKind>(), Enum<MachineType>(), Enum<DiskFormat>(), Enum<DiskBus>(), Enum<NicMode>(), Enum<LifecycleAction>(),
        Enum<DomainState>(), Enum<StopStage>(), Enum<JobKind>(), Enum<JobState>(), Enum<JournalRecordType>(), Enum<StopIntent>(),
        Enum<VmSignal>(), Enum<VmExitKind>(),
    ];

    /// <summary>Read-only, so that its type metadata can be asked for before any (de)serialisation.</summary>
    public static JsonSerializerOptions Freeze(JsonSerializerOptions o)
    {
        o.MakeReadOnly();
        return o;
    }
}

/// <summary>Core's types on the wire and on disk: definitions, job commands, event payloads.</summary>
[JsonSerializable(typeof(DomainDefinition))]
[JsonSerializable(typeof(JobCommand))]
[JsonSerializable(typeof(StartCommand))]
[JsonSerializable(typeof(ShutdownCommand))]
[JsonSerializable(typeof(RebootCommand))]
[JsonSerializable(typeof(ResetCommand))]
[JsonSerializable(typeof(SuspendCommand))]
[JsonSerializable(typeof(ResumeCommand))]
[JsonSerializable(typeof(DestroyCommand))]
[JsonSerializable(typeof(DomainEventData))]
[JsonSerializable(typeof(JobEventData))]
[JsonSerializable(typeof(DaemonEventData))]
[JsonSerializable(typeof(ResyncEventData))]
[JsonSerializable(typeof(JsonObject))]
[JsonSerializable(typeof(JsonElement))]
public sealed partial class CoreJsonContext : JsonSerializerContext;
