using System.Text.Json;
using Virtd.Core.Errors;

namespace Virtd.Api.Errors;

/// <summary>Enum values in their JSON spelling (kebab-case), for query strings.</summary>
public static class EnumText
{
    public static string Name<T>(T value) where T : struct, Enum => JsonNamingPolicy.KebabCaseLower.ConvertName(value.ToString());

    public static IEnumerable<string> Names<T>() where T : struct, Enum => Enum.GetValues<T>().Select(Name);

    /// <summary>Null when absent; <c>validation-failed</c> naming the valid values when unknown.</summary>
    public static T? ParseQuery<T>(string field, string? text) where T : struct, Enum
    {
        if (string.IsNullOrEmpty(text)) return null;
        foreach (var v in Enum.GetValues<T>())
            if (string.Equals(Name(v), text, StringComparison.Ordinal)) return v;
        throw VirtdException.Validation(field, $"unknown value '{text}'; expected one of: {string.Join(", ", Names<T>())}");
    }
}
