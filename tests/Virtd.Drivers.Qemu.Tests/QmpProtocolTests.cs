using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Virtd.Drivers.Qemu.Monitor;

namespace Virtd.Drivers.Qemu.Tests;

public class QmpProtocolTests
{
    private static ReadOnlySequence<byte> Bytes(string s) => new(Encoding.UTF8.GetBytes(s));

    private static QmpMessage Parse(string line) => QmpProtocol.Parse(Bytes(line));

    [Fact]
    public void EncodeCommand_WritesExecuteArgumentsAndNumericIdOnOneLine()
    {
        var bytes = QmpProtocol.EncodeCommand("set-action", 7, new JsonObject { ["reboot"] = "shutdown" });
        var text = Encoding.UTF8.GetString(bytes);

        Assert.EndsWith("\n", text);
        Assert.Equal(1, text.Count(c => c == '\n'));
        using var doc = JsonDocument.Parse(text);
        Assert.Equal("set-action", doc.RootElement.GetProperty("execute").GetString());
        Assert.Equal("shutdown", doc.RootElement.GetProperty("arguments").GetProperty("reboot").GetString());
        Assert.Equal(7, doc.RootElement.GetProperty("id").GetInt64());
    }

    [Fact]
    public void EncodeCommand_ArgumentTextCannotBreakOutOfItsString()
    {
        var hostile = "a\",\"execute\":\"quit\"}\n{\"execute\":\"quit";
        var text = Encoding.UTF8.GetString(QmpProtocol.EncodeCommand("human-monitor-command", 1, new JsonObject { ["command-line"] = hostile }));

        Assert.Equal(1, text.Count(c => c == '\n'));
        using var doc = JsonDocument.Parse(text);
        Assert.Equal("human-monitor-command", doc.RootElement.GetProperty("execute").GetString());
        Assert.Equal(hostile, doc.RootElement.GetProperty("arguments").GetProperty("command-line").GetString());
    }

    [Fact]
    public void EncodeCommand_WithoutArguments_HasNoArgumentsMember()
    {
        using var doc = JsonDocument.Parse(QmpProtocol.EncodeCommand("cont", 3));
        Assert.False(doc.RootElement.TryGetProperty("arguments", out _));
    }

    [Fact]
    public void TryReadLine_TakesCompleteLinesOnly_AndStripsCarriageReturn()
    {
        var buffer = Bytes("{\"return\": {}, \"id\": 1}\r\n{\"event\": \"STOP\"}\r\n{\"ret");

        Assert.True(QmpProtocol.TryReadLine(ref buffer, out var first));
        Assert.Equal("{\"return\": {}, \"id\": 1}", Encoding.UTF8.GetString(first));
        Assert.True(QmpProtocol.TryReadLine(ref buffer, out var second));
        Assert.Equal("{\"event\": \"STOP\"}", Encoding.UTF8.GetString(second));
        Assert.False(QmpProtocol.TryReadLine(ref buffer, out _));
        Assert.Equal("{\"ret", Encoding.UTF8.GetString(buffer));
    }

    [Fact]
    public void TryReadLine_JoinsALineSplitAcrossSegments()
    {
        var first = new Segment(Encoding.UTF8.GetBytes("{\"return\": {\"status\": \"run"));
        var last = first.Append(Encoding.UTF8.GetBytes("ning\"}, \"id\": 4}\r\n"));
        var buffer = new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);

        Assert.True(QmpProtocol.TryReadLine(ref buffer, out var line));
        var reply = Assert.IsType<QmpReturn>(QmpProtocol.Parse(line));
        Assert.Equal(4, reply.Id);
        Assert.Equal("running", reply.Value.GetProperty("status").GetString());
        Assert.True(buffer.IsEmpty);
    }

    [Fact]
    public void Parse_Greeting_ReadsVersionAndCapabilities()
    {
        var g = Assert.IsType<QmpGreeting>(Parse(
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2\"}, \"capabilities\": [\"oob\"]}}"));
        Assert.Equal("7.2.22", g.Version);
        Assert.Equal(["oob"], g.Capabilities);
    }

    [Fact]
    public void Parse_ReturnAndError_CarryTheirIds()
    {
        var r = Assert.IsType<QmpReturn>(Parse("{\"return\": {}, \"id\": 12}"));
        Assert.Equal(12, r.Id);

        var e = Assert.IsType<QmpError>(Parse("{\"id\": 13, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command frob has not been found\"}}"));
        Assert.Equal(13, e.Id);
        Assert.Equal("CommandNotFound", e.Class);
        Assert.Equal("The command frob has not been found", e.Description);
    }

    [Fact]
    public void Parse_ReplyWithAnIdThatIsNotOurs_HasNoId()
    {
        Assert.Null(Assert.IsType<QmpReturn>(Parse("{\"return\": {}, \"id\": \"libvirt-1\"}")).Id);
        Assert.Null(Assert.IsType<QmpReturn>(Parse("{\"return\": {}}")).Id);
    }

    [Fact]
    public void Parse_Event_ReadsNameDataAndTimestamp()
    {
        var e = Assert.IsType<QmpEvent>(Parse(
            "{\"timestamp\": {\"seconds\": 1764040000, \"microseconds\": 250000}, \"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}"));
        Assert.Equal("SHUTDOWN", e.Name);
        Assert.True(e.DataBool("guest"));
        Assert.Equal("guest-shutdown", e.DataString("reason"));
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(1764040000).AddMilliseconds(250), e.Timestamp);
    }

    [Fact]
    public void Parse_EventWithoutData_HasNoMembers()
    {
        var e = Assert.IsType<QmpEvent>(Parse("{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}"));
        Assert.Null(e.DataString("reason"));
        Assert.Null(e.DataBool("guest"));
    }

    [Theory]
    [InlineData("not json at all")]
    [InlineData("[1, 2, 3]")]
    [InlineData("{\"hello\": \"world\"}")]
    [InlineData("{\"return\": {}, \"id\": 1")]
    public void Parse_Garbage_IsReportedNotThrown(string line) => Assert.IsType<QmpGarbage>(Parse(line));

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory) => Memory = memory;

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory) { RunningIndex = RunningIndex + Memory.Length };
            Next = next;
            return next;
        }
    }
}
