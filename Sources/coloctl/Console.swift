import ArgumentParser
import ColoProtocol
import ControlSocket
import Glibc
import SystemPackage

/// `coloctl console [HOST]`: the guest's serial console on this terminal,
/// straight from the host's vmmd (its console attach request hands over a
/// stream socket: the current VM's output from its start, then live; what
/// is typed goes to the guest's COM1). Ctrl-] detaches, as in telnet.
struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to the guest's serial console; Ctrl-] detaches.",
        discussion: """
            Talks to vmmd directly (<runtime-dir>/vmmd.sock, or <runtime-dir>/HOST/vmmd.sock \
            for a host whose daemons share a parent runtime directory). The terminal is put in \
            raw mode while attached, so Ctrl-C reaches the guest. Without a terminal, output \
            streams until byte 0x1D (Ctrl-]) comes on stdin or vmmd closes the console; the \
            end of stdin only ends input. Exits 0 on detach, 2 when vmmd cannot be reached \
            or refuses, 3 when vmmd closes the console.
            """)

    /// Ctrl-]: never sent to the guest.
    static let detachByte: UInt8 = 0x1D

    @Argument(help: "The host whose guest to attach to: a subdirectory of the runtime directory (default: the runtime directory itself).")
    var host: String?

    @OptionGroup var connection: ConnectionOptions

    var vmmdSocketPath: String {
        let base = connection.runtimeDir ?? environmentValue("COLO_RUNTIME_DIR") ?? "/run/colo"
        return host.map { "\(base)/\($0)/vmmd.sock" } ?? "\(base)/vmmd.sock"
    }

    func validate() throws {
        if let host, host.isEmpty || host.contains("/") || host == "." || host == ".." {
            throw ValidationError("HOST names a directory inside the runtime directory: no '/', not '.' or '..'")
        }
    }

    func run() throws {
        let console: FileDescriptor
        do {
            let client = try ControlClient(connectingTo: vmmdSocketPath)
            defer { client.close() }
            let response = try client.call(.consoleAttach(ColoConsoleAttachRequest()),
                                           timeout: .milliseconds(Int64(connection.timeout * 1000)))
            guard case .consoleAttached = response.message.body, let fd = response.fds.first else {
                response.fds.forEach { try? $0.close() }
                throw ControlSocketError.malformedMessage("vmmd answered without a console socket")
            }
            response.fds.dropFirst().forEach { try? $0.close() }
            console = fd
        } catch {
            printError("coloctl: vmmd at \(vmmdSocketPath) did not attach the console: \(error)")
            throw ColoctlExit.supervisorUnreachable
        }
        defer { try? console.close() }
        let terminal = RawTerminal(fd: STDIN_FILENO)
        if terminal != nil { printError("coloctl: attached to the console; Ctrl-] detaches\r") }
        let outcome = ConsoleRelay(console: console, detachByte: Self.detachByte).run()
        terminal?.restore()
        switch outcome {
        case .detached:
            if terminal != nil { printError("\ncoloctl: detached") }
        case .closedByVMM:
            printError("\ncoloctl: vmmd closed the console")
            throw ColoctlExit.daemonDown
        case .failed(let error):
            printError("\ncoloctl: console: \(error)")
            throw ColoctlExit.daemonDown
        }
    }
}

/// Copies the console socket to stdout and stdin to the console socket
/// until the detach byte or the socket's end (stdin's end only stops input).
struct ConsoleRelay {
    enum Outcome: Equatable {
        case detached
        case closedByVMM
        case failed(Errno)
    }

    let console: FileDescriptor
    let detachByte: UInt8

    func run() -> Outcome {
        signal(SIGPIPE, SIG_IGN)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var inputOpen = true
        while true {
            var entries = [pollfd(fd: console.rawValue, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: inputOpen ? STDIN_FILENO : -1, events: Int16(POLLIN), revents: 0)]
            if poll(&entries, 2, -1) < 0 {
                if errno == EINTR { continue }
                return .failed(Errno(rawValue: errno))
            }
            if entries[0].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(console.rawValue, $0.baseAddress, $0.count) }
                if count == 0 { return .closedByVMM }
                if count < 0 {
                    if errno == EINTR || errno == EAGAIN { continue }
                    return .failed(Errno(rawValue: errno))
                }
                if let error = writeAll(STDOUT_FILENO, buffer[..<count]) { return .failed(error) }
            }
            if entries[1].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
                if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if count <= 0 {
                    // Input ended (/dev/null, a closed pipe): output goes on
                    // until vmmd closes the console or the process is stopped.
                    inputOpen = false
                    continue
                }
                let typed = buffer[..<count]
                let detach = typed.firstIndex(of: detachByte)
                if let error = writeAll(console.rawValue, typed[..<(detach ?? typed.endIndex)]) { return .failed(error) }
                if detach != nil { return .detached }
            }
        }
    }

    /// All of `bytes` to `fd` (SIGPIPE is ignored: a closed peer is EPIPE).
    private func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Errno? {
        var rest = bytes
        while !rest.isEmpty {
            let written = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return Errno(rawValue: errno)
            }
            rest = rest.dropFirst(written)
        }
        return nil
    }
}

/// The terminal on `fd` in raw mode (no echo, no line editing, no signals
/// from keys) until `restore`; nil when `fd` is not a terminal.
final class RawTerminal {
    private let fd: Int32
    private var saved = termios()

    init?(fd: Int32) {
        self.fd = fd
        guard isatty(fd) == 1, tcgetattr(fd, &saved) == 0 else { return nil }
        var raw = saved
        cfmakeraw(&raw)
        guard tcsetattr(fd, TCSANOW, &raw) == 0 else { return nil }
    }

    func restore() {
        _ = tcsetattr(fd, TCSANOW, &saved)
    }
}
