using System.Net;
using System.Text.Json;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>Define, read, list, replace and undefine domains: /api/v1/domains and /api/v1/domains/{id}.</summary>
public sealed class DomainsApiTests
{
    [Fact]
    public async Task Define_ReturnsCreatedWithLocationETagAndTheStoredDefinition()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var disk = app.CreateImage("web.img");

        var r = await http.PostJsonAsync("/api/v1/domains", new
        {
            name = "web",
            memoryMiB = 128,
            vcpus = 2,
            disks = new[] { new { path = disk, format = "qcow2" } },
            description = "front end",
        });

        Assert.Equal(HttpStatusCode.Created, r.StatusCode);
        Assert.Equal("/api/v1/domains/web", r.Headers.Location?.OriginalString);
        var etag = r.ETag();
        var d = await r.ReadJsonAsync();
        Assert.Equal("web", d.Str("name"));
        Assert.Equal("shut-off", d.Str("state"));
        Assert.Equal("simulated", d.Str("driver"));
        Assert.False(d.GetProperty("pendingChanges").GetBoolean());
        var uuid = d.GetProperty("uuid").GetGuid();
        Assert.NotEqual(Guid.Empty, uuid);
        var def = d.GetProperty("definition");
        Assert.Equal(uuid, def.GetProperty("uuid").GetGuid());
        Assert.Equal(128, def.GetProperty("memoryMiB").GetInt32());
        Assert.Equal(2, def.GetProperty("vcpus").GetInt32());
        Assert.Equal("q35", def.Str("machine"));
        Assert.Equal("qcow2", def.GetProperty("disks")[0].Str("format"));
        Assert.Equal("front end", def.Str("description"));

        // The ETag a define returns is the one a read returns.
        var get = await http.GetAsync("/api/v1/domains/web");
        Assert.Equal(etag, get.ETag());
    }

    [Fact]
    public async Task Get_FindsADomainByNameOrByUuid()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var uuid = Guid.NewGuid();
        await http.DefineAsync(new { name = "by-id", memoryMiB = 64, uuid });

        var byName = await http.GetAsync("/api/v1/domains/by-id");
        var byUuid = await http.GetAsync($"/api/v1/domains/{uuid}");

        Assert.Equal(HttpStatusCode.OK, byUuid.StatusCode);
        Assert.Equal("by-id", (await byUuid.ReadJsonAsync()).Str("name"));
        Assert.Equal(byName.ETag(), byUuid.ETag());
    }

    [Fact]
    public async Task Get_UnknownDomain_Is404DomainNotFound()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var byName = await http.GetAsync("/api/v1/domains/nope");
        var byUuid = await http.GetAsync($"/api/v1/domains/{Guid.NewGuid()}");

        var p = await byName.AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
        Assert.Equal("/api/v1/domains/nope", p.Str("instance"));
        Assert.Contains("nope", p.Str("detail"));
        await byUuid.AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
    }

    [Fact]
    public async Task Define_WithNullLists_AsGeneratedClientsSendThem_StoresNoDisksAndNoNics()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostJsonAsync("/api/v1/domains", new { name = "bare", memoryMiB = 64, disks = (object?)null, nics = (object?)null });

        Assert.Equal(HttpStatusCode.Created, r.StatusCode);
        var def = (await r.ReadJsonAsync()).GetProperty("definition");
        Assert.Equal(0, def.GetProperty("disks").GetArrayLength());
        Assert.Equal(0, def.GetProperty("nics").GetArrayLength());
    }

    [Fact]
    public async Task Define_SameNameOrSameUuidTwice_Is409DomainExists()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var uuid = Guid.NewGuid();
        await http.DefineAsync(new { name = "first", memoryMiB = 64, uuid });

        var sameName = await http.PostJsonAsync("/api/v1/domains", new { name = "first", memoryMiB = 64 });
        var sameUuid = await http.PostJsonAsync("/api/v1/domains", new { name = "second", memoryMiB = 64, uuid });

        await sameName.AssertProblemAsync(HttpStatusCode.Conflict, "domain-exists");
        var p = await sameUuid.AssertProblemAsync(HttpStatusCode.Conflict, "domain-exists");
        Assert.Contains(uuid.ToString(), p.Str("detail"));
        var list = await (await http.GetAsync("/api/v1/domains")).ReadJsonAsync();
        Assert.Equal(1, list.GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task Define_InvalidFields_Is400WithErrorsKeyedByJsonPath()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var outside = Path.Combine(app.StateDirectory, "outside.img"); // exists, but not in a pool
        File.WriteAllBytes(outside, new byte[16]);

        var r = await http.PostJsonAsync("/api/v1/domains", new
        {
            name = "bad name!",
            memoryMiB = 1,
            vcpus = 0,
            disks = new object[]
            {
                new { path = app.CreateImage("ok.img") },
                new { path = outside },
                new { path = "relative.img" },
            },
            boot = new { cmdline = "console=ttyS0" },
            simulation = new { bootDelayMs = -1 },
        });

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        var errors = p.FieldErrors();
        Assert.Equal(
            new[] { "boot.kernel", "disks[1].path", "disks[2].path", "memoryMiB", "name", "simulation.bootDelayMs", "vcpus" },
            errors.Keys.Order(StringComparer.Ordinal).ToArray());
        Assert.Contains("is not a file inside a storage pool", errors["disks[1].path"][0]);
        Assert.Contains("absolute", errors["disks[2].path"][0]);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/bad%20name!")).StatusCode);
    }

    [Fact]
    public async Task Define_DiskReachedThroughALinkOutOfThePool_IsRejected()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var secret = Path.Combine(app.StateDirectory, "secret.img");
        File.WriteAllBytes(secret, new byte[16]);
        app.CreateImage("placeholder.img");
        var link = Path.Combine(app.ImagesDirectory, "innocent.img");
        File.CreateSymbolicLink(link, secret);

        var r = await http.PostJsonAsync("/api/v1/domains", new { name = "sneaky", memoryMiB = 64, disks = new[] { new { path = link } } });

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        var message = p.FieldErrors()["disks[0].path"][0];
        Assert.Contains("is not a file inside a storage pool", message);
        Assert.DoesNotContain(secret, message); // the answer never says where a link leads
    }

    [Fact]
    public async Task Define_WithQemuDriverAndNoQemu_IsStoredButStartIs409HypervisorUnavailable()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Qemu:Binary"] = "/nonexistent/qemu-system-x86_64" });
        using var http = app.CreateClient();
        await http.DefineAsync(new { name = "real", memoryMiB = 64, driver = "qemu" });

        var r = await http.PostActionAsync("real", "start");

        var p = await r.AssertProblemAsync(HttpStatusCode.Conflict, "hypervisor-unavailable");
        Assert.Contains("/nonexistent/qemu-system-x86_64", p.GetProperty("detail").GetString());
        Assert.Equal("shut-off", await http.StateOfAsync("real"));
    }

    [Fact]
    public async Task List_ReturnsEveryDomainSortedByName_AndFiltersByStateAndDriver()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("charlie"));
        await http.DefineRunningAsync("alpha");
        await http.DefineAsync(new { name = "bravo", memoryMiB = 64, driver = "qemu" });

        static async Task<string[]> Names(HttpResponseMessage r)
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            var list = await r.ReadJsonAsync();
            var names = list.GetProperty("items").EnumerateArray().Select(d => d.Str("name")!).ToArray();
            Assert.Equal(names.Length, list.GetProperty("count").GetInt32());
            return names;
        }

        Assert.Equal(["alpha", "bravo", "charlie"], await Names(await http.GetAsync("/api/v1/domains")));
        Assert.Equal(["alpha"], await Names(await http.GetAsync("/api/v1/domains?state=running")));
        Assert.Equal(["bravo", "charlie"], await Names(await http.GetAsync("/api/v1/domains?state=shut-off")));
        Assert.Equal(["alpha", "charlie"], await Names(await http.GetAsync("/api/v1/domains?driver=simulated")));
        Assert.Equal(["bravo"], await Names(await http.GetAsync("/api/v1/domains?driver=qemu")));
        Assert.Empty(await Names(await http.GetAsync("/api/v1/domains?state=running&driver=qemu")));
    }

    [Theory]
    [InlineData("state=on", "state")]
    [InlineData("state=Running", "state")]
    [InlineData("driver=xen", "driver")]
    public async Task List_UnknownFilterValue_Is400NamingTheParameter(string query, string field)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.GetAsync("/api/v1/domains?" + query);

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("expected one of", p.FieldErrors()[field][0]);
    }

    [Fact]
    public async Task Put_ReplacesTheDefinition_AndChangesTheETag()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var created = await http.DefineAsync(new { name = "grow", memoryMiB = 64, description = "small" });
        var uuid = created.GetProperty("uuid").GetGuid();
        var before = (await http.GetAsync("/api/v1/domains/grow")).ETag();

        var put = await http.SendAsync(new HttpRequestMessage(HttpMethod.Put, "/api/v1/domains/grow")
        {
            Content = JsonContent(new { name = "grow", memoryMiB = 256 }),
        });

        Assert.Equal(HttpStatusCode.OK, put.StatusCode);
        var after = put.ETag();
        Assert.NotEqual(before, after);
        var d = await put.ReadJsonAsync();
        Assert.Equal(256, d.GetProperty("definition").GetProperty("memoryMiB").GetInt32());
        Assert.False(d.GetProperty("definition").TryGetProperty("description", out _)); // replaced, not merged
        Assert.Equal(uuid, d.GetProperty("uuid").GetGuid()); // kept though the body had none
        Assert.False(d.GetProperty("pendingChanges").GetBoolean());
        Assert.Equal(after, (await http.GetAsync("/api/v1/domains/grow")).ETag());
    }

    [Fact]
    public async Task Put_WithMatchingIfMatch_Succeeds_AndTheOldETagThenIs412()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var created = await http.PostJsonAsync("/api/v1/domains", Definition("guarded"));
        var etag = created.ETag();

        var first = await http.SendAsync(new HttpRequestMessage(HttpMethod.Put, "/api/v1/domains/guarded")
        {
            Content = JsonContent(Definition("guarded", memoryMiB: 96)),
        }.WithIfMatch(etag));
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Assert.NotEqual(etag, first.ETag());

        // A second writer still holding the old ETag loses, and its change is not applied.
        var second = await http.SendAsync(new HttpRequestMessage(HttpMethod.Put, "/api/v1/domains/guarded")
        {
            Content = JsonContent(Definition("guarded", memoryMiB: 512)),
        }.WithIfMatch(etag));

        var p = await second.AssertProblemAsync(HttpStatusCode.PreconditionFailed, "etag-mismatch");
        Assert.Contains(first.ETag(), p.Str("detail"));
        var d = await http.GetDomainAsync("guarded");
        Assert.Equal(96, d.GetProperty("definition").GetProperty("memoryMiB").GetInt32());
    }

    [Fact]
    public async Task Put_ThatChangesNameOrUuid_Is400AndChangesNothing()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("fixed"));
        var etag = (await http.GetAsync("/api/v1/domains/fixed")).ETag();

        var rename = await http.PutAsync("/api/v1/domains/fixed", JsonContent(Definition("renamed")));
        var reUuid = await http.PutAsync("/api/v1/domains/fixed", JsonContent(new { name = "fixed", memoryMiB = 64, uuid = Guid.NewGuid() }));

        Assert.Contains("name", (await rename.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed")).FieldErrors().Keys);
        Assert.Contains("uuid", (await reUuid.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed")).FieldErrors().Keys);
        Assert.Equal(etag, (await http.GetAsync("/api/v1/domains/fixed")).ETag());
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/renamed")).StatusCode);
    }

    [Fact]
    public async Task Put_InvalidDefinition_Is400WithFieldErrors()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("strict"));

        var r = await http.PutAsync("/api/v1/domains/strict", JsonContent(new { name = "strict", memoryMiB = 8 }));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Equal(["memoryMiB"], p.FieldErrors().Keys.ToArray());
        Assert.Equal(64, (await http.GetDomainAsync("strict")).GetProperty("definition").GetProperty("memoryMiB").GetInt32());
    }

    [Fact]
    public async Task Put_UnknownDomain_Is404()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PutAsync("/api/v1/domains/ghost", JsonContent(Definition("ghost")));

        await r.AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/ghost")).StatusCode);
    }

    [Fact]
    public async Task Put_OfARunningDomain_IsPendingUntilTheNextStart()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("live");

        var put = await http.PutAsync("/api/v1/domains/live", JsonContent(Definition("live", memoryMiB: 512)));

        Assert.Equal(HttpStatusCode.OK, put.StatusCode);
        var d = await http.GetDomainAsync("live");
        Assert.Equal("running", d.Str("state"));
        Assert.True(d.GetProperty("pendingChanges").GetBoolean());
        Assert.Equal(512, d.GetProperty("definition").GetProperty("memoryMiB").GetInt32());
        Assert.Equal(64, d.GetProperty("liveDefinition").GetProperty("memoryMiB").GetInt32());

        await http.ActAsync("live", "destroy", wait: 10);
        await http.ActAsync("live", "start", wait: 10);

        var restarted = await http.GetDomainAsync("live");
        Assert.False(restarted.GetProperty("pendingChanges").GetBoolean());
        Assert.False(restarted.TryGetProperty("liveDefinition", out _));
        Assert.Equal(512, restarted.GetProperty("definition").GetProperty("memoryMiB").GetInt32());
    }

    [Fact]
    public async Task Delete_UndefinesTheDomain_AndItsNameCanBeDefinedAgain()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineAsync(Definition("gone"));

        var r = await http.DeleteAsync("/api/v1/domains/gone");

        Assert.Equal(HttpStatusCode.NoContent, r.StatusCode);
        await (await http.GetAsync("/api/v1/domains/gone")).AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
        Assert.False(File.Exists(Path.Combine(app.StateDirectory, "domains", "gone.json")));
        await (await http.DeleteAsync("/api/v1/domains/gone")).AssertProblemAsync(HttpStatusCode.NotFound, "domain-not-found");
        await http.DefineAsync(Definition("gone"));
    }

    [Fact]
    public async Task Delete_WhileRunning_Is409DomainActive_AndTheDomainKeepsRunning()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        await http.DefineRunningAsync("busy");

        var r = await http.DeleteAsync("/api/v1/domains/busy");

        await r.AssertProblemAsync(HttpStatusCode.Conflict, "domain-active");
        Assert.Equal("running", await http.StateOfAsync("busy"));
    }

    [Fact]
    public async Task Delete_WithStaleIfMatch_Is412_AndWithTheCurrentOneSucceeds()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var stale = (await http.PostJsonAsync("/api/v1/domains", Definition("careful"))).ETag();
        var current = (await http.PutAsync("/api/v1/domains/careful", JsonContent(Definition("careful", memoryMiB: 80)))).ETag();

        var refused = await http.SendAsync(new HttpRequestMessage(HttpMethod.Delete, "/api/v1/domains/careful").WithIfMatch(stale));
        await refused.AssertProblemAsync(HttpStatusCode.PreconditionFailed, "etag-mismatch");
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/api/v1/domains/careful")).StatusCode);

        var accepted = await http.SendAsync(new HttpRequestMessage(HttpMethod.Delete, "/api/v1/domains/careful").WithIfMatch(current));
        Assert.Equal(HttpStatusCode.NoContent, accepted.StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/domains/careful")).StatusCode);
    }

    private static HttpContent JsonContent(object body) => System.Net.Http.Json.JsonContent.Create(body, options: VirtdApplication.Json);
}
