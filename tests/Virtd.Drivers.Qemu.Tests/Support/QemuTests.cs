using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Virtd.Testing;
using Virtd.Core.Events;

namespace Virtd.Drivers.Qemu.Tests.Support;

/// <summary>Tests that run real QEMU processes run one at a time: TCG guests share the machine's two cores.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class QemuCollection
{
    public const string Name = "real QEMU";
}

/// <summary>
/// The daemon in-process with the QEMU driver (a short monitor timeout so hung-VM tests stay quick).
/// Disposing it kills every QEMU it started: a stopped daemon leaves its VMs running, by design.
/// </summary>
public sealed class QemuApp : IAsyncDisposable
{
    public static readonly TimeSpan MonitorTimeout = TimeSpan.FromSeconds(2);

    /// <param name="testGuest">Also allow the test guest's kernel and initrd (its directory becomes a second storage pool).</param>
    /// <param name="kestrel">Serve on real Kestrel on a loopback port (<see cref="Address"/>), where a guest's user NIC reaches it.</param>
    /// <param name="services">Changes to the daemon's services (an in-memory trace exporter, say).</param>
    /// <param name="stateDirectory">Reuse a state directory (a restart); a new one when null.</param>
    public QemuApp(IDictionary<string, string?>? settings = null, bool testGuest = false, bool kestrel = false, Action<IServiceCollection>? services = null,
        string? stateDirectory = null)
    {
        QemuHost.RequireQemu();
        var state = stateDirectory ?? TestDirectories.Create("virtd-qemu-");
        var all = new Dictionary<string, string?>
        {
            ["DefaultDriver"] = "qemu",
            ["Qemu:MonitorTimeout"] = MonitorTimeout.ToString(),
        };
        if (testGuest)
        {
            all["Storage:Pools:guest"] = TestGuest.Directory;
        }
        if (settings is not null) foreach (var (k, v) in settings) all[k] = v;
        App = new VirtdApplication(state, all, kestrel, services);
        if (kestrel)
        {
            Address = App.StartKestrel();
            Http = new HttpClient { BaseAddress = Address };
            Http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", App.AdminToken);
        }
        else
        {
            Http = App.CreateClient();
        }
        Http.Timeout = TimeSpan.FromSeconds(60);
    }

    /// <summary>Where Kestrel listens (with <c>kestrel: true</c>).</summary>
    public Uri? Address { get; }

    public VirtdApplication App { get; }
    public HttpClient Http { get; }
    public string RunDirectory => App.RunDirectory;
    public string LogDirectory => Path.Combine(App.StateDirectory, "log");

    public EventBus.Subscription Subscribe(string domain) =>
        App.Services.GetRequiredService<EventBus>().Subscribe(new EventFilter([domain], ["domain."]), null);

    /// <summary>Defines a diskless VM (SeaBIOS finds nothing to boot and halts: the cheapest real VM).</summary>
    public Task<JsonElement> DefineDisklessAsync(string name, object? extra = null) =>
        Http.DefineAsync(Merge(new Dictionary<string, object?> { ["name"] = name, ["memoryMiB"] = 64 }, extra));

    public async Task<int> StartAsync(string name)
    {
        var job = await Http.ActAsync(name, "start", wait: 60);
        Assert.True(job.Str("state") == "succeeded", $"start of {name} failed: {job}");
        var d = await Http.GetDomainAsync(name);
        Assert.Equal("running", d.Str("state"));
        return d.GetProperty("pid").GetInt32();
    }

    public static Dictionary<string, object?> Merge(Dictionary<string, object?> d, object? extra)
    {
        if (extra is null) return d;
        foreach (var p in JsonSerializer.SerializeToElement(extra, VirtdApplication.Json).EnumerateObject())
            d[p.Name] = p.Value;
        return d;
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await App.DisposeAsync();
        QemuHost.KillAll(RunDirectory);
    }
}

/// <summary>Facts about QEMU processes on this machine, read from /proc.</summary>
public static class QemuHost
{
    /// <summary>Runs qemu-img (as the test, root) with these arguments; throws with its stderr when it fails.</summary>
    public static void QemuImg(params string[] args)
    {
        var psi = new ProcessStartInfo("qemu-img") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"qemu-img {string.Join(' ', args)}: {err}");
    }


    public static void RequireQemu()
    {
        if (QemuDiscovery.FindBinary(null).Path is null)
            Assert.Fail("qemu-system-x86_64 is not installed: scripts/install-deps installs it (apt-get install qemu-system-x86)");
    }

    public static bool IsAlive(int pid) => Native.ProcFs.IsAlive(pid);

    /// <summary>The process state letter ('S', 'R', 'T' when stopped), or null when gone.</summary>
    public static char? State(int pid) => Native.ProcFs.ReadStat(pid)?.State;

    public static IReadOnlyList<string> Cmdline(int pid) => Native.ProcFs.ReadCmdline(pid) ?? [];

    public static int SessionId(int pid)
    {
        var text = File.ReadAllText($"/proc/{pid}/stat");
        var fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[3]); // field 6: session
    }

    /// <summary>The files the process has open (targets of /proc/pid/fd links).</summary>
    public static IReadOnlyList<string> OpenFiles(int pid) =>
        Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Select(f => new FileInfo(f).LinkTarget ?? "").ToList();

    public static void Signal(int pid, string signal)
    {
        using var p = Process.Start(new ProcessStartInfo("kill", ["-s", signal, pid.ToString()]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    /// <summary>Pids of the live QEMU processes started by the daemon of <paramref name="runDirectory"/> (its environment says so).</summary>
    public static List<int> FindAll(string runDirectory) => VmProcesses.Find(runDirectory).Where(IsAlive).ToList();

    public static void KillAll(string runDirectory) => VmProcesses.KillAll(runDirectory);

    /// <summary>Polls until <paramref name="condition"/> holds; fails the test at the deadline.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, string what, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(15));
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out waiting for {what}");
            await Task.Delay(20);
        }
    }
}

/// <summary>The bootable test guest of scripts/build-test-guest (built once per run, cached by the script).</summary>
public static class TestGuest
{
    public const string ReadyLine = "virtd-test-guest: ready";

    public static string Kernel => TestGuestImage.Kernel;
    public static string Initrd => TestGuestImage.Initrd;
    public static string Directory => TestGuestImage.Directory;

    /// <summary>A definition of the test guest (kernel boot, 128 MiB: less and the kernel does not come up).</summary>
    public static Dictionary<string, object?> Definition(string name, object? extra = null) => QemuApp.Merge(new Dictionary<string, object?>
    {
        ["name"] = name,
        ["memoryMiB"] = 128,
        ["boot"] = new { kernel = Kernel, initrd = Initrd, cmdline = "console=ttyS0 quiet panic=-1" },
    }, extra);

    /// <summary>Waits until the guest printed its ready line <paramref name="times"/> times on its serial console.</summary>
    public static Task WaitReadyAsync(QemuApp app, string name, int times = 1) => WaitForLineAsync(app, name, ReadyLine, times);

    /// <summary>Waits until a line of the guest's serial console contains <paramref name="text"/> (<paramref name="times"/> lines); returns the console.</summary>
    public static async Task<string> WaitForLineAsync(QemuApp app, string name, string text, int times = 1)
    {
        var console = ConsoleLog(app.LogDirectory, (await app.Http.GetDomainAsync(name)).GetProperty("uuid").GetGuid());
        await QemuHost.WaitUntilAsync(() => Console(console).Split('\n').Count(l => l.Contains(text, StringComparison.Ordinal)) >= times,
            $"{name} to print '{text}' {times} time(s)", TimeSpan.FromSeconds(60));
        return Console(console);
    }

    /// <summary>A domain's serial console log: named by its UUID.</summary>
    public static string ConsoleLog(string logDirectory, Guid uuid) => Path.Combine(logDirectory, $"{uuid:D}.console.log");

    public static string Console(string path)
    {
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return new StreamReader(fs).ReadToEnd();
        }
        catch (IOException) { return ""; }
    }
}
