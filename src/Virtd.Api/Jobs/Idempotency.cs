using System.Security.Cryptography;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Http.Metadata;
using Virtd.Api.Access;
using Virtd.Api.Domains;
using Virtd.Api.Hosting;
using Virtd.Core.Configuration;
using Virtd.Core.Domains;
using Virtd.Core.Errors;
using Virtd.Core.Jobs;

namespace Virtd.Api.Jobs;

/// <summary>
/// <c>Idempotency-Key</c> (IETF httpapi draft) on the POSTs that make something: a domain, a job, a token. The same
/// key from the same caller with the same request (method, path and body bytes) within <c>Jobs:IdempotencyWindow</c>
/// gets the first answer's status again, with what it made as it is now, and <c>Idempotent-Replayed: true</c>;
/// with another request 422 <c>idempotency-key-reused</c>; while the first is still being answered (validated,
/// queued, or waiting with <c>?wait=</c>) 409 <c>idempotency-key-in-flight</c>. A first request that fails frees
/// the key. A job's key goes into the journal with the job itself, so a retry after a crash finds that job.
/// </summary>
public static class Idempotency
{
    public const string Header = "Idempotency-Key";
    public const string ReplayedHeader = "Idempotent-Replayed";

    /// <summary>Lets a request with the header keep its body readable, for the fingerprint (before the body is bound).</summary>
    public static IApplicationBuilder UseIdempotencyBodies(this IApplicationBuilder app) => app.Use((http, next) =>
    {
        if (HttpMethods.IsPost(http.Request.Method) && http.Request.Headers.ContainsKey(Header))
            http.Request.EnableBuffering(bufferThreshold: 64 * 1024, bufferLimit: VirtdHostingExtensions.MaxRequestBodyBytes);
        return next(http);
    });

    /// <summary>Makes a POST safe to retry with an Idempotency-Key.</summary>
    public static RouteHandlerBuilder Idempotent(this RouteHandlerBuilder builder) =>
        builder.AddEndpointFilter(FilterAsync).WithMetadata(new IdempotentEndpoint())
            .ProducesProblem(StatusCodes.Status409Conflict).ProducesProblem(StatusCodes.Status422UnprocessableEntity);

    /// <summary>The key the request's job is to be written down with, when it has one.</summary>
    public static IdempotencyKeys.Entry? Of(HttpContext http) => http.Features.Get<IdempotencyKeys.Entry>();

    private static async ValueTask<object?> FilterAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var http = context.HttpContext;
        var header = http.Request.Headers[Header];
        if (header.Count == 0) return await next(context).ConfigureAwait(false);
        var key = Parse(header.ToString());
        var identity = (http.User as CallerPrincipal)?.Caller.Identity ?? "anonymous";
        var fingerprint = await FingerprintAsync(http).ConfigureAwait(false);
        var services = http.RequestServices;
        var keys = services.GetRequiredService<IdempotencyKeys>();
        var (outcome, entry) = keys.Begin(identity, key, fingerprint);
        switch (outcome)
        {
            case IdempotencyKeys.Outcome.Reused:
                throw new VirtdException(ErrorCodes.IdempotencyKeyReused, 422, "Idempotency-Key reused",
                    $"the Idempotency-Key '{key}' was first used with another request ({entry.At:O}); use a new key for a new request");
            case IdempotencyKeys.Outcome.InFlight:
                throw new VirtdException(ErrorCodes.IdempotencyKeyInFlight, 409, "Idempotency-Key in flight",
                    $"the first request with the Idempotency-Key '{key}' has not been answered yet; retry once it has") { RetryAfterSeconds = 1 };
            case IdempotencyKeys.Outcome.Replay:
                http.Response.Headers[ReplayedHeader] = "true";
                return Replay(http, entry);
        }

        http.Features.Set(entry);
        object? result;
        try
        {
            result = await next(context).ConfigureAwait(false);
        }
        catch when (entry.Resource is null)
        {
            keys.Abandon(entry);
            throw;
        }
        var inner = result is INestedHttpResult nested ? nested.Result : result as IResult;
        if (inner is IStatusCodeHttpResult { StatusCode: >= 200 and < 300 and var status } && Resource(inner) is { } resource)
        {
            var record = keys.Answer(entry, status, resource);
            if (services.GetRequiredService<JobsOptions>().Journal)
            {
                // The answer's status is on disk before the client hears it (a job's reservation already is).
                try { await services.GetRequiredService<JobJournal>().AppendAsync(record).ConfigureAwait(false); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    services.GetRequiredService<ILogger<IdempotencyKeys>>().LogError("cannot write Idempotency-Key '{Key}' to the job journal: {Error}", key, e.Message);
                }
            }
        }
        else if (entry.Resource is null)
        {
            keys.Abandon(entry);
        }
        return result;
    }

    /// <summary>The draft's value is a structured-field string (quoted); a bare token is taken too.</summary>
    private static string Parse(string value)
    {
        var key = value.Trim();
        if (key.Length >= 2 && key[0] == '"' && key[^1] == '"') key = key[1..^1];
        if (key.Length == 0) throw BadKey("must not be empty");
        if (key.Length > IdempotencyKeys.MaxKeyLength) throw BadKey($"must be at most {IdempotencyKeys.MaxKeyLength} characters");
        foreach (var c in key)
            if (c is < ' ' or > '~') throw BadKey("must be printable ASCII");
        return key;
    }

    /// <summary>Keyed <c>idempotencyKey</c>, as other headers' errors are keyed by their camelCase name.</summary>
    private static VirtdException BadKey(string message) => VirtdException.Validation("idempotencyKey", $"the {Header} header {message}");

    /// <summary>SHA-256 of the method, the path and the body bytes: "the same request".</summary>
    private static async Task<string> FingerprintAsync(HttpContext http)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{http.Request.Method} {http.Request.Path}\n"));
        var body = http.Request.Body;
        if (body.CanSeek)
        {
            body.Position = 0;
            var buffer = new byte[16 * 1024];
            int n;
            while ((n = await body.ReadAsync(buffer, http.RequestAborted).ConfigureAwait(false)) > 0) sha.AppendData(buffer, 0, n);
            body.Position = 0;
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private static string? Resource(IResult result) => (result as IValueHttpResult)?.Value switch
    {
        JobDto job => "job:" + job.Id.ToString("D"),
        DomainDto domain => "domain:" + domain.Name,
        CreatedTokenDto token => "token:" + token.Name,
        _ => null,
    };

    /// <summary>The first answer again: its status, with what it made as it is now.</summary>
    private static IResult Replay(HttpContext http, IdempotencyKeys.Entry entry)
    {
        var services = http.RequestServices;
        var now = services.GetRequiredService<TimeProvider>().GetUtcNow();
        var (kind, id) = entry.Resource!.Split(':', 2) switch { [var k, var v] => (k, v), _ => ("", "") };
        switch (kind)
        {
            case "job":
                var job = Guid.TryParse(id, out var jobId) ? services.GetRequiredService<JobStore>().Find(jobId) : null;
                if (job is null)
                    throw new VirtdException(ErrorCodes.JobNotFound, 404, "Job not found",
                        $"the first request with this Idempotency-Key made job {id}, which is no longer kept (Jobs:Retention)");
                var dto = JobDto.From(job);
                return entry.Status == StatusCodes.Status200OK ? TypedResults.Ok(dto) : TypedResults.Accepted($"/api/v1/jobs/{job.Id}", dto);
            case "domain":
                var d = services.GetRequiredService<DomainService>().Registry.Find(id) ?? throw VirtdException.DomainNotFound(id);
                var view = d.View;
                http.Response.Headers.ETag = view.ETag;
                return TypedResults.Created($"/api/v1/domains/{Uri.EscapeDataString(d.Name)}", DomainDto.From(d, view, now));
            case "token":
                var token = services.GetRequiredService<TokenStore>().Find(id) ?? throw AccessErrors.TokenNotFound(id);
                // The secret was shown once, to the first answer, and is kept nowhere: the replay cannot show it again.
                return TypedResults.Created($"/api/v1/tokens/{Uri.EscapeDataString(token.Name)}", TokenDto.From(token, now));
            default:
                throw new InvalidOperationException($"unknown idempotency resource '{entry.Resource}'");
        }
    }
}

/// <summary>Endpoint metadata: the POST takes an Idempotency-Key (for the OpenAPI document).</summary>
public sealed record IdempotentEndpoint;

/// <summary>The Idempotency-Key header in the OpenAPI document, on every operation that takes it.</summary>
internal sealed class IdempotencyOpenApi : Microsoft.AspNetCore.OpenApi.IOpenApiOperationTransformer
{
    public Task TransformAsync(Microsoft.OpenApi.OpenApiOperation operation, Microsoft.AspNetCore.OpenApi.OpenApiOperationTransformerContext context,
        CancellationToken cancellationToken)
    {
        if (!context.Description.ActionDescriptor.EndpointMetadata.OfType<IdempotentEndpoint>().Any()) return Task.CompletedTask;
        operation.Parameters ??= [];
        operation.Parameters.Add(new Microsoft.OpenApi.OpenApiParameter
        {
            Name = Idempotency.Header,
            In = Microsoft.OpenApi.ParameterLocation.Header,
            Required = false,
            Description = "Makes a retry safe (IETF httpapi draft): the same key and request within Jobs:IdempotencyWindow (24 h) get the first " +
                          "answer again, with Idempotent-Replayed: true; another request with the key 422 idempotency-key-reused; while the " +
                          "first is being answered 409 idempotency-key-in-flight. Per caller; 1 to 255 printable ASCII characters, quoted or not.",
            Schema = new Microsoft.OpenApi.OpenApiSchema { Type = Microsoft.OpenApi.JsonSchemaType.String, MaxLength = IdempotencyKeys.MaxKeyLength },
        });
        return Task.CompletedTask;
    }
}
