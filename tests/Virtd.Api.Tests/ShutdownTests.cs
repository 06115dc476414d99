using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Virtd.Testing;

namespace Virtd.Api.Tests;

/// <summary>The daemon as a real process, stopped with real signals (seeds 000 and 003: it never hangs on shutdown).</summary>
public sealed class ShutdownTests
{
    private static readonly string[] Quiet = ["--DefaultDriver", "simulated", "--Logging:LogLevel:Default", "Warning", "--Logging:LogLevel:Virtd", "Information"];

    [Theory]
    [InlineData("TERM")]
    [InlineData("INT")]
    public async Task IdleDaemon_ExitsCleanlyWithinASecond(string signal)
    {
        await using var daemon = DaemonProcess.Start(Quiet);
        await daemon.WaitReadyAsync();

        var clock = Stopwatch.StartNew();
        daemon.Signal(signal);
        var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(10));

        Assert.Equal(0, code);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"SIG{signal} → exit took {clock.Elapsed.TotalMilliseconds:0} ms\n{daemon.Output}");
    }

    /// <summary>
    /// Started from a shell script's background (SIGINT inherited as ignored), the daemon used to ignore SIGINT and run
    /// on. Repeated VIRTD_SIGINT_REPEAT times (scripts/repeat-sigint runs it 200 times on a loaded machine).
    /// </summary>
    [Fact]
    public async Task StartedWithSigintIgnored_SigintStillStopsItCleanly()
    {
        var rounds = int.TryParse(Environment.GetEnvironmentVariable("VIRTD_SIGINT_REPEAT"), out var n) ? n : 1;
        var slowest = TimeSpan.Zero;
        for (var i = 0; i < rounds; i++)
        {
            DaemonProcess daemon;
            lock (IgnoredSigint)
            {
                var previous = Signal(2, 1); // SIG_IGN, inherited by the child as a shell's background job would have it
                try { daemon = DaemonProcess.Start(Quiet); }
                finally { Signal(2, previous); }
            }
            await using (daemon)
            {
                await daemon.WaitReadyAsync();
                var clock = Stopwatch.StartNew();
                daemon.Signal("INT");
                var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(10));
                Assert.Equal(0, code);
                if (clock.Elapsed > slowest) slowest = clock.Elapsed;
            }
        }
        if (rounds > 1) Console.WriteLine($"sigint repeat: {rounds} of {rounds} daemons started with SIGINT ignored exited cleanly on SIGINT; slowest {slowest.TotalMilliseconds:0} ms");
    }

    private static readonly object IgnoredSigint = new();

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "signal")]
    private static extern nint Signal(int signal, nint handler);

    [Fact]
    public async Task HungJobAnd50Queued_ExitWithinTheBound_QueuedJobsEndCancelled_TheRunningOneToo()
    {
        await using var daemon = DaemonProcess.Start([.. Quiet, "--ShutdownTimeout", "00:00:03", "--Simulated:MonitorTimeout", "00:05:00",
            "--Jobs:PerDomainQueueLimit", "100"]);
        await daemon.WaitReadyAsync();
        var http = daemon.Http;
        await http.DefineAsync(VirtdHttp.Definition("hung", new { hangMonitor = true }));
        Assert.Equal("succeeded", (await http.ActAsync("hung", "start", wait: 10)).Str("state"));
        var running = (await http.ActAsync("hung", "suspend")).Id();
        await http.RunningJobAsync(running);
        var queued = new List<string>();
        for (var i = 0; i < 50; i++) queued.Add((await http.ActAsync("hung", "reset")).Id());
        using var events = await SseReader.OpenAsync(daemon, "/api/v1/events?types=job.finished,daemon.");
        // A long poll on the hung job is open too: it must not hold the daemon up.
        var longPoll = http.GetAsync($"/api/v1/jobs/{running}?wait=60");

        var clock = Stopwatch.StartNew();
        daemon.Terminate();
        var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(15));
        var took = clock.Elapsed;

        Assert.True(took < TimeSpan.FromSeconds(3 + 1), $"exit took {took}\n{daemon.Output}");
        Assert.Equal(0, code); // the hung job was cancelled in time: nothing was left behind
        var seen = await events.ReadToEndAsync();
        Assert.Contains(seen, e => e.Type == "daemon.state" && e.Data.Str("state") == "stopping"); // streams end after it, not before
        var finished = seen.Where(e => e.Type == "job.finished").ToDictionary(e => e.Data.Str("jobId")!, e => e.Data.Str("state"));
        Assert.All(queued, id => Assert.Equal("cancelled", finished.GetValueOrDefault(id)));
        Assert.Equal("cancelled", finished.GetValueOrDefault(running));
        var polled = await longPoll;
        Assert.Equal(HttpStatusCode.OK, polled.StatusCode); // it ended with the job, not with a broken connection
        Assert.Equal("cancelled", VirtdHttp.Parse(await polled.Content.ReadAsStringAsync()).Str("state"));
        Assert.Contains("shutdown phase 1", daemon.Output);
        // Phase 1 names every job it cancels.
        Assert.All(queued, id => Assert.Contains($"shutdown: job {id} (reset) on hung cancelled while queued", daemon.Output));
        Assert.Contains($"shutdown: job {running} (suspend) on hung running: its token is cancelled", daemon.Output);
    }

    [Fact]
    public async Task WritesDuringShutdown_Get503ShuttingDown_NeverAnythingElse()
    {
        // Phase 1 returns at once and the listener closes right after it, so the writes that land in between are a
        // race: a daemon stopped before any did is stopped again, up to three times.
        var answered = new List<(HttpStatusCode Status, string Body, bool RetryAfter)>();
        var said = "";
        for (var attempt = 0; attempt < 3 && !answered.Any(a => a.Status == HttpStatusCode.ServiceUnavailable); attempt++)
        {
            var (afterSignal, output) = await WriteWhileStoppingAsync();
            answered.AddRange(afterSignal);
            said = output;
        }

        // Writes kept arriving while phase 1 ran and the listener closed: they were refused, not lost half-done.
        Assert.True(answered.Any(a => a.Status == HttpStatusCode.ServiceUnavailable),
            $"answers after the signal: [{string.Join(", ", answered.Select(a => a.Status))}]; the daemon said:\n{said}");
        // Anything answered after the signal (a define that got in first aside) is 503 shutting-down with Retry-After.
        foreach (var (status, body, retryAfter) in answered.Where(a => a.Status != HttpStatusCode.Created))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            Assert.Equal("shutting-down", VirtdHttp.Parse(body).Str("code"));
            Assert.True(retryAfter);
        }
    }

    /// <summary>Four writers define domains on their own keep-alive connections before and while the daemon stops.</summary>
    private static async Task<(List<(HttpStatusCode Status, string Body, bool RetryAfter)> AfterSignal, string Output)> WriteWhileStoppingAsync()
    {
        await using var daemon = DaemonProcess.Start([.. Quiet, "--ShutdownTimeout", "00:00:03", "--Simulated:MonitorTimeout", "00:05:00"]);
        await daemon.WaitReadyAsync();
        var http = daemon.Http;
        await http.DefineAsync(VirtdHttp.Definition("hung", new { hangMonitor = true }));
        await http.ActAsync("hung", "start", wait: 10);
        using var stop = new CancellationTokenSource();
        var signalled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var afterSignal = new List<(HttpStatusCode Status, string Body, bool RetryAfter)>();
        var counter = 0;

        var writers = Enumerable.Range(0, 4).Select(async i =>
        {
            using var client = new HttpClient { BaseAddress = http.BaseAddress, Timeout = TimeSpan.FromSeconds(10) };
            client.DefaultRequestHeaders.Authorization = http.DefaultRequestHeaders.Authorization;
            while (!stop.IsCancellationRequested)
            {
                var after = signalled.Task.IsCompleted;
                try
                {
                    var name = $"w{i}-{Interlocked.Increment(ref counter)}";
                    using var d = await client.PostAsync("/api/v1/domains",
                        new StringContent($"{{\"name\":\"{name}\",\"memoryMiB\":64}}", System.Text.Encoding.UTF8, "application/json"));
                    var body = await d.Content.ReadAsStringAsync();
                    if (after) lock (afterSignal) afterSignal.Add((d.StatusCode, body, d.Headers.RetryAfter is not null));
                }
                // The listener has closed, or closed the connection of a request in flight when the signal came.
                catch (HttpRequestException) when (signalled.Task.IsCompleted) { return; }
                catch (TaskCanceledException) when (signalled.Task.IsCompleted) { return; }
            }
        }).ToList();
        await Task.Delay(200); // the writers are going
        daemon.Terminate();
        signalled.SetResult();
        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(15)));
        await stop.CancelAsync();
        await Task.WhenAll(writers);
        return (afterSignal, daemon.Output);
    }
}

/// <summary>A Server-Sent Events client that reads a stream until it ends.</summary>
internal sealed class SseReader : IDisposable
{
    private readonly HttpResponseMessage _response;
    private readonly StreamReader _reader;

    private SseReader(HttpResponseMessage response, StreamReader reader)
    {
        _response = response;
        _reader = reader;
    }

    public sealed record Event(string Type, JsonElement Data);

    public static async Task<SseReader> OpenAsync(DaemonProcess daemon, string path)
    {
        var response = await daemon.Http.GetAsync(path, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return new SseReader(response, new StreamReader(await response.Content.ReadAsStreamAsync()));
    }

    /// <summary>Every event until the server ends the stream (bounded: a stream that does not end fails the test).</summary>
    public async Task<List<Event>> ReadToEndAsync()
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        var events = new List<Event>();
        string? type = null;
        while (await _reader.ReadLineAsync(deadline.Token) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) type = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal) && type is not null) events.Add(new Event(type, VirtdHttp.Parse(line[6..])));
            else if (line.Length == 0) type = null;
        }
        return events;
    }

    public void Dispose()
    {
        _reader.Dispose();
        _response.Dispose();
    }
}
