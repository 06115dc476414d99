using System.Collections.Concurrent;
using System.Net;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Virtd.Stress.Tests.Support;

/// <summary>
/// The daemon in-process behind real Kestrel on a loopback port (WebApplicationFactory.UseKestrel,
/// .NET 10), so clients talk real HTTP/1.1 over sockets with keep-alive, not the in-memory TestServer.
/// Logs go to <see cref="Logs"/> only (no console noise from thousands of expected warnings).
/// </summary>
public sealed class KestrelVirtd : WebApplicationFactory<Program>
{
    private readonly Dictionary<string, string?> _settings;

    public KestrelVirtd(IDictionary<string, string?> settings)
    {
        StateDirectory = Directory.CreateTempSubdirectory("virtd-stress-").FullName;
        // RunDirectory must be short (≤ 64 characters).
        RunDirectory = Directory.CreateTempSubdirectory("vsr-").FullName;
        _settings = new Dictionary<string, string?>
        {
            ["StateDirectory"] = StateDirectory,
            ["RunDirectory"] = RunDirectory,
            ["DefaultDriver"] = "simulated",
            ["Logging:LogLevel:Default"] = "Warning",
            // The daemon shares the test process, whose resident memory grows with the load the test makes: not its own.
            ["Memory:TrimWhenGrownMiB"] = "0",
        };
        foreach (var (k, v) in settings) _settings[k] = v;
        UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
    }

    public string StateDirectory { get; }
    public string RunDirectory { get; }
    public LogCollector Logs { get; } = new();

    /// <summary>The secret of the admin token the daemon made on its first start.</summary>
    public string AdminToken => File.ReadAllText(Path.Combine(StateDirectory, "initial-admin-token")).Trim();

    /// <summary>Lets <paramref name="http"/> act as the initial admin.</summary>
    public HttpClient Authorize(HttpClient http)
    {
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", AdminToken);
        return http;
    }

    /// <summary>Starts Kestrel and returns the address it bound.</summary>
    public Uri Start()
    {
        StartServer();
        var addresses = Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        return new Uri(addresses.First());
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Production");
        builder.ConfigureAppConfiguration((_, c) => c.AddInMemoryCollection(_settings));
        builder.ConfigureLogging(l =>
        {
            l.ClearProviders();
            l.AddProvider(Logs);
        });
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        TryDelete(StateDirectory);
        TryDelete(RunDirectory);
    }

    private static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Keeps every log entry at Warning or above, so the test can assert that no error was logged.</summary>
public sealed class LogCollector : ILoggerProvider
{
    public ConcurrentQueue<(LogLevel Level, string Category, string Message)> Entries { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose() { }

    private sealed class Logger(LogCollector owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            var message = formatter(state, exception);
            if (exception is not null) message += Environment.NewLine + exception;
            owner.Entries.Enqueue((logLevel, category, message));
        }
    }
}
