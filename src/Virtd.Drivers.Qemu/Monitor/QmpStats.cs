using System.Text.Json;
using Virtd.Core.Drivers;

namespace Virtd.Drivers.Qemu.Monitor;

/// <summary>Figures from QMP replies, as pure code (tested without a socket).</summary>
public static class QmpStats
{
    /// <summary>
    /// <c>query-blockstats</c>' reply, one entry per disk: named by its device id (<c>qdev</c>, the <c>id=diskN</c> of
    /// <c>-device</c>, or the path QEMU gives it) or by <c>device</c>/<c>node-name</c> when it has none.
    /// </summary>
    public static IReadOnlyList<DiskStats> Disks(JsonElement reply)
    {
        if (reply.ValueKind != JsonValueKind.Array) return [];
        var disks = new List<DiskStats>();
        foreach (var entry in reply.EnumerateArray())
        {
            if (!entry.TryGetProperty("stats", out var s)) continue;
            var name = Name(entry);
            if (name is null) continue;
            disks.Add(new DiskStats(name, Long(s, "rd_bytes"), Long(s, "wr_bytes"), Long(s, "rd_operations"), Long(s, "wr_operations"),
                Long(s, "rd_total_time_ns") / 1e9, Long(s, "wr_total_time_ns") / 1e9));
        }
        return disks;
    }

    private static string? Name(JsonElement entry)
    {
        foreach (var key in (ReadOnlySpan<string>)["qdev", "device", "node-name"])
        {
            if (entry.TryGetProperty(key, out var v) && v.GetString() is { Length: > 0 } text)
            {
                // qdev is "diskN" for -device ...,id=diskN, or "/machine/peripheral/diskN/virtio-backend" for virtio.
                if (key == "qdev" && text.StartsWith("/machine/peripheral/", StringComparison.Ordinal))
                    text = text["/machine/peripheral/".Length..].Split('/')[0];
                return text;
            }
        }
        return null;
    }

    private static long Long(JsonElement o, string name) => o.TryGetProperty(name, out var v) && v.TryGetInt64(out var n) ? n : 0;
}
