internal import CSupport
import ControlSocket
import Devices
import Glibc
import Logging
import SystemPackage

/// The guest's serial console, fanned out: every line to the log (one
/// journald entry per line, COLO_EVENT=console), all output to attached
/// clients (after the history of the current VM), and client input to the
/// guest's COM1.
///
/// The vCPU thread only appends to a buffer; a thread of the hub's own
/// logs lines and writes to clients, so a slow client or the journal never
/// stalls the guest. A client that cannot keep up loses output.
final class ConsoleHub: @unchecked Sendable {
    static let historyLimit = 64 * 1024
    static let lineLimit = 1024
    /// How long partial output (a prompt without a newline) waits.
    static let flushIntervalMilliseconds: Int32 = 50

    private let lock = ThreadLock()
    private let logger: Logger
    private let wakeFD: FileDescriptor
    private var pending: [UInt8] = []
    private var history: [UInt8] = []
    private var line: [UInt8] = []
    private var clients: [FileDescriptor] = []
    private var input: Serial8250?
    private(set) var bytesWritten: UInt64 = 0

    init(logger: Logger) throws(Errno) {
        self.logger = logger
        let raw = colo_eventfd()
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        wakeFD = FileDescriptor(rawValue: raw)
        spawnThread(name: "console") { [self] in run() }
    }

    /// A new VM: its console starts empty and takes input from `serial`.
    func begin(serial: Serial8250?) {
        lock.withLock {
            history.removeAll()
            pending.removeAll()
            line.removeAll()
            bytesWritten = 0
            input = serial
        }
    }

    /// One byte from the guest (vCPU thread).
    func output(_ byte: UInt8) {
        let wake = lock.withLock { () -> Bool in
            pending.append(byte)
            bytesWritten += 1
            return byte == UInt8(ascii: "\n") || pending.count >= 4096
        }
        if wake { signal() }
    }

    /// A new client: returns the end to hand over; the hub keeps the other.
    func attach() throws(Errno) -> FileDescriptor {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw Errno(rawValue: errno)
        }
        let own = FileDescriptor(rawValue: fds[0])
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        lock.withLock {
            send(history, to: own)
            clients.append(own)
        }
        signal()
        return FileDescriptor(rawValue: fds[1])
    }

    private func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD.rawValue, &one, 8)
    }

    private func run() {
        while true {
            let (watched, hasPending) = lock.withLock { (clients, !pending.isEmpty) }
            var entries = [pollfd(fd: wakeFD.rawValue, events: Int16(POLLIN), revents: 0)]
            entries += watched.map { pollfd(fd: $0.rawValue, events: Int16(POLLIN), revents: 0) }
            let result = poll(&entries, nfds_t(entries.count), hasPending ? Self.flushIntervalMilliseconds : -1)
            if result < 0 && errno != EINTR { usleep(10_000) }
            if entries[0].revents != 0 {
                var value: UInt64 = 0
                _ = Glibc.read(wakeFD.rawValue, &value, 8)
            }
            flush()
            for (index, client) in watched.enumerated() where entries[index + 1].revents != 0 {
                readInput(from: client)
            }
        }
    }

    /// Sends pending output to clients and logs complete lines.
    private func flush() {
        let lines: [String] = lock.withLock {
            guard !pending.isEmpty else { return [] }
            let bytes = pending
            pending.removeAll(keepingCapacity: true)
            history += bytes
            if history.count > Self.historyLimit { history.removeFirst(history.count - Self.historyLimit) }
            clients.forEach { send(bytes, to: $0) }
            var lines: [String] = []
            for byte in bytes {
                if byte == UInt8(ascii: "\n") || line.count >= Self.lineLimit {
                    lines.append(String(decoding: line, as: UTF8.self))
                    line.removeAll(keepingCapacity: true)
                    if byte == UInt8(ascii: "\n") { continue }
                }
                if byte != UInt8(ascii: "\r") { line.append(byte) }
            }
            return lines
        }
        for text in lines {
            logger.info("\(text)", metadata: ["event": "console"])
        }
    }

    /// Best effort: what the client's socket cannot take now is dropped.
    private func send(_ bytes: [UInt8], to client: FileDescriptor) {
        guard !bytes.isEmpty else { return }
        _ = bytes.withUnsafeBytes { Glibc.send(client.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
    }

    private func readInput(from client: FileDescriptor) {
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { recv(client.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR) {
            lock.withLock { clients.removeAll { $0 == client } }
            try? client.close()
            return
        }
        guard count > 0 else { return }
        let serial = lock.withLock { input }
        serial?.receive(buffer.prefix(count))
    }
}
