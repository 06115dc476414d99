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
        o.RespectNullableAnnotations = false;
        o.AllowTrailingCommas = false;
        o.ReadCommentHandling = JsonCommentHandling.Disallow;
        o.MaxDepth = 32;
        return o;
    }

    public static readonly JsonSerializerOptions Options = Configure(new JsonSerializerOptions());

    public static readonly JsonSerializerOptions Indented = Configure(new JsonSerializerOptions { WriteIndented = true });
}
