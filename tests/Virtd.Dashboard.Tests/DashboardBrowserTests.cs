using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Deque.AxeCore.Commons;
using Deque.AxeCore.Playwright;
using Microsoft.Playwright;
using Virtd.Testing;

namespace Virtd.Dashboard.Tests;

/// <summary>
/// The dashboard in a real browser (Debian's chromium, driven by Playwright by its path: no browser download) against a
/// real daemon running the QEMU test guest. Each step saves a screenshot under artifacts/dashboard/.
/// </summary>
public sealed partial class DashboardBrowserTests
{
    private const string Chromium = "/usr/bin/chromium";

    /// <summary>Records when each list row's state changed and when that change was painted (the next animation frame).</summary>
    public const string RowObserver = """
        window.__rowChanges = [];
        new MutationObserver(ms => {
          for (const m of ms) {
            const t = m.target;
            if (t.tagName !== 'TR' || !t.dataset.name) continue;
            const rec = { name: t.dataset.name, state: t.dataset.state, at: Date.now() };
            requestAnimationFrame(() => { rec.painted = Date.now(); window.__rowChanges.push(rec); });
          }
        }).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'] });
        """;

    private static string Artifacts
    {
        get
        {
            var dir = Path.Combine(Path.GetDirectoryName(RepositoryFiles.Find("Api.sln"))!, "artifacts", "dashboard");
            Directory.CreateDirectory(dir);
            return dir;
        }
    }

    private static async Task<IBrowser> LaunchAsync(IPlaywright pw)
    {
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: scripts/install-deps installs Debian's chromium");
        return await pw.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            Args = ["--no-sandbox", "--disable-dev-shm-usage"],
        });
    }

    private static async Task ShotAsync(IPage page, string name) =>
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Artifacts, name + ".png"), FullPage = true });

    /// <summary>An axe scan of the page as it is: no serious or critical violation.</summary>
    private static async Task AxeAsync(IPage page, string what)
    {
        var result = await page.RunAxe();
        var bad = result.Violations.Where(v => v.Impact is "serious" or "critical").ToList();
        Assert.True(bad.Count == 0, $"axe on {what}: " + string.Join("; ", bad.Select(v =>
            $"{v.Id} ({v.Impact}): {v.Help} at {string.Join(", ", v.Nodes.Select(n => n.Html).Take(3))}")));
    }

    private static string[] DaemonArgs => ["--DefaultDriver", "qemu", "--Qemu:MonitorTimeout", "00:00:05", "--Logging:LogLevel:Default", "Warning",
        "--Storage:Pools:guest", TestGuestImage.Directory];

    [Fact]
    public async Task Dashboard_SignIn_Define_Start_Console_Shutdown_Vnc_AndADaemonRestart_InChromium()
    {
        var first = DaemonProcess.Start(DaemonArgs);
        var run = first.RunDirectory;
        DaemonProcess? second = null;
        try
        {
            await first.WaitReadyAsync();
            var url = $"http://127.0.0.1:{first.Port}/";
            using var pw = await Playwright.CreateAsync();
            await using var browser = await LaunchAsync(pw);
            var context = await browser.NewContextAsync(new BrowserNewContextOptions { ViewportSize = new ViewportSize { Width = 1280, Height = 900 } });
            await context.AddInitScriptAsync(RowObserver);
            var page = await context.NewPageAsync();
            var external = new List<string>();
            page.Request += (_, r) => { if (!r.Url.StartsWith($"http://127.0.0.1:{first.Port}/", StringComparison.Ordinal) && !r.Url.StartsWith($"ws://127.0.0.1:{first.Port}/", StringComparison.Ordinal) && !r.Url.StartsWith("data:", StringComparison.Ordinal)) external.Add(r.Url); };

            // Sign in: a wrong token first says so beside the field.
            await page.GotoAsync(url);
            await Assertions.Expect(page.Locator("h1")).ToHaveTextAsync("Sign in to virtd");
            await AxeAsync(page, "the sign-in page");
            await page.FillAsync("#token", "not-a-token");
            await page.ClickAsync("button[type=submit]");
            await Assertions.Expect(page.Locator("#token-error")).ToContainTextAsync("not valid");
            await page.FillAsync("#token", first.AdminToken);
            await page.ClickAsync("button[type=submit]");
            await Assertions.Expect(page.Locator("h1")).ToHaveTextAsync("Domains");
            await Assertions.Expect(page.Locator("#live")).ToHaveTextAsync(new Regex("^live"));
            await ShotAsync(page, "01-list-empty");
            await AxeAsync(page, "the domain list");

            // Define through the form: a bad value first, its error beside its field.
            await page.ClickAsync("nav >> text=New domain");
            await page.FillAsync("#in-name", "web1");
            await page.FillAsync("#in-memoryMiB", "4");
            await page.FillAsync("[id='in-boot.kernel']", TestGuestImage.Kernel);
            await page.FillAsync("[id='in-boot.initrd']", TestGuestImage.Initrd);
            await page.FillAsync("[id='in-boot.cmdline']", TestGuestImage.Cmdline);
            await page.ClickAsync("button[type=submit]");
            await Assertions.Expect(page.Locator("#err-memoryMiB")).ToBeVisibleAsync();
            await Assertions.Expect(page.Locator("#in-memoryMiB")).ToHaveAttributeAsync("aria-invalid", "true");
            await ShotAsync(page, "02-define-error");
            await AxeAsync(page, "the define form with an error");
            await page.FillAsync("#in-memoryMiB", "128");
            await page.ClickAsync("button[type=submit]");
            await Assertions.Expect(page.Locator("#domain-state")).ToHaveAttributeAsync("data-state", "shut-off");

            // Start it while the list is open: the row says running within 1 s of the lifecycle event, with no reload.
            await page.ClickAsync("nav >> text=Domains");
            await Assertions.Expect(page.Locator("tr[data-name=web1]")).ToHaveAttributeAsync("data-state", "shut-off");
            await page.EvaluateAsync("() => { window.__sameDocument = true; }");
            await using (var events = await SseClient.OpenAsync(first.Http, "/api/v1/events?types=domain.lifecycle&domain=web1"))
            {
                Assert.Equal("succeeded", (await first.Http.ActAsync("web1", "start", wait: 60)).Str("state"));
                long eventAt;
                while (true)
                {
                    var e = await events.NextEventAsync(TimeSpan.FromSeconds(30));
                    if (e.Str("state") != "running") continue;
                    eventAt = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
                    break;
                }
                await Assertions.Expect(page.Locator("tr[data-name=web1]")).ToHaveAttributeAsync("data-state", "running");
                var painted = await page.EvaluateAsync<long>("() => window.__rowChanges.filter(r => r.name === 'web1' && r.state === 'running' && r.painted).map(r => r.painted)[0] || 0");
                Assert.True(painted > 0, "no paint of the running row was recorded");
                Assert.True(painted - eventAt <= 1000, $"the row changed {painted - eventAt} ms after the event");
                Assert.True(await page.EvaluateAsync<bool>("() => window.__sameDocument === true"), "the page was reloaded");
                Console.WriteLine($"event → row painted: {painted - eventAt} ms");
            }
            await ShotAsync(page, "03-list-running");

            // The console: the ready line, then what is typed runs in the guest's shell.
            await page.ClickAsync("a:text-is('web1')");
            await Assertions.Expect(page.Locator("#console-status")).ToContainTextAsync("Connected", new() { Timeout = 30_000 });
            var rows = page.Locator("#console .xterm-rows");
            await Assertions.Expect(rows).ToContainTextAsync(TestGuestImage.ReadyLine, new() { Timeout = 60_000 });
            await page.ClickAsync("#console .xterm");
            await page.Keyboard.PressAsync("Enter");
            await page.Keyboard.TypeAsync("echo hi-$RANDOM");
            await page.Keyboard.PressAsync("Enter");
            await Assertions.Expect(rows).ToContainTextAsync(new Regex(@"hi-\d+"), new() { Timeout = 30_000 });
            await ShotAsync(page, "04-console");
            await AxeAsync(page, "the domain page");

            // Shut it down from the page: confirm, then shut-off with stoppedBy acpi in the job.
            await page.ClickAsync("button[data-action=shutdown]");
            await Assertions.Expect(page.Locator("dialog")).ToBeVisibleAsync();
            await ShotAsync(page, "05-shutdown-confirm");
            await page.ClickAsync("dialog button[value=ok]");
            await Assertions.Expect(page.Locator("#domain-state")).ToHaveAttributeAsync("data-state", "shut-off", new() { Timeout = 60_000 });
            var job = page.Locator("tr[data-kind=shutdown]").First;
            await Assertions.Expect(job).ToHaveAttributeAsync("data-state", "succeeded");
            await Assertions.Expect(job.Locator(".outcome")).ToContainTextAsync("stopped by acpi");
            await ShotAsync(page, "06-shut-off");

            // Edit with If-Match: a change made meanwhile elsewhere is not overwritten, and the form says so.
            await page.ClickAsync("a:text-is('Edit')");
            await Assertions.Expect(page.Locator("#in-vcpus")).ToHaveValueAsync("1");
            var current = await first.Http.GetDomainAsync("web1");
            var changed = JsonSerializer.Deserialize<Dictionary<string, object?>>(current.GetProperty("definition").GetRawText())!;
            changed["description"] = "changed elsewhere";
            (await first.Http.PutAsJsonAsync("/api/v1/domains/web1", changed)).EnsureSuccessStatusCode();
            await page.FillAsync("#in-vcpus", "2");
            await page.ClickAsync("button[type=submit]");
            await Assertions.Expect(page.Locator("#form-errors")).ToContainTextAsync("Changed meanwhile");
            await ShotAsync(page, "06b-edit-changed-meanwhile");
            await page.ClickAsync("#form-errors button");
            await Assertions.Expect(page.Locator("#in-description")).ToHaveValueAsync("changed elsewhere");
            await page.FillAsync("#in-vcpus", "2");
            await page.ClickAsync("button[type=submit]");
            await Assertions.Expect(page.Locator("#domain-state")).ToBeVisibleAsync();
            Assert.Equal(2, (await first.Http.GetDomainAsync("web1")).GetProperty("definition").GetProperty("vcpus").GetInt32());

            // VNC of a diskless VM: SeaBIOS's screen on a canvas that is not blank.
            await first.Http.DefineAsync(new { name = "vnc1", memoryMiB = 64, graphics = new { vnc = true } });
            Assert.Equal("succeeded", (await first.Http.ActAsync("vnc1", "start", wait: 60)).Str("state"));
            await page.GotoAsync(url + "#/d/vnc1");
            await page.ClickAsync("#vnc-open");
            await Assertions.Expect(page.Locator("#vnc-status")).ToHaveTextAsync("Connected", new() { Timeout = 30_000 });
            await page.WaitForFunctionAsync("""
                () => {
                  const c = document.querySelector('#vnc canvas');
                  if (!c || !c.width) return false;
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let lit = 0;
                  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
                  return lit > 200;
                }
                """, null, new PageWaitForFunctionOptions { Timeout = 30_000, PollingInterval = 250 });
            await ShotAsync(page, "07-vnc");

            // Host and events pages.
            await page.ClickAsync("nav >> text=Host");
            await Assertions.Expect(page.Locator("h1")).ToContainTextAsync("Host");
            await Assertions.Expect(page.Locator("main table").First).ToContainTextAsync("qemu");
            await ShotAsync(page, "08-host");
            await AxeAsync(page, "the host page");
            await page.ClickAsync("nav >> text=Events");
            await Assertions.Expect(page.Locator("#events li").First).ToBeVisibleAsync();
            await ShotAsync(page, "09-events");
            await AxeAsync(page, "the events page");

            // The daemon goes away and comes back (on the same address); meanwhile vnc1's QEMU dies. The open page
            // reconnects by itself and shows the truth: vnc1 shut off.
            await page.ClickAsync("nav >> text=Domains");
            await Assertions.Expect(page.Locator("tr[data-name=vnc1]")).ToHaveAttributeAsync("data-state", "running");
            var pid = (await first.Http.GetDomainAsync("vnc1")).GetProperty("pid").GetInt32();
            await first.KillAsync();
            using (var kill = Process.Start("kill", ["-KILL", pid.ToString()])) await kill.WaitForExitAsync();
            await Assertions.Expect(page.Locator("#live")).ToHaveClassAsync(new Regex("off"), new() { Timeout = 20_000 });
            second = DaemonProcess.Start(DaemonArgs, stateDirectory: first.StateDirectory, runDirectory: run, url: $"http://127.0.0.1:{first.Port}");
            await second.WaitReadyAsync();
            await Assertions.Expect(page.Locator("#live")).ToHaveClassAsync(new Regex("on"), new() { Timeout = 30_000 });
            await Assertions.Expect(page.Locator("tr[data-name=vnc1]")).ToHaveAttributeAsync("data-state", "shut-off", new() { Timeout = 30_000 });
            Assert.True(await page.EvaluateAsync<bool>("() => window.__sameDocument === true"), "the page was reloaded");
            await ShotAsync(page, "10-after-restart");

            // Phone width: still readable.
            await page.SetViewportSizeAsync(390, 844);
            await ShotAsync(page, "11-phone");
            Assert.Empty(external);
        }
        finally
        {
            if (second is not null) await second.DisposeAsync();
            await first.DisposeAsync();
            VmProcesses.KillAll(run);
        }
    }

}
