using Virtd.Testing;

namespace Virtd.Client.Tests;

/// <summary>
/// A domain's life driven only through <see cref="VirtdClient"/>, which NSwag generates from the committed OpenAPI
/// document when this project builds: what a client's author gets from the document alone must be enough to define,
/// run, pause, stop and remove a VM, follow its jobs, tell a 202 from a 200, and read a problem's code.
/// </summary>
public sealed class GeneratedClientTests
{
    /// <summary>?wait= for each action: a deadline (the simulated driver takes milliseconds), not a pause.</summary>
    private const int Wait = 60;

    private const string Name = "client-vm";

    [Fact]
    public async Task DomainLifecycle_ThroughTheGeneratedClientOnly()
    {
        await using var daemon = DaemonProcess.Start(["--DefaultDriver", "simulated"]);
        await daemon.WaitReadyAsync(); // gives daemon.Http the admin token
        var client = new VirtdClient(daemon.Http);

        // Define: 201 with Location. Told nothing else, the client sends the document's defaults, the daemon's own.
        var defined = await client.DefineDomainAsync(new DomainDefinition { Name = Name, MemoryMiB = 64, Description = "generated client" });
        Assert.Equal(201, defined.StatusCode);
        Assert.Equal($"/api/v1/domains/{Name}", Header(defined, "Location"));
        var domain = defined.Result;
        Assert.Equal(DomainState.ShutOff, domain.State);
        Assert.Equal(DriverKind.Simulated, domain.Driver);
        Assert.Equal(1, domain.Definition.Vcpus);
        Assert.Equal(MachineType.Q35, domain.Definition.Machine);
        Assert.Equal(LifecycleAction.Restart, domain.Definition.OnReboot);
        Assert.Equal(LifecycleAction.Destroy, domain.Definition.OnPoweroff);
        Assert.Equal("generated client", domain.Definition.Description);

        // Start without ?wait=: 202 with the queued job and its Location; then read that job, waiting for it to end.
        var start = await client.StartDomainAsync(Name);
        Assert.Equal(202, start.StatusCode);
        Assert.Equal(JobKind.Start, start.Result.Kind);
        Assert.Equal($"/api/v1/jobs/{start.Result.Id}", Header(start, "Location"));
        var startJob = await client.GetJobAsync(start.Result.Id.ToString(), wait: Wait);
        Assert.Equal(200, startJob.StatusCode);
        Assert.Equal(JobState.Succeeded, startJob.Result.State);
        Assert.Equal(Name, startJob.Result.Domain);
        Assert.Equal(domain.Uuid, startJob.Result.DomainUuid);
        Assert.NotNull(startJob.Result.FinishedAt);
        Assert.Null(startJob.Result.Error);
        Assert.Equal(DomainState.Running, await StateAsync(client));

        // Suspend and resume with ?wait=: 200 with the finished job.
        await ActAsync(client.SuspendDomainAsync(Name, wait: Wait), JobKind.Suspend);
        Assert.Equal(DomainState.Paused, await StateAsync(client));
        await ActAsync(client.ResumeDomainAsync(Name, wait: Wait), JobKind.Resume);
        Assert.Equal(DomainState.Running, await StateAsync(client));

        // A problem, as the client reads it: an active domain cannot be undefined.
        var active = await Assert.ThrowsAsync<VirtdApiException<ProblemDetails>>(() => client.UndefineDomainAsync(Name));
        Assert.Equal(409, active.StatusCode);
        Assert.Equal(ProblemDetailsCode.DomainActive, active.Result.Code);
        Assert.Equal(409, active.Result.Status);

        // Destroy (its body is optional), then undefine with the ETag the domain was last read with.
        var destroyed = await ActAsync(client.DestroyDomainAsync(Name, wait: Wait, body: new DestroyCommand { Graceful = false }), JobKind.Destroy);
        Assert.NotNull(destroyed.Result);
        var stopped = await client.GetDomainAsync(Name);
        Assert.Equal(DomainState.ShutOff, stopped.Result.State);
        var undefined = await client.UndefineDomainAsync(Name, if_Match: Header(stopped, "ETag"));
        Assert.Equal(204, undefined.StatusCode);
        var gone = await Assert.ThrowsAsync<VirtdApiException<ProblemDetails>>(() => client.GetDomainAsync(Name));
        Assert.Equal(404, gone.StatusCode);
        Assert.Equal(ProblemDetailsCode.DomainNotFound, gone.Result.Code);

        // Its jobs outlive it: newest first, every action succeeded.
        var jobs = (await client.ListJobsAsync(domain: Name)).Result;
        var actions = jobs.Items.Where(j => j.Kind is JobKind.Start or JobKind.Suspend or JobKind.Resume or JobKind.Destroy).ToList();
        Assert.Equal([JobKind.Destroy, JobKind.Resume, JobKind.Suspend, JobKind.Start], actions.Select(j => j.Kind));
        Assert.All(actions, j => Assert.Equal(JobState.Succeeded, j.State));
        Assert.Contains(actions, j => j.Id == start.Result.Id);
    }

    /// <summary>An action with ?wait=: 200 and the job, finished and succeeded.</summary>
    private static async Task<JobDto> ActAsync(Task<VirtdResponse<JobDto>> action, JobKind kind)
    {
        var response = await action;
        Assert.Equal(200, response.StatusCode);
        Assert.Equal(kind, response.Result.Kind);
        Assert.Equal(JobState.Succeeded, response.Result.State);
        return response.Result;
    }

    private static async Task<DomainState> StateAsync(VirtdClient client) => (await client.GetDomainAsync(Name)).Result.State;

    private static string Header(VirtdResponse response, string name) =>
        Assert.Single(response.Headers.Single(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Value);
}
