using System.Globalization;
using System.Text.Json;

namespace Virtd.Core.Storage;

/// <summary>
/// A size in bytes as a request gives it: a JSON number of bytes, or a string of digits with an optional binary unit
/// (<c>"10GiB"</c>, <c>"512MiB"</c>, <c>"4096"</c>, also <c>K</c>, <c>M</c>, <c>G</c>, <c>T</c> as 1024-based). No
/// sign, no fraction, no exponent; at most <see cref="Max"/>.
/// </summary>
public static class Capacity
{
    /// <summary>64 TiB: qcow2's own limit for a virtual disk (with its default 64 KiB clusters is far above; this is ours).</summary>
    public const long Max = 64L << 40;

    private static readonly (string Suffix, int Shift)[] Units =
    [
        ("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40),
        ("K", 10), ("M", 20), ("G", 30), ("T", 40), ("B", 0),
    ];

    /// <summary>The size in bytes, or the reason it is not one.</summary>
    public static bool TryParse(JsonElement value, out long bytes, out string? problem)
    {
        bytes = 0;
        switch (value.ValueKind)
        {
            case JsonValueKind.Number:
                if (!value.TryGetInt64(out bytes) || bytes < 0) { problem = "must be a whole number of bytes, at least 0"; return false; }
                return InRange(bytes, out problem);
            case JsonValueKind.String:
                return TryParse(value.GetString()!, out bytes, out problem);
            default:
                problem = "must be a number of bytes or a string like \"10GiB\"";
                return false;
        }
    }

    public static bool TryParse(string text, out long bytes, out string? problem)
    {
        bytes = 0;
        var t = text.Trim();
        var shift = 0;
        foreach (var (suffix, s) in Units)
        {
            if (t.EndsWith(suffix, StringComparison.Ordinal)) { shift = s; t = t[..^suffix.Length].TrimEnd(); break; }
        }
        if (t.Length == 0 || t.Length > 19 || !t.All(char.IsAsciiDigit))
        {
            problem = $"'{Shown(text)}' is not a size: give digits and an optional unit (B, KiB, MiB, GiB, TiB), like \"10GiB\"";
            return false;
        }
        if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || (shift > 0 && n > (Max >> shift)))
        {
            problem = $"must be at most {Max} bytes (64 TiB)";
            return false;
        }
        bytes = n << shift;
        return InRange(bytes, out problem);
    }

    private static bool InRange(long bytes, out string? problem)
    {
        problem = bytes > Max ? $"must be at most {Max} bytes (64 TiB)" : null;
        return problem is null;
    }

    private static string Shown(string text) => text.Length <= 32 ? text : text[..32] + "…";
}
