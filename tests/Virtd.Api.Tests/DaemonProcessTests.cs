using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>The daemon as its users run it: a process with a command line, environment and real HTTP (Kestrel).</summary>
public sealed class DaemonProcessTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData("--Jobs:Workers", "0", "Jobs:Workers")]
    [InlineData("--Jobs:Workers", "abc", "Jobs:Workers")]
    [InlineData("--Jobs:WaitTimeout", "-00:00:01", "Jobs:WaitTimeout")]
    [InlineData("--Events:HeartbeatSeconds", "0", "Events:HeartbeatSeconds")]
    [InlineData("--Events:SubscriberQueue", "0", "Events:SubscriberQueue")]
    [InlineData("--IdleTimeout", "00:00:00.500", "IdleTimeout")]
    [InlineData("--Limits:Domains", "0", "Limits:Domains")]
    [InlineData("--Limits:RequestsPerSecond", "-1", "Limits:RequestsPerSecond")]
    public async Task BadCommandLineValue_ExitsNonZeroNamingTheKey(string option, string value, string key)
    {
        await using var daemon = DaemonProcess.Start([option, value]);

        var code = await daemon.WaitExitAsync(ExitDeadline);

        Assert.Equal(2, code);
        Assert.Contains("virtd: invalid configuration", daemon.Output);
        Assert.Contains(key, daemon.Output);
        Assert.DoesNotContain("   at ", daemon.Output); // one clear line, no stack trace
    }

    [Fact]
    public async Task RelativeDirectories_ExitTwo_NamingEachKeyOnce()
    {
        await using var daemon = DaemonProcess.Start(stateDirectory: "state", runDirectory: "run");

        Assert.Equal(2, await daemon.WaitExitAsync(ExitDeadline));

        var line = daemon.Output.Split('\n').Single(l => l.StartsWith("virtd: invalid configuration", StringComparison.Ordinal));
        Assert.Equal(1, System.Text.RegularExpressions.Regex.Count(line, "StateDirectory: must be an absolute path"));
        Assert.Equal(1, System.Text.RegularExpressions.Regex.Count(line, "RunDirectory: must be an absolute path"));
    }

    [Fact]
    public async Task BadEnvironmentValue_ExitsNonZeroNamingTheKey()
    {
        await using var daemon = DaemonProcess.Start(environment: new Dictionary<string, string> { ["VIRTD_Jobs__QueueLimit"] = "0" });

        var code = await daemon.WaitExitAsync(ExitDeadline);

        Assert.NotEqual(0, code);
        Assert.Contains("Jobs:QueueLimit", daemon.Output);
    }

    [Fact]
    public async Task Sigterm_WithEventStreamsOpen_EndsTheStreamsAndExitsPromptly()
    {
        await using var daemon = DaemonProcess.Start();
        await daemon.WaitReadyAsync();
        var streams = new List<Virtd.Testing.SseClient>();
        for (var i = 0; i < 3; i++) streams.Add(await Virtd.Testing.SseClient.OpenAsync(daemon.Http, "/api/v1/events"));
        foreach (var s in streams) await s.NextFrameAsync(TimeSpan.FromSeconds(10));
        var sw = System.Diagnostics.Stopwatch.StartNew();

        daemon.Terminate();

        foreach (var s in streams) await s.ReadToEndAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(10)));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"the daemon took {sw.Elapsed} to exit with event streams open");
        foreach (var s in streams) await s.DisposeAsync();
    }

    [Fact]
    public async Task WorkersFromTheCommandLine_ShowInHost()
    {
        await using var daemon = DaemonProcess.Start(["--Jobs:Workers", "3"]);
        await daemon.WaitReadyAsync();

        Assert.Equal(3, await WorkersAsync(daemon));
    }

    [Fact]
    public async Task WorkersFromTheEnvironment_ShowInHost()
    {
        await using var daemon = DaemonProcess.Start(environment: new Dictionary<string, string> { ["VIRTD_Jobs__Workers"] = "5" });
        await daemon.WaitReadyAsync();

        Assert.Equal(5, await WorkersAsync(daemon));
    }

    [Fact]
    public async Task CommandLine_WinsOverTheEnvironment()
    {
        await using var daemon = DaemonProcess.Start(["--Jobs:Workers", "3"],
            new Dictionary<string, string> { ["VIRTD_Jobs__Workers"] = "5", ["VIRTD_Jobs__PriorityWorkers"] = "4" });
        await daemon.WaitReadyAsync();

        var host = await (await daemon.Http.GetAsync("/api/v1/host")).ReadJsonAsync();

        Assert.Equal(3, host.GetProperty("jobs").GetProperty("workers").GetInt32());
        Assert.Equal(4, host.GetProperty("jobs").GetProperty("priorityWorkers").GetInt32()); // the environment still counts
    }

    [Fact]
    public async Task OverRealHttp_DefinesStartsAndRefusesOversizedBodies()
    {
        await using var daemon = DaemonProcess.Start();
        await daemon.WaitReadyAsync();
        var http = daemon.Http;

        var defined = await http.PostAsync("/api/v1/domains", Json("{\"name\":\"real\",\"memoryMiB\":64}"));
        Assert.Equal(HttpStatusCode.Created, defined.StatusCode);
        Assert.True(File.Exists(Path.Combine(daemon.StateDirectory, "domains", "real.json")));
        var started = await http.PostAsync("/api/v1/domains/real/start?wait=10", null);
        Assert.Equal(HttpStatusCode.OK, started.StatusCode);
        Assert.Equal("succeeded", (await started.ReadJsonAsync()).Str("state"));

        var oversized = "{\"name\":\"big\",\"memoryMiB\":64,\"description\":\"" + new string('x', 2 * 1024 * 1024) + "\"}";
        // With Expect: 100-continue the refusal comes before the body is sent, as a well-behaved client asks.
        using var withLength = new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains") { Content = Json(oversized) };
        withLength.Headers.ExpectContinue = true;
        await (await http.SendAsync(withLength)).AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");

        // Without Content-Length the server finds out only while reading and then closes the connection, so
        // whether this client still reads the 413 or sees the reset depends on socket timing; when it reads
        // an answer, it must be the 413 problem.
        using var chunked = new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains") { Content = new ChunkedContent(oversized) };
        chunked.Headers.TransferEncodingChunked = true;
        HttpResponseMessage? streamed = null;
        try { streamed = await http.SendAsync(chunked); }
        catch (HttpRequestException) { /* cut off while sending: the refusal as a client sees it mid-send */ }
        if (streamed is not null) await streamed.AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");

        // Nothing oversized was stored, and the daemon goes on serving.
        var list = await (await http.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.Equal(1, list.GetProperty("count").GetInt32());
    }

    private static async Task<int> WorkersAsync(DaemonProcess daemon)
    {
        var r = await daemon.Http.GetAsync("/api/v1/host");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return (await r.ReadJsonAsync()).GetProperty("jobs").GetProperty("workers").GetInt32();
    }

    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    /// <summary>A JSON body of unknown length: sent chunked, with no Content-Length.</summary>
    private sealed class ChunkedContent : HttpContent
    {
        private readonly byte[] _bytes;

        public ChunkedContent(string body)
        {
            _bytes = Encoding.UTF8.GetBytes(body);
            Headers.ContentType = new MediaTypeHeaderValue("application/json");
        }

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            for (var offset = 0; offset < _bytes.Length; offset += 64 * 1024)
                await stream.WriteAsync(_bytes.AsMemory(offset, Math.Min(64 * 1024, _bytes.Length - offset)));
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
