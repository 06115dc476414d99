using System.Net;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>What survives a daemon restart on the same state directory, and what a damaged one does to it.</summary>
public sealed class PersistenceTests
{
    [Fact]
    public async Task Restart_KeepsEveryDefinitionAsLastWritten()
    {
        string state;
        Guid uuid;
        string etag;
        await using (var first = new VirtdApplication())
        {
            state = first.StateDirectory;
            using var http = first.CreateClient();
            var disk = first.CreateImage("a.img");
            await http.DefineAsync(new { name = "a", memoryMiB = 64, disks = new[] { new { path = disk, readOnly = true } } });
            uuid = (await http.DefineAsync(Definition("b"))).GetProperty("uuid").GetGuid();
            etag = (await http.PutAsync("/api/v1/domains/b", Raw("{\"name\":\"b\",\"memoryMiB\":200,\"description\":\"kept\"}"))).ETag();
            await http.DefineAsync(Definition("gone"));
            Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("/api/v1/domains/gone")).StatusCode);
            await http.ActAsync("a", "start", wait: 10);
        }

        await using var second = new VirtdApplication(stateDirectory: state);
        using var again = second.CreateClient();

        var list = await (await again.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.Equal(["a", "b"], list.GetProperty("items").EnumerateArray().Select(d => d.Str("name")!).ToArray());
        var b = await again.GetAsync("/api/v1/domains/b");
        Assert.Equal(etag, b.ETag());
        var bBody = await b.ReadJsonAsync();
        Assert.Equal(uuid, bBody.GetProperty("uuid").GetGuid());
        Assert.Equal(200, bBody.GetProperty("definition").GetProperty("memoryMiB").GetInt32());
        Assert.Equal("kept", bBody.GetProperty("definition").Str("description"));
        var a = await again.GetDomainAsync("a");
        Assert.True(a.GetProperty("definition").GetProperty("disks")[0].GetProperty("readOnly").GetBoolean());
        Assert.Equal(HttpStatusCode.NotFound, (await again.GetAsync("/api/v1/domains/gone")).StatusCode);
        // Definitions came back usable: the restarted daemon can run them.
        Assert.Equal("succeeded", (await again.ActAsync("b", "start", wait: 10)).Str("state"));
    }

    [Fact]
    public async Task Restart_StartsAutostartDomains()
    {
        string state;
        await using (var first = new VirtdApplication())
        {
            state = first.StateDirectory;
            using var http = first.CreateClient();
            await http.DefineAsync(new { name = "auto", memoryMiB = 64, autostart = true });
            await http.DefineAsync(Definition("manual"));
        }

        await using var second = new VirtdApplication(stateDirectory: state);
        using var again = second.CreateClient();

        await PollAsync(() => again.GetDomainAsync("auto"), d => d.Str("state") == "running", "the autostart domain to run");
        Assert.Equal("shut-off", await again.StateOfAsync("manual"));
        var jobs = await (await again.GetAsync("/api/v1/jobs?domain=auto")).ReadJsonAsync();
        Assert.Equal("start", jobs.GetProperty("items")[0].Str("kind"));
    }

    [Fact]
    public async Task Restart_WithCorruptDefinitionFiles_SetsThemAsideAndServesTheRest()
    {
        string state;
        await using (var first = new VirtdApplication())
        {
            state = first.StateDirectory;
            using var http = first.CreateClient();
            await http.DefineAsync(Definition("good"));
            await http.DefineAsync(Definition("other"));
        }
        var domains = Path.Combine(state, "domains");
        var otherJson = await File.ReadAllTextAsync(Path.Combine(domains, "other.json"));
        await File.WriteAllTextAsync(Path.Combine(domains, "broken.json"), "{ \"name\": \"broken\", \"memoryMiB\": ");
        await File.WriteAllTextAsync(Path.Combine(domains, "empty.json"), "");
        await File.WriteAllTextAsync(Path.Combine(domains, "renamed.json"), otherJson.Replace("\"other\"", "\"elsewhere\"", StringComparison.Ordinal));
        await File.WriteAllTextAsync(Path.Combine(domains, "twin.json"), otherJson.Replace("\"other\"", "\"twin\"", StringComparison.Ordinal)); // same UUID as other

        await using var second = new VirtdApplication(stateDirectory: state);
        using var again = second.CreateClient();

        Assert.Equal(HttpStatusCode.OK, (await again.GetAsync("/readyz")).StatusCode);
        var list = await (await again.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.Equal(["good", "other"], list.GetProperty("items").EnumerateArray().Select(d => d.Str("name")!).ToArray());
        foreach (var name in new[] { "broken", "empty", "renamed", "twin" })
        {
            Assert.True(File.Exists(Path.Combine(domains, name + ".json.corrupt")), $"{name}.json was not set aside");
            Assert.False(File.Exists(Path.Combine(domains, name + ".json")), $"{name}.json is still in place");
        }
        Assert.True(File.Exists(Path.Combine(domains, "good.json")));
        // The names of the set-aside files are free again.
        await again.DefineAsync(Definition("broken"));
        Assert.True(File.Exists(Path.Combine(domains, "broken.json")));
    }

    [Fact]
    public async Task Restart_AfterASecondCorruptionOfTheSameName_KeepsBothCopies()
    {
        var state = TestDirectories.Create("virtd-test-");
        var domains = Directory.CreateDirectory(Path.Combine(state, "domains")).FullName;
        await File.WriteAllTextAsync(Path.Combine(domains, "bad.json"), "first");
        await using (var second = new VirtdApplication(stateDirectory: state))
        {
            Assert.Equal(HttpStatusCode.OK, (await second.CreateClient().GetAsync("/readyz")).StatusCode);
        }
        await File.WriteAllTextAsync(Path.Combine(domains, "bad.json"), "second");

        await using var third = new VirtdApplication(stateDirectory: state);

        Assert.Equal(HttpStatusCode.OK, (await third.CreateClient().GetAsync("/readyz")).StatusCode);
        Assert.Equal("first", await File.ReadAllTextAsync(Path.Combine(domains, "bad.json.corrupt")));
        Assert.Equal("second", await File.ReadAllTextAsync(Path.Combine(domains, "bad.json.corrupt.1")));
    }
}
