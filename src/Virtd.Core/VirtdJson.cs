using System.Text.Json;
using System.Text.Json.Serialization;

namespace Virtd.Core;

/// <summary>The one JSON shape of the project: camelCase, kebab-case enum strings, nulls omitted.</summary>
public static class VirtdJson
{
    public static JsonSerializerOptions Configure(JsonSerializerOptions o)
    {
        o.PropertyNamingPolicy = JsonNamingPolicy.CamelCase;
        o.DictionaryKeyPolicy = JsonNamingPolicy.CamelCase;
        o.DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull;
        o.Converters.Add(new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower, allowIntegerValues: false));
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

    public static readonly JsonSerializerOptions Options = Frozen(Configure(new JsonSerializerOptions()));

    public static readonly JsonSerializerOptions Indented = Frozen(Configure(new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>Read-only, with its resolver in place, so that its type metadata can be asked for before any (de)serialisation.</summary>
    private static JsonSerializerOptions Frozen(JsonSerializerOptions o)
    {
        o.MakeReadOnly(populateMissingResolver: true);
        return o;
    }
}
