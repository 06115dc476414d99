using System.Text.Json;
using System.Text.Json.Serialization;
using Virtd.Api.Errors;
using Virtd.Core.Domains;
using Virtd.Core.Persistence;

namespace Virtd.Api.Access;

/// <summary>One line of the audit log. Never a secret: paths and identities only.</summary>
public sealed record AuditEntry(DateTimeOffset Time, string Identity, string Client, string Method, string Path, string? Domain, int Status, Guid? JobId);

/// <summary>
/// <c>&lt;StateDirectory&gt;/log/audit.log</c> (mode 0600): one JSON line for every request that changes something,
/// written before the change is made, and one for every such request refused with 401 or 403. A line that cannot
/// be written stops its change (503 <c>audit-unavailable</c>). Lines are appended with one write each; a file moved
/// away (log rotation) is noticed at the next line, which starts a new file.
/// </summary>
public sealed class AuditLog(string path, bool ownsFile, ILogger<AuditLog> log) : IDisposable
{
    private readonly Lock _lock = new();
    private FileStream? _stream;

    public string Path { get; } = path;

    /// <summary>Writes the line (one write: the line and its newline together) or throws <c>audit-unavailable</c>.</summary>
    public void Write(AuditEntry entry)
    {
        var json = JsonSerializer.SerializeToUtf8Bytes(entry, AuditJson.Default.AuditEntry);
        var line = new byte[json.Length + 1];
        json.CopyTo(line, 0);
        line[^1] = (byte)'\n';
        lock (_lock)
        {
            try
            {
                if (_stream is null || !File.Exists(Path)) Reopen();
                _stream!.Write(line); // unbuffered: this is the write(2)
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Close();
                log.LogError("cannot write the audit log {File}: {Error}", Path, e.Message);
                throw AccessErrors.AuditUnavailable(Core.Errors.VirtdException.Describe(e));
            }
        }
    }

    /// <summary>For refusals: the request is refused anyway, so a failure is only logged.</summary>
    public void TryWrite(AuditEntry entry)
    {
        try { Write(entry); }
        catch (Core.Errors.VirtdException) { }
    }

    private void Reopen()
    {
        Close();
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        var stream = new FileStream(Path, new FileStreamOptions
        {
            Mode = FileMode.OpenOrCreate,
            Access = FileAccess.Write,
            Share = FileShare.ReadWrite,
            BufferSize = 0,
            UnixCreateMode = AtomicFile.OwnerOnly,
        });
        if (stream.CanSeek) stream.Seek(0, SeekOrigin.End);
        // The daemon's own file is kept owner-only whatever made it; a file named in Security:AuditLog is the operator's.
        if (ownsFile && (File.GetUnixFileMode(Path) & ~AtomicFile.OwnerOnly) != 0) File.SetUnixFileMode(Path, AtomicFile.OwnerOnly);
        _stream = stream;
    }

    private void Close()
    {
        try { _stream?.Dispose(); }
        catch (IOException) { }
        _stream = null;
    }

    public void Dispose()
    {
        lock (_lock) Close();
    }

    public static AuditEntry Entry(HttpContext http, int status, string? domain, Guid? jobId, TimeProvider time) => new(
        time.GetUtcNow(),
        (http.User as CallerPrincipal)?.Caller.Identity ?? "anonymous",
        Clients.Address(http),
        http.Request.Method,
        http.Request.Path.Value ?? "/",
        domain ?? (http.Request.RouteValues.TryGetValue("id", out var id) ? id as string : null),
        status,
        jobId);

    /// <summary>Requests that change something: every method but GET, HEAD and OPTIONS.</summary>
    public static bool IsChange(HttpRequest request) =>
        !HttpMethods.IsGet(request.Method) && !HttpMethods.IsHead(request.Method) && !HttpMethods.IsOptions(request.Method);
}

/// <summary>
/// The audit of one changing request (set by <see cref="Audit.Audited{TBuilder}"/>): the endpoint names the status
/// it answers on success, and the core calls <see cref="Before"/> at the point of no return. If the change fails after
/// its line was written (a disk error while saving), a second line records the status actually answered.
/// </summary>
public sealed class AuditScope(AuditLog log, HttpContext http, int status, TimeProvider time)
{
    private AuditEntry? _written;

    /// <summary>A <see cref="BeforeChange"/> for the core: writes this request's line, naming the domain and job.</summary>
    public BeforeChange Before => (domain, jobId) => Write(domain.Name, jobId);

    public void Write(string? domain = null, Guid? jobId = null)
    {
        var entry = AuditLog.Entry(http, status, domain, jobId, time);
        log.Write(entry);
        _written = entry;
    }

    internal void Failed(Exception error)
    {
        if (_written is { } first) log.TryWrite(first with { Time = time.GetUtcNow(), Status = ProblemResponses.Map(error).Status });
    }
}

public static class Audit
{
    /// <summary>
    /// Marks an endpoint as a change: its handler finds its <see cref="AuditScope"/> with <see cref="Of"/> and must
    /// write the line (through <see cref="AuditScope.Before"/> or <see cref="AuditScope.Write"/>) before changing anything.
    /// </summary>
    public static TBuilder Audited<TBuilder>(this TBuilder builder, int successStatus) where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilter(async (context, next) =>
        {
            var http = context.HttpContext;
            var scope = new AuditScope(http.RequestServices.GetRequiredService<AuditLog>(), http, successStatus,
                http.RequestServices.GetRequiredService<TimeProvider>());
            http.Features.Set(scope);
            try
            {
                return await next(context).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                scope.Failed(e);
                throw;
            }
        });

    public static AuditScope Of(HttpContext http) =>
        http.Features.Get<AuditScope>() ?? throw new InvalidOperationException($"{http.Request.Path}: endpoint is not marked .Audited()");
}

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(AuditEntry))]
internal sealed partial class AuditJson : JsonSerializerContext;
