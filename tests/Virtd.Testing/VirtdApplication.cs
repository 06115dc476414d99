using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Virtd.Core;

namespace Virtd.Testing;

/// <summary>
/// The daemon in-process on the test server, with its own temporary state directory and the
/// simulated driver. Extra settings use the daemon's own configuration keys.
/// </summary>
public sealed class VirtdApplication : WebApplicationFactory<Program>
{
    private readonly Dictionary<string, string?> _settings;
    private readonly Action<IServiceCollection>? _services;

    /// <param name="kestrel">Serve on real Kestrel on a loopback port (see <see cref="StartKestrel"/>) instead of the in-memory test server.</param>
    /// <param name="services">Changes to the daemon's services (an in-memory trace exporter, say), made after the daemon's own.</param>
    public VirtdApplication(string? stateDirectory = null, IDictionary<string, string?>? settings = null, bool kestrel = false,
        Action<IServiceCollection>? services = null)
    {
        _services = services;
        if (kestrel) UseKestrel(k => k.Listen(System.Net.IPAddress.Loopback, 0));
        StateDirectory = stateDirectory ?? TestDirectories.Create("virtd-test-");
        RunDirectory = TestDirectories.Create("virtd-run-");
        _settings = new Dictionary<string, string?>
        {
            ["StateDirectory"] = StateDirectory,
            ["RunDirectory"] = RunDirectory,
            ["DefaultDriver"] = "simulated",
            ["Logging:LogLevel:Default"] = "Warning",
            // The daemon shares the test process, whose resident memory grows with every other test: growth is not its own.
            ["Memory:TrimWhenGrownMiB"] = "0",
        };
        if (settings is not null) foreach (var (k, v) in settings) _settings[k] = v;
    }

    public string StateDirectory { get; }
    public string RunDirectory { get; }

    /// <summary>The default storage pool: disks and kernels must lie here.</summary>
    public string ImagesDirectory => Path.Combine(StateDirectory, "images");

    /// <summary>
    /// The daemon's JSON settings for a test's own bodies (anonymous objects, dictionaries): the daemon's source-generated
    /// types first, then reflection for whatever a test writes. The daemon itself has no reflection fallback.
    /// </summary>
    public static JsonSerializerOptions Json { get; } = TestJson();

    private static JsonSerializerOptions TestJson()
    {
        var o = Virtd.Api.ApiJson.Configure(new JsonSerializerOptions());
        o.TypeInfoResolverChain.Add(new System.Text.Json.Serialization.Metadata.DefaultJsonTypeInfoResolver());
        o.MakeReadOnly();
        return o;
    }

    /// <summary>Starts Kestrel (constructed with <c>kestrel: true</c>) and returns the address it listens on.</summary>
    public Uri StartKestrel()
    {
        StartServer();
        return new Uri(Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>()
            .Features.Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()!.Addresses.First());
    }

    /// <summary>The secret of the admin token the daemon made on its first start (<c>initial-admin-token</c>).</summary>
    public string AdminToken => File.ReadAllText(Path.Combine(StateDirectory, "initial-admin-token")).Trim();

    /// <summary>Clients act as the initial admin unless a test says otherwise (<see cref="CreateClient(string?)"/>).</summary>
    protected override void ConfigureClient(HttpClient client)
    {
        base.ConfigureClient(client);
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", AdminToken);
    }

    /// <summary>A client with this bearer token, or with no credentials at all when null.</summary>
    public HttpClient CreateClient(string? token)
    {
        var client = CreateClient();
        client.DefaultRequestHeaders.Authorization = token is null ? null : new AuthenticationHeaderValue("Bearer", token);
        return client;
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Production");
        builder.ConfigureAppConfiguration((_, c) => c.AddInMemoryCollection(_settings));
        // Settings read while the daemon's services are registered (which pipelines to build) must be there already.
        foreach (var (key, value) in _settings) builder.UseSetting(key, value);
        if (_services is not null) builder.ConfigureServices(_services);
    }

    /// <summary>Creates a file inside the default storage pool and returns its path.</summary>
    public string CreateImage(string name, int bytes = 4096)
    {
        Directory.CreateDirectory(ImagesDirectory);
        var path = Path.Combine(ImagesDirectory, name);
        File.WriteAllBytes(path, new byte[bytes]);
        return path;
    }
}

public static class HttpExtensions
{
    public static Task<HttpResponseMessage> PostJsonAsync(this HttpClient c, string url, object? body) =>
        c.PostAsJsonAsync(url, body, VirtdApplication.Json);

    public static async Task<T> ReadAsync<T>(this HttpResponseMessage r) =>
        (await r.Content.ReadFromJsonAsync<T>(VirtdApplication.Json))!;

    public static async Task<JsonElement> ReadJsonAsync(this HttpResponseMessage r) =>
        await r.Content.ReadFromJsonAsync<JsonElement>();
}
