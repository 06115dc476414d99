using Microsoft.Extensions.Logging;
using Virtd.Drivers.Qemu.Native;

namespace Virtd.Drivers.Qemu;

/// <summary>
/// The user QEMU runs as and how it is started: through util-linux <c>setpriv</c>, which execs QEMU in place (the
/// pid, pidfd and exit status stay QEMU's) after switching to <c>Qemu:User</c>, clearing supplementary groups,
/// dropping every capability from the bounding and inheritable sets and setting no_new_privs. QEMU needs no access
/// to any of the daemon's paths: the monitor socket, console log and disks reach it as open descriptors.
/// </summary>
internal sealed class QemuConfinement
{
    private QemuConfinement(UserIds user, bool switchUser, string setpriv)
    {
        User = user;
        SwitchUser = switchUser;
        Prefix = switchUser
            ? [setpriv, $"--reuid={user.Uid}", $"--regid={user.Gid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
            : [setpriv, "--no-new-privs", "--"];
    }

    /// <summary>The user QEMU runs as.</summary>
    public UserIds User { get; }

    /// <summary>True when the daemon (root) switches to another user; false when QEMU runs as the daemon's own user.</summary>
    public bool SwitchUser { get; }

    /// <summary>The arguments before QEMU's own argv.</summary>
    public IReadOnlyList<string> Prefix { get; }

    /// <summary>
    /// The confinement the options ask for, or why it cannot be had. As root: <c>Qemu:User</c>, which must exist
    /// (<c>root</c> only when set explicitly, with a warning). As another user: QEMU runs as that user (only root can
    /// switch), with no_new_privs.
    /// </summary>
    public static (QemuConfinement? Confinement, string? Problem) Resolve(QemuOptions options, ILogger log)
    {
        var setpriv = new[] { "/usr/bin/setpriv", "/bin/setpriv" }.FirstOrDefault(File.Exists);
        if (setpriv is null) return (null, "setpriv (util-linux) is not installed; QEMU is started through it to run unprivileged");
        var euid = Users.EffectiveUid;
        if (euid != 0)
        {
            var self = Users.NameOf(euid) ?? euid.ToString(System.Globalization.CultureInfo.InvariantCulture);
            if (options.User != QemuOptions.DefaultUser && options.User != self)
                log.LogWarning("Qemu:User is {User}, but only root can switch users: QEMU runs as {Self}, the daemon's own user", options.User, self);
            return (new QemuConfinement(new UserIds(self, euid, Users.Find(self)?.Gid ?? euid), switchUser: false, setpriv), null);
        }
        if (Users.Find(options.User) is not { } user)
        {
            return (null, $"Qemu:User '{options.User}' does not exist: create it (useradd --system --no-create-home --shell /usr/sbin/nologin " +
                          $"{options.User}; scripts/install-deps does) or name another user");
        }
        if (user.Uid == 0)
            log.LogWarning("Qemu:User is {User}: guests' QEMU runs as root, with only its seccomp sandbox between a guest escape and the host", options.User);
        return (new QemuConfinement(user, switchUser: user.Uid != 0, setpriv), null);
    }
}
