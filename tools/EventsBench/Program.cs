using System.Diagnostics;
using System.Globalization;
using System.Net;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Virtd.Core.Domains;
using Virtd.Core.Events;

// Event stream benchmark: the real daemon (Program) in-process behind Kestrel on loopback, N SSE clients
// over HTTP, events published straight into its bus (nothing else in the daemon can make 50,000 a second).
// For N = 1, 10, 100: the rate the bus sustains to every subscriber (a closed loop that keeps the slowest
// subscriber at most Window events behind, so nobody overflows), then the delay from publish (the event's
// own "time") to the client's parser at a fixed 1,000 events/s.
namespace Virtd.Bench.Events;

public static class EventsBench
{
    public static async Task<int> Main(string[] args)
    {
        var options = BenchOptions.Parse(args);
        Console.WriteLine($"== events bench: {Environment.ProcessorCount} CPUs, {options.Duration.TotalSeconds:0} s per measurement, " +
                          $"subscribers {string.Join(", ", options.Subscribers)}");

        await using var daemon = new BenchDaemon();
        var baseAddress = daemon.Start();
        var bus = daemon.Services.GetRequiredService<EventBus>();
        Console.WriteLine($"   virtd on {baseAddress}");

        var rows = new List<(int N, Measurement Max, Measurement Fixed)>();
        foreach (var n in options.Subscribers)
        {
            await using var clients = await Subscribers.OpenAsync(baseAddress, daemon.AdminToken, n);
            var max = await Measure.MaxRateAsync(bus, clients, options.Duration);
            Console.WriteLine($"   {n,3} subscribers, max rate: {max}");
            var fixedRate = await Measure.FixedRateAsync(bus, clients, options.Rate, options.Duration);
            Console.WriteLine($"   {n,3} subscribers, {options.Rate:N0} events/s: {fixedRate}");
            rows.Add((n, max, fixedRate));
        }

        Console.WriteLine();
        Console.WriteLine($"== results ({Environment.ProcessorCount} CPUs, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]} at the end; clients share the CPUs with the daemon)");
        Console.WriteLine($"{"subscribers",11} {"events/s each",14} {"delivered/s",12} {"p99 ms (max)",13} {$"p50 ms @{options.Rate / 1000:0}k/s",14} {$"p99 ms @{options.Rate / 1000:0}k/s",14} {"resyncs",8}");
        foreach (var (n, max, at) in rows)
            Console.WriteLine($"{n,11} {max.PerSubscriber,14:N0} {max.PerSubscriber * n,12:N0} {max.P99Ms,13:0.0} {at.P50Ms,14:0.0} {at.P99Ms,14:0.0} {max.Resyncs + at.Resyncs,8}");
        Console.WriteLine();
        Console.WriteLine("goals:");
        if (rows.FirstOrDefault(r => r.N == 1) is { Max: not null } one)
            Console.WriteLine($"  1 subscriber      ≥ 50,000 events/s           {Verdict(one.Max.PerSubscriber >= 50_000)}   ({one.Max.PerSubscriber:N0})");
        if (rows.FirstOrDefault(r => r.N == 100) is { Fixed: not null } hundred)
            Console.WriteLine($"  100 subscribers   p99 ≤ 50 ms at 1,000/s      {Verdict(hundred.Fixed.P99Ms <= 50 && Math.Abs(options.Rate - 1000) < 1)}   ({hundred.Fixed.P99Ms:0.0} ms)");
        return rows.Any(r => r.Max.Resyncs + r.Fixed.Resyncs > 0) ? 1 : 0;
    }

    private static string Verdict(bool ok) => ok ? "meets" : "MISSES";
}

sealed record BenchOptions(TimeSpan Duration, int[] Subscribers, double Rate)
{
    public static BenchOptions Parse(string[] args)
    {
        var duration = TimeSpan.FromSeconds(5);
        int[] subscribers = [1, 10, 100];
        var rate = 1000.0;
        for (var i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--seconds": duration = TimeSpan.FromSeconds(double.Parse(args[i + 1], CultureInfo.InvariantCulture)); break;
                case "--subscribers": subscribers = args[i + 1].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--rate": rate = double.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown option {args[i]} (--seconds N, --subscribers 1,10,100, --rate 1000)");
            }
        }
        return new BenchOptions(duration, subscribers, rate);
    }
}

/// <summary>What one measurement saw across all subscribers.</summary>
sealed record Measurement(double PerSubscriber, double P50Ms, double P99Ms, int Resyncs)
{
    public override string ToString() =>
        $"{PerSubscriber:N0} events/s per subscriber, delay p50 {P50Ms:0.0} ms p99 {P99Ms:0.0} ms{(Resyncs > 0 ? $", {Resyncs} RESYNCS" : "")}";
}

static class Measure
{
    /// <summary>Most events the slowest subscriber may lag behind the publisher: well under Events:SubscriberQueue (4096).</summary>
    private const int Window = 1024;

    private static readonly DomainEventData Payload =
        new("bench-domain", Guid.Parse("5f0b8a52-3a4e-4d0e-9f38-0c9f4d1f6a01"), "started", DomainState.Running, StateReasons.Booted);

    public static async Task<Measurement> MaxRateAsync(EventBus bus, Subscribers clients, TimeSpan duration)
    {
        await WarmUpAsync(bus, clients);
        var start = clients.Snapshot();
        clients.ResetDelays();
        var sw = Stopwatch.StartNew();
        var publisher = new Thread(() =>
        {
            while (sw.Elapsed < duration)
            {
                var published = bus.LastId;
                if (published - clients.SlowestLastId() >= Window)
                {
                    Thread.Yield();
                    continue;
                }
                for (var i = 0; i < 64; i++) bus.Publish(EventTypes.DomainLifecycle, Payload.Domain, Payload, Payload.DomainUuid);
            }
        }) { IsBackground = true, Name = "publisher" };
        publisher.Start();
        await Task.Run(publisher.Join);
        await clients.CaughtUpAsync(bus.LastId);
        var elapsed = sw.Elapsed;
        var got = clients.Snapshot() - start;
        return clients.Result(got / clients.Count / elapsed.TotalSeconds);
    }

    public static async Task<Measurement> FixedRateAsync(EventBus bus, Subscribers clients, double rate, TimeSpan duration)
    {
        await WarmUpAsync(bus, clients);
        clients.ResetDelays();
        var start = clients.Snapshot();
        var sw = Stopwatch.StartNew();
        var publisher = new Thread(() =>
        {
            long sent = 0;
            while (sw.Elapsed < duration)
            {
                var due = (long)(sw.Elapsed.TotalSeconds * rate);
                for (; sent < due; sent++) bus.Publish(EventTypes.DomainLifecycle, Payload.Domain, Payload, Payload.DomainUuid);
                Thread.Sleep(1);
            }
        }) { IsBackground = true, Name = "publisher" };
        publisher.Start();
        await Task.Run(publisher.Join);
        await clients.CaughtUpAsync(bus.LastId);
        var got = clients.Snapshot() - start;
        return clients.Result(got / clients.Count / duration.TotalSeconds);
    }

    private static async Task WarmUpAsync(EventBus bus, Subscribers clients)
    {
        for (var i = 0; i < 2000; i++) bus.Publish(EventTypes.DomainLifecycle, Payload.Domain, Payload, Payload.DomainUuid);
        await clients.CaughtUpAsync(bus.LastId);
    }
}

/// <summary>N open streams, each read by its own loop that parses frames from bytes and records ids and delays.</summary>
sealed class Subscribers : IAsyncDisposable
{
    private readonly HttpClient _http;
    private readonly List<Subscriber> _all;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _loops;

    private Subscribers(HttpClient http, List<Subscriber> all)
    {
        _http = http;
        _all = all;
        _loops = all.Select(s => Task.Run(() => s.ReadAsync(_stop.Token))).ToList();
    }

    public int Count => _all.Count;

    public static async Task<Subscribers> OpenAsync(Uri baseAddress, string token, int n)
    {
        var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = n + 4 }) { BaseAddress = baseAddress, Timeout = Timeout.InfiniteTimeSpan };
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        var all = new List<Subscriber>();
        for (var i = 0; i < n; i++)
        {
            var response = await http.GetAsync("/api/v1/events", HttpCompletionOption.ResponseHeadersRead);
            response.EnsureSuccessStatusCode();
            all.Add(new Subscriber(response, await response.Content.ReadAsStreamAsync()));
        }
        return new Subscribers(http, all);
    }

    public long SlowestLastId()
    {
        var min = long.MaxValue;
        foreach (var s in _all) min = Math.Min(min, Volatile.Read(ref s.LastId));
        return min;
    }

    public long Snapshot() => _all.Sum(s => Volatile.Read(ref s.Received));

    public void ResetDelays()
    {
        foreach (var s in _all) s.ResetDelays();
    }

    /// <summary>Waits until every subscriber has the event <paramref name="id"/> (or 30 s passed).</summary>
    public async Task CaughtUpAsync(long id)
    {
        var deadline = Stopwatch.StartNew();
        while (SlowestLastId() < id && deadline.Elapsed < TimeSpan.FromSeconds(30) && !_all.Any(s => s.Resyncs > 0)) await Task.Delay(1);
    }

    public Measurement Result(double perSubscriber)
    {
        var delays = _all.SelectMany(s => s.Delays()).ToArray();
        Array.Sort(delays);
        double At(double q) => delays.Length == 0 ? double.NaN : delays[Math.Min(delays.Length - 1, (int)(q * delays.Length))];
        return new Measurement(perSubscriber, At(0.50), At(0.99), _all.Sum(s => s.Resyncs));
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        foreach (var s in _all) s.Dispose();
        try { await Task.WhenAll(_loops).WaitAsync(TimeSpan.FromSeconds(10)); }
        catch (Exception e) when (e is OperationCanceledException or IOException or HttpRequestException or ObjectDisposedException or TimeoutException) { }
        _http.Dispose();
        _stop.Dispose();
    }
}

sealed class Subscriber(HttpResponseMessage response, Stream body) : IDisposable
{
    public long LastId;
    public long Received;
    public int Resyncs;
    private readonly object _lock = new();
    private List<double> _delays = new(1 << 16);

    public void ResetDelays()
    {
        lock (_lock) _delays = new List<double>(1 << 16);
    }

    public double[] Delays()
    {
        lock (_lock) return [.. _delays];
    }

    /// <summary>Reads frames: <c>id: N</c> lines set the last id; a <c>data:</c> line is an event, its <c>"time"</c> gives the delay.</summary>
    public async Task ReadAsync(CancellationToken ct)
    {
        var buffer = new byte[256 * 1024];
        var filled = 0;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                var n = await body.ReadAsync(buffer.AsMemory(filled), ct);
                if (n == 0) return;
                filled += n;
                var now = DateTimeOffset.UtcNow;
                var consumed = Parse(buffer.AsSpan(0, filled), now);
                Buffer.BlockCopy(buffer, consumed, buffer, 0, filled - consumed);
                filled -= consumed;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException or HttpRequestException) { }
    }

    private int Parse(ReadOnlySpan<byte> data, DateTimeOffset now)
    {
        var consumed = 0;
        long lastId = -1, received = 0;
        List<double>? delays = null;
        while (true)
        {
            var eol = data[consumed..].IndexOf((byte)'\n');
            if (eol < 0) break;
            var line = data.Slice(consumed, eol);
            consumed += eol + 1;
            if (line.StartsWith("id: "u8))
            {
                lastId = long.Parse(line[4..], CultureInfo.InvariantCulture);
            }
            else if (line.StartsWith("event: resync"u8))
            {
                Interlocked.Increment(ref Resyncs);
            }
            else if (line.StartsWith("data: "u8))
            {
                received++;
                var at = line.IndexOf("\"time\":\""u8);
                if (at >= 0)
                {
                    var rest = line[(at + 8)..];
                    var end = rest.IndexOf((byte)'"');
                    if (end > 0 && DateTimeOffset.TryParse(System.Text.Encoding.ASCII.GetString(rest[..end]), CultureInfo.InvariantCulture,
                            DateTimeStyles.RoundtripKind, out var time))
                        (delays ??= []).Add((now - time).TotalMilliseconds);
                }
            }
        }
        if (delays is not null) lock (_lock) _delays.AddRange(delays);
        if (received > 0) Interlocked.Add(ref Received, received);
        if (lastId >= 0) Volatile.Write(ref LastId, lastId);
        return consumed;
    }

    public void Dispose()
    {
        body.Dispose();
        response.Dispose();
    }
}

/// <summary>The daemon itself (Program), on a private state directory, behind Kestrel on a loopback port.</summary>
sealed class BenchDaemon : WebApplicationFactory<Program>
{
    private readonly string _state = Directory.CreateTempSubdirectory("virtd-bench-events-").FullName;
    private readonly string _run = Directory.CreateTempSubdirectory("vbe-").FullName;

    public BenchDaemon() => UseKestrel(k => k.Listen(IPAddress.Loopback, 0));

    /// <summary>The admin token the daemon made on its first start.</summary>
    public string AdminToken => File.ReadAllText(Path.Combine(_state, "initial-admin-token")).Trim();

    public Uri Start()
    {
        StartServer();
        return new Uri(Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Production");
        builder.ConfigureAppConfiguration((_, c) => c.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["StateDirectory"] = _state,
            ["RunDirectory"] = _run,
            ["DefaultDriver"] = "simulated",
            ["Logging:LogLevel:Default"] = "Warning",
            ["Logging:LogLevel:Microsoft.Hosting.Lifetime"] = "Warning",
        }));
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        foreach (var dir in new[] { _state, _run })
        {
            try { Directory.Delete(dir, recursive: true); }
            catch (IOException) { }
        }
    }
}
