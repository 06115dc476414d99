using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;
using Virtd.Core;
using Virtd.Core.Domains;
using Virtd.Testing;
using Xunit.Abstractions;

namespace Virtd.Fuzz.Tests;

/// <summary>
/// The fuzz tier (issue "Hardening"): thousands of requests drawn from the OpenAPI document against a real daemon
/// over HTTP. Every answer must be a status the document lists for that operation (404/405 for paths and methods it
/// does not have) with a problem+json body carrying a listed code, never a 5xx; afterwards the stored definitions must
/// be those of a model that applied exactly the accepted changes, before and after a restart.
/// </summary>
public sealed class ApiFuzzTests(ITestOutputHelper output)
{
    /// <summary>The CI seed; a failure prints its own seed, and <c>VIRTD_FUZZ_SEED</c> replays one.</summary>
    public const string FixedSeed = "0000001diAn7";

    private static int Requests => int.TryParse(Environment.GetEnvironmentVariable("VIRTD_FUZZ_REQUESTS"), out var n) ? n : 10_000;

    [Fact]
    public Task FixedSeed_EveryAnswerIsDocumented_AndTheModelHolds() =>
        RunAsync(Environment.GetEnvironmentVariable("VIRTD_FUZZ_SEED") ?? FixedSeed, Requests, "fixed");

    [Fact]
    public Task RandomSeed_EveryAnswerIsDocumented_AndTheModelHolds() =>
        RunAsync(new PCG((uint)Random.Shared.Next(), (ulong)Random.Shared.NextInt64()).ToString(), Requests / 2, "random");

    private async Task RunAsync(string seed, int count, string which)
    {
        var doc = ApiDocument.Load();
        var pcg = PCG.Parse(seed);
        await using var daemon = DaemonProcess.Start(
        [
            "--DefaultDriver", "simulated",
            "--Qemu:Binary", "/nonexistent/qemu-system-x86_64", // a qemu domain is defined but never started: 409 hypervisor-unavailable
            "--Logging:LogLevel:Default", "Warning",
            "--Jobs:WaitTimeout", "00:00:01", // short waits keep 10,000 requests in a short run
            "--Simulated:MonitorTimeout", "00:00:01",
            // Bad credentials are a few percent of a fast sequence: more than the default 10 a second would make
            // every later request a 429 for the rest of that second (that limit has its own tests).
            "--Security:AuthFailuresPerSecond", "100000",
        ]);
        await daemon.WaitReadyAsync();
        var images = Path.Combine(daemon.StateDirectory, "images");
        Directory.CreateDirectory(images);
        foreach (var f in new[] { "disk0.img", "disk1.img", "kernel" }) await File.WriteAllBytesAsync(Path.Combine(images, f), new byte[4096]);

        using var http = new HttpClient(new SocketsHttpHandler { UseCookies = false, AllowAutoRedirect = false })
        {
            BaseAddress = daemon.Http.BaseAddress,
            Timeout = TimeSpan.FromSeconds(30),
        };
        var token = daemon.AdminToken;
        var seen = new Observed();
        var generator = new RequestGenerator(doc, pcg, seen, images);
        var model = new Dictionary<string, (string Json, Guid Uuid)>();
        var statuses = new SortedDictionary<int, int>();
        var shapes = new Dictionary<string, int>();
        var failures = new List<string>();
        var spent = new Dictionary<string, double>();
        var slow = new List<string>();
        var trace = Environment.GetEnvironmentVariable("VIRTD_FUZZ_TRACE"); // a name: every request about it is printed

        for (var i = 0; i < count && failures.Count < 20; i++)
        {
            var request = generator.Next();
            shapes[request.Shape] = shapes.GetValueOrDefault(request.Shape) + 1;
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            HttpResponseMessage response;
            try
            {
                response = request.ChunkedBytes > 0
                    ? await RawHttp.SendChunkedAsync(http.BaseAddress!, request, request.NoCredentials ? null : token, TimeSpan.FromSeconds(30))
                    : await SendAsync(http, request, token);
            }
            catch (Exception e) when (e is HttpRequestException or OperationCanceledException or IOException)
            {
                failures.Add($"#{i} {request}: no answer ({e.GetType().Name}: {e.Message} {e.InnerException?.Message} {e.InnerException?.InnerException?.Message})");
                continue;
            }
            var ms = System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            spent[request.Shape] = spent.GetValueOrDefault(request.Shape) + ms;
            if (ms > 500) slow.Add($"#{i} {ms:0} ms {request}");
            using (response)
            {
                var status = (int)response.StatusCode;
                statuses[status] = statuses.GetValueOrDefault(status) + 1;
                var body = response.Content.Headers.ContentType?.MediaType == "text/event-stream" ? "" : await response.Content.ReadAsStringAsync();
                if (trace is not null && (request.Path.Contains(trace, StringComparison.Ordinal) || request.Definition?.Contains(trace, StringComparison.Ordinal) == true))
                    output.WriteLine($"#{i} {request}\n    -> {status} {Clip(body)}");
                if (Check(doc, request, response, body, out var matched) is { } problem)
                {
                    failures.Add($"#{i} {request}\n    -> {status} {response.Content.Headers.ContentType}: {Clip(body)}\n    {problem}");
                    continue;
                }
                Learn(request, matched, response, body, seen, model);
            }
        }

        // The daemon still answers, and holds what the model says, before and after a restart.
        Assert.Equal(HttpStatusCode.OK, (await daemon.Http.GetAsync("/api/v1/host")).StatusCode);
        failures.AddRange(await CompareAsync(daemon.Http, model, "after the run"));
        daemon.Terminate();
        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(30)));
        await using (var again = DaemonProcess.Start(["--DefaultDriver", "simulated", "--Qemu:Binary", "/nonexistent/qemu-system-x86_64"],
                         stateDirectory: daemon.StateDirectory))
        {
            await again.WaitReadyAsync();
            failures.AddRange(await CompareAsync(again.Http, model, "after a restart"));
            if (again.Output.Contains("quarantin", StringComparison.OrdinalIgnoreCase)) failures.Add("a stored definition was quarantined at load:\n" + again.Output);
        }

        var line = $"fuzz: seed {seed} ({which}), {count} requests; statuses {string.Join(" ", statuses.Select(s => $"{s.Key}×{s.Value}"))}; " +
                   $"{model.Count} domains in the model; shapes {string.Join(" ", shapes.OrderBy(s => s.Key).Select(s => $"{s.Key}×{s.Value}"))}";
        output.WriteLine(line);
        var time = "fuzz time by shape: " + string.Join(" ", spent.OrderByDescending(s => s.Value).Take(6).Select(s => $"{s.Key} {s.Value / 1000:0.0} s"))
                   + $"; {slow.Count} requests over 500 ms" + string.Concat(slow.Take(5).Select(s => "\n  slow: " + Clip(s)));
        output.WriteLine(time);
        Console.WriteLine(time);
        Console.WriteLine(line);
        if (failures.Count > 0)
            Assert.Fail($"seed {seed} (replay: VIRTD_FUZZ_SEED={seed} VIRTD_FUZZ_REQUESTS={count}): {failures.Count} failures\n" + string.Join("\n", failures));
        if (daemon.Output.Contains("unhandled error", StringComparison.Ordinal)) Assert.Fail("the daemon logged an unhandled error:\n" + daemon.Output);
    }

    private static async Task<HttpResponseMessage> SendAsync(HttpClient http, FuzzRequest r, string token)
    {
        var message = new HttpRequestMessage(new HttpMethod(r.Method), r.Path);
        if (!r.NoCredentials) message.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        foreach (var (k, v) in r.Headers)
        {
            if (k == "Authorization") message.Headers.Authorization = null;
            message.Headers.TryAddWithoutValidation(k, v);
        }
        if (r.ChunkedBytes > 0) message.Content = new StreamContent(new FillStream(r.ChunkedBytes));
        else if (r.Body is not null) message.Content = new ByteArrayContent(r.Body);
        if (message.Content is not null)
        {
            message.Content.Headers.ContentType = null;
            if (r.ContentType is not null) message.Content.Headers.TryAddWithoutValidation("Content-Type", r.ContentType);
        }
        var streaming = r.Path.StartsWith("/api/v1/events", StringComparison.OrdinalIgnoreCase);
        return await http.SendAsync(message, streaming ? HttpCompletionOption.ResponseHeadersRead : HttpCompletionOption.ResponseContentRead);
    }

    /// <summary>Null when the answer is one the document allows, else what is wrong with it.</summary>
    private static string? Check(ApiDocument doc, FuzzRequest r, HttpResponseMessage response, string body, out ApiOperation? op)
    {
        var status = (int)response.StatusCode;
        op = null;
        if (status >= 500) return "a 5xx";
        // Kestrel refuses a NUL in the path itself, before any of the daemon's code runs: a bodiless 400.
        if (r.Path.Contains("%00", StringComparison.Ordinal)) return status is 400 or 404 ? null : $"status {status} for a path with NUL";
        var segments = SegmentsOf(response.RequestMessage!.RequestUri!);
        var candidates = segments.Any(s => s.Length == 0) ? [] : doc.ForPath(segments);
        op = candidates.FirstOrDefault(o => o.Method == r.Method);
        // A value that reads like a literal segment; not an empty last value, which the server (like Trim above) drops with its slash.
        if (op is not null && r.Operation is not null && op.Template != r.Operation.Template && r.Operation.Matches(segments)) op = r.Operation;
        var matched = op;
        // The dashboard's static files are not API operations: a GET of one is the file itself.
        if (op is null && r.Method is "GET" or "HEAD" && status == 200 && IsDashboardFile(response.RequestMessage!.RequestUri!.AbsolutePath)) return null;
        int[] allowed = op is not null ? [.. op.Statuses] : candidates.Count > 0 ? [405] : [404, 405];
        // Without valid credentials nothing under /api/v1 is told apart, not even a path that names no route: 401.
        if (op is null && r.Shape == "credentials" && r.Path.StartsWith("/api/v1/", StringComparison.Ordinal)) allowed = [.. allowed, 401];
        if (!allowed.Contains(status)) return $"status {status} is not documented for {(matched?.ToString() ?? r.Method + " " + r.Path)} ({string.Join(",", allowed.Order())})";
        if (r.Method == "HEAD") return null; // no body, by definition
        if (status < 400)
        {
            if (matched?.Template == "/api/v1/events") return response.Content.Headers.ContentType?.MediaType == "text/event-stream" ? null : "an event stream that is not text/event-stream";
            if (body.Length == 0 || response.Content.Headers.ContentType?.MediaType != "application/json") return status is 204 or 202 && body.Length == 0 ? null : null;
            try { JsonDocument.Parse(body).Dispose(); } catch (JsonException) { return "a 2xx body that is not JSON"; }
            return null;
        }
        if (response.Content.Headers.ContentType?.MediaType != "application/problem+json") return "an error that is not application/problem+json";
        try
        {
            using var problem = JsonDocument.Parse(body);
            var root = problem.RootElement;
            if (!root.TryGetProperty("code", out var code) || code.ValueKind != JsonValueKind.String) return "a problem without a code";
            if (!doc.Codes.Contains(code.GetString()!)) return $"code '{code.GetString()}' is not in the document";
            if (!root.TryGetProperty("status", out var s) || s.GetInt32() != status) return "a problem whose status differs from the response's";
            if (body.Contains(" at Virtd.", StringComparison.Ordinal) || body.Contains("Exception", StringComparison.Ordinal)) return "a problem that shows an exception";
        }
        catch (JsonException)
        {
            return "a problem body that is not JSON";
        }
        return null;
    }

    private static bool IsDashboardFile(string path) =>
        path is "/" or "/index.html" or "/app.js" or "/app.css" || path.StartsWith("/vendor/", StringComparison.Ordinal);

    /// <summary>
    /// The path as the server routes it: the client sends <c>/a/../b</c> as <c>/b</c>; Kestrel decodes every escape but
    /// <c>%2F</c> (which stays inside its segment) and then removes dot segments.
    /// </summary>
    private static List<string> SegmentsOf(Uri sent)
    {
        var result = new List<string>();
        foreach (var raw in sent.AbsolutePath.Trim('/').Split('/'))
        {
            var segment = Uri.UnescapeDataString(raw.Replace("%2F", "%252F", StringComparison.OrdinalIgnoreCase));
            if (segment == ".") continue;
            if (segment == "..") { if (result.Count > 0) result.RemoveAt(result.Count - 1); continue; }
            result.Add(segment);
        }
        return result;
    }

    /// <summary>What an accepted answer changes in the model, and what later requests may aim at.</summary>
    private static void Learn(FuzzRequest r, ApiOperation? op, HttpResponseMessage response, string body, Observed seen, Dictionary<string, (string Json, Guid Uuid)> model)
    {
        var status = (int)response.StatusCode;
        if (status >= 300 || body.Length == 0 || response.Content.Headers.ContentType?.MediaType != "application/json") 
        {
            if (status == 204 && op?.ToString() == "DELETE /api/v1/domains/{id}")
            {
                var id = Uri.UnescapeDataString(r.Path.Split('?')[0].Split('/')[^1]);
                foreach (var name in model.Where(m => m.Key == id || m.Value.Uuid.ToString() == id.ToLowerInvariant()).Select(m => m.Key).ToList()) model.Remove(name);
            }
            return;
        }
        var json = JsonNode.Parse(body);
        var replayed = response.Headers.TryGetValues("Idempotent-Replayed", out var v) && v.Contains("true");
        if (json?["next"]?.GetValue<string>() is { } next) seen.Cursors.Add(next);
        if (op?.Template.StartsWith("/api/v1/domains/{id}/", StringComparison.Ordinal) == true && json?["id"]?.GetValue<string>() is { } jobId && r.Method == "POST")
            seen.JobIds.Add(jobId);
        if (json?["definition"] is JsonObject def && json["uuid"]?.GetValue<string>() is { } uuid)
        {
            var name = def["name"]!.GetValue<string>();
            if (response.Headers.ETag is { } etag) seen.ETags[name] = etag.ToString();
            if (!seen.Uuids.Contains(uuid)) seen.Uuids.Add(uuid);
            var changed = (op?.ToString() == "POST /api/v1/domains" && status == 201) || (op?.ToString() == "PUT /api/v1/domains/{id}" && status == 200);
            // Whatever shape the body had: an accepted one is what the daemon now holds.
            if (!replayed && changed) model[name] = (r.Definition ?? Encoding.UTF8.GetString(r.Body ?? []), Guid.Parse(uuid));
        }
    }

    /// <summary>The daemon's domains against the model: the same names, and each definition what was last accepted for it.</summary>
    private static async Task<List<string>> CompareAsync(HttpClient http, Dictionary<string, (string Json, Guid Uuid)> model, string when)
    {
        var problems = new List<string>();
        var list = JsonNode.Parse(await http.GetStringAsync("/api/v1/domains"))!["items"]!.AsArray();
        var names = list.Select(d => d!["name"]!.GetValue<string>()).Order(StringComparer.Ordinal).ToList();
        var expected = model.Keys.Order(StringComparer.Ordinal).ToList();
        if (!names.SequenceEqual(expected)) problems.Add($"{when}: the daemon has [{string.Join(",", names)}], the model [{string.Join(",", expected)}]");
        foreach (var item in list)
        {
            var name = item!["name"]!.GetValue<string>();
            if (!model.TryGetValue(name, out var m)) continue;
            var stored = item["definition"]!.Deserialize<DomainDefinition>(VirtdJson.Options)!;
            var sent = JsonSerializer.Deserialize<DomainDefinition>(m.Json, VirtdJson.Options)!;
            sent = sent with
            {
                Uuid = m.Uuid,
                Driver = sent.Driver ?? DriverKind.Simulated,
                // A disk given by path without a format is stored as raw (the daemon never guesses a format).
                Disks = sent.Disks.Select(d => d is { Format: null, Volume: null } ? d with { Format = DiskFormat.Raw } : d).ToList(),
            };
            if (!stored.SameAs(sent))
                problems.Add($"{when}: '{name}' is stored as {JsonSerializer.Serialize(stored, VirtdJson.Options)}, the model has {JsonSerializer.Serialize(sent, VirtdJson.Options)}");
        }
        return problems;
    }

    private static string Clip(string s) => s.Length > 400 ? s[..400] + "…" : s;

    /// <summary>A body of <c>{"x":"xxxx…</c> that never ends in time: the daemon must stop reading at its limit.</summary>
    private sealed class FillStream(int length) : Stream
    {
        private int _position;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _position; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count)
        {
            var n = Math.Min(count, length - _position);
            for (var i = 0; i < n; i++) buffer[offset + i] = _position + i < 6 ? (byte)"{\"x\":\""[_position + i] : (byte)'x';
            _position += n;
            return n;
        }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
