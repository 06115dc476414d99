using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging.Abstractions;
using Virtd.Api.Hosting;
using Virtd.Core.Domains;
using Virtd.Core.Jobs;

namespace Virtd.Api.Tests;

/// <summary>The job journal read while the host is built: used when it is still the file, read again when not.</summary>
public sealed class JournalPreloadTests : IDisposable
{
    private readonly string _state = Directory.CreateTempSubdirectory("virtd-preload-").FullName;
    private string Jobs => Path.Combine(_state, "jobs");
    private string File_ => Path.Combine(Jobs, JobJournal.FileName);

    public void Dispose()
    {
        try { Directory.Delete(_state, recursive: true); }
        catch (IOException) { }
    }

    private JournalPreload Begin(string? journal = null) => JournalPreload.Begin(new ConfigurationBuilder().AddInMemoryCollection(
        new Dictionary<string, string?> { ["StateDirectory"] = _state, ["Jobs:Journal"] = journal }).Build());

    private JobJournal NewJournal() => new(Jobs, NullLogger<JobJournal>.Instance);

    private static JournalRecord Accepted(string domain) => new()
    {
        T = JournalRecordType.Accepted, Job = Guid.NewGuid(), At = DateTimeOffset.UtcNow, Domain = domain, DomainUuid = Guid.NewGuid(),
        Command = new StartCommand(),
    };

    private async Task WriteAsync(params JournalRecord[] records)
    {
        await using var journal = NewJournal();
        journal.Load();
        journal.Start(() => []);
        await journal.AppendAsync(records);
        await journal.StopAsync(CancellationToken.None);
    }

    [Fact]
    public async Task TheEarlyReading_GivesTheJournalsJobs()
    {
        await WriteAsync(Accepted("a"), Accepted("b"));
        await using var preload = Begin();
        await using var journal = NewJournal();

        var recovery = await preload.RecoverAsync(journal);

        Assert.Equal(2, recovery.Count);
    }

    [Fact]
    public async Task AJournalThatGrewAfterTheEarlyReading_IsReadAgain_NothingWrittenMeanwhileIsLost()
    {
        await WriteAsync(Accepted("a"), Accepted("b"), Accepted("c"));
        var lines = await File.ReadAllLinesAsync(File_);
        await File.WriteAllTextAsync(File_, lines[0] + "\n" + lines[1] + "\n");
        await using var preload = Begin();
        await preload.Reading.WaitAsync(TimeSpan.FromSeconds(30));
        await File.AppendAllTextAsync(File_, lines[2] + "\n"); // a record written after the early reading
        await using var journal = NewJournal();

        var recovery = await preload.RecoverAsync(journal);

        Assert.Equal(3, recovery.Count);
    }

    [Fact]
    public async Task ATornTailFoundByTheEarlyReading_IsCutOffTheFileAtTheStage_NotBefore()
    {
        await WriteAsync(Accepted("a"), Accepted("b"));
        var whole = await File.ReadAllBytesAsync(File_);
        await File.AppendAllTextAsync(File_, "{\"t\":\"accepted\",\"at\":");
        var torn = new FileInfo(File_).Length;
        await using var preload = Begin();
        await preload.Reading.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(torn, new FileInfo(File_).Length); // reading changes nothing
        await using var journal = NewJournal();

        var recovery = await preload.RecoverAsync(journal);

        Assert.Equal(2, recovery.Count);
        Assert.Equal(whole.Length, new FileInfo(File_).Length);
    }

    [Fact]
    public async Task WithTheJournalOff_NothingIsRead()
    {
        await WriteAsync(Accepted("a"));
        await using var preload = Begin(journal: "false");

        Assert.True(preload.Reading.IsCompleted);
    }
}
