using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Virtd.Api.Tests.Access;
using Virtd.Core.Configuration;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>The <c>Limits</c> section: what one caller may ask of the daemon and of the host, each refusal with its own code.</summary>
public sealed class LimitsTests
{
    [Fact]
    public async Task DomainQuota_RefusesTheDefineBeyondIt_AndFreesASlotOnUndefine()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Limits:Domains"] = "3" });
        using var http = app.CreateClient();
        for (var i = 0; i < 3; i++) await http.DefineAsync(Definition($"vm{i}"));

        var over = await http.PostAsJsonAsync("/api/v1/domains", Definition("vm3"), VirtdApplication.Json);
        var problem = await over.AssertProblemAsync(HttpStatusCode.Conflict, "quota-exceeded");
        Assert.Contains("Limits:Domains", problem.Str("detail"));
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/vm3")).StatusCode);
        Assert.False(File.Exists(Path.Combine(app.StateDirectory, "domains", "vm3.json")));

        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("/api/v1/domains/vm0")).StatusCode);
        await http.DefineAsync(Definition("vm3"));
    }

    [Fact]
    public async Task ConcurrentDefines_NeverGoPastTheQuota()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Limits:Domains"] = "10" });
        using var http = app.CreateClient();

        var answers = await Task.WhenAll(Enumerable.Range(0, 40).Select(i =>
            http.PostAsJsonAsync("/api/v1/domains", Definition($"vm{i}"), VirtdApplication.Json)));

        Assert.Equal(10, answers.Count(a => a.StatusCode == HttpStatusCode.Created));
        Assert.Equal(30, answers.Count(a => a.StatusCode == HttpStatusCode.Conflict));
        var list = await (await http.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.Equal(10, list.GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task MemoryOfRunningDomains_IsHeldToTheOvercommitOfHostRam()
    {
        // A budget of a tenth of the host's RAM; each domain takes just over half of it, so one runs and two do not.
        var each = (int)(ResourceLimits.HostMemoryMiB * 0.1 / 2) + 1;
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Limits:MemoryOvercommit"] = "0.1" });
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("a", memoryMiB: each));
        await http.DefineAsync(Definition("b", memoryMiB: each));
        Assert.Equal("succeeded", (await http.ActAsync("a", "start", wait: 30)).Str("state"));

        var refused = await http.PostActionAsync("b", "start");
        var problem = await refused.AssertProblemAsync(HttpStatusCode.Conflict, "insufficient-resources");
        Assert.Contains("Limits:MemoryOvercommit", problem.Str("detail"));
        Assert.Equal("shut-off", await http.StateOfAsync("b"));

        Assert.Equal("succeeded", (await http.ActAsync("a", "destroy", wait: 30)).Str("state"));
        Assert.Equal("succeeded", (await http.ActAsync("b", "start", wait: 30)).Str("state"));
    }

    [Fact]
    public async Task EventStreams_AreLimitedPerCallerAndInAll()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?>
        {
            ["Limits:EventStreams"] = "3",
            ["Limits:EventStreamsPerIdentity"] = "2",
        });
        using var admin = app.CreateClient();
        using var reader = app.CreateClient(await TokenTests.CreateTokenAsync(admin, "watcher", "reader"));
        using var other = app.CreateClient(await TokenTests.CreateTokenAsync(admin, "other", "reader"));

        var first = await SseClient.OpenAsync(admin, "/api/v1/events");
        await using var second = await SseClient.OpenAsync(admin, "/api/v1/events");
        var third = await SseClient.SendAsync(admin, "/api/v1/events");
        var perCaller = await third.AssertProblemAsync(HttpStatusCode.TooManyRequests, "too-many-streams");
        Assert.Contains("Limits:EventStreamsPerIdentity", perCaller.Str("detail"));
        Assert.NotNull(third.Headers.RetryAfter);

        await using var readers = await SseClient.OpenAsync(reader, "/api/v1/events"); // another caller: its own two
        var inAll = await SseClient.SendAsync(other, "/api/v1/events");
        Assert.Contains("Limits:EventStreams", (await inAll.AssertProblemAsync(HttpStatusCode.TooManyRequests, "too-many-streams")).Str("detail"));

        // A closed stream gives its slot back once the server sees the client go.
        await first.DisposeAsync();
        await PollAsync(async () => Parse(((int)(await SseClient.SendAsync(other, "/api/v1/events", timeout: TimeSpan.FromSeconds(5))).StatusCode).ToString()),
            s => s.GetInt32() == 200, "a stream slot freed by a closed stream");
    }

    [Fact]
    public async Task RequestsPerSecond_LimitsEachCaller_WithRetryAfter_AndNeverTheHealthProbes()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Limits:RequestsPerSecond"] = "5" });
        using var admin = app.CreateClient();
        var readerToken = await TokenTests.CreateTokenAsync(admin, "reader", "reader");

        var answers = await Task.WhenAll(Enumerable.Range(0, 40).Select(_ => admin.GetAsync("/api/v1/domains")));

        var refused = answers.Where(a => a.StatusCode == HttpStatusCode.TooManyRequests).ToList();
        Assert.NotEmpty(refused);
        Assert.All(answers, a => Assert.Contains(a.StatusCode, new[] { HttpStatusCode.OK, HttpStatusCode.TooManyRequests }));
        await refused[0].AssertProblemAsync(HttpStatusCode.TooManyRequests, "rate-limited");
        Assert.True(refused[0].Headers.RetryAfter?.Delta >= TimeSpan.FromSeconds(1));
        // Another caller has its own budget, and probes are never counted.
        using var reader = app.CreateClient(readerToken);
        Assert.Equal(HttpStatusCode.OK, (await reader.GetAsync("/api/v1/domains")).StatusCode);
        var probes = await Task.WhenAll(Enumerable.Range(0, 30).Select(_ => admin.GetAsync("/healthz")));
        Assert.All(probes, p => Assert.Equal(HttpStatusCode.OK, p.StatusCode));
    }

    [Fact]
    public async Task RequestsPerSecond_ZeroByDefault_LimitsNothing()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var answers = await Task.WhenAll(Enumerable.Range(0, 200).Select(_ => http.GetAsync("/api/v1/host")));

        Assert.All(answers, a => Assert.Equal(HttpStatusCode.OK, a.StatusCode));
    }

    [Fact]
    public async Task DomainList_InPages_FollowsLinkNext_ToEveryDomainOnce()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var names = Enumerable.Range(0, 25).Select(i => $"vm{i:00}").ToList();
        foreach (var n in names) await http.DefineAsync(Definition(n));

        var seen = new List<string>();
        string? url = "/api/v1/domains?limit=10&driver=simulated";
        var pages = 0;
        while (url is not null)
        {
            var r = await http.GetAsync(url);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            var page = await r.ReadJsonAsync();
            seen.AddRange(page.GetProperty("items").EnumerateArray().Select(d => d.Str("name")!));
            var link = r.Headers.TryGetValues("Link", out var v) ? v.Single() : null;
            Assert.Equal(link is null, page.Str("next") is null);
            if (link is not null)
            {
                Assert.EndsWith("; rel=\"next\"", link);
                Assert.Contains("driver=simulated", link); // the filters carry on
                if (pages == 0) await http.DefineAsync(Definition("vm00a")); // defined behind the cursor: not seen
            }
            url = link?[1..link.IndexOf('>')];
            pages++;
        }

        Assert.Equal(3, pages);
        Assert.Equal(names, seen);
        var all = await (await http.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.Equal(26, all.GetProperty("count").GetInt32()); // no limit: everything up to Limits:ListDefault
        Assert.False(all.TryGetProperty("next", out _));
    }

    [Fact]
    public async Task JobList_InPages_IsNewestFirst_WithoutRepeatsOrGaps()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));
        for (var i = 0; i < 7; i++)
        {
            await http.ActAsync("vm", "start", wait: 30);
            await http.ActAsync("vm", "destroy", wait: 30);
        }
        var whole = (await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync()).GetProperty("items").EnumerateArray().Select(j => j.Id()).ToList();
        Assert.Equal(14, whole.Count);

        var paged = new List<string>();
        string? next = null;
        do
        {
            var page = await (await http.GetAsync("/api/v1/jobs?limit=4" + (next is null ? "" : "&after=" + next))).ReadJsonAsync();
            paged.AddRange(page.GetProperty("items").EnumerateArray().Select(j => j.Id()));
            next = page.Str("next");
        } while (next is not null);

        Assert.Equal(whole, paged);
    }

    [Theory]
    [InlineData("/api/v1/domains?limit=0", "limit")]
    [InlineData("/api/v1/domains?limit=-1", "limit")]
    [InlineData("/api/v1/domains?limit=10001", "limit")]
    [InlineData("/api/v1/domains?after=not-a-cursor!", "after")]
    [InlineData("/api/v1/jobs?after=ZG9tYWluczp2bTA", "after")] // a domain list's cursor
    [InlineData("/api/v1/jobs?after=am9iczoxMjM", "after")]    // "jobs:123"
    [InlineData("/api/v1/jobs?limit=-1", "limit")]
    public async Task BadLimitOrCursor_Is400NamingIt(string url, string field)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var problem = await (await http.GetAsync(url)).AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");

        Assert.Contains(field, problem.FieldErrors().Keys);
    }

    [Fact]
    public async Task Connections_BeyondLimitsConnections_AreRefused_UntilOneCloses()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Limits:Connections"] = "16" }, kestrel: true);
        var address = app.StartKestrel();
        var open = new List<TcpClient>();
        try
        {
            for (var i = 0; i < 16; i++)
            {
                var c = new TcpClient();
                await c.ConnectAsync(address.Host, address.Port);
                Assert.StartsWith("HTTP/1.1 200", await HealthAsync(c));
                open.Add(c);
            }

            using (var over = new TcpClient())
            {
                await over.ConnectAsync(address.Host, address.Port);
                Assert.Equal("", await HealthAsync(over)); // closed without an answer
            }

            open[0].Dispose();
            open.RemoveAt(0);
            await PollAsync(async () =>
            {
                using var again = new TcpClient();
                await again.ConnectAsync(address.Host, address.Port);
                return Parse(JsonSerializer.Serialize(await HealthAsync(again)));
            }, s => s.GetString()!.StartsWith("HTTP/1.1 200", StringComparison.Ordinal), "a connection slot given back");
        }
        finally
        {
            foreach (var c in open) c.Dispose();
        }
    }

    /// <summary>Sends GET /healthz on the connection, keeping it open; the status line, or "" when the server closed it.</summary>
    private static async Task<string> HealthAsync(TcpClient c)
    {
        var s = c.GetStream();
        try
        {
            await s.WriteAsync(Encoding.ASCII.GetBytes("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
            var buffer = new byte[4096];
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            var n = await s.ReadAsync(buffer, cts.Token);
            var text = Encoding.ASCII.GetString(buffer, 0, n);
            return text.Split("\r\n")[0];
        }
        catch (IOException)
        {
            return "";
        }
    }
}
