using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Virtd.Testing;

/// <summary>
/// The built daemon (<c>virtd.dll</c>, copied next to this test assembly by the project reference) run as
/// a child process on a free loopback port, with its own state and run directories. Killed on dispose.
/// </summary>
public sealed class DaemonProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    private DaemonProcess(Process process, int port, string stateDirectory, string runDirectory, Uri address)
    {
        _process = process;
        Port = port;
        StateDirectory = stateDirectory;
        RunDirectory = runDirectory;
        // A test certificate is self-signed: trusted here without checks.
        Http = new HttpClient(new SocketsHttpHandler { SslOptions = { RemoteCertificateValidationCallback = (_, _, _, _) => true } })
        {
            BaseAddress = address,
            Timeout = TimeSpan.FromSeconds(30),
        };
    }

    public int Port { get; }
    public string StateDirectory { get; }
    public string RunDirectory { get; }
    public HttpClient Http { get; }
    public int Pid => _process.Id;

    /// <summary>The secret of the admin token the daemon made on its first start; <see cref="Http"/> uses it once the daemon is ready.</summary>
    public string AdminToken => File.ReadAllText(Path.Combine(StateDirectory, "initial-admin-token")).Trim();
    public bool HasExited => _process.HasExited;

    /// <summary>Everything the daemon wrote to stdout and stderr so far.</summary>
    public string Output
    {
        get { lock (_output) return _output.ToString(); }
    }

    /// <param name="stateDirectory">Reuse a state directory (a restart); a new temporary one when null.</param>
    /// <param name="runDirectory">Reuse a run directory (a restart finds the VMs it left running); a new one when null.</param>
    /// <param name="url">The daemon's <c>--urls</c>, with <c>{port}</c> for a free port; <see cref="Http"/> reaches it on 127.0.0.1.</param>
    /// <param name="underSystemd">
    /// Start it as systemd would, for Microsoft.Extensions.Hosting.Systemd, which acts only when the parent process is named
    /// <c>systemd</c>: the parent is a bash run through a link named <c>systemd</c> (so its comm, what the library reads,
    /// is <c>systemd</c>); it passes SIGTERM and SIGINT on to the daemon and exits with its code.
    /// </param>
    /// <param name="executable">A published daemon to run as it is (the Native AOT binary of scripts/publish) instead of <c>dotnet virtd.dll</c>.</param>
    public static DaemonProcess Start(IEnumerable<string>? args = null, IDictionary<string, string>? environment = null,
        string? stateDirectory = null, string? runDirectory = null, string url = "http://127.0.0.1:{port}", bool underSystemd = false,
        string? executable = null)
    {
        var daemon = executable ?? Path.Combine(AppContext.BaseDirectory, "virtd.dll");
        if (!File.Exists(daemon)) throw new FileNotFoundException("the daemon is not built next to the tests", daemon);
        var port = FreePort();
        var state = stateDirectory ?? TestDirectories.Create("virtd-proc-");
        var run = runDirectory ?? TestDirectories.Create("virtd-run-");

        var psi = new ProcessStartInfo(executable ?? Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = executable is null ? AppContext.BaseDirectory : Path.GetDirectoryName(executable)!,
        };
        var urls = url.Replace("{port}", port.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
        var first = urls.Split(';')[0];
        foreach (var any in new[] { "0.0.0.0", "[::]", "*", "+" }) first = first.Replace("://" + any + ":", "://127.0.0.1:", StringComparison.Ordinal);
        var address = new Uri(first);
        if (underSystemd)
        {
            var systemd = Path.Combine(TestDirectories.Create("virtd-systemd-"), "systemd");
            File.CreateSymbolicLink(systemd, "/bin/bash");
            psi.ArgumentList.Add(psi.FileName);
            psi.FileName = systemd;
            foreach (var a in new[] { "-c", SystemdParent, "systemd" }) psi.ArgumentList.Insert(psi.ArgumentList.Count - 1, a);
        }
        if (executable is null) psi.ArgumentList.Add(daemon);
        foreach (var a in new[] { "--urls", urls, "--StateDirectory", state, "--RunDirectory", run })
            psi.ArgumentList.Add(a);
        foreach (var a in args ?? []) psi.ArgumentList.Add(a);
        // Only what the test gives: nothing of the test runner's own VIRTD_ or ASP.NET settings leaks in.
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("VIRTD_", StringComparison.Ordinal)
                     || k.StartsWith("ASPNETCORE_", StringComparison.Ordinal) || k == "DOTNET_URLS").ToList())
            psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;

        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var d = new DaemonProcess(process, port, state, run, address);
        process.OutputDataReceived += (_, e) => d.Append(e.Data);
        process.ErrorDataReceived += (_, e) => d.Append(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return d;
    }

    /// <summary>The parent "systemd": runs the daemon, passes SIGTERM and SIGINT on, exits with the daemon's code.</summary>
    private const string SystemdParent = """
        "$@" & child=$!
        trap 'kill -TERM $child' TERM
        trap 'kill -INT $child' INT
        wait $child; code=$?
        while kill -0 $child 2>/dev/null; do wait $child; code=$?; done
        exit $code
        """;

    /// <summary>Polls /readyz until 200, then gives <see cref="Http"/> the admin token; fails with the daemon's output if it exits or the deadline passes.</summary>
    public async Task WaitReadyAsync(TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            if (_process.HasExited) Assert.Fail($"the daemon exited with {_process.ExitCode} before it was ready:\n{Output}");
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                using var r = await Http.GetAsync("/readyz", cts.Token);
                if (r.StatusCode == HttpStatusCode.OK)
                {
                    Http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", AdminToken);
                    return;
                }
            }
            catch (HttpRequestException) { } // not listening yet
            catch (TaskCanceledException) { }
            if (DateTime.UtcNow > deadline) Assert.Fail($"the daemon was not ready within the deadline:\n{Output}");
            await Task.Delay(50);
        }
    }

    /// <summary>Waits for the process to exit on its own; fails if it is still running at the deadline.</summary>
    public async Task<int> WaitExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"the daemon was still running after {timeout}:\n{Output}");
        }
        _process.WaitForExit(); // drains the output readers
        return _process.ExitCode;
    }

    /// <summary>SIGKILL to the daemon alone (not its process tree): a crash, as far as it can tell.</summary>
    public async Task KillAsync()
    {
        _process.Kill(entireProcessTree: false);
        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
    }

    /// <summary>Sends SIGTERM, as systemd would (<see cref="Process.Kill()"/> is SIGKILL).</summary>
    public void Terminate() => Signal("TERM");

    /// <summary>Sends a signal by name (TERM, INT, ...) to the daemon alone.</summary>
    public void Signal(string name)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill") { ArgumentList = { "-" + name, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture) } })!;
        kill.WaitForExit(5000);
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
        }
        catch (InvalidOperationException) { } // never started or already gone
        finally
        {
            _process.Dispose();
        }
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_output) _output.AppendLine(line);
    }

    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try { return ((IPEndPoint)listener.LocalEndpoint).Port; }
        finally { listener.Stop(); }
    }
}
