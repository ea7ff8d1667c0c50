internal import CSystemd
import Glibc

/// Tells the service manager about the daemon's life (`Type=notify` units):
/// when it is ready, what it is doing, that it is alive, that it stops.
///
/// Without `$NOTIFY_SOCKET` (started by hand) every call does nothing.
public struct ServiceNotifier: Sendable {
    public init() {}

    /// READY=1 with a status line: systemd starts dependent units only now.
    public func ready(status: String) {
        send("READY=1\nSTATUS=\(status)")
    }

    /// A free-form status line shown by `systemctl status`.
    public func status(_ status: String) {
        send("STATUS=\(status)")
    }

    /// STOPPING=1: the daemon is shutting down on purpose.
    public func stopping() {
        send("STOPPING=1")
    }

    /// The watchdog period systemd expects (`WatchdogSec=`), if enabled for
    /// this process.
    public var watchdogInterval: Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(microseconds))
    }

    /// WATCHDOG=1: proof of life. Must come more often than the interval.
    public func watchdogPing() {
        send("WATCHDOG=1")
    }

    private func send(_ state: String) {
        _ = sd_notify(0, state)
    }
}
