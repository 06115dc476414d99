using System.Net;
using System.Text;
using Virtd.Testing;
using static Virtd.Testing.VirtdHttp;

namespace Virtd.Api.Tests.Access;

/// <summary>Secrets are shown once and kept nowhere: not in the state directory, not in the run directory, not in any log.</summary>
public sealed class SecretTests
{
    [Fact]
    public async Task AfterAFullRun_NoTokenOrSessionSecretIsOnDiskOrInTheLog_ButTheInitialAdminsOwnFile()
    {
        await using var daemon = DaemonProcess.Start(["--Logging:LogLevel:Default", "Debug", "--DefaultDriver", "simulated"]);
        await daemon.WaitReadyAsync();
        var http = daemon.Http;
        var initial = daemon.AdminToken;

        var secret = await TokenTests.CreateTokenAsync(http, "ci", "admin");
        using var ci = new HttpClient { BaseAddress = http.BaseAddress };
        ci.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", secret);
        await ci.DefineAsync(Definition("vm"));
        await ci.ActAsync("vm", "start", wait: 10);
        // Wrong secrets are logged as failures: with the address, never with what was sent.
        using var wrong = new HttpClient { BaseAddress = http.BaseAddress };
        wrong.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", secret + "x");
        Assert.Equal(HttpStatusCode.Unauthorized, (await wrong.GetAsync("/api/v1/domains")).StatusCode);
        var login = await ci.PostJsonAsync("/api/v1/session", new { token = secret });
        var cookie = login.Headers.GetValues("Set-Cookie").Single().Split(';')[0];
        var session = cookie["virtd_session=".Length..];
        using (var browser = new HttpClient { BaseAddress = http.BaseAddress })
        {
            browser.DefaultRequestHeaders.Add("Cookie", cookie);
            Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("/api/v1/domains/vm")).StatusCode);
            await browser.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/api/v1/domains/vm/destroy?wait=10") { Content = Raw("{}") });
        }
        await ci.DeleteAsync("/api/v1/tokens/ci");
        daemon.Terminate();
        Assert.Equal(0, await daemon.WaitExitAsync(TimeSpan.FromSeconds(20)));

        var files = Directory.EnumerateFiles(daemon.StateDirectory, "*", SearchOption.AllDirectories)
            .Concat(Directory.EnumerateFiles(daemon.RunDirectory, "*", SearchOption.AllDirectories)).ToList();
        Assert.Contains(files, f => f.EndsWith("audit.log", StringComparison.Ordinal));
        foreach (var file in files)
        {
            var text = Encoding.UTF8.GetString(await File.ReadAllBytesAsync(file));
            Assert.False(text.Contains(secret, StringComparison.Ordinal), $"the token's secret is in {file}");
            Assert.False(text.Contains(session, StringComparison.Ordinal), $"the session's secret is in {file}");
            if (!file.EndsWith("/initial-admin-token", StringComparison.Ordinal))
                Assert.False(text.Contains(initial, StringComparison.Ordinal), $"the initial admin's secret is in {file}");
        }
        Assert.DoesNotContain(secret, daemon.Output);
        Assert.DoesNotContain(session, daemon.Output);
        Assert.DoesNotContain(initial, daemon.Output);
        Assert.Contains("initial-admin-token", daemon.Output); // the path is logged, the secret never
        Assert.Contains("authentication failed from 127.0.0.1", daemon.Output);
    }
}
