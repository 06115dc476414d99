using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace Virtd.Testing;

/// <summary>Short ways to say what the tests do over HTTP, and what they expect back.</summary>
public static class VirtdHttp
{
    /// <summary>The longest any test waits for something the daemon does in well under a second.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(15);

    /// <summary>A minimal valid definition for the simulated driver, with optional fault injection.</summary>
    public static Dictionary<string, object?> Definition(string name, object? simulation = null, int memoryMiB = 64)
    {
        var d = new Dictionary<string, object?> { ["name"] = name, ["memoryMiB"] = memoryMiB };
        if (simulation is not null) d["simulation"] = simulation;
        return d;
    }

    /// <summary>Defines a domain and fails the test unless it was created.</summary>
    public static async Task<JsonElement> DefineAsync(this HttpClient http, object definition)
    {
        var r = await http.PostJsonAsync("/api/v1/domains", definition);
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.Created, $"define failed: {(int)r.StatusCode} {body}");
        return Parse(body);
    }

    /// <summary>Defines <paramref name="name"/> and starts it, waiting for the start to succeed.</summary>
    public static async Task<JsonElement> DefineRunningAsync(this HttpClient http, string name, object? simulation = null)
    {
        await http.DefineAsync(Definition(name, simulation));
        var job = await http.ActAsync(name, "start", wait: 10);
        Assert.Equal("succeeded", job.GetProperty("state").GetString());
        return await http.GetDomainAsync(name);
    }

    public static async Task<JsonElement> GetDomainAsync(this HttpClient http, string id)
    {
        var r = await http.GetAsync($"/api/v1/domains/{id}");
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"GET domain {id}: {(int)r.StatusCode} {body}");
        return Parse(body);
    }

    public static async Task<string?> StateOfAsync(this HttpClient http, string id) =>
        (await http.GetDomainAsync(id)).GetProperty("state").GetString();

    /// <summary>POSTs an action and returns the response as is.</summary>
    public static Task<HttpResponseMessage> PostActionAsync(this HttpClient http, string domain, string action, object? body = null, int? wait = null)
    {
        var url = $"/api/v1/domains/{domain}/{action}" + (wait is { } w ? $"?wait={w}" : "");
        return body is null ? http.PostAsync(url, null) : http.PostJsonAsync(url, body);
    }

    /// <summary>
    /// POSTs an action and returns its job: with <paramref name="wait"/> the finished job (200), without it
    /// the queued job (202). Fails the test on any other status.
    /// </summary>
    public static async Task<JsonElement> ActAsync(this HttpClient http, string domain, string action, object? body = null, int? wait = null)
    {
        var r = await http.PostActionAsync(domain, action, body, wait);
        var text = await r.Content.ReadAsStringAsync();
        var expected = wait is > 0 ? HttpStatusCode.OK : HttpStatusCode.Accepted;
        Assert.True(r.StatusCode == expected, $"{action} on {domain}: expected {(int)expected}, got {(int)r.StatusCode} {text}");
        return Parse(text);
    }

    public static async Task<JsonElement> GetJobAsync(this HttpClient http, string jobId, int? wait = null)
    {
        var r = await http.GetAsync($"/api/v1/jobs/{jobId}" + (wait is { } w ? $"?wait={w}" : ""));
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"GET job {jobId}: {(int)r.StatusCode} {body}");
        return Parse(body);
    }

    /// <summary>Long-polls the job until it has finished; fails the test if it does not within <see cref="Patience"/>.</summary>
    public static async Task<JsonElement> FinishedJobAsync(this HttpClient http, string jobId)
    {
        var job = await http.GetJobAsync(jobId, wait: (int)Patience.TotalSeconds);
        var state = job.GetProperty("state").GetString();
        Assert.True(state is "succeeded" or "failed" or "cancelled" or "superseded", $"job {jobId} still {state} after {Patience}");
        return job;
    }

    /// <summary>Polls <paramref name="read"/> until <paramref name="done"/> holds, or fails the test at the deadline.</summary>
    public static async Task<JsonElement> PollAsync(Func<Task<JsonElement>> read, Func<JsonElement, bool> done, string what, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Patience);
        while (true)
        {
            var value = await read();
            if (done(value)) return value;
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out waiting for {what}; last seen: {value}");
            await Task.Delay(20);
        }
    }

    /// <summary>Waits until the job is running (it holds its domain's gate and a worker runs it).</summary>
    public static Task<JsonElement> RunningJobAsync(this HttpClient http, string jobId) =>
        PollAsync(() => http.GetJobAsync(jobId), j => j.GetProperty("state").GetString() == "running", $"job {jobId} to run");

    public static string Id(this JsonElement job) => job.GetProperty("id").GetString()!;

    public static string? Str(this JsonElement e, string property) =>
        e.TryGetProperty(property, out var p) && p.ValueKind == JsonValueKind.String ? p.GetString() : null;

    public static JsonElement Parse(string json) => JsonDocument.Parse(json).RootElement.Clone();

    /// <summary>
    /// Asserts the response is the problem the API contract promises: status, <c>application/problem+json</c>,
    /// every RFC 9457 member plus <c>code</c> and <c>traceId</c>. Returns the problem for further checks.
    /// </summary>
    public static async Task<JsonElement> AssertProblemAsync(this HttpResponseMessage r, HttpStatusCode status, string code)
    {
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == status, $"expected {(int)status} {code}, got {(int)r.StatusCode}: {body}");
        Assert.Equal("application/problem+json", r.Content.Headers.ContentType?.MediaType);
        var p = Parse(body);
        Assert.Equal(code, p.Str("code"));
        Assert.Equal((int)status, p.GetProperty("status").GetInt32());
        foreach (var member in new[] { "type", "title", "detail", "instance", "traceId" })
            Assert.False(string.IsNullOrWhiteSpace(p.Str(member)), $"problem member '{member}' missing in {body}");
        Assert.EndsWith("/" + code, p.Str("type"));
        return p;
    }

    /// <summary>The field errors of a validation problem, keyed by JSON path.</summary>
    public static Dictionary<string, string[]> FieldErrors(this JsonElement problem)
    {
        Assert.True(problem.TryGetProperty("errors", out var errors), $"no 'errors' map in {problem}");
        return errors.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.EnumerateArray().Select(v => v.GetString()!).ToArray());
    }

    /// <summary>A body sent exactly as written, with its own content type and a Content-Length.</summary>
    public static HttpContent Raw(string body, string contentType = "application/json")
    {
        var c = new ByteArrayContent(Encoding.UTF8.GetBytes(body));
        c.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        return c;
    }

    public static HttpRequestMessage WithIfMatch(this HttpRequestMessage request, string etag)
    {
        request.Headers.TryAddWithoutValidation("If-Match", etag);
        return request;
    }

    public static string ETag(this HttpResponseMessage r)
    {
        var tag = r.Headers.ETag?.ToString();
        Assert.False(string.IsNullOrEmpty(tag), $"no ETag on {(int)r.StatusCode} {r.RequestMessage?.RequestUri}");
        return tag!;
    }
}
