using System.Runtime.InteropServices;

namespace Virtd.Api.Hosting;

/// <summary>
/// SIGTERM and SIGINT stop the daemon however it was started. A process started in the background of a shell
/// script (or under nohup-like wrappers) inherits SIGINT set to "ignore", and .NET then never installs its own
/// handler for it: <c>kill -INT</c> did nothing and the daemon ran on (a test saw it alive 10 s after SIGINT).
/// Called first thing, before the host registers its handlers: an inherited "ignore" is set back to the default,
/// so that the host's registration takes. A handler someone else installed is left as it was.
/// </summary>
internal static partial class StopSignals
{
    private const int SigInt = 2;
    private const int SigTerm = 15;
    private static readonly nint SigDfl = 0;
    private static readonly nint SigIgn = 1;

    public static void Honour()
    {
        foreach (var signal in new[] { SigInt, SigTerm })
        {
            var previous = Signal(signal, SigDfl);
            if (previous != SigIgn && previous != SigDfl) Signal(signal, previous); // not ours to replace
        }
    }

    [LibraryImport("libc", EntryPoint = "signal")]
    private static partial nint Signal(int signal, nint handler);
}
