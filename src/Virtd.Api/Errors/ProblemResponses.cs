using System.Diagnostics;
using System.Text.Json;
using Microsoft.AspNetCore.Mvc;
using Virtd.Core;
using Virtd.Core.Errors;

namespace Virtd.Api.Errors;

/// <summary>
/// Every error leaves as <c>application/problem+json</c> (RFC 9457) with a stable <c>code</c> and the
/// trace id. Expected conditions are <see cref="VirtdException"/>s; request-shape failures come from
/// ASP.NET as <see cref="BadHttpRequestException"/>; anything else is a bug: 500 <c>internal</c>, logged.
/// </summary>
public static partial class ProblemResponses
{
    public const string ContentType = "application/problem+json";

    private static readonly System.Text.Json.Serialization.Metadata.JsonTypeInfo<ProblemDetails> ProblemInfo = VirtdJson.Info<ProblemDetails>(ApiJson.Options);

    public static ProblemDetails Create(HttpContext http, VirtdException e)
    {
        var p = new ProblemDetails
        {
            Type = $"https://virtd.dev/problems/{e.Code}",
            Title = e.Title,
            Status = e.Status,
            Detail = e.Detail,
            Instance = http.Request.Path + http.Request.QueryString,
        };
        p.Extensions["code"] = e.Code;
        p.Extensions["traceId"] = Activity.Current?.Id ?? http.TraceIdentifier;
        if (e.Errors is not null) p.Extensions["errors"] = e.Errors;
        return p;
    }

    public static async Task WriteAsync(HttpContext http, VirtdException e)
    {
        if (http.Response.HasStarted) return;
        http.Response.Clear();
        http.Response.StatusCode = e.Status;
        if (e.RetryAfterSeconds is { } s) http.Response.Headers.RetryAfter = s.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (e.Challenge is { } challenge) http.Response.Headers.WWWAuthenticate = challenge;
        http.Response.ContentType = ContentType;
        await JsonSerializer.SerializeAsync(http.Response.Body, Create(http, e), ProblemInfo, http.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>
    /// Outermost middleware: maps what was thrown to a problem response (only bugs are logged as errors),
    /// answers oversized bodies early, and gives routing's bodiless 404/405/415 a problem body too.
    /// </summary>
    public static IApplicationBuilder UseVirtdProblems(this IApplicationBuilder app) => app.Use(async (http, next) =>
    {
        try
        {
            // Kestrel enforces the body limit while reading; this answers early when Content-Length says so
            // (and under the test server, which has no limit of its own).
            if (http.Request.ContentLength > Hosting.VirtdHostingExtensions.MaxRequestBodyBytes && !Storage.PoolsApi.IsUpload(http.Request))
            {
                await WriteAsync(http, TooLarge()).ConfigureAwait(false);
                return;
            }
            await next(http).ConfigureAwait(false);
            if (http.Response is { HasStarted: false, StatusCode: >= 400, ContentLength: null or 0 } && http.Response.ContentType is null)
                await WriteAsync(http, FromStatus(http)).ConfigureAwait(false);
        }
        catch (Exception error) when (!http.Response.HasStarted)
        {
            if (error is OperationCanceledException && http.RequestAborted.IsCancellationRequested) return;
            var mapped = Map(error);
            if (mapped.Code == ErrorCodes.Internal)
            {
                http.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("Virtd.Api.Errors")
                    .LogError(error, "unhandled error on {Method} {Path} (trace {TraceId})", http.Request.Method, http.Request.Path,
                        Activity.Current?.Id ?? http.TraceIdentifier);
            }
            await WriteAsync(http, mapped).ConfigureAwait(false);
        }
    });

    private static VirtdException FromStatus(HttpContext http) => http.Response.StatusCode switch
    {
        404 => new VirtdException(ErrorCodes.NotFound, 404, "Not found", $"no resource at {http.Request.Path}"),
        405 => new VirtdException(ErrorCodes.MethodNotAllowed, 405, "Method not allowed", $"{http.Request.Method} is not allowed on {http.Request.Path}"),
        413 => TooLarge(),
        415 => new VirtdException(ErrorCodes.UnsupportedMediaType, 415, "Unsupported media type", "send the body as application/json"),
        400 when UnparsableParameters(http) is { Count: > 0 } errors => VirtdException.Validation(errors),
        var s => new VirtdException(ErrorCodes.ValidationFailed, s, "Request failed", $"the request failed with status {s}"),
    };

    /// <summary>
    /// The query and route values the endpoint could not parse. The request delegate generator answers a nullable value
    /// it cannot parse (<c>int? wait</c> from <c>?wait=soon</c>) with a bare 400 and throws nothing, so the names come from
    /// the endpoint's parameter metadata, each value checked as its type would parse it.
    /// </summary>
    private static Dictionary<string, string[]> UnparsableParameters(HttpContext http)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        if (http.GetEndpoint()?.Metadata.GetOrderedMetadata<Microsoft.AspNetCore.Http.Metadata.IParameterBindingMetadata>() is not { } parameters) return errors;
        foreach (var p in parameters)
        {
            if (!p.HasTryParse) continue;
            string? raw = http.Request.RouteValues.TryGetValue(p.Name, out var routeValue) ? routeValue as string : http.Request.Query[p.Name].ToString();
            if (string.IsNullOrEmpty(raw)) continue;
            var type = Nullable.GetUnderlyingType(p.ParameterInfo.ParameterType) ?? p.ParameterInfo.ParameterType;
            var inv = System.Globalization.CultureInfo.InvariantCulture;
            var parses = type == typeof(int) ? int.TryParse(raw, System.Globalization.NumberStyles.Integer, inv, out _)
                : type == typeof(long) ? long.TryParse(raw, System.Globalization.NumberStyles.Integer, inv, out _)
                : type == typeof(double) ? double.TryParse(raw, System.Globalization.NumberStyles.Float, inv, out _)
                : type == typeof(bool) ? bool.TryParse(raw, out _)
                : type == typeof(Guid) ? Guid.TryParse(raw, out _)
                : true;
            if (!parses) errors[p.Name] = [$"'{raw}' is not a valid value"];
        }
        return errors;
    }

    private static VirtdException TooLarge() =>
        new(ErrorCodes.PayloadTooLarge, 413, "Payload too large", $"request bodies are limited to {Hosting.VirtdHostingExtensions.MaxRequestBodyBytes} bytes");

    internal static VirtdException Map(Exception? error)
    {
        switch (error)
        {
            case VirtdException v:
                return v;
            case BadHttpRequestException { StatusCode: 413 }:
                return TooLarge();
            case BadHttpRequestException { StatusCode: 415 }:
                return new VirtdException(ErrorCodes.UnsupportedMediaType, 415, "Unsupported media type", "send the body as application/json");
            case BadHttpRequestException { InnerException: JsonException json }:
                return FromJson(json);
            case BadHttpRequestException b when b.Message.Contains("was not provided from body", StringComparison.Ordinal)
                                                || b.Message.Contains("but no body was provided", StringComparison.Ordinal):
                return new VirtdException(ErrorCodes.MalformedJson, 400, "Malformed JSON", "a JSON body is required");
            case BadHttpRequestException b when BindFailure().Match(b.Message) is { Success: true } m:
                return VirtdException.Validation(m.Groups["name"].Value, $"'{m.Groups["value"].Value}' is not a valid value");
            case BadHttpRequestException b:
                return new VirtdException(ErrorCodes.ValidationFailed, 400, "Bad request", b.Message);
            case JsonException json:
                return FromJson(json);
            default:
                return new VirtdException(ErrorCodes.Internal, 500, "Internal error", "an unexpected error occurred; it was logged with the trace id");
        }
    }

    /// <summary>
    /// JSON syntax errors are <c>malformed-json</c>; a well-formed body with a value of the wrong type,
    /// an unknown enum value or an unknown field is <c>validation-failed</c> keyed by its path.
    /// </summary>
    internal static VirtdException FromJson(JsonException json)
    {
        var path = JsonPathToField(json.Path);
        var syntax = json.InnerException?.GetType().Name == "JsonReaderException" || json.Path is null;
        var message = json.Message;
        var cut = message.IndexOf(" Path: ", StringComparison.Ordinal);
        if (cut > 0) message = message[..cut];
        if (syntax)
            return new VirtdException(ErrorCodes.MalformedJson, 400, "Malformed JSON",
                json.LineNumber is { } l ? $"{message} (line {l + 1}, byte {json.BytePositionInLine + 1})" : message);
        if (message.Contains("could not be mapped to any .NET member", StringComparison.Ordinal))
            message = "unknown field";
        else if (message.StartsWith("The JSON value could not be converted", StringComparison.Ordinal))
            message = "has a value of the wrong type or an unknown enum value";
        return VirtdException.Validation(path.Length == 0 ? "$" : path, message);
    }

    /// <summary>ASP.NET's message for a query or route value of the wrong type: <c>Failed to bind parameter "int? wait" from "abc".</c></summary>
    [System.Text.RegularExpressions.GeneratedRegex("^Failed to bind parameter \"\\S+ (?<name>[^\"]+)\" from \"(?<value>.*)\"\\.$", System.Text.RegularExpressions.RegexOptions.Singleline)]
    private static partial System.Text.RegularExpressions.Regex BindFailure();

    /// <summary><c>$.disks[0].path</c> → <c>disks[0].path</c>; <c>$['x']</c> → <c>x</c>.</summary>
    internal static string JsonPathToField(string? path)
    {
        if (string.IsNullOrEmpty(path) || path == "$") return "";
        var p = path.StartsWith("$.", StringComparison.Ordinal) ? path[2..] : path.TrimStart('$');
        return p.Replace("['", ".", StringComparison.Ordinal).Replace("']", "", StringComparison.Ordinal).TrimStart('.');
    }
}
