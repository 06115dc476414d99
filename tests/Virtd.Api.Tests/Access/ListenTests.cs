using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Virtd.Testing;

namespace Virtd.Api.Tests.Access;

/// <summary>Where the daemon listens: never plain HTTP on a network unless told so; HTTPS with Kestrel's usual certificate settings.</summary>
public sealed class ListenTests
{
    [Theory]
    [InlineData("http://0.0.0.0:{port}")]
    [InlineData("http://[::]:{port}")]
    [InlineData("http://*:{port}")]
    [InlineData("http://127.0.0.1:{port};http://192.0.2.10:{port}")]
    public async Task PlainHttpOnANetworkAddress_StopsTheDaemonWithExitCode2_NamingTheKey(string url)
    {
        await using var daemon = DaemonProcess.Start(url: url);

        var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(2, code);
        Assert.Contains("virtd: invalid configuration: urls: http://", daemon.Output);
        Assert.Contains("Security:AllowPlainHttpOnNetwork", daemon.Output);
        Assert.DoesNotContain("   at ", daemon.Output);
    }

    [Fact]
    public async Task PlainHttpOnANetworkAddress_StartsWhenAllowed_AndStillNeedsAToken()
    {
        await using var daemon = DaemonProcess.Start(["--Security:AllowPlainHttpOnNetwork", "true"], url: "http://0.0.0.0:{port}");
        await daemon.WaitReadyAsync();

        Assert.Equal(HttpStatusCode.OK, (await daemon.Http.GetAsync("/api/v1/host")).StatusCode);
        using var anonymous = new HttpClient { BaseAddress = daemon.Http.BaseAddress };
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/api/v1/host")).StatusCode);
    }

    [Fact]
    public async Task Https_OnAllInterfaces_WithKestrelsDefaultCertificateSettings_ServesTheApiAndSecureCookies()
    {
        var dir = TestDirectories.Create("virtd-tls-");
        var (cert, key) = SelfSigned(dir);

        await using var daemon = DaemonProcess.Start(
            ["--Kestrel:Certificates:Default:Path", cert, "--Kestrel:Certificates:Default:KeyPath", key],
            url: "https://0.0.0.0:{port}");
        await daemon.WaitReadyAsync();

        Assert.Equal("https", daemon.Http.BaseAddress!.Scheme);
        Assert.Equal(HttpStatusCode.OK, (await daemon.Http.GetAsync("/api/v1/domains")).StatusCode);
        var login = await daemon.Http.PostJsonAsync("/api/v1/session", new { token = daemon.AdminToken });
        Assert.Equal(HttpStatusCode.NoContent, login.StatusCode);
        Assert.Contains("secure", login.Headers.GetValues("Set-Cookie").Single(), StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task APortInUse_EndsWithOneLineAndExitCode1_NotACrash()
    {
        using var taken = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;

        await using var daemon = DaemonProcess.Start(url: $"http://127.0.0.1:{port}");
        var code = await daemon.WaitExitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(1, code);
        Assert.Contains($"virtd: Failed to bind to address http://127.0.0.1:{port}: address already in use", daemon.Output);
        Assert.DoesNotContain("Unhandled exception", daemon.Output);
    }

    /// <summary>A self-signed certificate for localhost and 127.0.0.1, as PEM files.</summary>
    private static (string Cert, string Key) SelfSigned(string dir)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        var certPath = Path.Combine(dir, "cert.pem");
        var keyPath = Path.Combine(dir, "key.pem");
        File.WriteAllText(certPath, cert.ExportCertificatePem());
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
        return (certPath, keyPath);
    }
}
