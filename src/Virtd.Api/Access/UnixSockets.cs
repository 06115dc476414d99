using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Virtd.Api.Hosting;

namespace Virtd.Api.Access;

/// <summary>A connection on one of the daemon's Unix sockets: the socket's role and the peer's credentials (SO_PEERCRED).</summary>
public sealed class UnixPeer(Role role, int pid, int uid, int gid)
{
    public int Pid { get; } = pid;
    public int Uid { get; } = uid;
    public int Gid { get; } = gid;
    public Caller Caller { get; } = new($"unix:uid={uid.ToString(CultureInfo.InvariantCulture)}", role, AuthMethod.UnixSocket);
    public string Client { get; } = $"unix:pid={pid.ToString(CultureInfo.InvariantCulture)},gid={gid.ToString(CultureInfo.InvariantCulture)}";
}

/// <summary>
/// libvirt's way in: <c>&lt;RunDirectory&gt;/virtd.sock</c> (mode 0660, group <c>virtd</c> when that group exists)
/// gives the admin role and <c>virtd-ro.sock</c> (mode 0666) the reader role; the file mode is the gate and the
/// peer's uid is the identity. Kestrel serves both next to the TCP addresses (as <c>http://unix:/path</c> URLs);
/// a connection middleware reads the peer's credentials once per connection.
/// </summary>
public sealed class UnixSockets
{
    public const string AdminName = "virtd.sock";
    public const string ReaderName = "virtd-ro.sock";

    public UnixSockets(string runDirectory, bool enabled)
    {
        Enabled = enabled;
        AdminPath = Path.Combine(runDirectory, AdminName);
        ReaderPath = Path.Combine(runDirectory, ReaderName);
    }

    public bool Enabled { get; }
    public string AdminPath { get; }
    public string ReaderPath { get; }

    public IEnumerable<string> Urls => Enabled ? [$"http://unix:{AdminPath}", $"http://unix:{ReaderPath}"] : [];

    public Role? RoleOf(string? socketPath) =>
        socketPath == AdminPath ? Role.Admin : socketPath == ReaderPath ? Role.Reader : null;

    /// <summary>
    /// Called by Kestrel just before it binds an address. For our sockets: a socket file left by a daemon that
    /// died is removed; one that another daemon still serves stops this one (two daemons must not share a run
    /// directory). Then every connection gets its <see cref="UnixPeer"/>.
    /// </summary>
    public void OnBind(Microsoft.AspNetCore.Server.Kestrel.Core.ListenOptions listen, ILogger log)
    {
        if (RoleOf(listen.SocketPath) is not { } role) return;
        var path = listen.SocketPath!;
        RemoveStale(path);
        lock (_bound) _bound.Add(path);
        listen.Use(next => connection =>
        {
            var socket = connection.Features.Get<IConnectionSocketFeature>()?.Socket;
            if (socket is null || !TryPeerCredentials(socket, out var pid, out var uid, out var gid))
            {
                log.LogWarning("connection on {Socket} without peer credentials: closed", path);
                connection.Abort();
                return Task.CompletedTask;
            }
            connection.Features.Set(new UnixPeer(role, pid, uid, gid));
            return next(connection);
        });
    }

    private static void RemoveStale(string path)
    {
        if (!File.Exists(path)) return;
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable)
        {
            File.Delete(path); // nobody listens: left by a daemon that did not stop cleanly
            return;
        }
        catch (SocketException)
        {
            return; // not a socket, or not ours to judge: Kestrel's bind reports it
        }
        throw new ConfigurationException(
            $"RunDirectory: another daemon is serving {path}; stop it or give this one another RunDirectory");
    }

    /// <summary>
    /// After Kestrel has bound: the admin socket becomes 0660 (group <c>virtd</c> when it exists, else the daemon's
    /// own group: root only, for a daemon run as root), the read-only one 0666. Until then the umask's mode left
    /// them reachable by their owner only, never by more.
    /// </summary>
    public void SetModes(ILogger log)
    {
        if (!IsBound(AdminPath)) return;
        foreach (var (path, mode) in new[] { (AdminPath, Mode0660), (ReaderPath, Mode0666) })
        {
            File.SetUnixFileMode(path, mode);
            if (path == AdminPath && Native.GroupId("virtd") is { } gid && Native.Chown(path, -1, gid) != 0)
                log.LogWarning("cannot give {Socket} to group virtd (errno {Errno})", path, Marshal.GetLastPInvokeError());
        }
        log.LogInformation("unix sockets: {Admin} (admin, 0660{Group}), {Reader} (reader, 0666)", AdminPath,
            Native.GroupId("virtd") is not null ? ", group virtd" : "", ReaderPath);
    }

    /// <summary>Removes the socket files at stop, so that a client gets "no such file" rather than "connection refused" from a dead path.</summary>
    public void Remove()
    {
        foreach (var path in new[] { AdminPath, ReaderPath })
        {
            if (!IsBound(path)) continue;
            try { File.Delete(path); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>Whether Kestrel bound the socket (not so under a test server, or when endpoints given in code replaced ours).</summary>
    private bool IsBound(string path)
    {
        lock (_bound) return _bound.Contains(path);
    }

    private readonly HashSet<string> _bound = new(StringComparer.Ordinal);

    private const UnixFileMode Mode0660 = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;
    private const UnixFileMode Mode0666 = Mode0660 | UnixFileMode.OtherRead | UnixFileMode.OtherWrite;

    /// <summary>struct ucred { pid_t pid; uid_t uid; gid_t gid; } from getsockopt(SOL_SOCKET, SO_PEERCRED).</summary>
    internal static bool TryPeerCredentials(Socket socket, out int pid, out int uid, out int gid)
    {
        Span<byte> ucred = stackalloc byte[12];
        pid = uid = gid = -1;
        try
        {
            if (socket.GetRawSocketOption(SolSocket, SoPeerCred, ucred) != 12) return false;
        }
        catch (SocketException) { return false; }
        pid = BitConverter.ToInt32(ucred);
        uid = BitConverter.ToInt32(ucred[4..]);
        gid = BitConverter.ToInt32(ucred[8..]);
        return true;
    }

    private const int SolSocket = 1;
    private const int SoPeerCred = 17;
}

internal static partial class Native
{
    [LibraryImport("libc", EntryPoint = "chown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Chown(string path, int owner, int group);

    /// <summary>The id of a group by name, from /etc/group (no NSS: a daemon's group is a local system group).</summary>
    internal static int? GroupId(string name)
    {
        try
        {
            foreach (var line in File.ReadLines("/etc/group"))
            {
                var f = line.Split(':');
                if (f.Length >= 3 && f[0] == name && int.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var gid)) return gid;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
