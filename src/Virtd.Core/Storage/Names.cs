using System.Text.RegularExpressions;

namespace Virtd.Core.Storage;

/// <summary>What a storage pool may be called (<c>Storage:Pools:&lt;name&gt;</c>).</summary>
public static class PoolNames
{
    public const string Pattern = "^[a-z0-9][a-z0-9_-]{0,31}$";
    private static readonly Regex Form = new(@"^[a-z0-9][a-z0-9_-]{0,31}\z", RegexOptions.CultureInvariant);

    public static bool IsValid(string? name) => name is not null && Form.IsMatch(name);
}

/// <summary>
/// What a volume may be called: a file name directly in its pool's directory. No '/', no NUL, no leading dot (so
/// neither '.' nor '..', and the daemon's own temporary files, which start with a dot, are never volumes).
/// </summary>
public static class VolumeNames
{
    public const string Pattern = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$";
    private static readonly Regex Form = new(@"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\z", RegexOptions.CultureInvariant);

    public static bool IsValid(string? name) => name is not null && Form.IsMatch(name);

    /// <summary>Why a name cannot be a volume's, in words, or null when it can.</summary>
    public static string? Problem(string? name) => name switch
    {
        null or "" => "is required",
        _ when name.Contains('\0') => "must not contain NUL",
        _ when name.Contains('/') => "must not contain '/': a volume is a file directly in its pool",
        "." or ".." => "must not be '.' or '..'",
        _ when !IsValid(name) => $"must match {Pattern}",
        _ => null,
    };
}

/// <summary>A volume as a definition or a request names it: <c>pool/name</c>.</summary>
public readonly record struct VolumeRef(string Pool, string Name)
{
    public override string ToString() => $"{Pool}/{Name}";

    /// <summary>Parses <c>pool/name</c>; the reason in words when it cannot.</summary>
    public static bool TryParse(string? text, out VolumeRef volume, out string? problem)
    {
        volume = default;
        problem = null;
        if (string.IsNullOrEmpty(text)) { problem = "is required"; return false; }
        var slash = text.IndexOf('/');
        if (slash < 0) { problem = "must be '<pool>/<volume>', for example 'default/disk.qcow2'"; return false; }
        var pool = text[..slash];
        var name = text[(slash + 1)..];
        if (!PoolNames.IsValid(pool)) { problem = $"names no pool: '{pool}' is not a pool name ({PoolNames.Pattern})"; return false; }
        if (VolumeNames.Problem(name) is { } p) { problem = $"the volume's name {p}"; return false; }
        volume = new VolumeRef(pool, name);
        return true;
    }
}
