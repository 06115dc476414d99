using Microsoft.Net.Http.Headers;
using Virtd.Core.Errors;

namespace Virtd.Api.Errors;

/// <summary>
/// JSON is UTF-8 (RFC 8259 §8.1). A JSON body that names its charset must name UTF-8, quoted or not
/// (<c>charset="utf-8"</c> is a valid parameter); it is passed on as <c>charset=utf-8</c>. Any other charset, or one
/// that is not a charset at all, gets 415 <c>unsupported-media-type</c> before anything reads the body (on the
/// operations that take one).
/// </summary>
public static class JsonCharset
{
    public static IApplicationBuilder UseJsonCharset(this IApplicationBuilder app) => app.Use((http, next) =>
    {
        var contentType = http.Request.ContentType;
        if (contentType is null || !contentType.Contains("charset", StringComparison.OrdinalIgnoreCase)) return next(http);
        // Only where a body is read: a body sent to a GET, or to no route at all, is ignored, whatever its charset.
        if (http.GetEndpoint()?.Metadata.GetMetadata<Microsoft.AspNetCore.Http.Metadata.IAcceptsMetadata>() is null) return next(http);
        if (!MediaTypeHeaderValue.TryParse(contentType, out var media) || !media.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase))
            return next(http);
        var charset = HeaderUtilities.RemoveQuotes(media.Charset).ToString();
        if (!charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase) && !charset.Equals("utf8", StringComparison.OrdinalIgnoreCase))
        {
            return ProblemResponses.WriteAsync(http, new VirtdException(ErrorCodes.UnsupportedMediaType, 415, "Unsupported media type",
                $"JSON bodies are UTF-8 (RFC 8259); charset '{Printable(charset)}' is not accepted: send application/json or application/json; charset=utf-8"));
        }
        http.Request.ContentType = "application/json; charset=utf-8";
        return next(http);
    });

    private static string Printable(string s)
    {
        var cut = s.Length > 40 ? s[..40] + "…" : s;
        return new string([.. cut.Select(c => char.IsControl(c) ? '?' : c)]);
    }
}
