using System.Buffers.Text;
using System.Text;
using Microsoft.AspNetCore.WebUtilities;
using Virtd.Core.Configuration;
using Virtd.Core.Errors;

namespace Virtd.Api.Errors;

/// <summary>
/// Lists in pages: <c>?limit=</c> (at most <c>Limits:ListDefault</c>, which is also what no limit means) and an opaque
/// <c>?after=</c> cursor from the previous page, given back as <c>next</c> in the body and as <c>Link: &lt;…&gt;; rel="next"</c>.
/// A cursor names the last item of the page (a position, not an offset), so items defined or finished meanwhile
/// neither repeat nor are skipped.
/// </summary>
public static class Paging
{
    public static int Limit(int? limit, LimitsOptions limits)
    {
        if (limit is null) return limits.ListDefault;
        if (limit < 1 || limit > limits.ListDefault)
            throw VirtdException.Validation("limit", $"must be between 1 and {limits.ListDefault} (Limits:ListDefault)");
        return limit.Value;
    }

    /// <summary>An opaque cursor for the list <paramref name="kind"/> at <paramref name="position"/>.</summary>
    public static string Cursor(string kind, string position) =>
        Base64Url.EncodeToString(Encoding.UTF8.GetBytes(kind + ":" + position));

    /// <summary>The position inside a cursor this list gave; 400 for anything else.</summary>
    public static string? Position(string kind, string? after)
    {
        if (string.IsNullOrEmpty(after)) return null;
        try
        {
            if (after.Length <= 1024)
            {
                var text = Encoding.UTF8.GetString(Base64Url.DecodeFromChars(after));
                if (text.StartsWith(kind + ":", StringComparison.Ordinal)) return text[(kind.Length + 1)..];
            }
        }
        catch (FormatException) { }
        throw VirtdException.Validation("after", "is not a cursor this list gave; pass the 'next' of the previous page unchanged");
    }

    /// <summary>Sets <c>Link: &lt;same request, after=next&gt;; rel="next"</c>.</summary>
    public static void Link(HttpContext http, string next)
    {
        var query = new List<KeyValuePair<string, string?>>();
        foreach (var (key, values) in http.Request.Query)
        {
            if (string.Equals(key, "after", StringComparison.OrdinalIgnoreCase)) continue;
            foreach (var v in values) query.Add(new(key, v));
        }
        query.Add(new("after", next));
        http.Response.Headers.Link = $"<{QueryHelpers.AddQueryString(http.Request.PathBase + http.Request.Path, query)}>; rel=\"next\"";
    }
}
