import Foundation
import Logging
@testable import Systemd
import XCTest

final class ServiceNotifierTests: XCTestCase {
    /// sd_notify really sends READY=1 and STATUS= to $NOTIFY_SOCKET, the way
    /// systemd (Type=notify) receives it.
    func testReadySendsReadyAndStatusToTheNotifySocket() throws {
        let path = NSTemporaryDirectory() + "colo-notify-\(getpid()).sock"
        unlink(path)
        let socket = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(socket, 0)
        defer { close(socket); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        XCTAssertEqual(bound, 0)
        setenv("NOTIFY_SOCKET", path, 1)
        defer { unsetenv("NOTIFY_SOCKET") }

        ServiceNotifier().ready(status: "serving test")

        var buffer = [UInt8](repeating: 0, count: 512)
        let count = recv(socket, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        XCTAssertGreaterThan(count, 0)
        let message = String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self)
        XCTAssertEqual(message, "READY=1\nSTATUS=serving test")
    }

    func testNoWatchdogWithoutWatchdogUSEC() {
        unsetenv("WATCHDOG_USEC")
        XCTAssertNil(ServiceNotifier().watchdogInterval)
    }

    func testWatchdogIntervalComesFromTheEnvironment() {
        setenv("WATCHDOG_USEC", "3000000", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
        defer { unsetenv("WATCHDOG_USEC"); unsetenv("WATCHDOG_PID") }
        XCTAssertEqual(ServiceNotifier().watchdogInterval, .seconds(3))
    }
}

final class JournalLogHandlerTests: XCTestCase {
    func testMetadataKeysBecomeJournalFieldNames() {
        XCTAssertEqual(JournalLogHandler.journalFieldName("event"), "EVENT")
        XCTAssertEqual(JournalLogHandler.journalFieldName("pause-us"), "PAUSE_US")
        XCTAssertEqual(JournalLogHandler.journalFieldName("peer.uid"), "PEER_UID")
    }

    func testPrioritiesFollowSyslog() {
        XCTAssertEqual(Logger.Level.error.syslogPriority, 3)
        XCTAssertEqual(Logger.Level.info.syslogPriority, 6)
        XCTAssertEqual(Logger.Level.debug.syslogPriority, 7)
    }

    /// Where journald does not run (this machine, CI), logging falls back to
    /// stderr; where its socket exists, to the journal.
    func testDestinationFollowsTheJournalSocket() {
        var status = stat()
        let present = stat(JournalLogHandler.journalSocketPath, &status) == 0
        switch JournalLogHandler.detectDestination() {
        case .journal: XCTAssertTrue(present)
        case .stderr: XCTAssertFalse(present)
        }
    }
}
