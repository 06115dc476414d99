using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Virtd.Testing;

namespace Virtd.Aot.Tests;

/// <summary>
/// The Native AOT binary of scripts/publish, run as users run it, against real QEMU; each test also runs the JIT build
/// (<c>dotnet virtd.dll</c>) the same way, so that a difference between the two builds fails here and says which.
/// </summary>
[Collection(AotCollection.Name)]
public sealed class AotDaemonTests
{
    public static TheoryData<string> Builds => new() { "aot", "jit" };

    private static DaemonProcess Start(string build, IEnumerable<string>? args = null)
    {
        var common = new List<string>
        {
            "--DefaultDriver", "qemu",
            "--Storage:Pools:guest", TestGuestImage.Directory,
            "--Logging:LogLevel:Default", "Warning",
        };
        common.AddRange(args ?? []);
        return DaemonProcess.Start(common, executable: build == "aot" ? PublishedBinary.Path : null);
    }

    private static object TestGuest(string name) => new
    {
        name,
        memoryMiB = 128,
        boot = new { kernel = TestGuestImage.Kernel, initrd = TestGuestImage.Initrd, cmdline = TestGuestImage.Cmdline },
    };

    [Theory]
    [MemberData(nameof(Builds))]
    public async Task Lifecycle_OfARealGuest_WithItsEvents(string build)
    {
        await using var daemon = Start(build);
        await daemon.WaitReadyAsync();
        try
        {
            await using var events = await SseClient.OpenAsync(daemon.Http, "/api/v1/events?domain=guest&types=domain.lifecycle");
            var defined = await daemon.Http.DefineAsync(TestGuest("guest"));
            Assert.Equal("shut-off", defined.Str("state"));

            foreach (var (action, state) in new[] { ("start", "running"), ("suspend", "paused"), ("resume", "running"), ("destroy", "shut-off") })
            {
                var job = await daemon.Http.ActAsync("guest", action, wait: 120);
                Assert.True(job.Str("state") == "succeeded", $"{build}: {action} failed: {job}");
                Assert.Equal(state, await daemon.Http.StateOfAsync("guest"));
                // Each change is told on the stream, with the state after it.
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                SseFrame frame;
                do frame = await events.NextEventAsync(deadline - DateTime.UtcNow);
                while (frame.Str("state") != state);
                Assert.Equal("domain.lifecycle", frame.Type);
                Assert.Equal("guest", frame.Str("domain"));
            }
        }
        finally
        {
            VmProcesses.KillAll(daemon.RunDirectory);
        }
    }

    [Theory]
    [MemberData(nameof(Builds))]
    public async Task BadDefinitions_Are400ProblemJson_AndStoreNothing(string build)
    {
        await using var daemon = Start(build);
        await daemon.WaitReadyAsync();

        using var wrongType = await daemon.Http.PostAsync("/api/v1/domains",
            new StringContent("""{"name":"bad","memoryMiB":"lots"}""", Encoding.UTF8, "application/json"));
        var problem = await wrongType.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("memoryMiB", problem.ToString());

        // A value of the right type that the validator refuses (FluentValidation): the field is named in errors.
        using var tooSmall = await daemon.Http.PostAsJsonAsync("/api/v1/domains", new { name = "bad", memoryMiB = 1 });
        var refused = await tooSmall.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.True(refused.GetProperty("errors").TryGetProperty("memoryMiB", out _), $"{build}: {refused}");

        using var unknown = await daemon.Http.PostAsync("/api/v1/domains",
            new StringContent("""{"name":"bad","memoryMiB":64,"colour":"blue"}""", Encoding.UTF8, "application/json"));
        await unknown.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");

        using var list = await daemon.Http.GetAsync("/api/v1/domains");
        Assert.Equal(0, (await list.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("count").GetInt32());
    }

    [Theory]
    [MemberData(nameof(Builds))]
    public async Task ASecondAfterReady_GivesBackWhatStartUpUsed_AndServesOn(string build)
    {
        await using var daemon = Start(build, ["--Logging:LogLevel:Virtd.Api.Hosting.MemoryTrimmer", "Information"]);
        await daemon.WaitReadyAsync();

        var trim = new System.Text.RegularExpressions.Regex(@"memory trim \(start\): RSS ([0-9.]+) → ([0-9.]+) MiB");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        System.Text.RegularExpressions.Match m;
        while (!(m = trim.Match(daemon.Output)).Success)
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"{build}: no start-up trim logged within 30 s:\n{daemon.Output}");
            await Task.Delay(50);
        }
        double before = double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        double after = double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(after < before, $"{build}: the trim gave nothing back: {m.Value}");

        // Code and data whose pages were given back run again: a define, a read, a list, a bad definition.
        await daemon.Http.DefineAsync(new { name = "after-trim", memoryMiB = 64 });
        Assert.Equal("shut-off", await daemon.Http.StateOfAsync("after-trim"));
        Assert.Contains("after-trim", await daemon.Http.GetStringAsync("/api/v1/domains"));
        var bad = await daemon.Http.PostAsync("/api/v1/domains", new StringContent("{\"name\":\"\"}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
    }

    [Theory]
    [MemberData(nameof(Builds))]
    public async Task Sigterm_ExitsZero(string build)
    {
        await using var daemon = Start(build);
        await daemon.WaitReadyAsync();
        await daemon.Http.DefineAsync(new { name = "kept", memoryMiB = 64 });

        daemon.Terminate();

        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(30)));
        Assert.True(File.Exists(Path.Combine(daemon.StateDirectory, "domains", "kept.json")), $"{build}: the definition was not kept");
    }

    [Theory]
    [MemberData(nameof(Builds))]
    public async Task OpenApiDocument_Served_EqualsTheCommittedOne(string build)
    {
        await using var daemon = Start(build);
        await daemon.WaitReadyAsync();

        var served = JsonNode.Parse(await daemon.Http.GetStringAsync("/openapi/v1.json"))!.AsObject();
        var committed = JsonNode.Parse(await File.ReadAllTextAsync(RepositoryFiles.OpenApiDocument))!.AsObject();

        // The one thing that depends on the request: a served document names the daemon that served it (the committed one, "/").
        Assert.Equal(daemon.Http.BaseAddress!.ToString(), (string?)served["servers"]![0]!["url"]);
        served.Remove("servers");
        committed.Remove("servers");

        Assert.True(JsonNode.DeepEquals(served, committed),
            $"{build}: the served OpenAPI document differs from openapi/virtd.v1.json at {FirstDifference(served, committed, "$")}");
    }

    /// <summary>Where two JSON trees first differ, with both values.</summary>
    private static string FirstDifference(JsonNode? a, JsonNode? b, string path)
    {
        switch (a, b)
        {
            case (JsonObject x, JsonObject y):
                foreach (var name in x.Select(p => p.Key).Union(y.Select(p => p.Key)))
                {
                    if (!x.ContainsKey(name)) return $"{path}.{name}: only in the committed one";
                    if (!y.ContainsKey(name)) return $"{path}.{name}: only in the served one: {x[name]?.ToJsonString()[..Math.Min(300, x[name]?.ToJsonString().Length ?? 0)]}";
                    if (!JsonNode.DeepEquals(x[name], y[name])) return FirstDifference(x[name], y[name], $"{path}.{name}");
                }
                return path + ": the same members in another order";
            case (JsonArray x, JsonArray y):
                for (var i = 0; i < Math.Min(x.Count, y.Count); i++)
                    if (!JsonNode.DeepEquals(x[i], y[i])) return FirstDifference(x[i], y[i], $"{path}[{i}]");
                return $"{path}: {x.Count} items served, {y.Count} committed";
            default:
                return $"{path}: served {a?.ToJsonString()}, committed {b?.ToJsonString()}";
        }
    }
}

/// <summary>Daemons that run TCG guests take turns: the machine has two cores.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AotCollection
{
    public const string Name = "published daemon";
}

/// <summary>The binary scripts/publish writes (cached by the hash of its inputs: quick when nothing changed).</summary>
public static class PublishedBinary
{
    private static readonly Lazy<string> Built = new(() =>
        RepositoryFiles.RunScript(System.IO.Path.Combine("scripts", "publish"), TimeSpan.FromMinutes(15))("virtd"));

    public static string Path => Built.Value;
}
