using System.Net;
using System.Text.Json;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests.Access;

/// <summary>The audit log: one JSON line per change with who made it, written before the change, and one per refused change.</summary>
public sealed class AuditTests
{
    [Fact]
    public async Task EveryChange_IsOneLineWithItsIdentity_AndRefusedChangesToo()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));                                           // 1 define
        var reader = await TokenTests.CreateTokenAsync(admin, "watcher", "reader");          // 2 token create
        var start = await admin.ActAsync("vm", "start", wait: 10);                           // 3 action
        using (var r = app.CreateClient(reader)) await r.PostAsync("/api/v1/domains/vm/suspend", null); // refused: 403
        using (var anon = app.CreateClient(token: null)) await anon.DeleteAsync("/api/v1/domains/vm"); // refused: 401
        await admin.GetAsync("/api/v1/domains");                                            // a read: no line
        var put = new HttpRequestMessage(HttpMethod.Put, "/api/v1/domains/vm") { Content = Raw("{\"name\":\"vm\",\"memoryMiB\":96}") };
        Assert.Equal(HttpStatusCode.OK, (await admin.SendAsync(put)).StatusCode);            // 4 update
        await admin.ActAsync("vm", "destroy", wait: 10);                                     // 5 action
        Assert.Equal(HttpStatusCode.NoContent, (await admin.DeleteAsync("/api/v1/domains/vm")).StatusCode); // 6 undefine
        Assert.Equal(HttpStatusCode.NoContent, (await admin.DeleteAsync("/api/v1/tokens/watcher")).StatusCode); // 7 revoke
        using (var browser = app.CreateClient(token: null))
            await browser.PostJsonAsync("/api/v1/session", new { token = app.AdminToken });  // 8 session login

        var lines = ReadAudit(app);

        Assert.Equal(
            [
                ("initial-admin", "POST", "/api/v1/domains", "vm", 201),
                ("initial-admin", "POST", "/api/v1/tokens", null, 201),
                ("initial-admin", "POST", "/api/v1/domains/vm/start", "vm", 202),
                ("watcher", "POST", "/api/v1/domains/vm/suspend", "vm", 403),
                ("anonymous", "DELETE", "/api/v1/domains/vm", "vm", 401),
                ("initial-admin", "PUT", "/api/v1/domains/vm", "vm", 200),
                ("initial-admin", "POST", "/api/v1/domains/vm/destroy", "vm", 202),
                ("initial-admin", "DELETE", "/api/v1/domains/vm", "vm", 204),
                ("initial-admin", "DELETE", "/api/v1/tokens/watcher", null, 204),
                ("initial-admin", "POST", "/api/v1/session", null, 204),
            ],
            lines.Select(l => (l.Str("identity"), l.Str("method"), l.Str("path"), l.Str("domain"), l.GetProperty("status").GetInt32())).ToList());
        Assert.Equal(start.Id(), lines[2].Str("jobId"));
        Assert.All(lines, l => Assert.Equal(["time", "identity", "client", "method", "path", "domain", "status", "jobId"], l.EnumerateObject().Select(p => p.Name)));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(AuditPath(app)));
    }

    [Fact]
    public async Task ARequestRefusedByTheCore_WritesNoLine()
    {
        await using var app = new VirtdApplication();
        using var admin = app.CreateClient();
        await admin.DefineAsync(Definition("vm"));

        await (await admin.PostAsync("/api/v1/domains/vm/suspend", null)).AssertProblemAsync(HttpStatusCode.Conflict, "invalid-state");
        await (await admin.PostJsonAsync("/api/v1/domains", Definition("vm"))).AssertProblemAsync(HttpStatusCode.Conflict, "domain-exists");
        await (await admin.PostJsonAsync("/api/v1/domains", new { name = "bad name" })).AssertProblemAsync(HttpStatusCode.BadRequest, "validation-failed");

        Assert.Single(ReadAudit(app)); // the define only
    }

    [Fact]
    public async Task WhenTheAuditLineCannotBeWritten_TheRequestGets503_AndNothingChanges()
    {
        // /dev/full takes the open and fails every write with ENOSPC: a full disk, for real.
        await using var app = new VirtdApplication(settings: new Dictionary<string, string?> { ["Security:AuditLog"] = "/dev/full" });
        using var admin = app.CreateClient();

        var define = await admin.PostJsonAsync("/api/v1/domains", Definition("vm"));
        var token = await admin.PostJsonAsync("/api/v1/tokens", new { name = "ci", role = "reader" });

        await define.AssertProblemAsync(HttpStatusCode.ServiceUnavailable, "audit-unavailable");
        await token.AssertProblemAsync(HttpStatusCode.ServiceUnavailable, "audit-unavailable");
        Assert.Equal(HttpStatusCode.NotFound, (await admin.GetAsync("/api/v1/domains/vm")).StatusCode);
        Assert.False(File.Exists(Path.Combine(app.StateDirectory, "domains", "vm.json")));
        Assert.Equal(HttpStatusCode.NotFound, (await admin.GetAsync("/api/v1/tokens/ci")).StatusCode);
    }

    [Fact]
    public async Task WhenTheAuditLineCannotBeWritten_NoJobIsQueued()
    {
        var state = TestDirectories.Create("virtd-audit-");
        await using (var first = new VirtdApplication(state))
        {
            using var admin = first.CreateClient();
            await admin.DefineAsync(Definition("vm"));
        }
        await using var app = new VirtdApplication(state, new Dictionary<string, string?> { ["Security:AuditLog"] = "/dev/full" });
        using var http = app.CreateClient();

        var r = await http.PostAsync("/api/v1/domains/vm/start", null);

        await r.AssertProblemAsync(HttpStatusCode.ServiceUnavailable, "audit-unavailable");
        Assert.Equal(0, (await (await http.GetAsync("/api/v1/jobs")).ReadJsonAsync()).GetProperty("count").GetInt32());
        Assert.Equal("shut-off", await http.StateOfAsync("vm"));
    }

    internal static string AuditPath(VirtdApplication app) => Path.Combine(app.StateDirectory, "log", "audit.log");

    internal static List<JsonElement> ReadAudit(VirtdApplication app) =>
        File.ReadAllLines(AuditPath(app)).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
}
