using System.Net;
using System.Security.Cryptography;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests;

/// <summary>Pools and volumes through the API (qemu-img does the images; the domains here are simulated).</summary>
public sealed class VolumesApiTests
{
    private const string Volumes = "/api/v1/pools/default/volumes";

    [Fact]
    public async Task Pools_ListTheDefaultAndConfiguredOnes_WithTheirFilesystemsSizes()
    {
        var extra = TestDirectories.Create("virtd-pool-");
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Storage:Pools:fast"] = extra });
        using var http = app.CreateClient();

        var pools = await (await http.GetAsync("/api/v1/pools")).ReadJsonAsync();

        Assert.Equal(["default", "fast"], pools.GetProperty("items").EnumerateArray().Select(p => p.Str("name")));
        var fast = pools.GetProperty("items")[1];
        Assert.Equal(extra, fast.Str("path"));
        Assert.True(fast.GetProperty("capacity").GetInt64() > 0);
        Assert.InRange(fast.GetProperty("free").GetInt64(), 1, fast.GetProperty("capacity").GetInt64());
        Assert.Equal(app.ImagesDirectory, (await (await http.GetAsync("/api/v1/pools/default")).ReadJsonAsync()).Str("path"));
        await (await http.GetAsync("/api/v1/pools/nope")).AssertProblemAsync(HttpStatusCode.NotFound, "pool-not-found");
        await (await http.GetAsync("/api/v1/pools/nope/volumes")).AssertProblemAsync(HttpStatusCode.NotFound, "pool-not-found");
    }

    [Fact]
    public async Task Create_RawAndQcow2_ThenAClone_AreListedWithSizesAndBacking()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var raw = await http.PostJsonAsync(Volumes, new { name = "a.img", format = "raw", capacity = 1048576 });
        Assert.Equal(HttpStatusCode.Created, raw.StatusCode);
        Assert.Equal("/api/v1/pools/default/volumes/a.img", raw.Headers.Location?.OriginalString);
        var a = await raw.ReadJsonAsync();
        Assert.Equal("raw", a.Str("format"));
        Assert.Equal(1048576, a.GetProperty("virtualSize").GetInt64());
        Assert.Equal("default/a.img", a.Str("volume"));

        var q = await (await http.PostJsonAsync(Volumes, new { name = "base.qcow2", format = "qcow2", capacity = "10GiB" })).ReadJsonAsync();
        Assert.Equal(10L << 30, q.GetProperty("virtualSize").GetInt64());
        Assert.True(q.GetProperty("allocation").GetInt64() < 10 << 20, "a new qcow2 allocates almost nothing");

        var clone = await http.PostJsonAsync(Volumes, new { name = "clone.qcow2", backingVolume = "default/base.qcow2" });
        Assert.Equal(HttpStatusCode.Created, clone.StatusCode);
        var c = await clone.ReadJsonAsync();
        Assert.Equal("qcow2", c.Str("format"));
        Assert.Equal("default/base.qcow2", c.Str("backingVolume"));
        Assert.Equal(10L << 30, c.GetProperty("virtualSize").GetInt64());

        var list = await (await http.GetAsync(Volumes)).ReadJsonAsync();
        Assert.Equal(["a.img", "base.qcow2", "clone.qcow2"], list.GetProperty("items").EnumerateArray().Select(v => v.Str("name")));

        // The base cannot go while a clone is backed by it; the clone first, then the base.
        var refused = await (await http.DeleteAsync($"{Volumes}/base.qcow2")).AssertProblemAsync(HttpStatusCode.Conflict, "volume-in-use");
        Assert.Contains("default/clone.qcow2", refused.Str("detail"));
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"{Volumes}/clone.qcow2")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"{Volumes}/base.qcow2")).StatusCode);
        await (await http.GetAsync($"{Volumes}/base.qcow2")).AssertProblemAsync(HttpStatusCode.NotFound, "volume-not-found");
    }

    [Theory]
    [InlineData("\"-1\"")]
    [InlineData("-1")]
    [InlineData("\"10XB\"")]
    [InlineData("\"1e30\"")]
    [InlineData("1e30")]
    [InlineData("\"1.5GiB\"")]
    [InlineData("\"99999999TiB\"")]
    [InlineData("true")]
    public async Task Create_WithABadCapacity_Is400KeyedCapacity_AndLeavesNothing(string capacity)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostAsync(Volumes, Raw($"{{\"name\":\"x.img\",\"format\":\"raw\",\"capacity\":{capacity}}}"));

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.True(p.FieldErrors().ContainsKey("capacity"), p.ToString());
        Assert.Empty(Directory.GetFileSystemEntries(app.ImagesDirectory));
    }

    [Theory]
    [InlineData("a/b")]
    [InlineData("..")]
    [InlineData(".")]
    [InlineData(".hidden")]
    [InlineData("a\u0000b")]
    [InlineData("")]
    public async Task Create_WithABadName_Is400KeyedName(string name)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostJsonAsync(Volumes, new { name, format = "raw", capacity = 4096 });

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.True(p.FieldErrors().ContainsKey("name"), p.ToString());
        Assert.Empty(Directory.GetFileSystemEntries(app.ImagesDirectory));
    }

    [Fact]
    public async Task Create_TwiceOrInAnUnknownPool_IsRefused()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        Assert.Equal(HttpStatusCode.Created, (await http.PostJsonAsync(Volumes, new { name = "a.img", capacity = 4096 })).StatusCode);

        await (await http.PostJsonAsync(Volumes, new { name = "a.img", capacity = 4096 })).AssertProblemAsync(HttpStatusCode.Conflict, "volume-exists");
        await (await http.PostJsonAsync("/api/v1/pools/nope/volumes", new { name = "a.img", capacity = 4096 })).AssertProblemAsync(HttpStatusCode.NotFound, "pool-not-found");
        var missing = await (await http.PostJsonAsync(Volumes, new { name = "c.qcow2", backingVolume = "default/none.qcow2" })).AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("no volume 'none.qcow2'", missing.FieldErrors()["backingVolume"][0]);
    }

    [Fact]
    public async Task Upload_StreamsToDisk_DownloadGivesTheSameBytes_AndReplacingAnswers200()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var bytes = RandomNumberGenerator.GetBytes(3 << 20);

        var put = await http.PutAsync($"{Volumes}/up.img/content?format=raw", new ByteArrayContent(bytes));
        Assert.Equal(HttpStatusCode.Created, put.StatusCode);
        var v = await put.ReadJsonAsync();
        Assert.Equal("raw", v.Str("format"));
        Assert.Equal(bytes.Length, v.GetProperty("virtualSize").GetInt64());

        var got = await http.GetByteArrayAsync($"{Volumes}/up.img/content");
        Assert.Equal(SHA256.HashData(bytes), SHA256.HashData(got));

        var again = await http.PutAsync($"{Volumes}/up.img/content?format=raw", new ByteArrayContent(bytes.AsSpan(0, 4096).ToArray()));
        Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        Assert.Equal(4096, (await again.ReadJsonAsync()).GetProperty("virtualSize").GetInt64());
        Assert.Equal(["up.img"], Directory.GetFileSystemEntries(app.ImagesDirectory).Select(Path.GetFileName));
    }

    [Fact]
    public async Task Upload_WithoutFormat_IsRecognised_AndAQcow2KeepsItsFormat()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        (await http.PostJsonAsync(Volumes, new { name = "made.qcow2", format = "qcow2", capacity = "1GiB" })).EnsureSuccessStatusCode();
        var image = await http.GetByteArrayAsync($"{Volumes}/made.qcow2/content");

        var put = await http.PutAsync($"{Volumes}/copy.img/content", new ByteArrayContent(image));

        Assert.Equal(HttpStatusCode.Created, put.StatusCode);
        var v = await put.ReadJsonAsync();
        Assert.Equal("qcow2", v.Str("format")); // recorded: a name without .qcow2 does not make it raw
        Assert.Equal(1L << 30, v.GetProperty("virtualSize").GetInt64());
    }

    [Fact]
    public async Task Upload_LargerThanTheLimit_Is413_AndLeavesNothingBehind()
    {
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Storage:MaxUploadBytes"] = "1048576" });
        using var http = app.CreateClient();

        // Announced too large: refused before a byte is stored.
        var declared = await http.PutAsync($"{Volumes}/big.img/content?format=raw", new ByteArrayContent(new byte[(1 << 20) + 1]));
        await declared.AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");

        // Chunked, no length: cut off once past the limit.
        var chunked = new StreamContent(new MemoryStream(new byte[3 << 20]));
        var request = new HttpRequestMessage(HttpMethod.Put, $"{Volumes}/big.img/content?format=raw") { Content = chunked };
        request.Headers.TransferEncodingChunked = true;
        await (await http.SendAsync(request)).AssertProblemAsync(HttpStatusCode.RequestEntityTooLarge, "payload-too-large");

        Assert.Empty(Directory.GetFileSystemEntries(app.ImagesDirectory));
        Assert.Equal(0, (await (await http.GetAsync(Volumes)).ReadJsonAsync()).GetProperty("count").GetInt32());
    }

    [Fact]
    public async Task Resize_GrowsFreely_ShrinksOnlyWhenAsked()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        (await http.PostJsonAsync(Volumes, new { name = "d.qcow2", format = "qcow2", capacity = "1GiB" })).EnsureSuccessStatusCode();

        var grown = await (await http.PostJsonAsync($"{Volumes}/d.qcow2/resize", new { capacity = "2GiB" })).ReadJsonAsync();
        Assert.Equal(2L << 30, grown.GetProperty("virtualSize").GetInt64());

        var p = await (await http.PostJsonAsync($"{Volumes}/d.qcow2/resize", new { capacity = "1GiB" })).AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("shrink", p.FieldErrors()["capacity"][0]);
        var shrunk = await (await http.PostJsonAsync($"{Volumes}/d.qcow2/resize", new { capacity = "1GiB", shrink = true })).ReadJsonAsync();
        Assert.Equal(1L << 30, shrunk.GetProperty("virtualSize").GetInt64());
        await (await http.PostJsonAsync($"{Volumes}/d.qcow2/resize", new { capacity = "10XB" })).AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
    }

    [Fact]
    public async Task Copy_IsAJobWithProgress_AndMakesAVolumeWithTheSameContent()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var bytes = RandomNumberGenerator.GetBytes(2 << 20);
        (await http.PutAsync($"{Volumes}/src.img/content?format=raw", new ByteArrayContent(bytes))).EnsureSuccessStatusCode();

        var r = await http.PostJsonAsync(Volumes, new { name = "dst.qcow2", format = "qcow2", from = "default/src.img" });

        Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
        var job = await r.ReadJsonAsync();
        Assert.Equal("volume-copy", job.Str("kind"));
        Assert.Equal("default/dst.qcow2", job.Str("volume"));
        Assert.Equal($"/api/v1/jobs/{job.Id()}", r.Headers.Location?.OriginalString);
        var done = await http.GetJobAsync(job.Id(), wait: 60);
        Assert.Equal("succeeded", done.Str("state"));
        Assert.Equal(100, done.GetProperty("progress").GetDouble());
        Assert.Contains((await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync()).GetProperty("items").EnumerateArray(), j => j.Id() == job.Id());

        var copy = await (await http.GetAsync($"{Volumes}/dst.qcow2")).ReadJsonAsync();
        Assert.Equal("qcow2", copy.Str("format"));
        Assert.Equal(bytes.Length, copy.GetProperty("virtualSize").GetInt64());
        // Back to raw through another copy, to compare the bytes.
        var back = await (await http.PostJsonAsync(Volumes, new { name = "back.img", format = "raw", from = "default/dst.qcow2" })).ReadJsonAsync();
        Assert.Equal("succeeded", (await http.GetJobAsync(back.Id(), wait: 60)).Str("state"));
        Assert.Equal(SHA256.HashData(bytes), SHA256.HashData(await http.GetByteArrayAsync($"{Volumes}/back.img/content")));
    }

    [Fact]
    public async Task ADomainDisk_NamesAVolume_TakesItsFormat_AndTheVolumeCannotBeDeletedUntilUndefine()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        (await http.PostJsonAsync(Volumes, new { name = "root.qcow2", format = "qcow2", capacity = "1GiB" })).EnsureSuccessStatusCode();

        var d = await http.DefineAsync(new { name = "vm", memoryMiB = 64, disks = new[] { new { volume = "default/root.qcow2" } } });

        var disk = d.GetProperty("definition").GetProperty("disks")[0];
        Assert.Equal("default/root.qcow2", disk.Str("volume"));
        Assert.Equal("qcow2", disk.Str("format"));
        Assert.Equal(["vm"], (await (await http.GetAsync($"{Volumes}/root.qcow2")).ReadJsonAsync()).GetProperty("usedBy").EnumerateArray().Select(u => u.GetString()));
        var p = await (await http.DeleteAsync($"{Volumes}/root.qcow2")).AssertProblemAsync(HttpStatusCode.Conflict, "volume-in-use");
        Assert.Contains("vm", p.Str("detail"));

        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync("/api/v1/domains/vm")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await http.DeleteAsync($"{Volumes}/root.qcow2")).StatusCode);
    }

    [Theory]
    [InlineData("default/none.qcow2", "no volume 'none.qcow2' in pool 'default'")]
    [InlineData("nopool/a.img", "names the pool 'nopool'")]
    [InlineData("a.img", "must be '<pool>/<volume>'")]
    [InlineData("default/../etc/passwd", "must not contain '/'")]
    public async Task ADomainDisk_NamingNoVolume_Is400KeyedByItsVolume(string volume, string words)
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();

        var r = await http.PostJsonAsync("/api/v1/domains", new { name = "vm", memoryMiB = 64, disks = new[] { new { volume } } });

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains(words, p.FieldErrors()["disks[0].volume"][0]);
    }

    [Fact]
    public async Task ADomainDisk_WithBothPathAndVolume_Is400()
    {
        await using var app = new VirtdApplication();
        using var http = app.CreateClient();
        var path = app.CreateImage("p.img");
        (await http.PostJsonAsync(Volumes, new { name = "v.img", capacity = 4096 })).EnsureSuccessStatusCode();

        var r = await http.PostJsonAsync("/api/v1/domains", new { name = "vm", memoryMiB = 64, disks = new[] { new { path, volume = "default/v.img" } } });

        var p = await r.AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");
        Assert.Contains("not both", p.FieldErrors()["disks[0].path"][0]);
    }
}
