using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Virtd.Core.Persistence;

namespace Virtd.Api.Access;

/// <summary>One API token as the store knows it: never its secret, only the secret's SHA-256.</summary>
public sealed class TokenEntry
{
    private long _lastUsedTicks;

    internal TokenEntry(string name, Role role, byte[] hash, DateTimeOffset createdAt, DateTimeOffset? expiresAt, DateTimeOffset? lastUsedAt)
    {
        Name = name;
        Role = role;
        Hash = hash;
        CreatedAt = createdAt;
        ExpiresAt = expiresAt;
        _lastUsedTicks = lastUsedAt?.UtcTicks ?? 0;
        Caller = new Caller(name, role, AuthMethod.Token, expiresAt);
    }

    public string Name { get; }
    public Role Role { get; }
    internal byte[] Hash { get; }
    public DateTimeOffset CreatedAt { get; }
    public DateTimeOffset? ExpiresAt { get; }
    public Caller Caller { get; }

    /// <summary>Kept in memory and written with the next change of the token file or at daemon stop: a request never writes.</summary>
    public DateTimeOffset? LastUsedAt => Interlocked.Read(ref _lastUsedTicks) is > 0 and var t ? new DateTimeOffset(t, TimeSpan.Zero) : null;

    public bool ExpiredAt(DateTimeOffset now) => ExpiresAt is { } e && e <= now;

    internal bool Touch(DateTimeOffset now)
    {
        var t = now.UtcTicks;
        // Once a second is plenty for "last use", and keeps a busy token's cache line quiet.
        var old = Interlocked.Read(ref _lastUsedTicks);
        if (t - old < TimeSpan.TicksPerSecond) return false;
        Interlocked.Exchange(ref _lastUsedTicks, t);
        return true;
    }
}

/// <summary>A dashboard session: a cookie secret that stands for its token until it expires or the token is revoked.</summary>
public sealed class SessionEntry
{
    internal SessionEntry(TokenEntry token, byte[] hash, DateTimeOffset createdAt, DateTimeOffset expiresAt)
    {
        Token = token;
        Hash = hash;
        CreatedAt = createdAt;
        ExpiresAt = expiresAt;
        Caller = new Caller(token.Name, token.Role, AuthMethod.Session, expiresAt);
    }

    public TokenEntry Token { get; }
    internal byte[] Hash { get; }
    public DateTimeOffset CreatedAt { get; }
    public DateTimeOffset ExpiresAt { get; }
    public Caller Caller { get; }
}

public enum SecretCheck { Valid, Unknown, Expired }

/// <summary>
/// API tokens and dashboard sessions, in <c>&lt;StateDirectory&gt;/tokens.json</c> (mode 0600, written atomically).
/// A secret is 256 random bits; only its SHA-256 is kept, and a presented secret is found by its hash, then compared
/// in constant time. Lookups read an immutable snapshot and never touch the disk; a change writes the file first and
/// then swaps the snapshot, so a revoked token fails from the very next request on.
/// </summary>
public sealed class TokenStore
{
    public const string InitialAdmin = "initial-admin";
    public const string SecretPrefix = "virtd_";
    /// <summary>Sessions kept per token; a login beyond it ends the oldest.</summary>
    public const int SessionsPerToken = 100;

    private readonly string _file;
    private readonly string _initialSecretFile;
    private readonly TimeProvider _time;
    private readonly ILogger<TokenStore> _log;
    private readonly Lock _write = new();
    private volatile Snapshot _snapshot = Snapshot.Empty;

    public TokenStore(string stateDirectory, TimeProvider time, ILogger<TokenStore> log)
    {
        _file = Path.Combine(stateDirectory, "tokens.json");
        _initialSecretFile = Path.Combine(stateDirectory, "initial-admin-token");
        _time = time;
        _log = log;
    }

    public string FilePath => _file;
    public string InitialSecretPath => _initialSecretFile;

    /// <summary>
    /// Start-up: reads the token file. When there is none (the first start) or it cannot be read, creates the
    /// <c>initial-admin</c> token and writes its secret to <c>initial-admin-token</c> (mode 0600).
    /// </summary>
    public void Load()
    {
        lock (_write)
        {
            TokenFile? stored = null;
            if (File.Exists(_file))
            {
                try
                {
                    stored = JsonSerializer.Deserialize(File.ReadAllBytes(_file), AccessJson.Default.TokenFile)
                             ?? throw new JsonException("the file holds null");
                }
                catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
                {
                    var aside = _file + ".corrupt";
                    File.Move(_file, aside, overwrite: true);
                    _log.LogError("token file {File} is unusable ({Problem}); moved aside to {Aside}; starting with a new initial admin token",
                        _file, e.Message, aside);
                }
            }
            if (stored is null)
            {
                var (snapshot, secret) = Snapshot.Empty.WithToken(InitialAdmin, Role.Admin, _time.GetUtcNow(), null);
                Save(snapshot);
                AtomicFile.Write(_initialSecretFile, Encoding.ASCII.GetBytes(secret + "\n"), mode: AtomicFile.OwnerOnly);
                _snapshot = snapshot;
                _log.LogWarning("no API tokens yet: created the admin token '{Name}'; its secret is in {File} (readable by this user only)",
                    InitialAdmin, _initialSecretFile);
                return;
            }
            _snapshot = Snapshot.From(stored, _time.GetUtcNow());
            EnsureMode(_file);
        }
    }

    public IReadOnlyList<TokenEntry> List() => [.. _snapshot.ByName.Values.OrderBy(t => t.Name, StringComparer.Ordinal)];

    public TokenEntry? Find(string name) => _snapshot.ByName.GetValueOrDefault(name);

    /// <summary>Checks a bearer secret. Never touches the disk.</summary>
    public SecretCheck CheckToken(ReadOnlySpan<char> secret, out TokenEntry? token)
    {
        token = null;
        Span<byte> hash = stackalloc byte[32];
        if (!TryHash(secret, hash)) return SecretCheck.Unknown;
        if (!_snapshot.ByHash.TryGetValue(HashKey.Of(hash), out var found) || !CryptographicOperations.FixedTimeEquals(found.Hash, hash)) return SecretCheck.Unknown;
        var now = _time.GetUtcNow();
        if (found.ExpiredAt(now)) return SecretCheck.Expired;
        found.Touch(now);
        token = found;
        return SecretCheck.Valid;
    }

    /// <summary>Checks a session cookie. Never touches the disk.</summary>
    public SecretCheck CheckSession(ReadOnlySpan<char> secret, out SessionEntry? session)
    {
        session = null;
        Span<byte> hash = stackalloc byte[32];
        if (!TryHash(secret, hash)) return SecretCheck.Unknown;
        if (!_snapshot.Sessions.TryGetValue(HashKey.Of(hash), out var found) || !CryptographicOperations.FixedTimeEquals(found.Hash, hash)) return SecretCheck.Unknown;
        var now = _time.GetUtcNow();
        if (found.ExpiresAt <= now || found.Token.ExpiredAt(now)) return SecretCheck.Expired;
        found.Token.Touch(now);
        session = found;
        return SecretCheck.Valid;
    }

    /// <summary>Creates a token and returns it with its secret, which is shown once and kept nowhere.</summary>
    public (TokenEntry Token, string Secret) Create(string name, Role role, DateTimeOffset? expiresAt)
    {
        lock (_write)
        {
            if (_snapshot.ByName.ContainsKey(name)) throw AccessErrors.TokenExists(name);
            var (next, secret) = _snapshot.WithToken(name, role, _time.GetUtcNow(), expiresAt);
            Commit(next);
            return (next.ByName[name], secret);
        }
    }

    /// <summary>Revokes a token and its sessions. False when there is no such token.</summary>
    public bool Revoke(string name)
    {
        lock (_write)
        {
            if (!_snapshot.ByName.ContainsKey(name)) return false;
            Commit(_snapshot.Without(name));
            if (name == InitialAdmin) TryDelete(_initialSecretFile); // its secret must not outlive it
            return true;
        }
    }

    /// <summary>Starts a session for a token (a dashboard sign-in); the secret goes into the cookie only.</summary>
    public (SessionEntry Session, string Secret) CreateSession(TokenEntry token, TimeSpan lifetime)
    {
        lock (_write)
        {
            if (!_snapshot.ByName.TryGetValue(token.Name, out var current) || current != token) throw AccessErrors.Unauthenticated("the token was revoked");
            var now = _time.GetUtcNow();
            var expires = now + lifetime;
            if (token.ExpiresAt is { } e && e < expires) expires = e;
            var secret = NewSecret();
            var session = new SessionEntry(token, HashOf(secret), now, expires);
            Commit(_snapshot.WithSession(session, now));
            return (session, secret);
        }
    }

    public void EndSession(SessionEntry session)
    {
        lock (_write)
        {
            if (_snapshot.Sessions.Values.Contains(session)) Commit(_snapshot.WithoutSession(session));
        }
    }

    /// <summary>Writes the last-use times kept in memory (at daemon stop).</summary>
    public void Flush()
    {
        lock (_write)
        {
            try { Save(_snapshot); }
            catch (IOException e) { _log.LogWarning("cannot write {File}: {Error}", _file, e.Message); }
        }
    }

    private void Commit(Snapshot next)
    {
        try { Save(next); } // on disk first: a failed write changes nothing
        catch (DirectorySyncException e)
        {
            _log.LogError("token file written, but: {Error}", e.Message); // the file is replaced: the change stands
        }
        catch (IOException e) when (Core.Errors.VirtdException.IsDiskFull(e))
        {
            throw Core.Errors.VirtdException.InsufficientStorage("the token file could not be written");
        }
        _snapshot = next;
    }

    private void Save(Snapshot s) =>
        AtomicFile.Write(_file, JsonSerializer.SerializeToUtf8Bytes(s.ToFile(), AccessJson.Default.TokenFile), mode: AtomicFile.OwnerOnly);

    private void EnsureMode(string path)
    {
        if ((File.GetUnixFileMode(path) & ~AtomicFile.OwnerOnly) == 0) return;
        File.SetUnixFileMode(path, AtomicFile.OwnerOnly);
        _log.LogWarning("{File} was readable by others; set to mode 0600", path);
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    internal static string NewSecret() => SecretPrefix + Base64Url.EncodeToString(RandomNumberGenerator.GetBytes(32));

    /// <summary>The SHA-256 of a presented secret, allocating nothing. Empty or over-long input is no secret of ours.</summary>
    private static bool TryHash(ReadOnlySpan<char> secret, Span<byte> hash)
    {
        if (secret.Length is 0 or > 256) return false;
        Span<byte> utf8 = stackalloc byte[secret.Length * 3];
        var n = Encoding.UTF8.GetBytes(secret, utf8);
        SHA256.HashData(utf8[..n], hash);
        return true;
    }

    private static byte[] HashOf(string secret) => SHA256.HashData(Encoding.UTF8.GetBytes(secret));

    internal static byte[] ParseHash(string text) =>
        text.StartsWith("sha256:", StringComparison.Ordinal) && Convert.FromHexString(text.AsSpan(7)) is { Length: 32 } h
            ? h : throw new JsonException($"'{text}' is not a sha256:<64 hex digits> hash");

    internal static string FormatHash(byte[] hash) => "sha256:" + Convert.ToHexStringLower(hash);

    /// <summary>A SHA-256 as four words: a dictionary key that allocates nothing.</summary>
    internal readonly record struct HashKey(ulong A, ulong B, ulong C, ulong D)
    {
        public static HashKey Of(ReadOnlySpan<byte> h) => new(
            BitConverter.ToUInt64(h), BitConverter.ToUInt64(h[8..]), BitConverter.ToUInt64(h[16..]), BitConverter.ToUInt64(h[24..]));
    }

    /// <summary>The store's whole content, never changed once published.</summary>
    private sealed class Snapshot(Dictionary<string, TokenEntry> byName, Dictionary<HashKey, TokenEntry> byHash, Dictionary<HashKey, SessionEntry> sessions)
    {
        public static readonly Snapshot Empty = new([], [], []);

        public Dictionary<string, TokenEntry> ByName { get; } = byName;
        public Dictionary<HashKey, TokenEntry> ByHash { get; } = byHash;
        public Dictionary<HashKey, SessionEntry> Sessions { get; } = sessions;

        public static Snapshot From(TokenFile file, DateTimeOffset now)
        {
            var byName = new Dictionary<string, TokenEntry>(StringComparer.Ordinal);
            var byHash = new Dictionary<HashKey, TokenEntry>();
            foreach (var t in file.Tokens ?? [])
            {
                var hash = ParseHash(t.Hash);
                var entry = new TokenEntry(t.Name, t.Role, hash, t.CreatedAt, t.ExpiresAt, t.LastUsedAt);
                if (!byName.TryAdd(t.Name, entry)) throw new JsonException($"duplicate token name '{t.Name}'");
                byHash[HashKey.Of(hash)] = entry;
            }
            var sessions = new Dictionary<HashKey, SessionEntry>();
            foreach (var s in file.Sessions ?? [])
            {
                if (s.ExpiresAt <= now || !byName.TryGetValue(s.Token, out var token)) continue;
                var hash = ParseHash(s.Hash);
                sessions[HashKey.Of(hash)] = new SessionEntry(token, hash, s.CreatedAt, s.ExpiresAt);
            }
            return new Snapshot(byName, byHash, sessions);
        }

        public (Snapshot, string Secret) WithToken(string name, Role role, DateTimeOffset now, DateTimeOffset? expiresAt)
        {
            var secret = NewSecret();
            var hash = HashOf(secret);
            var entry = new TokenEntry(name, role, hash, now, expiresAt, null);
            var byName = new Dictionary<string, TokenEntry>(ByName, StringComparer.Ordinal) { [name] = entry };
            var byHash = new Dictionary<HashKey, TokenEntry>(ByHash) { [HashKey.Of(hash)] = entry };
            return (new Snapshot(byName, byHash, Sessions), secret);
        }

        public Snapshot Without(string name)
        {
            var gone = ByName[name];
            var byName = new Dictionary<string, TokenEntry>(ByName, StringComparer.Ordinal);
            byName.Remove(name);
            var byHash = new Dictionary<HashKey, TokenEntry>(ByHash);
            byHash.Remove(HashKey.Of(gone.Hash));
            var sessions = Sessions.Where(s => s.Value.Token != gone).ToDictionary();
            return new Snapshot(byName, byHash, sessions);
        }

        public Snapshot WithSession(SessionEntry session, DateTimeOffset now)
        {
            var sessions = Sessions.Where(s => s.Value.ExpiresAt > now).ToDictionary();
            var mine = sessions.Where(s => s.Value.Token == session.Token).OrderBy(s => s.Value.CreatedAt).ToList();
            for (var i = 0; i <= mine.Count - SessionsPerToken; i++) sessions.Remove(mine[i].Key);
            sessions[HashKey.Of(session.Hash)] = session;
            return new Snapshot(ByName, ByHash, sessions);
        }

        public Snapshot WithoutSession(SessionEntry session)
        {
            var sessions = new Dictionary<HashKey, SessionEntry>(Sessions);
            sessions.Remove(HashKey.Of(session.Hash));
            return new Snapshot(ByName, ByHash, sessions);
        }

        public TokenFile ToFile() => new(
            [.. ByName.Values.OrderBy(t => t.Name, StringComparer.Ordinal)
                .Select(t => new StoredToken(t.Name, t.Role, FormatHash(t.Hash), t.CreatedAt, t.ExpiresAt, t.LastUsedAt))],
            [.. Sessions.Values.OrderBy(s => s.CreatedAt).Select(s => new StoredSession(FormatHash(s.Hash), s.Token.Name, s.CreatedAt, s.ExpiresAt))]);
    }
}

/// <summary>The token file's shape (<c>tokens.json</c>).</summary>
public sealed record TokenFile(List<StoredToken>? Tokens, List<StoredSession>? Sessions);

public sealed record StoredToken(string Name, Role Role, string Hash, DateTimeOffset CreatedAt, DateTimeOffset? ExpiresAt, DateTimeOffset? LastUsedAt);

public sealed record StoredSession(string Hash, string Token, DateTimeOffset CreatedAt, DateTimeOffset ExpiresAt);

/// <summary>Source-generated JSON for what access control writes to disk.</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    RespectNullableAnnotations = true, RespectRequiredConstructorParameters = true)]
[JsonSerializable(typeof(TokenFile))]
internal sealed partial class AccessJson : JsonSerializerContext;
