import ArgumentParser
import ColoProtocol
import ControlSocket
import SwiftProtobuf

/// A coloctl failure: what to tell the operator, and the exit status.
struct CommandFailure: Error {
    var status: ExitCode
    /// The error's stable name in JSON output (an ErrorCode name, or one of
    /// coloctl's own: unreachable, timeout, failed).
    var code: String
    var message: String

    /// True when the output already says it (status's table and JSON show
    /// the daemons that are down): then only stderr gets the message.
    var shownInOutput = false

    /// Reports the failure (stderr; stdout too as JSON with --json) and
    /// returns the exit status to throw.
    func report(json: Bool) -> ExitCode {
        printError("coloctl: \(message)")
        if json && !shownInOutput {
            print(#"{"error":{"code":\#(jsonString(code)),"message":\#(jsonString(message)),"exit_status":\#(status.rawValue)}}"#)
        }
        return status
    }
}

/// A JSON string literal.
func jsonString(_ text: String) -> String {
    var escaped = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": escaped += "\\\""
        case "\\": escaped += "\\\\"
        case "\n": escaped += "\\n"
        case "\r": escaped += "\\r"
        case "\t": escaped += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            escaped += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: escaped.unicodeScalars.append(scalar)
        }
    }
    return escaped + "\""
}

/// One request to the local supervisord, its failures turned into
/// `CommandFailure`s with the documented exit statuses.
func callSupervisor(_ body: ColoRequest.OneOf_Body, _ connection: ConnectionOptions,
                    timeout: Duration? = nil) throws(CommandFailure) -> ColoResponse.OneOf_Body {
    let client: ControlClient
    do {
        client = try ControlClient(connectingTo: connection.socketPath)
    } catch {
        throw CommandFailure(status: ColoctlExit.supervisorUnreachable, code: "unreachable",
                             message: "supervisord at \(connection.socketPath) did not answer: \(error)")
    }
    defer { client.close() }
    let response: ControlResponse
    do {
        response = try client.call(body, timeout: timeout ?? connection.callTimeout)
    } catch {
        throw failure(from: error, connection)
    }
    guard let body = response.message.body else {
        throw CommandFailure(status: ColoctlExit.failed, code: "failed", message: "supervisord sent an empty response")
    }
    return body
}

private func failure(from error: ControlSocketError, _ connection: ConnectionOptions) -> CommandFailure {
    switch error {
    case .failed(let answer), .refused(let answer):
        let status: ExitCode
        switch answer.code {
        case .failedPrecondition: status = ColoctlExit.refused
        case .timeout: status = ColoctlExit.timedOut
        case .unavailable: status = ColoctlExit.daemonDown
        case .invalidArgument: status = ColoctlExit.usage
        case .unknownRequest:
            return CommandFailure(status: ColoctlExit.failed, code: answer.code.name,
                                  message: "supervisord does not serve this request (older version?): \(answer.message)")
        default: status = ColoctlExit.failed
        }
        return CommandFailure(status: status, code: answer.code.name, message: answer.message)
    case .timedOut:
        return CommandFailure(status: ColoctlExit.timedOut, code: "timeout",
                              message: "supervisord did not answer within \(connection.timeout) s")
    case .disconnected, .system:
        return CommandFailure(status: ColoctlExit.supervisorUnreachable, code: "unreachable",
                              message: "supervisord at \(connection.socketPath) went away: \(error)")
    default:
        return CommandFailure(status: ColoctlExit.failed, code: "failed", message: "supervisord: \(error)")
    }
}

/// Prints a reply as JSON (the protobuf JSON mapping, proto field names).
func printJSON(_ message: some SwiftProtobuf.Message) throws {
    var options = JSONEncodingOptions()
    options.preserveProtoFieldNames = true
    print(try message.jsonString(options: options))
}

/// Runs a subcommand's body, reporting a failure with its exit status.
func runReporting(json: Bool, _ body: () throws(CommandFailure) -> Void) throws {
    do {
        try body()
    } catch {
        throw error.report(json: json)
    }
}
