using System.Diagnostics;
using System.Net;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>Requests and stored state that used to give 500: each now a documented answer, and nothing stored is lost.</summary>
public sealed class FaultTests
{
    [Theory]
    [InlineData("application/json; charset=\"utf-8\"")]
    [InlineData("application/json; charset=UTF-8")]
    [InlineData("application/json;charset=utf8")]
    public async Task AUtf8CharsetParameter_QuotedOrNot_IsAccepted(string contentType)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/domains", Raw("{\"name\":\"vm\",\"memoryMiB\":64}", contentType));

        Assert.Equal(HttpStatusCode.Created, r.StatusCode);
    }

    [Theory]
    [InlineData("POST", "/api/v1/domains", "application/json; charset=bogus")]
    [InlineData("PUT", "/api/v1/domains/vm", "application/json; charset=utf-16")]
    [InlineData("POST", "/api/v1/domains/vm/shutdown", "application/json; charset=\"latin1\"")]
    [InlineData("POST", "/api/v1/tokens", "application/json; charset=us-ascii")]
    public async Task AnyOtherCharset_Is415_BeforeTheBodyIsRead(string method, string path, string contentType)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("vm"));

        var r = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path) { Content = Raw("{\"name\":\"vm\",\"memoryMiB\":64}", contentType) });

        await r.AssertProblemAsync(HttpStatusCode.UnsupportedMediaType, "unsupported-media-type");
        Assert.Equal(64, (await http.GetDomainAsync("vm")).GetProperty("definition").GetProperty("memoryMiB").GetInt32());
    }

    [Fact]
    public async Task AStoredDefinitionWithNullLists_TakesAnUnchangedPut()
    {
        var state = TestDirectories.Create("virtd-nulls-");
        var uuid = Guid.NewGuid();
        Directory.CreateDirectory(Path.Combine(state, "domains"));
        await File.WriteAllTextAsync(Path.Combine(state, "domains", "old.json"),
            $"{{\"name\":\"old\",\"uuid\":\"{uuid}\",\"driver\":\"simulated\",\"memoryMiB\":64,\"disks\":null,\"nics\":null}}");
        await using var app = new VirtdApplication(state);
        using var http = app.CreateClient();

        var put = await http.SendAsync(new HttpRequestMessage(HttpMethod.Put, "/api/v1/domains/old")
        {
            Content = Raw($"{{\"name\":\"old\",\"uuid\":\"{uuid}\",\"driver\":\"simulated\",\"memoryMiB\":64}}"),
        });

        Assert.Equal(HttpStatusCode.OK, put.StatusCode);
    }

    [Fact]
    public async Task InvalidAndUnknownStoredDefinitions_AreSetAsideOrKept_AndTheHostListsWhatWasSetAside()
    {
        var state = TestDirectories.Create("virtd-quarantine-");
        Directory.CreateDirectory(Path.Combine(state, "domains"));
        await File.WriteAllTextAsync(Path.Combine(state, "domains", "huge.json"),
            $"{{\"name\":\"huge\",\"uuid\":\"{Guid.NewGuid()}\",\"driver\":\"simulated\",\"memoryMiB\":99999999}}");
        await File.WriteAllTextAsync(Path.Combine(state, "domains", "newer.json"),
            $"{{\"name\":\"newer\",\"uuid\":\"{Guid.NewGuid()}\",\"driver\":\"simulated\",\"memoryMiB\":64,\"tpm\":true}}");
        await using var app = new VirtdApplication(state);
        using var http = app.CreateClient();

        var host = await (await http.GetAsync("/api/v1/host")).ReadJsonAsync();

        var q = Assert.Single(host.GetProperty("quarantined").EnumerateArray());
        Assert.Equal("huge.json.corrupt", q.Str("file"));
        Assert.Contains("memoryMiB", q.Str("reason"));
        Assert.Equal("shut-off", await http.StateOfAsync("newer"));
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/huge")).StatusCode);
    }

    [Fact]
    public async Task AFullDisk_Is507ForDefineAndUpdate_AndTheOldDefinitionStands()
    {
        Assert.True(Environment.UserName == "root", "this test mounts a small tmpfs: run the tests as root (scripts/test does)");
        var mount = TestDirectories.Create("virtd-full-");
        Run("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount);
        try
        {
            var audit = Path.Combine(TestDirectories.Create("virtd-audit-"), "audit.log"); // the audit log is elsewhere: it comes first
            await using var app = new VirtdApplication(mount, new Dictionary<string, string?> { ["Security:AuditLog"] = audit, ["Jobs:Journal"] = "false" });
            using var http = app.CreateClient();
            await http.DefineAsync(Definition("kept"));
            var filler = Path.Combine(mount, "filler");
            try
            {
                await using var f = File.OpenWrite(filler);
                var block = new byte[4096];
                while (true) f.Write(block);
            }
            catch (IOException) { } // full

            var define = await http.PostJsonAsync("/api/v1/domains", Definition("more"));
            var update = await http.SendAsync(new HttpRequestMessage(HttpMethod.Put, "/api/v1/domains/kept")
            {
                Content = Raw("{\"name\":\"kept\",\"memoryMiB\":128,\"description\":\"" + new string('x', 3000) + "\"}"),
            });

            await define.AssertProblemAsync(HttpStatusCode.InsufficientStorage, "insufficient-storage");
            await update.AssertProblemAsync(HttpStatusCode.InsufficientStorage, "insufficient-storage");
            Assert.Equal(64, (await http.GetDomainAsync("kept")).GetProperty("definition").GetProperty("memoryMiB").GetInt32());
            Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/more")).StatusCode);
            Assert.Contains("\"memoryMiB\": 64", await File.ReadAllTextAsync(Path.Combine(mount, "domains", "kept.json")));
            Assert.Empty(Directory.EnumerateFiles(Path.Combine(mount, "domains"), "*.tmp"));
        }
        finally
        {
            Run("umount", "-l", mount);
        }
    }

    private static void Run(string file, params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true })!;
        p.WaitForExit(10_000);
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {p.StandardError.ReadToEnd()}");
    }
}
