using System.Net.Http.Json;
using System.Text.Json;

namespace Virtd.Stress.Tests.Support;

/// <summary>One HTTP exchange as the test sees it, with when it was sent and answered.</summary>
public sealed record Response(string Op, string Request, int Status, string Body, TimeSpan? RetryAfter, string? ETag, string? Location,
    DateTimeOffset Sent, DateTimeOffset Received)
{
    public T Read<T>() => JsonSerializer.Deserialize<T>(Body, Wire.Json)
        ?? throw new InvalidOperationException($"{Request} → {Status}: empty body");

    /// <summary>The stable <c>code</c> of a problem+json body, or null.</summary>
    public string? ProblemCode
    {
        get
        {
            try
            {
                using var doc = JsonDocument.Parse(Body);
                return doc.RootElement.TryGetProperty("code", out var c) ? c.GetString() : null;
            }
            catch (JsonException) { return null; }
        }
    }

    public override string ToString() => $"{Request} → {Status} {Truncate(Body)}";

    private static string Truncate(string s) => s.Length <= 400 ? s : s[..400] + "…";
}

/// <summary>
/// Sends requests and applies the rules every response must follow: no 5xx ever, only the statuses
/// the caller expects, 429 backs off (Retry-After honoured, capped at 200 ms).
/// </summary>
public sealed class VirtdHttp(HttpClient http, StressRecorder rec)
{
    public static readonly TimeSpan BackoffCap = TimeSpan.FromMilliseconds(200);

    public HttpClient Http => http;

    public Task<Response> GetAsync(string op, string url, params int[] expected) =>
        SendAsync(op, () => new HttpRequestMessage(HttpMethod.Get, url), expected);

    public Task<Response> PostAsync(string op, string url, object? body, params int[] expected) =>
        SendAsync(op, () => new HttpRequestMessage(HttpMethod.Post, url) { Content = body is null ? null : JsonContent.Create(body, options: Wire.Json) }, expected);

    public async Task<Response> SendAsync(string op, Func<HttpRequestMessage> create, params int[] expected)
    {
        using var request = create();
        var text = $"{request.Method} {request.RequestUri}";
        var sent = DateTimeOffset.UtcNow;
        Response r;
        try
        {
            using var response = await http.SendAsync(request);
            var body = await response.Content.ReadAsStringAsync();
            r = new Response(op, text, (int)response.StatusCode, body, response.Headers.RetryAfter?.Delta,
                response.Headers.ETag?.ToString(), response.Headers.Location?.ToString(), sent, DateTimeOffset.UtcNow);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            // A timeout or a dropped connection is as visible to a user as a 5xx.
            rec.Count(op, 0);
            rec.Fail($"{text}: no answer after {(DateTimeOffset.UtcNow - sent).TotalSeconds:0.0} s ({e.GetType().Name}: {e.Message})");
            return new Response(op, text, 0, "", null, null, null, sent, DateTimeOffset.UtcNow);
        }

        rec.Count(op, r.Status);
        if (r.Status >= 500)
        {
            rec.Fail($"5xx: {r}");
        }
        else if (r.Status == 429)
        {
            if (r.ProblemCode != "queue-full") rec.Fail($"429 without code queue-full: {r}");
            if (r.RetryAfter is null) rec.Fail($"429 without Retry-After: {r}");
            rec.BackedOff();
            var wait = r.RetryAfter is { } ra && ra < BackoffCap ? ra : BackoffCap;
            await Task.Delay(wait * (0.5 + Random.Shared.NextDouble() / 2));
        }
        else if (Array.IndexOf(expected, r.Status) < 0)
        {
            rec.Fail($"unexpected status: {r}");
        }
        return r;
    }
}
