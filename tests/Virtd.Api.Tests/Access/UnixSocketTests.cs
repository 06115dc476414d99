using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests.Access;

/// <summary>
/// libvirt's way in, on the daemon as a process: <c>virtd.sock</c> (admin, 0660) and <c>virtd-ro.sock</c> (reader,
/// 0666) in RunDirectory, the file mode as the gate and the peer's uid as the identity.
/// </summary>
public sealed class UnixSocketTests
{
    private const UnixFileMode Mode0660 = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;
    private const UnixFileMode Mode0666 = Mode0660 | UnixFileMode.OtherRead | UnixFileMode.OtherWrite;
    private const UnixFileMode Mode0755 = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
        | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute;

    [Fact]
    public async Task AsRoot_TheAdminSocketDoesEverything_TheReadOnlyOneOnlyReads_AndThePeerUidIsTheIdentity()
    {
        await using var daemon = DaemonProcess.Start();
        await daemon.WaitReadyAsync();
        using var admin = UnixHttp.Client(Path.Combine(daemon.RunDirectory, "virtd.sock"));
        using var reader = UnixHttp.Client(Path.Combine(daemon.RunDirectory, "virtd-ro.sock"));

        await admin.DefineAsync(new Dictionary<string, object?> { ["name"] = "sock", ["memoryMiB"] = 64, ["driver"] = "simulated" });
        var who = await (await admin.GetAsync("/api/v1/session")).ReadJsonAsync();
        Assert.Equal("unix:uid=0", who.Str("identity"));
        Assert.Equal("admin", who.Str("role"));
        Assert.Equal("unix-socket", who.Str("method"));
        Assert.Equal(HttpStatusCode.OK, (await reader.GetAsync("/api/v1/domains/sock")).StatusCode);
        var refused = await reader.PostAsync("/api/v1/domains/sock/start", null);
        Assert.Contains("needs the operator role", (await refused.AssertProblemAsync(HttpStatusCode.Forbidden, "forbidden")).Str("detail"));

        Assert.Equal(Mode0660, File.GetUnixFileMode(Path.Combine(daemon.RunDirectory, "virtd.sock")));
        Assert.Equal(Mode0666, File.GetUnixFileMode(Path.Combine(daemon.RunDirectory, "virtd-ro.sock")));
        Assert.Equal(Mode0755, File.GetUnixFileMode(daemon.RunDirectory));
        var audit = File.ReadAllLines(Path.Combine(daemon.StateDirectory, "log", "audit.log")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(["unix:uid=0 POST /api/v1/domains 201", "unix:uid=0 POST /api/v1/domains/sock/start 403"],
            audit.Select(a => $"{a.Str("identity")} {a.Str("method")} {a.Str("path")} {a.GetProperty("status").GetInt32()}"));
        Assert.Equal($"unix:pid={Environment.ProcessId},gid=0", audit[0].Str("client"));
        Assert.Contains("unix:uid=0 (unix:pid=", daemon.Output); // the refusal's log line names the peer too
    }

    [Fact]
    public async Task AnUnprivilegedUser_ReadsThroughTheReadOnlySocket_IsRefusedChanges_AndCannotConnectToTheAdminSocket()
    {
        await using var daemon = DaemonProcess.Start();
        await daemon.WaitReadyAsync();
        await daemon.Http.DefineAsync(new Dictionary<string, object?> { ["name"] = "vm", ["memoryMiB"] = 64, ["driver"] = "simulated" });
        var ro = Path.Combine(daemon.RunDirectory, "virtd-ro.sock");
        var rw = Path.Combine(daemon.RunDirectory, "virtd.sock");

        var read = await AsNobodyAsync("-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", ro, "http://localhost/api/v1/domains/vm");
        var change = await AsNobodyAsync("-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--unix-socket", ro, "http://localhost/api/v1/domains/vm/start");
        var admin = await AsNobodyAsync("-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", rw, "http://localhost/api/v1/domains");

        Assert.Equal((0, "200"), (read.Code, read.Out));
        Assert.Equal((0, "403"), (change.Code, change.Out));
        Assert.True(admin.Code == 7, $"curl should not connect to the admin socket (exit 7), got {admin.Code}: {admin.Out} {admin.Err}");
        Assert.Equal("shut-off", await daemon.Http.StateOfAsync("vm"));
    }

    [Fact]
    public async Task UnixSocketsOff_LeavesNoSocketFiles()
    {
        await using var daemon = DaemonProcess.Start(["--Listen:UnixSockets", "false"]);
        await daemon.WaitReadyAsync();

        Assert.False(File.Exists(Path.Combine(daemon.RunDirectory, "virtd.sock")));
        Assert.False(File.Exists(Path.Combine(daemon.RunDirectory, "virtd-ro.sock")));
    }

    [Fact]
    public async Task SocketsLeftByAKilledDaemon_AreReplaced_AndACleanStopRemovesThem()
    {
        var run = TestDirectories.Create("virtd-run-");
        var state = TestDirectories.Create("virtd-proc-");
        await using (var first = DaemonProcess.Start(stateDirectory: state, runDirectory: run))
        {
            await first.WaitReadyAsync();
            await first.KillAsync();
        }
        Assert.True(File.Exists(Path.Combine(run, "virtd.sock")));

        await using var second = DaemonProcess.Start(stateDirectory: state, runDirectory: run);
        await second.WaitReadyAsync();
        using (var admin = UnixHttp.Client(Path.Combine(run, "virtd.sock")))
            Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("/api/v1/host")).StatusCode);

        second.Terminate();
        Assert.Equal(0, await second.WaitExitAsync(TimeSpan.FromSeconds(20)));
        Assert.False(File.Exists(Path.Combine(run, "virtd.sock")));
        Assert.False(File.Exists(Path.Combine(run, "virtd-ro.sock")));
    }

    [Fact]
    public async Task ASecondDaemonOnTheSameRunDirectory_RefusesToStart_AndTheFirstKeepsServing()
    {
        await using var first = DaemonProcess.Start();
        await first.WaitReadyAsync();

        await using var second = DaemonProcess.Start(runDirectory: first.RunDirectory);
        var code = await second.WaitExitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(2, code);
        Assert.Contains("another daemon is serving", second.Output);
        using var admin = UnixHttp.Client(Path.Combine(first.RunDirectory, "virtd.sock"));
        Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("/api/v1/host")).StatusCode);
    }

    /// <summary>curl as uid/gid 65534 (nobody) with no supplementary groups.</summary>
    private static async Task<(int Code, string Out, string Err)> AsNobodyAsync(params string[] curl)
    {
        var psi = new ProcessStartInfo("setpriv") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "curl" }.Concat(curl)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        return (p.ExitCode, await stdout, await stderr);
    }
}
